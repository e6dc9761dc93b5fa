//! The in-process byte channel between the application and a guest.
//!
//! Written by hand because the guest side needs what `tokio::io::duplex` does
//! not offer: readiness without consuming (for `poll_oneoff`, with the exact
//! byte count and an end-of-stream flag), non-blocking `try_read`/`try_write`
//! through a shared reference, independent half-close of each direction, and
//! a way to end the stream with an error instead of a clean EOF. It keeps the
//! application's path free of kernel round trips (a socket pair would cost
//! two syscalls per chunk).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered in each direction before writers must wait. Measured
/// (`cargo bench -p water-benches --bench app_path`): at 64 KiB the
/// cross-thread wakeups dominate and the duplex ran at 0.4x a Unix socket
/// pair; at 256 KiB it runs at about 1.9x. A ring's storage starts at
/// 16 KiB and grows to this only under a burst.
pub const CAPACITY: usize = 256 * 1024;

/// Writes up to this size are taken whole or not at all, and the end is
/// writable only with this much room (a quarter of the capacity).
pub const ATOMIC_WRITE: usize = CAPACITY / 4;

/// A byte ring holding at most `max` bytes ([`CAPACITY`] unless the pair
/// was made larger). Its storage starts small and doubles as a burst needs
/// it, and goes back to [`storage`]'s shelves whenever the ring is drained,
/// so an idle connection holds none and the next burst, on this connection
/// or another, takes warm storage instead of fresh pages.
///
/// Invariant: the `len` bytes from `head` on (modulo the storage's length)
/// are initialized; the rest of the storage may not be.
#[derive(Debug)]
struct Ring {
    data: Box<[MaybeUninit<u8>]>,
    head: usize,
    len: usize,
    max: usize,
}

impl Default for Ring {
    fn default() -> Ring {
        Ring { data: Box::default(), head: 0, len: 0, max: CAPACITY }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        storage::put(std::mem::take(&mut self.data));
    }
}

/// First allocation of a ring.
const FIRST_ALLOCATION: usize = 16 * 1024;

impl Ring {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the bytes and gives the storage back.
    fn clear(&mut self) {
        storage::put(std::mem::take(&mut self.data));
        self.head = 0;
        self.len = 0;
    }

    /// Grows the storage (keeping the bytes, unwrapped) to hold `want`.
    fn reserve(&mut self, want: usize) {
        let cap = self.data.len();
        if want <= cap || cap == self.max {
            return;
        }
        let mut data = storage::take(want.next_power_of_two().clamp(FIRST_ALLOCATION, self.max));
        let n = self.len;
        let (a, b) = self.filled(n);
        copy_in(&mut data[..a.len()], a);
        copy_in(&mut data[a.len()..n], b);
        storage::put(std::mem::replace(&mut self.data, data));
        self.head = 0;
    }

    /// The oldest `n` (at most `len`) bytes, in the one or two pieces the
    /// wrap leaves them in.
    fn filled(&self, n: usize) -> (&[u8], &[u8]) {
        let n = n.min(self.len);
        if n == 0 {
            return (&[], &[]);
        }
        let cap = self.data.len();
        let first = n.min(cap - self.head);
        // SAFETY: by the invariant, the `len` bytes from `head` (wrapping)
        // are initialized, and `n <= len`; both ranges are within `data`.
        unsafe {
            (
                std::slice::from_raw_parts(self.data[self.head..].as_ptr().cast::<u8>(), first),
                std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), n - first),
            )
        }
    }

    /// Appends as much of `src` as fits in `max`; returns how much.
    fn push(&mut self, src: &[u8]) -> usize {
        // Nothing to store; a ring that never held data has no storage yet,
        // and the arithmetic below is modulo its size.
        if src.is_empty() {
            return 0;
        }
        self.reserve(self.len + src.len());
        let cap = self.data.len();
        let n = src.len().min(cap - self.len);
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        copy_in(&mut self.data[tail..tail + first], &src[..first]);
        copy_in(&mut self.data[..n - first], &src[first..n]);
        self.len += n;
        n
    }

    /// Copies the oldest bytes into `dst` without taking them; returns how
    /// many.
    fn peek(&self, dst: &mut [u8]) -> usize {
        let (a, b) = self.filled(dst.len());
        dst[..a.len()].copy_from_slice(a);
        dst[a.len()..a.len() + b.len()].copy_from_slice(b);
        a.len() + b.len()
    }

    /// Moves up to `dst.len()` bytes out; returns how many.
    fn pop(&mut self, dst: &mut [u8]) -> usize {
        let n = self.peek(dst);
        if n == 0 {
            return 0;
        }
        self.head = (self.head + n) % self.data.len();
        self.len -= n;
        if self.len == 0 {
            // Drained: the storage goes back to the shelf.
            self.clear();
        }
        n
    }
}

