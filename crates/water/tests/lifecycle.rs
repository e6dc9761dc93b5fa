//! Scale and stuck guests: many connections at once, and a guest that loops
//! without calling the host neither stalls the others nor outlives its close.

mod support;

use std::time::Duration;

use support::*;
use water::{Config, Dialer, Error, Watm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_dialers() {
    bounded(async {
        let echo = echo_server().await;
        for name in GUESTS {
            let dialer = Dialer::new(&guest(name)).unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200u64 {
                let dialer = dialer.clone();
                tasks.spawn(async move {
                    let conn = dialer.dial(echo.to_string()).await.unwrap();
                    let sent = data(64 << 10, i + 1);
                    exchange(conn, &sent).await.unwrap() == sent
                });
            }
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                ok += r.unwrap() as usize;
            }
            assert_eq!(ok, 200, "{name}: {ok} of 200 connections verified");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loops_is_dropped_and_stalls_no_one() {
    bounded(async {
        let echo = echo_server().await;
        let looping = wat::parse_str(
            r#"(module (import "env" "host_dial" (func $dial (result i32)))
               (memory (export "memory") 1) (func (export "_water_v0"))
               (func (export "_water_init") (result i32) i32.const 0)
               (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
               (func (export "_water_dial") (param i32) (result i32) call $dial)
               (func (export "_water_worker") (result i32) (loop br 0) i32.const 0))"#,
        )
        .unwrap();
        // No spin limit within the test: the cancel-then-drop path is what
        // is tested here (trust.rs tests the spin limit).
        let config =
            Config::default().close_grace(Duration::from_millis(100)).spin_limit(Duration::from_secs(3600));
        let watm = Watm::new(&looping, config).unwrap();
        // More spinning guests than runtime threads.
        let mut spinning = Vec::new();
        for _ in 0..4 {
            spinning.push(Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap());
        }
        let sent = data(2 << 20, 9);
        let conn = Dialer::new(&guest("reverse")).unwrap().dial(echo.to_string()).await.unwrap();
        assert!(exchange(conn, &sent).await.unwrap() == sent, "a healthy connection was stalled");
        for c in spinning {
            assert!(matches!(c.abort().await, Err(Error::Stuck(_))));
        }
    })
    .await;
}
