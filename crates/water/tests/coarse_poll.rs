//! Our SDK's worker in a host whose `poll_oneoff` reports every watched fd
//! ready when any one is (as wasi-common-based hosts such as water-rs do;
//! here the hidden `Config::coarse_poll` switch): readiness is a hint, so a
//! spurious event on the cancel fd must not end the connection, and a
//! spurious read or write event must lead to waiting again, not an error.

mod support;

use support::*;
use water::{Config, Dialer, Watm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_guests_survive_spurious_readiness() {
    bounded(async {
        let echo = echo_server().await;
        for (i, name) in GUESTS.iter().enumerate() {
            let g = watm_artifacts::Guest::named(name).unwrap();
            let mut config = Config::default().coarse_poll(true);
            if *name == "xor" {
                config = config.transport_config(XOR_KEY);
            }
            let watm = Watm::new(&g.bytes(), config).unwrap();
            let conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
            let sent = data(1 << 20, 40 + i as u64);
            let got = exchange(conn, &sent).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == sent, "{name}: {} of {} bytes back, or different", got.len(), sent.len());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cancel_still_ends_the_worker_under_coarse_poll() {
    bounded(async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move { silent.accept().await.map(|(s, _)| s) });
        let watm = Watm::new(&watm_artifacts::PLAIN.bytes(), Config::default().coarse_poll(true)).unwrap();
        let conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Ok, not `Error::Stuck`: the worker confirmed the cancel and left.
        conn.abort().await.expect("a confirmed cancel ends the worker");
        drop(held.await.unwrap().unwrap());
    })
    .await;
}
