//! A server against probers and crowds, through the `Forwarder` (what
//! `water server` runs) with the `hello` guest, whose handshake (a nonce
//! exchange) must end before it touches its plain side:
//! - the upstream is dialed only once the guest has taken the client in,
//!   so a probe makes no upstream connection, and an upstream that is down
//!   changes nothing a probe sees; a protocol whose server speaks first
//!   still works;
//! - a connection not taken in within the handshake deadline is closed;
//! - when `max_connections` is reached, the oldest connection not taken in
//!   makes room, so silent connections cannot lock a real client out;
//! - a connection that repeats another's unique prefix (hello's nonce,
//!   named by its `_water_unique_prefix`) is refused as a failed handshake:
//!   no upstream connection, silence, closed after the prober's EOF.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Forwarder, Watm};

use support::{bounded, data, exchange, refusing_addr};

fn hello(config: Config) -> Watm {
    Watm::new(watm_artifacts::HELLO.wasm, config).unwrap()
}

/// An upstream that counts its connections, sends `banner` on each, then
/// echoes.
async fn upstream(banner: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if s.write_all(banner).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// The first bytes of a hello, not all of them: the guest waits for more.
fn partial_hello() -> Vec<u8> {
    let mut b = vec![watm_hello::MAGIC];
    b.extend_from_slice(&data(watm_hello::NONCE - 1, 5));
    b
}

/// Serves `forwarder` on a fresh port until the token is cancelled.
async fn serve(forwarder: Forwarder) -> (SocketAddr, CancellationToken) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { forwarder.serve(front, stop.cancelled_owned()).await }
    });
    (addr, stop)
}

