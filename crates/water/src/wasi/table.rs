//! The guest's fd table: what each preview1 fd number means, owned by the
//! host. Lookups answer the precise errno (`badf` for a free fd).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use water_abi::Errno;

use crate::duplex::{DuplexEnd, ReadReadiness};
use crate::wasi::gate::Gated;
use crate::wasi::lazy::LazyTcp;

/// Most fds one instance may hold (a guest needs five or six).
pub const MAX_FDS: usize = 64;

/// A byte stream the guest reads and writes: a network socket, or the
/// application's end of an in-process duplex.
#[derive(Debug, Clone)]
pub enum Stream {
    Tcp(Arc<TcpStream>),
    Duplex(Arc<DuplexEnd>),
    /// A TCP connection made when the guest first uses it.
    Lazy(Arc<LazyTcp>),
    /// A socket whose first bytes a check sees before the guest.
    Gated(Arc<Gated>),
}

/// What a lazy stream is now: connected (as a `Tcp` stream), failed, or
/// not yet.
fn now_or_would_block(lazy: &Arc<LazyTcp>) -> io::Result<Stream> {
    match lazy.poll_connected(None) {
        Poll::Ready(r) => r.map(Stream::Tcp),
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// `Ready` with the connected lazy stream (as a `Tcp` stream), or its
/// failure; `Pending` while it connects.
fn poll_lazy(lazy: &Arc<LazyTcp>, cx: &mut Context<'_>) -> Poll<io::Result<Stream>> {
    lazy.poll_connected(Some(cx)).map_ok(Stream::Tcp)
}

impl Stream {
    /// The socket, if this is one (a lazy one once connected).
    pub fn tcp(&self) -> Option<Arc<TcpStream>> {
        match self {
            Stream::Tcp(s) => Some(s.clone()),
            Stream::Lazy(l) => l.get(),
            Stream::Gated(g) => Some(g.socket().clone()),
            Stream::Duplex(_) => None,
        }
    }

    /// A lazy stream's connect error, if it failed.
    pub fn connect_failure(&self) -> Option<io::Error> {
        match self {
            Stream::Lazy(l) => l.failure(),
            _ => None,
        }
    }

    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Lazy(l) => now_or_would_block(l)?.try_read(buf),
            Stream::Gated(g) => g.try_read(buf),
            Stream::Tcp(s) => {
                // A short read drained the socket: forget its readiness now,
                // as tokio's own `poll_read` does, so the guest's next read
                // waits for the next event instead of costing a `recv` that
                // answers EAGAIN. (Readiness from an event newer than the
                // read survives: tokio clears only what it had seen.)
                let want = buf.len();
                let mut short = None;
                let result = s.try_io(tokio::io::Interest::READABLE, || {
                    let n = io::Read::read(&mut &*socket2::SockRef::from(s.as_ref()), buf)?;
                    if n > 0 && n < want {
                        short = Some(n);
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                });
                match short {
                    Some(n) => Ok(n),
                    None => result,
                }
            }
            Stream::Duplex(d) => d.try_read(buf),
        }
    }

    /// Like [`Stream::try_read`], but the bytes stay to be read again.
    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                let mut rb = tokio::io::ReadBuf::new(buf);
                match s.poll_peek(&mut Context::from_waker(std::task::Waker::noop()), &mut rb) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Stream::Duplex(d) => d.try_peek(buf),
            Stream::Lazy(l) => now_or_would_block(l)?.try_peek(buf),
            Stream::Gated(g) => g.try_peek(buf),
        }
    }

    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(data),
            Stream::Duplex(d) => d.try_write(data),
            Stream::Lazy(l) => now_or_would_block(l)?.try_write(data),
            Stream::Gated(g) => g.socket().try_write(data),
        }
    }

    /// Ready when a read would not block: with the bytes known to be
    /// available and whether the stream ended.
    ///
    /// For a socket this is tokio's readiness, which costs no syscall: at
    /// least one byte (`available: 1`, or a spurious wake-up, which the
    /// guest's read answers with `again`), unless the peer has hung up. Only
    /// then the kernel is asked how much is left before EOF (`FIONREAD`,
    /// which, unlike a peek, leaves a pending error such as a reset for the
    /// guest's read to report).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<ReadReadiness>> {
        match self {
            Stream::Tcp(s) => {
                if let Err(e) = std::task::ready!(s.poll_read_ready(cx)) {
                    return Poll::Ready(Err(e));
                }
                if !read_closed(s) {
                    return Poll::Ready(Ok(ReadReadiness { available: 1, closed: false }));
                }
                let available = unread_bytes(s);
                Poll::Ready(Ok(ReadReadiness { available, closed: true }))
            }
            Stream::Duplex(d) => d.poll_read_ready(cx).map(Ok),
            Stream::Lazy(l) => std::task::ready!(poll_lazy(l, cx))?.poll_read_ready(cx),
            Stream::Gated(g) => g.poll_read_ready(cx, false),
        }
    }

    /// Like [`Stream::poll_read_ready`], but never early: for a socket,
    /// tokio's cached readiness outlives a read that took every byte into a
    /// full buffer, so the kernel is asked (`FIONREAD`) and stale readiness
    /// is dropped. For fds in blocking mode: a guest that polls and then
    /// makes a blocking read would otherwise block in that read, with the
    /// other direction's bytes waiting behind it (a single-threaded TinyGo
    /// worker then deadlocks). Non-blocking guests get `again` instead and
    /// keep the syscall-free path.
    pub fn poll_read_ready_exact(&self, cx: &mut Context<'_>) -> Poll<io::Result<ReadReadiness>> {
        if let Stream::Lazy(l) = self {
            return std::task::ready!(poll_lazy(l, cx))?.poll_read_ready_exact(cx);
        }
        if let Stream::Gated(g) = self {
            return g.poll_read_ready(cx, true);
        }
        let Stream::Tcp(s) = self else {
            return self.poll_read_ready(cx);
        };
        // Twice at most: stale readiness is cleared once, then tokio waits.
        for _ in 0..2 {
            let ready = std::task::ready!(self.poll_read_ready(cx))?;
            if ready.closed || unread_bytes(s) > 0 {
                return Poll::Ready(Ok(ready));
            }
            // Forget the stale readiness; the next poll registers `cx`.
            let _ =
                s.try_io(tokio::io::Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
        Poll::Pending
    }

    /// Ready when a write would not block, with the room known (0 when
    /// unknown, as for a socket).
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx).map_ok(|()| 0),
            Stream::Duplex(d) => d.poll_write_ready(cx).map(Ok),
            Stream::Lazy(l) => std::task::ready!(poll_lazy(l, cx))?.poll_write_ready(cx),
            Stream::Gated(g) => g.socket().poll_write_ready(cx).map_ok(|()| 0),
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx).map_ok(|_| ())).await
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Duplex(d) => {
                std::future::poll_fn(|cx| d.poll_write_ready(cx)).await;
                Ok(())
            }
            Stream::Lazy(_) | Stream::Gated(_) => {
                std::future::poll_fn(|cx| self.poll_write_ready(cx).map_ok(|_| ())).await
            }
        }
    }

    /// Whether the other side will send nothing more (a TCP peer's FIN,
    /// from tokio's cached readiness; the application's end of a duplex
    /// shut down or gone). No syscall.
    pub fn hung_up(&self) -> bool {
        match self {
            Stream::Tcp(s) => read_closed(s),
            Stream::Duplex(d) => d.peer_write_closed(),
            Stream::Lazy(l) => l.get().is_some_and(|s| read_closed(&s)),
            Stream::Gated(g) => read_closed(g.socket()),
        }
    }

    /// Bytes written to it that still wait for the other side to take them
    /// (a slow reader): in the duplex's buffer, or in the socket's send
    /// queue (`TIOCOUTQ`, one syscall).
    pub fn unsent(&self) -> usize {
        match self {
            Stream::Tcp(s) => {
                use std::os::fd::AsRawFd;
                let mut queued: libc::c_int = 0;
                // SAFETY: TIOCOUTQ writes one int, to the one we own; the fd
                // is open for as long as `s` is borrowed.
                let ok = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } == 0;
                if ok { queued.max(0) as usize } else { 0 }
            }
            Stream::Duplex(d) => d.unread_by_peer(),
            Stream::Lazy(l) => l.get().map_or(0, |s| Stream::Tcp(s).unsent()),
            Stream::Gated(g) => Stream::Tcp(g.socket().clone()).unsent(),
        }
    }

    /// `sock_shutdown`: `read`/`write` as preview1's `sdflags` say.
    pub fn shutdown(&self, read: bool, write: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                let how = match (read, write) {
                    (true, true) => std::net::Shutdown::Both,
                    (true, false) => std::net::Shutdown::Read,
                    (false, true) => std::net::Shutdown::Write,
                    (false, false) => return Ok(()),
                };
                socket2::SockRef::from(s.as_ref()).shutdown(how)
            }
            Stream::Duplex(d) => {
                if write {
                    d.shutdown_write();
                }
                if read {
                    d.shutdown_read();
                }
                Ok(())
            }
            Stream::Gated(g) => Stream::Tcp(g.socket().clone()).shutdown(read, write),
            Stream::Lazy(l) => match l.shutdown(read, write)? {
                Some(s) => Stream::Tcp(s).shutdown(read, write),
                None => Ok(()),
            },
        }
    }
}

