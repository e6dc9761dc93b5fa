//! A guest in the shape other authors' Rust guests have — std, tokio's
//! current-thread runtime, `TcpStream::from_std` over every fd the host
//! hands out, `tokio::select!` over both directions and the cancel fd
//! (`test-guests/tokio`) — runs every role byte for byte, paired with the
//! reference `xor` guest on the other end, and answers cancellation.
//!
//! mio's WASI selector subscribes each of those fds (config and cancel
//! included) for read and write interest; one error event from
//! `poll_oneoff` would make tokio panic and the worker trap.

mod support;

use support::*;
use tokio::net::TcpListener;
use water::{Config, Dialer, Listener, Relay, Watm};

const SIZE: usize = 4 << 20;

fn tokio_guest() -> Watm {
    Watm::new(&watm_artifacts::TOKIO.bytes(), Config::default().transport_config(XOR_KEY))
        .expect("load the tokio guest")
}

/// A reference-xor listener whose application echoes; returns its address.
async fn xor_echo_listener() -> std::net::SocketAddr {
    echoing_listener(&guest("xor")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_guest_dials_a_reference_xor_listener() {
    bounded(async {
        let remote = xor_echo_listener().await;
        let conn = Dialer::new(&tokio_guest()).unwrap().dial(remote.to_string()).await.unwrap();
        let sent = data(SIZE, 1);
        let got = exchange(conn, &sent).await.unwrap();
        assert!(got == sent, "{} bytes back, differ", got.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_guest_accepts_a_reference_xor_dialer() {
    bounded(async {
        let listener = Listener::bind(&tokio_guest(), "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = tokio::io::split(conn);
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut w).await.unwrap();
        });
        let conn = Dialer::new(&guest("xor")).unwrap().dial(addr.to_string()).await.unwrap();
        let sent = data(SIZE, 2);
        let got = exchange(conn, &sent).await.unwrap();
        assert!(got == sent, "{} bytes back, differ", got.len());
        app.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_guest_relays_to_a_reference_xor_listener() {
    bounded(async {
        let remote = xor_echo_listener().await;
        let relay = Relay::new(&tokio_guest(), remote.to_string()).unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            relay
                .serve(front, async {
                    let _ = stop_rx.await;
                })
                .await
        });
        let sent = data(SIZE, 3);
        let got = exchange(connect(addr).await, &sent).await.unwrap();
        assert!(got == sent, "{} bytes back, differ", got.len());
        stop_tx.send(()).unwrap();
        serving.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_guest_returns_when_cancelled() {
    bounded(async {
        // A remote that accepts and then says nothing: the worker idles in
        // its select until the cancel fd fires.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move { silent.accept().await.map(|(s, _)| s) });
        let conn = Dialer::new(&tokio_guest()).unwrap().dial(addr.to_string()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Ok, not `Error::Stuck`: the guest saw the cancel and returned
        // -canceled within the grace period.
        conn.abort().await.expect("the tokio worker answers cancellation");
        // And its socket is closed: the remote reads the end. (A count of
        // the process's fds, as this test once made, also counts the
        // sockets of the tests running beside it.) A socket left open
        // would keep this read waiting until the test's bound.
        let mut remote = held.await.unwrap().unwrap();
        let mut rest = Vec::new();
        match tokio::io::AsyncReadExt::read_to_end(&mut remote, &mut rest).await {
            Ok(_) => assert!(rest.is_empty(), "the silent remote was sent {} bytes", rest.len()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    })
    .await;
}
