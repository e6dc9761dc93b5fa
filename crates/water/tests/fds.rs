//! Closing and cancelling free everything a connection held: alone in its
//! own test binary, because it counts the process's open fds.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use water::{Config, Dialer, Watm};

/// A server that never sends: it reads and discards until its peer closes,
/// then closes too (so its own fds do not count as leaks). A worker talking
/// to it blocks waiting for bytes.
async fn silent_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_close_end_a_blocked_worker_and_free_its_fds() {
    bounded(async {
        let silent = silent_server().await;
        let g = watm_artifacts::Guest::named("xor").unwrap();
        let watm = Watm::new(
            &g.bytes(),
            Config::default().transport_config(XOR_KEY).close_grace(Duration::from_millis(200)),
        )
        .unwrap();
        let dialer = Dialer::new(&watm).unwrap();
        // Warm up (lazy runtime threads and the like open fds once).
        dialer.dial(silent.to_string()).await.unwrap().abort().await.unwrap();
        let before = open_fds();

        // abort: the worker is blocked in poll_oneoff; it sees the cancel fd.
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut c = dialer.dial(silent.to_string()).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            conns.push(c);
        }
        assert!(open_fds() >= before + 20, "connections hold sockets");
        for c in conns {
            c.abort().await.unwrap();
        }
        // close: graceful; the worker half-closes the wire, the peer closes.
        let c = dialer.dial(silent.to_string()).await.unwrap();
        c.close().await.unwrap();
        // Dropping without close frees everything too (in the background).
        drop(dialer.dial(silent.to_string()).await.unwrap());
        for _ in 0..100 {
            if open_fds() <= before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(open_fds() <= before, "fds leaked: {} > {before}", open_fds());
    })
    .await;
}