/// Bytes queued for reading on `s`, without reading them or taking a
/// pending socket error (0 when the kernel will not say).
fn unread_bytes(s: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid
    // and exclusive for the call; the fd is open while `s` lives.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 { 0 } else { n.max(0) as usize }
}

/// Whether tokio's readiness for `s` says the peer hung up (EPOLLRDHUP);
/// reads its cached state, no syscall.
fn read_closed(s: &TcpStream) -> bool {
    let ready = std::pin::pin!(s.ready(tokio::io::Interest::READABLE));
    match ready.poll(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(r)) => r.is_read_closed(),
        _ => false,
    }
}

/// Which output stream a stdio fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A file of an in-memory directory: its name and bytes.
pub type MemFile = (Arc<str>, Arc<[u8]>);

/// What an fd refers to. Its `Debug` shows a config's length, never its
/// bytes (a transport's config holds its keys).
pub enum Desc {
    /// fd 0: always at EOF.
    Stdin,
    /// fds 1 and 2: lines go to `tracing`, capped per instance.
    Output(Output),
    Stream {
        stream: Stream,
        nonblocking: bool,
    },
    /// Becomes readable (at EOF) when the host cancels the worker.
    Cancel {
        token: CancellationToken,
        nonblocking: bool,
    },
    /// The transport's configuration: a read-only in-memory file.
    Config {
        data: Arc<[u8]>,
        pos: u64,
    },
    /// A preopened read-only in-memory directory (`path`, e.g. `/conf`)
    /// of files, opened with `path_open` as [`Desc::Config`]s.
    Dir {
        path: Arc<str>,
        files: Arc<[MemFile]>,
    },
}

