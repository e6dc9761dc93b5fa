//! A TCP connection made on first use: the guest holds an fd for it from
//! the start, and the connect begins when the guest first reads, writes or
//! waits on that fd. A forwarder's upstream is one: a server's guest does
//! not touch its plain side before its handshake has taken the client in,
//! so a prober's connection never causes an upstream connection, and an
//! upstream that is down changes nothing a prober can see.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

type Connect = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// The connection's state.
enum Phase {
    /// Not touched yet: the connect, not started.
    Idle(Connect),
    /// Connecting in a task of its own (aborted if the stream is dropped).
    Connecting(tokio::task::AbortHandle),
    Ready(Arc<TcpStream>),
    /// The connect failed: every use answers this.
    Failed(io::ErrorKind, String),
}

struct State {
    phase: Phase,
    /// Tasks waiting for the connect's end.
    wakers: Vec<Waker>,
    /// Shutdowns asked for before the connection existed, done once it
    /// does.
    shut_read: bool,
    shut_write: bool,
}

/// See the module's docs.
pub struct LazyTcp {
    state: Mutex<State>,
    /// The connection once made: every read and write of the upstream goes
    /// through here, so the data path takes no lock.
    ready: OnceLock<Arc<TcpStream>>,
}

impl std::fmt::Debug for LazyTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.lock().phase {
            Phase::Idle(_) => "idle",
            Phase::Connecting(_) => "connecting",
            Phase::Ready(_) => "ready",
            Phase::Failed(..) => "failed",
        };
        f.debug_struct("LazyTcp").field("phase", &phase).finish()
    }
}

impl LazyTcp {
    /// A connection that `connect` makes when first used.
    pub fn new(connect: impl Future<Output = io::Result<TcpStream>> + Send + 'static) -> Arc<LazyTcp> {
        Arc::new(LazyTcp {
            state: Mutex::new(State {
                phase: Phase::Idle(Box::pin(connect)),
                wakers: Vec::new(),
                shut_read: false,
                shut_write: false,
            }),
            ready: OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, starting the connect on first use: `Ready(Ok)` once
    /// connected, `Ready(Err)` if the connect failed, else `Pending` (with
    /// `cx`'s waker kept, when given, for the connect's end).
    pub fn poll_connected(
        self: &Arc<Self>,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<io::Result<Arc<TcpStream>>> {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Idle(_)) {
            let Phase::Idle(connect) =
                std::mem::replace(&mut state.phase, Phase::Failed(io::ErrorKind::Other, String::new()))
            else {
                unreachable!()
            };
            let weak = Arc::downgrade(self);
            let task = tokio::spawn(async move {
                let result = connect.await;
                if let Some(this) = Weak::upgrade(&weak) {
                    this.finish(result);
                }
            });
            state.phase = Phase::Connecting(task.abort_handle());
        }
        match &state.phase {
            Phase::Ready(s) => Poll::Ready(Ok(s.clone())),
            Phase::Failed(kind, msg) => Poll::Ready(Err(io::Error::new(*kind, msg.clone()))),
            Phase::Idle(_) | Phase::Connecting(_) => {
                if let Some(cx) = cx
                    && !state.wakers.iter().any(|w| w.will_wake(cx.waker()))
                {
                    // One worker task polls it; a handful at most.
                    if state.wakers.len() >= 8 {
                        state.wakers.remove(0);
                    }
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The connection if it exists, without starting anything.
    pub fn get(&self) -> Option<Arc<TcpStream>> {
        self.ready.get().cloned()
    }

    /// The connect's error, if it failed.
    pub fn failure(&self) -> Option<io::Error> {
        match &self.lock().phase {
            Phase::Failed(kind, msg) => Some(io::Error::new(*kind, msg.clone())),
            _ => None,
        }
    }

    /// A shutdown before the connection exists is done once it does (none
    /// at all if it never does).
    pub fn shutdown(self: &Arc<Self>, read: bool, write: bool) -> io::Result<Option<Arc<TcpStream>>> {
        let mut state = self.lock();
        match &state.phase {
            Phase::Ready(s) => Ok(Some(s.clone())),
            Phase::Failed(..) => Ok(None),
            Phase::Idle(_) | Phase::Connecting(_) => {
                state.shut_read |= read;
                state.shut_write |= write;
                Ok(None)
            }
        }
    }

    fn finish(&self, result: io::Result<TcpStream>) {
        let mut state = self.lock();
        state.phase = match result {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let how = match (state.shut_read, state.shut_write) {
                    (true, true) => Some(std::net::Shutdown::Both),
                    (true, false) => Some(std::net::Shutdown::Read),
                    (false, true) => Some(std::net::Shutdown::Write),
                    (false, false) => None,
                };
                if let Some(how) = how {
                    let _ = socket2::SockRef::from(&s).shutdown(how);
                }
                let s = Arc::new(s);
                let _ = self.ready.set(s.clone());
                Phase::Ready(s)
            }
            Err(e) => Phase::Failed(e.kind(), e.to_string()),
        };
        for w in state.wakers.drain(..) {
            w.wake();
        }
    }
}

impl Drop for LazyTcp {
    fn drop(&mut self) {
        if let Phase::Connecting(task) = &self.lock().phase {
            task.abort();
        }
    }
}
