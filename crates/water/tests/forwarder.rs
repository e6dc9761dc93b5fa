//! `Forwarder`: a listener whose plain side is a socket the guest reads and
//! writes itself (what `water server` runs), over real sockets with the
//! reference guests: a WATER dialer through a forwarder to an echo service,
//! byte for byte; an upstream that refuses; the setup bound; the role
//! check; and shutdown.

mod support;

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Error, Forwarder, Watm};

use support::{GUESTS, bounded, data, echo_server, exchange, guest, refusing_addr};

/// A v0 module with the given `_water_accept` body, or none (`None`).
fn module(accept: Option<&str>) -> Vec<u8> {
    let accept = accept
        .map(|body| format!(r#"(func (export "_water_accept") (param i32) (result i32) {body})"#))
        .unwrap_or_default();
    wat::parse_str(format!(
        r#"(module
          (import "env" "host_dial" (func $host_dial (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_water_v0"))
          (func (export "_water_init") (result i32) i32.const 0)
          (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
          (func (export "_water_dial") (param i32) (result i32) call $host_dial)
          {accept}
          (func (export "_water_worker") (result i32) i32.const 0))"#
    ))
    .unwrap()
}

/// Serves `forwarder` on a fresh port until the returned token is cancelled.
async fn serve(
    forwarder: Forwarder,
) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<std::io::Result<water::Drained>>) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let stop = stop.clone();
        async move { forwarder.serve(front, stop.cancelled_owned()).await }
    });
    (addr, stop, serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_through_a_forwarder_reaches_the_upstream_byte_for_byte() {
    bounded(async {
        let echo = echo_server().await;
        for name in GUESTS {
            let watm = guest(name);
            let (addr, stop, serving) = serve(Forwarder::new(&watm, echo.to_string()).unwrap()).await;
            // Two at once: each gets its own upstream connection.
            let (a, b) = (data(4 << 20, 1), data(1 << 20, 2));
            let dialer = Dialer::new(&watm).unwrap();
            let (ca, cb) =
                (dialer.dial(addr.to_string()).await.unwrap(), dialer.dial(addr.to_string()).await.unwrap());
            let (ga, gb) = tokio::join!(exchange(ca, &a), exchange(cb, &b));
            assert!(ga.unwrap() == a, "{name}: first connection");
            assert!(gb.unwrap() == b, "{name}: second connection");
            stop.cancel();
            serving.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_closes_the_connection_and_serving_goes_on() {
    bounded(async {
        // A port nobody listens on.
        let (_dead, dead) = refusing_addr();
        let watm = guest("plain");
        let (addr, stop, serving) = serve(Forwarder::new(&watm, dead.to_string()).unwrap()).await;
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 16];
            // Closed at once (EOF or reset), not held.
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("held open");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        assert!(!serving.is_finished(), "the forwarder stopped on a refused upstream");
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

/// Setups are bounded as a listener's are: with one pending setup allowed
/// and a guest whose `_water_accept` never returns, a second connection is
/// not set up (no second upstream connection is made) until the first
/// setup times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setups_under_way_are_bounded() {
    bounded(async {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        // _water_accept writes a byte to its plain side (which connects the
        // upstream, made on first use), then never returns (until the
        // setup timeout stops it).
        let watm = Watm::new(
            &module(Some(
                "(i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1))
                 (drop (call $fd_write (local.get 0) (i32.const 0) (i32.const 1) (i32.const 8)))
                 (loop (br 0)) i32.const 0",
            )),
            Config::default().max_pending_setups(1).setup_timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let (addr, stop, serving) = serve(Forwarder::new(&watm, up_addr.to_string()).unwrap()).await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let (_u1, _) = upstream.accept().await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        // No second upstream connection while the first setup holds the
        // only permit...
        let early = tokio::time::timeout(Duration::from_millis(800), upstream.accept()).await;
        assert!(early.is_err(), "a second setup started beside the first");
        // ...and one once its setup timed out.
        let late = tokio::time::timeout(Duration::from_secs(10), upstream.accept()).await;
        assert!(late.is_ok(), "the second connection never got its setup");
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

#[test]
fn a_module_without_accept_is_refused() {
    let dial_only = Watm::new(&module(None), Config::default()).unwrap();
    let refused = Forwarder::new(&dial_only, "127.0.0.1:1");
    assert!(matches!(refused, Err(Error::RoleNotSupported { export: "_water_accept", .. })), "{refused:?}");
}