impl std::fmt::Debug for Desc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Desc::Stdin => f.write_str("Stdin"),
            Desc::Output(o) => f.debug_tuple("Output").field(o).finish(),
            Desc::Stream { stream, nonblocking } => {
                f.debug_struct("Stream").field("stream", stream).field("nonblocking", nonblocking).finish()
            }
            Desc::Cancel { token, nonblocking } => {
                f.debug_struct("Cancel").field("token", token).field("nonblocking", nonblocking).finish()
            }
            Desc::Config { data, pos } => {
                f.debug_struct("Config").field("len", &data.len()).field("pos", pos).finish_non_exhaustive()
            }
            Desc::Dir { path, files } => {
                f.debug_struct("Dir").field("path", path).field("files", &files.len()).finish_non_exhaustive()
            }
        }
    }
}

/// fd number → descriptor; numbers are reused lowest-first, as POSIX does.
#[derive(Debug)]
pub struct FdTable {
    slots: Vec<Option<Desc>>,
    /// Per fd: when `poll_oneoff` last reported it writable, if the guest
    /// has not written to it since (see `wasi::poll`, "write readiness").
    write_reported: Vec<Option<Instant>>,
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable {
            slots: vec![
                Some(Desc::Stdin),
                Some(Desc::Output(Output::Stdout)),
                Some(Desc::Output(Output::Stderr)),
            ],
            write_reported: Vec::new(),
        }
    }
}