/// Copies `src` into the front of `dst` (of the same length), which makes
/// those bytes initialized.
fn copy_in(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, the lengths
    // are equal, and a `&mut` and a `&` never overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len()) }
}

/// Ring storage, recycled process-wide.
///
/// A connection's rings are drained and refilled all the time, and every
/// connection starts with none: allocating each anew cost a fresh mapping
/// (past glibc's mmap threshold, or after it trimmed its heap) whose pages
/// fault in on first touch, plus zeroing. Measured (issue 21, `perf` over
/// `examples/tunnel_loop` with `CONC=100`): growing and freeing rings was
/// about a sixth of the process's CPU time, half of it page faults. So
/// storage is never zeroed (the ring's invariant says what is initialized),
/// and drained storage waits on a shelf per size class, up to
/// [`storage::SHELF_BYTES`] a class, for the next burst of any connection.
/// Written here because it is a few lines over a `Mutex<Vec<_>>` per size
/// class; a general pool crate would add a dependency for no more.
mod storage {
    use std::mem::MaybeUninit;
    use std::sync::Mutex;

    /// Size classes: powers of two from 16 KiB to [`super::CAPACITY`].
    const SMALLEST: usize = super::FIRST_ALLOCATION;
    const CLASSES: usize = (super::CAPACITY / SMALLEST).trailing_zeros() as usize + 1;

    /// Bytes kept on the shelf of each class (so at most five times this
    /// in all, held by the process while no connection needs them).
    pub(super) const SHELF_BYTES: usize = 2 << 20;

    type Storage = Box<[MaybeUninit<u8>]>;

    static SHELVES: [Mutex<Vec<Storage>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];

    fn class(len: usize) -> Option<usize> {
        (len.is_power_of_two() && (SMALLEST..=super::CAPACITY).contains(&len))
            .then(|| (len / SMALLEST).trailing_zeros() as usize)
    }

    /// Storage of `len` bytes (a power of two), uninitialized.
    pub(super) fn take(len: usize) -> Storage {
        if let Some(c) = class(len)
            && let Some(storage) = SHELVES[c].lock().unwrap_or_else(|e| e.into_inner()).pop()
        {
            return storage;
        }
        Box::new_uninit_slice(len)
    }

    /// Gives storage back (none: nothing happens); freed if its shelf is
    /// full or it has no class.
    pub(super) fn put(storage: Storage) {
        let Some(c) = class(storage.len()) else { return };
        let mut shelf = SHELVES[c].lock().unwrap_or_else(|e| e.into_inner());
        if (shelf.len() + 1) * storage.len() <= SHELF_BYTES {
            shelf.push(storage);
        }
    }

    #[cfg(test)]
    pub(super) fn shelved(len: usize) -> usize {
        class(len).map_or(0, |c| SHELVES[c].lock().unwrap_or_else(|e| e.into_inner()).len())
    }
}