/// Whether the server has closed `s` (EOF or reset) by now, without
/// waiting.
fn closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Waits until the server closes `s` (EOF or reset); panics if it sends
/// anything.
async fn wait_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server sent {n} bytes to a probe"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_make_no_upstream_connection() {
    bounded(async {
        let (up, count) = upstream(b"").await;
        let watm = hello(Config::default());
        let (addr, stop) = serve(Forwarder::new(&watm, up.to_string()).unwrap()).await;
        // A silent probe and one that sends the start of a hello (hello
        // closes on a wrong first byte), both held open.
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(&partial_hello()).await.unwrap();
        // A real client after them: one upstream connection, its own.
        let sent = data(64 << 10, 6);
        let conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        assert!(exchange(conn, &sent).await.unwrap() == sent);
        assert_eq!(count.load(Ordering::SeqCst), 1, "the probes made upstream connections");
        assert!(!closed(&silent) && !closed(&garbage), "a probe was closed");
        stop.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_down_a_probe_sees_what_it_sees_with_it_up() {
    bounded(async {
        // A port nobody listens on.
        let (_dead, dead) = refusing_addr();
        let watm = hello(Config::default());
        let (addr, stop) = serve(Forwarder::new(&watm, dead.to_string()).unwrap()).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(&partial_hello()).await.unwrap();
        // A real client that completes the handshake is closed: its
        // upstream cannot be had.
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        conn.write_all(b"request").await.unwrap();
        let mut rest = Vec::new();
        let r = conn.read_to_end(&mut rest).await;
        assert!(r.is_err() || rest.is_empty(), "{r:?}");
        // The probes, accepted before it, are still held.
        assert!(!closed(&silent) && !closed(&garbage), "a probe was closed by the upstream's absence");
        stop.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_whose_server_speaks_first_works_through_the_tunnel() {
    bounded(async {
        const BANNER: &[u8] = b"220 mail.example ESMTP ready\r\n";
        let (up, count) = upstream(BANNER).await;
        let watm = hello(Config::default());
        let (addr, stop) = serve(Forwarder::new(&watm, up.to_string()).unwrap()).await;
        // The client sends nothing before it has read the banner.
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut banner = vec![0u8; BANNER.len()];
        conn.read_exact(&mut banner).await.unwrap();
        assert_eq!(banner, BANNER);
        conn.write_all(b"EHLO client\r\n").await.unwrap();
        let mut echo = [0u8; 13];
        conn.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"EHLO client\r\n");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        conn.close().await.unwrap();
        stop.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_not_taken_in_by_the_deadline_is_closed_and_one_taken_in_is_not() {
    bounded(async {
        let (up, _) = upstream(b"").await;
        let limit = Duration::from_millis(500);
        let watm = hello(Config::default().handshake_timeout(Some(limit), Duration::from_millis(200)));
        let (addr, stop) = serve(Forwarder::new(&watm, up.to_string()).unwrap()).await;
        let start = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        conn.write_all(b"early").await.unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.unwrap();
        wait_closed(&mut silent).await;
        // Not before the deadline (a lower bound only).
        assert!(start.elapsed() >= limit, "closed after {:?}", start.elapsed());
        // The client taken in goes on past the deadline.
        let sent = data(32 << 10, 8);
        assert!(exchange(conn, &sent).await.unwrap() == sent);
        stop.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_filling_every_slot_cannot_lock_a_client_out() {
    bounded(async {
        let (up, _) = upstream(b"").await;
        let watm = hello(Config::default().max_connections(4));
        let (addr, stop) = serve(Forwarder::new(&watm, up.to_string()).unwrap()).await;
        let dialer = Dialer::new(&Watm::new(watm_artifacts::HELLO.wasm, Config::default()).unwrap()).unwrap();
        // One real client taken in, then silent connections filling the
        // other slots and more.
        let mut kept = dialer.dial(addr.to_string()).await.unwrap();
        kept.write_all(b"hi").await.unwrap();
        kept.read_exact(&mut [0u8; 2]).await.unwrap();
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Real clients still get through, each shedding the oldest silent
        // connection...
        for i in 0..3 {
            let sent = data(16 << 10, 9 + i);
            let conn = dialer.dial(addr.to_string()).await.unwrap();
            assert!(exchange(conn, &sent).await.unwrap() == sent, "client {i}");
        }
        // ...and the first silent ones were closed to make room.
        wait_closed(&mut silent[0]).await;
        // The connection taken in was never shed.
        kept.write_all(b"still").await.unwrap();
        let mut got = [0u8; 5];
        kept.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still");
        stop.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_connection_gets_silence_and_no_upstream() {
    use water_guest::testing::{Segmentation, pump};
    use water_guest::{Role, Transport};
    bounded(async {
        let (up, count) = upstream(b"").await;
        let watm = hello(Config::default());
        let (addr, stop) = serve(Forwarder::new(&watm, up.to_string()).unwrap()).await;
        // A client's whole first flight, as a censor records it: the hello
        // and a request, encoded with the keys the nonces give.
        let ours = [0x6bu8; watm_hello::NONCE];
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut flight = vec![watm_hello::MAGIC];
        flight.extend_from_slice(&ours);
        first.write_all(&flight).await.unwrap();
        let mut theirs = [0u8; watm_hello::NONCE];
        first.read_exact(&mut theirs).await.unwrap();
        let keys = watm_hello::derive(&ours, &theirs);
        let native = watm_hello::Hello { fixed_nonce: Some(ours) };
        let request =
            pump(native.encoder(Role::Dialer, &keys), b"request", &Segmentation::default()).unwrap();
        first.write_all(&request).await.unwrap();
        flight.extend_from_slice(&request);
        let mut reply = vec![0u8; request.len()];
        first.read_exact(&mut reply).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // The same bytes again, on a new connection: nothing comes back,
        // nothing reaches the upstream...
        let mut replay = TcpStream::connect(addr).await.unwrap();
        replay.write_all(&flight).await.unwrap();
        // ...while a fresh client still gets through (and by then the
        // replay has long been read: it is on an earlier connection).
        let sent = data(8 << 10, 12);
        let conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        assert!(exchange(conn, &sent).await.unwrap() == sent);
        assert_eq!(count.load(Ordering::SeqCst), 2, "the replay reached the upstream");
        assert!(!closed(&replay), "the replay was answered or closed at once");
        // The prober's EOF ends it, with no byte sent.
        replay.shutdown().await.unwrap();
        wait_closed(&mut replay).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "the replay reached the upstream");
        stop.cancel();
    })
    .await;
}