impl FdTable {
    /// Inserts `desc` under the lowest free number; `mfile` when full.
    pub fn insert(&mut self, desc: Desc) -> Result<u32, Errno> {
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(desc);
            self.wrote(i as u32);
            return Ok(i as u32);
        }
        if self.slots.len() >= MAX_FDS {
            return Err(Errno::MFILE);
        }
        self.slots.push(Some(desc));
        Ok(self.slots.len() as u32 - 1)
    }

    pub fn get(&self, fd: u32) -> Result<&Desc, Errno> {
        self.slots.get(fd as usize).and_then(Option::as_ref).ok_or(Errno::BADF)
    }

    pub fn get_mut(&mut self, fd: u32) -> Result<&mut Desc, Errno> {
        self.slots.get_mut(fd as usize).and_then(Option::as_mut).ok_or(Errno::BADF)
    }

    /// Removes (and so closes) an fd.
    pub fn remove(&mut self, fd: u32) -> Result<Desc, Errno> {
        self.wrote(fd);
        self.slots.get_mut(fd as usize).and_then(Option::take).ok_or(Errno::BADF)
    }

    /// `poll_oneoff` told the guest at `at` that `fd` is writable.
    pub fn write_reported(&mut self, fd: u32, at: Instant) {
        let i = fd as usize;
        if i < MAX_FDS {
            if self.write_reported.len() <= i {
                self.write_reported.resize(i + 1, None);
            }
            self.write_reported[i] = Some(at);
        }
    }

    /// The guest wrote to `fd` (or it changed hands): its write readiness is
    /// news again.
    pub fn wrote(&mut self, fd: u32) {
        if let Some(slot) = self.write_reported.get_mut(fd as usize) {
            *slot = None;
        }
    }

    /// When `fd` was last reported writable with no write since.
    pub fn last_write_report(&self, fd: u32) -> Option<Instant> {
        self.write_reported.get(fd as usize).copied().flatten()
    }

    /// The stream behind `fd`, or `notsock` when `fd` is something else.
    pub fn stream(&self, fd: u32) -> Result<&Stream, Errno> {
        match self.get(fd)? {
            Desc::Stream { stream, .. } => Ok(stream),
            _ => Err(Errno::NOTSOCK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_fd_never_shows_its_bytes() {
        let mut t = FdTable::default();
        t.insert(Desc::Config { data: Arc::from(&b"password=hunter2"[..]), pos: 0 }).unwrap();
        let text = format!("{t:?}");
        assert!(text.contains("len: 16") && !text.contains("104, 117, 110"), "{text}");
    }

    #[test]
    fn numbers_are_reused_lowest_first_and_bounded() {
        let mut t = FdTable::default();
        let a = t.insert(Desc::Stdin).unwrap();
        let b = t.insert(Desc::Stdin).unwrap();
        assert_eq!((a, b), (3, 4));
        t.remove(3).unwrap();
        assert_eq!(t.remove(3).unwrap_err(), Errno::BADF);
        assert_eq!(t.insert(Desc::Stdin).unwrap(), 3);
        while t.insert(Desc::Stdin).is_ok() {}
        assert_eq!(t.insert(Desc::Stdin), Err(Errno::MFILE));
        assert_eq!(t.get(9999).unwrap_err(), Errno::BADF);
        assert_eq!(t.stream(0).unwrap_err(), Errno::NOTSOCK);
    }
}
