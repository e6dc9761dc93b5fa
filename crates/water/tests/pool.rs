//! The instance pool: with room for two instances, six connections at once
//! all work (two in pool slots, four mapped on demand), round after round,
//! so slots are reused and must come back pristine; and a module the pool
//! cannot hold (a table larger than a slot's) is mapped on demand and still
//! serves.
//!
//! Its own test binary: the pool is sized from `WATER_POOL_SLOTS` once per
//! process, before the first module is loaded.

mod support;

use support::*;
use tokio::io::AsyncReadExt;
use water::{Config, Dialer, Watm};

const SLOTS: &str = "2";

/// A minimal v0 dialer with a table of 30,000 elements (a pool slot holds
/// 20,000; the host's limit is 65,536); its worker writes "ok" to the
/// application and returns.
const BIG_TABLE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (memory (export "memory") 1)
  (table 30000 funcref)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (data (i32.const 100) "ok")
  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_dial") (param $internal i32) (result i32)
    local.get $internal
    global.set $internal
    call $host_dial)
  (func (export "_water_worker") (result i32)
    i32.const 0
    i32.const 100
    i32.store
    i32.const 4
    i32.const 2
    i32.store
    global.get $internal
    i32.const 0
    i32.const 1
    i32.const 8
    call $fd_write
    drop
    i32.const 0)
)"#;

#[test]
fn six_connections_through_two_slots_and_an_unpoolable_module() {
    // SAFETY: nothing else runs yet in this process (the only test of its
    // binary, before its runtime starts), so no thread reads the
    // environment concurrently.
    unsafe { std::env::set_var("WATER_POOL_SLOTS", SLOTS) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(bounded(async {
        let echo = echo_server().await;
        for name in GUESTS {
            let watm = guest(name);
            assert!(watm.pooled(), "{name}: not in the pool");
            let dialer = Dialer::new(&watm).unwrap();
            for round in 0..3u64 {
                let mut conns = Vec::new();
                for i in 0..6u64 {
                    conns.push(dialer.dial(echo.to_string()).await.unwrap_or_else(|e| {
                        panic!("{name}, round {round}, connection {i}: {e}");
                    }));
                }
                let mut tasks = tokio::task::JoinSet::new();
                for (i, conn) in conns.into_iter().enumerate() {
                    let sent = data(300_000, round * 10 + i as u64);
                    tasks.spawn(async move { (i, exchange(conn, &sent).await.unwrap() == sent) });
                }
                while let Some(r) = tasks.join_next().await {
                    let (i, same) = r.unwrap();
                    assert!(same, "{name}, round {round}, connection {i}: data differs");
                }
            }
        }

        let watm = Watm::new(&wat::parse_str(BIG_TABLE).unwrap(), Config::default()).unwrap();
        assert!(!watm.pooled(), "a module with a 30,000-element table cannot fit a slot");
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
    }));
}
