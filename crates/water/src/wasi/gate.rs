//! A socket whose first bytes a check sees before the guest does: the
//! first `need` bytes are read into the host, and then either handed to
//! the guest followed by the rest of the stream (the check passed), or
//! never (it failed): from then on the socket is drained and discarded,
//! the guest's reads find nothing until the peer's EOF, and its
//! connection ends as a handshake that never completed would. The server
//! says nothing: what a prober sees is what a failed handshake shows it.
//!
//! Writes, shutdowns and everything else go to the socket as they are.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use crate::duplex::ReadReadiness;

use super::table::Stream;

/// The most leading bytes a gate checks.
pub const MAX_NEED: usize = 64;

/// The check: `true` lets the stream through.
pub type Check = Box<dyn FnOnce(&[u8]) -> bool + Send>;

enum Phase {
    /// Reading the first bytes.
    Collecting { got: Vec<u8>, check: Option<Check> },
    /// Passed: these bytes go to the guest first.
    Passing { bytes: Vec<u8>, pos: usize },
    /// Passed, and the first bytes delivered.
    Open,
    /// Refused: drained and discarded; `eof` once the peer ended.
    Silenced { eof: bool },
}

/// See the module's docs.
pub struct Gated {
    socket: Arc<TcpStream>,
    need: usize,
    phase: Mutex<Phase>,
    /// `Phase::Open` reached: from then on reads go straight to the socket,
    /// without the lock (the data path of every server connection).
    open: AtomicBool,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &*self.lock() {
            Phase::Collecting { .. } => "collecting",
            Phase::Passing { .. } => "passing",
            Phase::Open => "open",
            Phase::Silenced { .. } => "silenced",
        };
        f.debug_struct("Gated").field("need", &self.need).field("phase", &phase).finish()
    }
}

impl Gated {
    /// A gate on the first `need` bytes (at most [`MAX_NEED`], at least 1).
    pub fn new(socket: Arc<TcpStream>, need: usize, check: Check) -> Arc<Gated> {
        let need = need.clamp(1, MAX_NEED);
        Arc::new(Gated {
            socket,
            need,
            phase: Mutex::new(Phase::Collecting { got: Vec::with_capacity(need), check: Some(check) }),
            open: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn socket(&self) -> &Arc<TcpStream> {
        &self.socket
    }

    fn tcp(&self) -> Stream {
        Stream::Tcp(self.socket.clone())
    }

    /// Moves the gate as far as the socket's bytes allow, without blocking:
    /// collects, checks, drains. `WouldBlock` when it needs more bytes.
    fn advance(&self, phase: &mut Phase) -> io::Result<()> {
        loop {
            match phase {
                Phase::Collecting { got, check } => {
                    let mut buf = [0u8; MAX_NEED];
                    let want = self.need - got.len();
                    let n = self.tcp().try_read(&mut buf[..want])?;
                    got.extend_from_slice(&buf[..n]);
                    if n > 0 && got.len() < self.need {
                        continue;
                    }
                    // All of it, or the peer ended first (too short to be
                    // checked: passed on as it is, EOF after).
                    let passed = n == 0 || check.take().is_some_and(|check| check(got));
                    *phase = match passed {
                        true => Phase::Passing { bytes: std::mem::take(got), pos: 0 },
                        false => Phase::Silenced { eof: false },
                    };
                }
                Phase::Silenced { eof: false } => {
                    let mut sink = [0u8; 4096];
                    if self.tcp().try_read(&mut sink)? == 0 {
                        *phase = Phase::Silenced { eof: true };
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.open.load(Ordering::Acquire) {
            return self.tcp().try_read(buf);
        }
        let mut phase = self.lock();
        self.advance(&mut phase)?;
        match &mut *phase {
            Phase::Passing { bytes, pos } => {
                let n = buf.len().min(bytes.len() - *pos);
                buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                *pos += n;
                if *pos == bytes.len() {
                    *phase = Phase::Open;
                    self.open.store(true, Ordering::Release);
                }
                Ok(n)
            }
            Phase::Open => {
                drop(phase);
                self.tcp().try_read(buf)
            }
            Phase::Silenced { eof: true } => Ok(0),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.open.load(Ordering::Acquire) {
            return self.tcp().try_peek(buf);
        }
        let mut phase = self.lock();
        self.advance(&mut phase)?;
        match &*phase {
            Phase::Passing { bytes, pos } => {
                let n = buf.len().min(bytes.len() - pos);
                buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                Ok(n)
            }
            Phase::Open => {
                drop(phase);
                self.tcp().try_peek(buf)
            }
            Phase::Silenced { eof: true } => Ok(0),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Ready when a read would not block (`exact`: never early, as
    /// `Stream::poll_read_ready_exact`).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>, exact: bool) -> Poll<io::Result<ReadReadiness>> {
        loop {
            if self.open.load(Ordering::Acquire) {
                let tcp = self.tcp();
                return if exact { tcp.poll_read_ready_exact(cx) } else { tcp.poll_read_ready(cx) };
            }
            {
                let mut phase = self.lock();
                match self.advance(&mut phase) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                match &*phase {
                    Phase::Passing { bytes, pos } => {
                        return Poll::Ready(Ok(ReadReadiness {
                            available: bytes.len() - pos,
                            closed: false,
                        }));
                    }
                    Phase::Open => {}
                    Phase::Silenced { eof: true } => {
                        return Poll::Ready(Ok(ReadReadiness { available: 0, closed: true }));
                    }
                    Phase::Collecting { .. } | Phase::Silenced { eof: false } => {
                        // Wait for the socket's next bytes, then advance.
                        drop(phase);
                        let tcp = self.tcp();
                        std::task::ready!(tcp.poll_read_ready_exact(cx))?;
                        continue;
                    }
                }
            }
            let tcp = self.tcp();
            return if exact { tcp.poll_read_ready_exact(cx) } else { tcp.poll_read_ready(cx) };
        }
    }
}
