//! Preview1 calls real guests use beyond `fd_read`/`fd_write`, seen from a
//! WAT guest: a reactor's `_initialize` runs once before `_water_init`, and
//! `sock_recv` (wasi-libc's `recv`, Rust's `peek`) and `sock_send` work on
//! both the network socket and the application's duplex end, with
//! `RECV_PEEK` and `RECV_WAITALL`, and answer `notsock`/`inval` where due.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use water::{Config, Dialer, Watm};

/// Layout: iovec at 0, counts at 8, roflags at 12, results from 4096.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "sock_recv"
    (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send"
    (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (import "env" "pull_config" (func $pull_config (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $inits (mut i32) (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (global $config (mut i32) (i32.const -1))

  (func (export "_initialize")
    (global.set $inits (i32.add (global.get $inits) (i32.const 1))))
  ;; Fails unless `_initialize` ran exactly once before it.
  (func (export "_water_init") (result i32)
    (if (i32.ne (global.get $inits) (i32.const 1)) (then (return (i32.const -28))))
    (global.set $config (call $pull_config))
    (i32.const 0))
  (func (export "_water_cancel_with") (param i32) (result i32) (i32.const 0))
  (func (export "_water_dial") (param $internal i32) (result i32)
    (global.set $internal (local.get $internal))
    (global.set $net (call $host_dial))
    (global.get $net))

  ;; sock_recv into (ptr, len) with flags: its errno; the count at 8.
  (func $recv (param $fd i32) (param $ptr i32) (param $len i32) (param $flags i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $sock_recv (local.get $fd) (i32.const 0) (i32.const 1) (local.get $flags) (i32.const 8) (i32.const 12)))
  (func $send (param $fd i32) (param $ptr i32) (param $len i32) (param $flags i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $sock_send (local.get $fd) (i32.const 0) (i32.const 1) (local.get $flags) (i32.const 8)))

  (func (export "_water_worker") (result i32)
    (local $err i32)
    (block $fail
      ;; The network: "abcdef" arrives in one segment.
      ;; Wait for all of the first 2 bytes.
      (br_if $fail (local.tee $err (call $recv (global.get $net) (i32.const 4096) (i32.const 2) (i32.const 2))))
      ;; Peek at the next 4, then read the same 4.
      (br_if $fail (local.tee $err (call $recv (global.get $net) (i32.const 4098) (i32.const 4) (i32.const 1))))
      (br_if $fail (local.tee $err (call $recv (global.get $net) (i32.const 4102) (i32.const 4) (i32.const 0))))
      ;; The errnos of calls that must fail.
      (i32.store (i32.const 4106) (call $recv (global.get $config) (i32.const 2048) (i32.const 4) (i32.const 0)))
      (i32.store (i32.const 4110) (call $recv (global.get $net) (i32.const 2048) (i32.const 4) (i32.const 4)))
      (i32.store (i32.const 4114) (call $send (global.get $net) (i32.const 2048) (i32.const 1) (i32.const 1)))
      ;; The application's end: peek at "xyz", then read it.
      (br_if $fail (local.tee $err (call $recv (global.get $internal) (i32.const 4118) (i32.const 3) (i32.const 1))))
      (br_if $fail (local.tee $err (call $recv (global.get $internal) (i32.const 4121) (i32.const 3) (i32.const 0))))
      ;; Everything back to the application.
      (br_if $fail (local.tee $err (call $send (global.get $internal) (i32.const 4096) (i32.const 28) (i32.const 0))))
      (return (i32.const 0)))
    (i32.sub (i32.const 0) (local.get $err)))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_runs_first_and_sock_recv_send_work_on_both_ends() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"abcdef").await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        });
        let watm =
            Watm::new(&wat::parse_str(GUEST).unwrap(), Config::default().transport_config("cfg")).unwrap();
        let mut conn =
            Dialer::new(&watm).unwrap().dial(addr.to_string()).await.expect("_initialize ran once");
        conn.write_all(b"xyz").await.unwrap();
        let mut got = [0u8; 28];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..10], b"abcdefcdef", "network: waitall, peek, then the same bytes read");
        assert_eq!(u32_at(&got, 10), 57, "sock_recv on the config fd: notsock");
        assert_eq!(u32_at(&got, 14), 28, "sock_recv with an unknown flag: inval");
        assert_eq!(u32_at(&got, 18), 28, "sock_send with a flag: inval");
        assert_eq!(&got[22..], b"xyzxyz", "application end: peek, then the same bytes read");
        conn.close().await.unwrap();
        peer.await.unwrap();
    })
    .await;
}
