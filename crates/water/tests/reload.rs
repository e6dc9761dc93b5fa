//! Replacing a role's module while it serves (`Reloader`): connections
//! that started keep their module to the end, byte for byte; connections
//! that start later get the new one; a replacement that cannot serve the
//! role changes nothing.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Error, Forwarder, Watm};

use support::{bounded, data, echo_server};

fn xor(key: &str) -> Watm {
    let g = watm_artifacts::Guest::named("xor").unwrap();
    Watm::new(g.wasm, Config::default().transport_config(format!("key={key}"))).unwrap()
}

/// A service that answers each byte plus one: unlike an echo, it does not
/// undo a transport whose two ends disagree (xor with one key there and
/// another back would cancel out through an echo).
async fn plus_one_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    buf[..n].iter_mut().for_each(|b| *b = b.wrapping_add(1));
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `len` bytes in pieces through `conn` and checks each answer
/// (`plus_one`: each byte plus one; else the bytes themselves).
async fn check_through(conn: &mut water::Connection, len: usize, seed: u64, plus_one: bool) -> bool {
    let sent = data(len, seed);
    let mut back = vec![0u8; 16 << 10];
    for piece in sent.chunks(16 << 10) {
        conn.write_all(piece).await.unwrap();
        conn.read_exact(&mut back[..piece.len()]).await.unwrap();
        let want = piece.iter().map(|b| if plus_one { b.wrapping_add(1) } else { *b });
        if !back[..piece.len()].iter().copied().eq(want) {
            return false;
        }
    }
    true
}

async fn echo_through(conn: &mut water::Connection, len: usize, seed: u64) {
    assert!(check_through(conn, len, seed, false).await, "bytes differ");
}

async fn plus_one_through(conn: &mut water::Connection, len: usize, seed: u64) {
    assert!(check_through(conn, len, seed, true).await, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_and_a_dialer_swap_modules_while_connections_run() {
    let (a, b) = (xor("0a0b0c"), xor("f1f2f3f4"));
    bounded(async {
        let service = plus_one_server().await;
        let forwarder = Forwarder::new(&a, service.to_string()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let (forwarder, stop) = (forwarder.clone(), stop.clone());
            async move { forwarder.serve(listener, stop.cancelled_owned()).await }
        });
        let dialer = Dialer::new(&a).unwrap();
        // A connection on key A, left open across the swap.
        let mut old = dialer.dial(addr.to_string()).await.unwrap();
        plus_one_through(&mut old, 64 << 10, 1).await;

        // Both ends to key B.
        forwarder.reloader().replace(&b).unwrap();
        dialer.reloader().replace(&b).unwrap();
        assert_eq!(forwarder.reloader().reloads(), 1);
        let mut new = dialer.dial(addr.to_string()).await.unwrap();
        plus_one_through(&mut new, 64 << 10, 2).await;
        // The old connection still runs on A, at both ends.
        plus_one_through(&mut old, 256 << 10, 3).await;

        // A dialer still on A against the forwarder now on B: the answers
        // come back garbled, which shows the new connection got B.
        let stale = Dialer::new(&a).unwrap();
        let mut mismatched = stale.dial(addr.to_string()).await.unwrap();
        assert!(
            !check_through(&mut mismatched, 4096, 4, true).await,
            "a new connection was set up with the old module"
        );

        for conn in [old, new, mismatched] {
            conn.close().await.unwrap();
        }
        stop.cancel();
        let drained = serving.await.unwrap().unwrap();
        assert_eq!(drained.cut, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_swaps_modules_for_connections_accepted_later() {
    let (a, b) = (xor("0a0b0c"), xor("f1f2f3f4"));
    bounded(async {
        let listener = water::Listener::bind(&a, "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reloader = listener.reloader();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(conn);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let mut old = Dialer::new(&a).unwrap().dial(addr.to_string()).await.unwrap();
        echo_through(&mut old, 64 << 10, 5).await;
        reloader.replace(&b).unwrap();
        let mut new = Dialer::new(&b).unwrap().dial(addr.to_string()).await.unwrap();
        echo_through(&mut new, 64 << 10, 6).await;
        echo_through(&mut old, 64 << 10, 7).await;
        old.close().await.unwrap();
        new.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_without_the_role_is_refused_and_changes_nothing() {
    let a = xor("0a0b0c");
    // A module that can only dial.
    let dial_only = wat::parse_str(
        r#"(module (memory (export "memory") 1)
           (func (export "_water_v0"))
           (func (export "_water_init") (result i32) i32.const 0)
           (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
           (func (export "_water_dial") (param i32) (result i32) i32.const -52)
           (func (export "_water_worker") (result i32) i32.const 0))"#,
    )
    .unwrap();
    let dial_only = Watm::new(&dial_only, Config::default()).unwrap();
    bounded(async {
        let echo = echo_server().await;
        let forwarder = Forwarder::new(&a, echo.to_string()).unwrap();
        let r = forwarder.reloader().replace(&dial_only);
        assert!(matches!(r, Err(Error::RoleNotSupported { .. })), "{r:?}");
        assert_eq!(forwarder.reloader().reloads(), 0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let (forwarder, stop) = (forwarder.clone(), stop.clone());
            async move { forwarder.serve(listener, stop.cancelled_owned()).await }
        });
        let mut conn = Dialer::new(&a).unwrap().dial(addr.to_string()).await.unwrap();
        echo_through(&mut conn, 64 << 10, 8).await;
        conn.close().await.unwrap();
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}