/// One direction: written by one end, read by the other.
#[derive(Debug, Default)]
struct Half {
    buf: Ring,
    /// The writer will write no more (shutdown or dropped).
    write_closed: bool,
    /// The reader will read no more (dropped): writes fail.
    read_closed: bool,
    /// The reader left but asked for writes to succeed (and be dropped), so
    /// that the writer can finish cleanly.
    discard: bool,
    /// Reported to the reader after the buffered bytes, instead of EOF.
    error: Option<(io::ErrorKind, String)>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

/// Wakes a waker taken out of a [`Half`] once its lock is released: a
/// task woken under the lock (on another thread, at once) would find the
/// lock still held and sleep on it, an extra pair of thread switches per
/// wake-up (seen with `strace` from an application in `block_on`).
fn wake(guard: MutexGuard<'_, Half>, waker: Option<Waker>) {
    drop(guard);
    if let Some(w) = waker {
        w.wake();
    }
}

#[derive(Debug, Default)]
struct Shared {
    halves: [Mutex<Half>; 2],
}

/// One end of a duplex: reads what the other end writes, and the reverse.
#[derive(Debug)]
pub struct DuplexEnd {
    shared: Arc<Shared>,
    /// Index of the half this end reads.
    side: usize,
}

/// A connected pair of ends.
pub fn pair() -> (DuplexEnd, DuplexEnd) {
    pair_holding(CAPACITY)
}

/// A pair whose rings hold up to `max` bytes each (a power of two, at
/// least [`CAPACITY`]): for guests that rely on a socket's large buffer.
pub fn pair_holding(max: usize) -> (DuplexEnd, DuplexEnd) {
    let max = max.max(CAPACITY).next_power_of_two();
    let shared = Arc::new(Shared::default());
    for half in &shared.halves {
        lock(half).buf.max = max;
    }
    (DuplexEnd { shared: shared.clone(), side: 0 }, DuplexEnd { shared, side: 1 })
}

fn lock(half: &Mutex<Half>) -> MutexGuard<'_, Half> {
    // A panic while holding this lock cannot leave a Half inconsistent (every
    // update is a single field write or a buffer operation), so a poisoned
    // lock is still usable.
    half.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a reader would see now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReadiness {
    /// Bytes buffered.
    pub available: usize,
    /// The writer closed: after `available` bytes comes EOF (or an error).
    pub closed: bool,
}

impl DuplexEnd {
    fn rx(&self) -> MutexGuard<'_, Half> {
        lock(&self.shared.halves[self.side])
    }

