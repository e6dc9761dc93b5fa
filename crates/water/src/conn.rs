//! [`Connection`]: the application's side of one transport connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::duplex::DuplexEnd;
use crate::error::Error;
use crate::session::{Done, finished};

/// One connection through a WATM: plain bytes in and out, transformed on
/// the wire by the guest.
///
/// `AsyncRead + AsyncWrite`; `shutdown()` half-closes (the peer reads EOF
/// once every byte is through, and this side can go on reading; a guest
/// that ignores that EOF is cancelled after `Config::orphan_timeout`
/// without a byte moving). Reading after the guest failed returns its
/// error instead of EOF.
///
/// Closing is graceful, like a socket's: dropping it, or
/// [`Connection::close`], ends the application's side (the guest reads EOF
/// and still delivers every byte written before), and the worker may finish
/// for as long as it makes progress; once it has written nothing to the
/// network for the configured close grace, it is cancelled, and after
/// another grace dropped. [`Connection::abort`] cancels at once.
#[derive(Debug)]
pub struct Connection {
    io: DuplexEnd,
    /// The application left (close or drop).
    closing: CancellationToken,
    /// Cancel the worker now.
    cancel: CancellationToken,
    done: Option<Done>,
}

impl Connection {
    pub(crate) fn new(io: DuplexEnd, links: crate::session::Links, done: Done) -> Self {
        Connection { io, closing: links.closing, cancel: links.cancel, done: Some(done) }
    }

    /// Ends the connection gracefully (see the type's docs), waits for the
    /// worker — as long as it makes progress, then at most twice the close
    /// grace — and reports how it ended: `Ok` for a clean end (or a
    /// cancellation after the guest had half-closed the network),
    /// [`Error::Cut`] when the guest stalled before delivering everything,
    /// [`Error::WorkerLost`] when its task vanished, the guest's error
    /// otherwise. The instance and all its fds are freed when it returns.
    pub async fn close(mut self) -> Result<(), Error> {
        self.leave();
        self.wait().await
    }

    /// Cancels the worker at once (bytes in flight are lost), waits for it,
    /// and reports how it ended, as [`Connection::close`].
    pub async fn abort(mut self) -> Result<(), Error> {
        self.cancel.cancel();
        self.leave();
        self.wait().await
    }

    fn leave(&self) {
        self.io.release();
        self.closing.cancel();
    }

    async fn wait(&mut self) -> Result<(), Error> {
        match self.done.take() {
            Some(done) => finished(done).await,
            None => Ok(()),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.leave();
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
