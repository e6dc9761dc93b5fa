//! The one TCP accept loop: the library's [`crate::Listener`], its serving
//! roles ([`crate::Relay::serve`], [`crate::Forwarder::serve`]) and the
//! `water` command's `client`, SOCKS and `pt` all accept through it, so
//! that a shortage of fds, a connection reset before it was taken, or the
//! listening socket's own failure is handled one way everywhere.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long the loop pauses after a transient accept error: long enough
/// that a process out of fds does not spin on `EMFILE`, short enough that
/// serving resumes as soon as connections close.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `stop` completes, handing each connection
/// (with `TCP_NODELAY` set: the transports write whole frames) to `each`.
///
/// Before each accept it waits for `room()` (a permit of the caller's
/// setup limit, say), and gives what it yields to `each` with the
/// connection: a caller at its limit leaves connections in the kernel's
/// backlog rather than taking them only to hold them. A transient error
/// ([`is_transient_accept_error`]: one connection's, or a passing shortage
/// of fds or memory) is logged and the loop goes on after a short pause.
///
/// Returns `Ok` once `stop` completes (immediately, even while waiting for
/// room or a connection), or the listening socket's own error.
pub async fn accept_each<P, Room>(
    listener: &TcpListener,
    stop: impl Future<Output = ()>,
    mut room: impl FnMut() -> Room,
    mut each: impl FnMut(TcpStream, SocketAddr, P),
) -> io::Result<()>
where
    Room: Future<Output = P>,
{
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => return Ok(()),
            p = room() => p,
        };
        let accepted = tokio::select! {
            () = &mut stop => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                each(stream, peer, permit);
            }
            Err(e) if is_transient_accept_error(&e) => {
                tracing::warn!(target: "water", error = %e, "accept failed; continuing");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(TRANSIENT_PAUSE) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an error of `accept` concerns one connection or a passing
/// resource shortage (serve on, after a pause), rather than the listening
/// socket itself (stop). Used by [`accept_each`]; public for callers that
/// accept through [`crate::Listener::accept`].
pub fn is_transient_accept_error(e: &io::Error) -> bool {
    // Linux: ENFILE (23), EMFILE (24), ENOMEM (12), ENOBUFS (105). Out of
    // fds is a reason to wait, not to stop serving.
    const SHORTAGE: [i32; 4] = [23, 24, 12, 105];
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|code| SHORTAGE.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_over_each_connection_then_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let clients = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut held = Vec::new();
                for _ in 0..3 {
                    held.push(TcpStream::connect(addr).await.unwrap());
                }
                // Accepted ones are counted before the stop.
                tokio::time::sleep(Duration::from_millis(200)).await;
                stop.cancel();
                held
            }
        });
        let mut seen = Vec::new();
        let mut n = 0u32;
        let room = || {
            n += 1;
            std::future::ready(n)
        };
        accept_each(&listener, stop.cancelled(), room, |s, _, permit| {
            assert!(s.nodelay().unwrap());
            seen.push(permit);
        })
        .await
        .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        drop(clients.await.unwrap());
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_for_room() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        let never = std::future::pending::<()>;
        accept_each(&listener, stop.cancelled(), never, |_, _, ()| unreachable!()).await.unwrap();
    }

    #[test]
    fn fd_shortage_is_transient_and_a_closed_socket_is_not() {
        assert!(is_transient_accept_error(&io::Error::from_raw_os_error(24)));
        assert!(is_transient_accept_error(&io::ErrorKind::ConnectionAborted.into()));
        assert!(!is_transient_accept_error(&io::Error::from_raw_os_error(9)));
        assert!(!is_transient_accept_error(&io::ErrorKind::InvalidInput.into()));
    }
}