    fn tx(&self) -> MutexGuard<'_, Half> {
        lock(&self.shared.halves[1 - self.side])
    }

    /// Reads what is buffered, registering `cx` to be woken when there is
    /// more if there is none. `Ok(0)` is EOF (for a non-empty `buf`).
    pub fn poll_read_bytes(&self, cx: Option<&mut Context<'_>>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rx = self.rx();
        if !rx.buf.is_empty() || buf.is_empty() {
            let n = rx.buf.pop(buf);
            let waker = rx.write_waker.take();
            wake(rx, waker);
            return Poll::Ready(Ok(n));
        }
        if rx.write_closed {
            return Poll::Ready(match &rx.error {
                Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
                None => Ok(0),
            });
        }
        if let Some(cx) = cx {
            rx.read_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Non-blocking read: `WouldBlock` when nothing is buffered.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.poll_read_bytes(None, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Non-blocking peek: what [`DuplexEnd::try_read`] would return, but
    /// the bytes stay buffered (`sock_recv` with `RECV_PEEK`).
    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let rx = self.rx();
        if !rx.buf.is_empty() || buf.is_empty() {
            return Ok(rx.buf.peek(buf));
        }
        if rx.write_closed {
            return match &rx.error {
                Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
                None => Ok(0),
            };
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Ready when a read would not block; registers `cx` otherwise.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<ReadReadiness> {
        let mut rx = self.rx();
        let r = ReadReadiness { available: rx.buf.len(), closed: rx.write_closed };
        if r.available > 0 || r.closed {
            Poll::Ready(r)
        } else {
            rx.read_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Writes as much of `data` as fits, registering `cx` when nothing does.
    pub fn poll_write_bytes(&self, cx: Option<&mut Context<'_>>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut tx = self.tx();
        if tx.read_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer closed")));
        }
        if tx.write_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "shut down for writing")));
        }
        if tx.discard {
            return Poll::Ready(Ok(data.len()));
        }
        let room = tx.buf.max - tx.buf.len();
        // A write of up to ATOMIC_WRITE bytes goes in whole or not at all,
        // as a socket with room in its buffer takes it: guests written for
        // sockets (TinyGo's v1 library) treat a short write as an error.
        let fits = if data.len() <= ATOMIC_WRITE { room >= data.len() } else { room > 0 };
        if !fits && !data.is_empty() {
            if let Some(cx) = cx {
                tx.write_waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let n = tx.buf.push(data);
        let waker = tx.read_waker.take();
        wake(tx, waker);
        Poll::Ready(Ok(n))
    }

    /// Non-blocking write: `WouldBlock` when the buffer is full.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self.poll_write_bytes(None, data) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Ready when a write would not block (room, or an error to report).
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<usize> {
        let mut tx = self.tx();
        let room = tx.buf.max - tx.buf.len();
        // Writable once an atomic write fits (a socket is writable once a
        // good part of its buffer is free): a guest that was told "ready"
        // and writes up to ATOMIC_WRITE bytes never gets `again`, so never
        // spins between the two.
        if room >= ATOMIC_WRITE || tx.read_closed || tx.write_closed || tx.discard {
            Poll::Ready(room)
        } else {
            tx.write_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Whether the other end will write no more (it shut down, was
    /// released, or is gone).
    pub fn peer_write_closed(&self) -> bool {
        self.rx().write_closed
    }

    /// Bytes this end wrote that the other end has not read yet.
    pub fn unread_by_peer(&self) -> usize {
        self.tx().buf.len()
    }

    /// Half-close: the other end reads EOF after the buffered bytes.
    pub fn shutdown_write(&self) {
        let mut tx = self.tx();
        tx.write_closed = true;
        let waker = tx.read_waker.take();
        wake(tx, waker);
    }

    /// Stop reading: buffered bytes are discarded, the other end's writes fail
    /// (unless this end was [`DuplexEnd::release`]d).
    pub fn shutdown_read(&self) {
        let mut rx = self.rx();
        if !rx.discard {
            rx.read_closed = true;
        }
        rx.buf.clear();
        let waker = rx.write_waker.take();
        wake(rx, waker);
    }

    /// Leaves gracefully: the other end reads EOF after what was written, and
    /// its writes keep succeeding (the bytes are dropped), so that it can
    /// finish its own work without an error.
    pub fn release(&self) {
        self.shutdown_write();
        let mut rx = self.rx();
        rx.discard = true;
        rx.buf.clear();
        let waker = rx.write_waker.take();
        wake(rx, waker);
    }

    /// Ends this end's writing with an error the other end reads after the
    /// buffered bytes, instead of EOF, even if it had shut down cleanly: a
    /// connection that failed (cut, cancelled, trapped) must not read as a
    /// complete stream.
    pub fn fail(&self, kind: io::ErrorKind, message: String) {
        let mut tx = self.tx();
        tx.error = Some((kind, message));
        tx.write_closed = true;
        let waker = tx.read_waker.take();
        wake(tx, waker);
    }
}

impl Drop for DuplexEnd {
    fn drop(&mut self) {
        self.shutdown_write();
        self.shutdown_read();
    }
}

impl AsyncRead for DuplexEnd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        match self.poll_read_bytes(Some(cx), dst) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for DuplexEnd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_bytes(Some(cx), data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_in_order_with_backpressure_and_half_close() {
        let (mut a, mut b) = pair();
        // Not a multiple of the capacity, so the ring wraps at odd places.
        let data: Vec<u8> = (0..(3 * CAPACITY + 12_345)).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            // The other direction still works after our half-close.
            let mut reply = Vec::new();
            a.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        b.write_all(b"done").await.unwrap();
        drop(b);
        assert_eq!(writer.await.unwrap(), b"done");
    }

    #[test]
    fn the_ring_grows_keeping_order_across_wraps() {
        let (a, b) = pair();
        let mut next = 0u8;
        let mut expect = 0u8;
        let mut buf = vec![0u8; 7000];
        // Uneven writes and reads so that the ring wraps before it grows.
        for round in 0..200 {
            let chunk: Vec<u8> = (0..(round * 397 % 20_000 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let mut off = 0;
            while off < chunk.len() {
                match a.try_write(&chunk[off..]) {
                    Ok(n) => off += n,
                    Err(_) => {
                        let n = b.try_read(&mut buf).unwrap();
                        for &x in &buf[..n] {
                            expect = expect.wrapping_add(1);
                            assert_eq!(x, expect);
                        }
                    }
                }
            }
            if round % 3 == 0 {
                let n = b.try_read(&mut buf).unwrap();
                for &x in &buf[..n] {
                    expect = expect.wrapping_add(1);
                    assert_eq!(x, expect);
                }
            }
        }
        a.shutdown_write();
        loop {
            let n = b.try_read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for &x in &buf[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(x, expect);
            }
        }
        assert_eq!(expect, next);
    }

    #[test]
    fn a_drained_ring_holds_no_storage_and_the_next_burst_reuses_a_shelved_one() {
        let (a, b) = pair();
        let burst = vec![7u8; 100_000];
        assert_eq!(a.try_write(&burst).unwrap(), burst.len());
        assert_eq!(a.tx().buf.data.len(), 128 * 1024);
        // Peeking leaves everything in place.
        let mut buf = vec![0u8; 200_000];
        assert_eq!(b.try_peek(&mut buf).unwrap(), burst.len());
        assert_eq!(a.tx().buf.data.len(), 128 * 1024);
        let shelved = storage::shelved(128 * 1024);
        assert_eq!(b.try_read(&mut buf).unwrap(), burst.len());
        assert!(buf[..burst.len()].iter().all(|&x| x == 7));
        // Drained: an idle ring costs no storage; it is on the shelf.
        assert_eq!(a.tx().buf.data.len(), 0);
        assert!(storage::shelved(128 * 1024) >= shelved.min(1));
        // Bytes written into recycled storage read back as written.
        let next: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(a.try_write(&next).unwrap(), next.len());
        assert_eq!(b.try_read(&mut buf).unwrap(), next.len());
        assert!(buf[..next.len()] == next[..]);
    }

    #[test]
    fn an_empty_write_stores_nothing_and_does_not_panic() {
        let (a, b) = pair();
        // A ring that never held data (no storage yet), then one that did.
        assert_eq!(a.try_write(&[]).unwrap(), 0);
        a.try_write(b"x").unwrap();
        assert_eq!(a.try_write(&[]).unwrap(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(b.try_read(&mut buf).unwrap(), 1);
        assert_eq!(b.try_read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn try_ops_and_errors() {
        let (a, b) = pair();
        let mut buf = [0u8; 8];
        assert_eq!(b.try_read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(a.try_write(b"hi").unwrap(), 2);
        assert_eq!(b.try_read(&mut buf).unwrap(), 2);
        a.fail(io::ErrorKind::ConnectionReset, "guest failed".into());
        assert_eq!(b.try_read(&mut buf).unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        drop(a);
        assert_eq!(b.try_write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_released_end_lets_the_other_finish() {
        let (a, b) = pair();
        b.try_write(b"queued").unwrap();
        a.try_write(b"last words").unwrap();
        a.release();
        drop(a);
        let mut buf = [0u8; 16];
        assert_eq!(b.try_read(&mut buf).unwrap(), 10);
        assert_eq!(b.try_read(&mut buf).unwrap(), 0, "EOF after the last bytes");
        // Writes toward the released end succeed and vanish.
        assert_eq!(b.try_write(&[0; 100_000]).unwrap(), 100_000);
    }
}
