//! What `poll_oneoff` answers for each kind of fd, seen from inside a WAT
//! guest (the table in ARCHITECTURE.md): a direction an fd does not have —
//! writing to the cancel or config fd or stdin, reading stdout — never fires
//! and is never an error, so a guest (tokio's mio) that subscribes every fd
//! for both directions neither fails nor spins; and a reset socket wakes its
//! reader without an error event, the reset coming from the read itself.

mod support;

use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use water::{Config, Dialer, Watm};

/// Layout: iovec at 0, nwritten/nread at 8, subscriptions at 1024 (48 bytes
/// each), results from 3000: the first poll's nevents (u32) at 3000 and
/// events at 3008; the second's at 3200 / 3208; the reset test's fd_read
/// errno at 3400. Read buffer at 4096.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (import "env" "pull_config" (func $pull_config (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (global $cancel (mut i32) (i32.const -1))
  (global $config (mut i32) (i32.const -1))

  (func (export "_water_init") (result i32)
    (global.set $config (call $pull_config))
    (i32.const 0))
  (func (export "_water_cancel_with") (param $fd i32) (result i32)
    (global.set $cancel (local.get $fd))
    (i32.const 0))
  (func (export "_water_dial") (param $internal i32) (result i32)
    (global.set $internal (local.get $internal))
    (global.set $net (call $host_dial))
    (global.get $net))

  ;; Subscription $i: userdata, tag (1 read, 2 write), fd.
  (func $fd_sub (param $i i32) (param $userdata i64) (param $tag i32) (param $fd i32)
    (local $at i32)
    (local.set $at (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 48))))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (local.get $tag))
    (i32.store offset=16 (local.get $at) (local.get $fd)))
  ;; Subscription $i: a relative monotonic clock of $ns nanoseconds.
  (func $clock_sub (param $i i32) (param $userdata i64) (param $ns i64)
    (local $at i32)
    (local.set $at (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 48))))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (i32.const 0))
    (i32.store offset=16 (local.get $at) (i32.const 1))
    (i64.store offset=24 (local.get $at) (local.get $ns))
    (i64.store offset=32 (local.get $at) (i64.const 0))
    (i32.store16 offset=40 (local.get $at) (i32.const 0)))

  ;; The directions these fds do not have: never ready, never an error.
  (func $absent_directions
    (call $fd_sub (i32.const 0) (i64.const 1) (i32.const 2) (global.get $cancel))
    (call $fd_sub (i32.const 1) (i64.const 2) (i32.const 2) (global.get $config))
    (call $fd_sub (i32.const 2) (i64.const 3) (i32.const 1) (i32.const 1))
    (call $fd_sub (i32.const 3) (i64.const 4) (i32.const 2) (i32.const 0)))

  (func $send (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (global.get $internal) (i32.const 0) (i32.const 1) (i32.const 8)))

  (func (export "_water_worker") (result i32)
    (local $err i32)
    (block $fail
      ;; 1. The absent directions, the config's read and a 1 s clock: only
      ;;    the config read fires, at once.
      (call $absent_directions)
      (call $fd_sub (i32.const 4) (i64.const 5) (i32.const 1) (global.get $config))
      (call $clock_sub (i32.const 5) (i64.const 6) (i64.const 1000000000))
      (br_if $fail (local.tee $err
        (call $poll_oneoff (i32.const 1024) (i32.const 3008) (i32.const 6) (i32.const 3000))))
      ;; 2. The absent directions and a 20 ms clock: only the clock fires.
      (call $clock_sub (i32.const 4) (i64.const 6) (i64.const 20000000))
      (br_if $fail (local.tee $err
        (call $poll_oneoff (i32.const 1024) (i32.const 3208) (i32.const 5) (i32.const 3200))))
      ;; 3. The absent directions and the network fd's read: the peer resets
      ;;    the connection; the event comes, and the read says why.
      (call $fd_sub (i32.const 4) (i64.const 7) (i32.const 1) (global.get $net))
      (br_if $fail (local.tee $err
        (call $poll_oneoff (i32.const 1024) (i32.const 3308) (i32.const 5) (i32.const 3300))))
      (i32.store (i32.const 0) (i32.const 4096))
      (i32.store (i32.const 4) (i32.const 4096))
      (i32.store (i32.const 3400)
        (call $fd_read (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $fail (local.tee $err (call $send (i32.const 3000) (i32.const 404))))
      (return (i32.const 0)))
    (i32.sub (i32.const 0) (local.get $err)))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_directions_never_fire_and_a_reset_is_the_reads_error() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (s, _) = server.accept().await.unwrap();
            // Let the first two polls pass, then reset (linger 0 + close).
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO)).unwrap();
            drop(s);
        });
        let config = "hello";
        let watm =
            Watm::new(&wat::parse_str(GUEST).unwrap(), Config::default().transport_config(config)).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut got = vec![0u8; 404];
        conn.read_exact(&mut got).await.unwrap();

        assert_eq!(u32_at(&got, 0), 1, "first poll: exactly one event");
        assert_eq!(fields(&got[8..40]), (5, 0, 1, config.len() as u64, 0), "first poll: the config read");
        assert_eq!(u32_at(&got, 200), 1, "second poll: exactly one event");
        assert_eq!(fields(&got[208..240]), (6, 0, 0, 0, 0), "second poll: the clock");
        assert_eq!(u32_at(&got, 300), 1, "third poll: exactly one event");
        let (userdata, error, kind, _, flags) = fields(&got[308..340]);
        assert_eq!((userdata, error, kind, flags & 1), (7, 0, 1, 1), "reset: a hang-up read event, no error");
        assert_eq!(u32_at(&got, 400), 15, "reset: fd_read answers connreset (15), not EOF");
        conn.close().await.unwrap();
        peer.await.unwrap();
    })
    .await;
}

/// Polls for write readiness on the network fd: (1) alone; (2) again, with
/// no write in between, beside a 10 ms clock; (3) after a one-byte write,
/// beside a 1 s clock; (4) alone again with no write in between. Results
/// per poll `i`: nevents at 3000 + 100 i, events from 3008 + 100 i.
const WRITE_GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (data (i32.const 200) "k")
  (func (export "_water_init") (result i32) (i32.const 0))
  (func (export "_water_cancel_with") (param i32) (result i32) (i32.const 0))
  (func (export "_water_dial") (param $internal i32) (result i32)
    (global.set $internal (local.get $internal))
    (global.set $net (call $host_dial))
    (global.get $net))
  ;; Subscription 0: write on the network fd; subscription 1: a clock.
  (func $subs (param $clock_ns i64)
    (i64.store (i32.const 1024) (i64.const 1))
    (i32.store8 (i32.const 1032) (i32.const 2))
    (i32.store (i32.const 1040) (global.get $net))
    (i64.store (i32.const 1072) (i64.const 2))
    (i32.store8 (i32.const 1080) (i32.const 0))
    (i32.store (i32.const 1088) (i32.const 1))
    (i64.store (i32.const 1096) (local.get $clock_ns)))
  (func $poll (param $i i32) (param $n i32) (result i32)
    (call $poll_oneoff (i32.const 1024)
      (i32.add (i32.const 3008) (i32.mul (local.get $i) (i32.const 100)))
      (local.get $n)
      (i32.add (i32.const 3000) (i32.mul (local.get $i) (i32.const 100)))))
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func (export "_water_worker") (result i32)
    (local $err i32)
    (block $fail
      (call $subs (i64.const 10000000))
      (br_if $fail (local.tee $err (call $poll (i32.const 0) (i32.const 1))))
      (br_if $fail (local.tee $err (call $poll (i32.const 1) (i32.const 2))))
      (br_if $fail (local.tee $err (call $write (global.get $net) (i32.const 200) (i32.const 1))))
      (call $subs (i64.const 1000000000))
      (br_if $fail (local.tee $err (call $poll (i32.const 2) (i32.const 2))))
      (br_if $fail (local.tee $err (call $poll (i32.const 3) (i32.const 1))))
      (br_if $fail (local.tee $err (call $write (global.get $internal) (i32.const 3000) (i32.const 400))))
      (return (i32.const 0)))
    (i32.sub (i32.const 0) (local.get $err)))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_readiness_is_news_again_after_a_write_and_never_lost() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        });
        let watm = Watm::new(&wat::parse_str(WRITE_GUEST).unwrap(), Config::default()).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut got = vec![0u8; 400];
        conn.read_exact(&mut got).await.unwrap();
        let first = |i: usize| (u32_at(&got, 100 * i), fields(&got[100 * i + 8..100 * i + 40]).0);
        assert_eq!(first(0), (1, 1), "a writable socket is reported writable");
        assert_eq!(
            first(1),
            (1, 2),
            "reported again with no write since: held back, the 10 ms clock fires first"
        );
        assert_eq!(first(2), (1, 1), "after a write: reported at once, before the 1 s clock");
        assert_eq!(first(3), (1, 1), "held back, never lost: it comes when nothing else does");
        conn.close().await.unwrap();
        peer.await.unwrap();
    })
    .await;
}

/// A blocking-mode guest reads until it has the 4096 bytes the peer sent
/// (usually one read that fills its buffer exactly), then polls for more
/// beside a 50 ms clock: only the clock may fire. Results: nevents at 3000,
/// the event at 3008.
const BLOCKING_GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (func (export "_water_init") (result i32) (i32.const 0))
  (func (export "_water_cancel_with") (param i32) (result i32) (i32.const 0))
  (func (export "_water_dial") (param $internal i32) (result i32)
    (global.set $internal (local.get $internal))
    (global.set $net (call $host_dial))
    (global.get $net))
  (func (export "_water_worker") (result i32)
    (local $err i32) (local $got i32)
    (block $fail
      (loop $more
        (i32.store (i32.const 0) (i32.add (i32.const 8192) (local.get $got)))
        (i32.store (i32.const 4) (i32.sub (i32.const 4096) (local.get $got)))
        (br_if $fail (local.tee $err (call $fd_read (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8))))
        (local.set $got (i32.add (local.get $got) (i32.load (i32.const 8))))
        (br_if $more (i32.lt_u (local.get $got) (i32.const 4096))))
      ;; read on the network fd (userdata 7), a 50 ms clock (userdata 6)
      (i64.store (i32.const 1024) (i64.const 7))
      (i32.store8 (i32.const 1032) (i32.const 1))
      (i32.store (i32.const 1040) (global.get $net))
      (i64.store (i32.const 1072) (i64.const 6))
      (i32.store8 (i32.const 1080) (i32.const 0))
      (i32.store (i32.const 1088) (i32.const 1))
      (i64.store (i32.const 1096) (i64.const 50000000))
      (br_if $fail (local.tee $err
        (call $poll_oneoff (i32.const 1024) (i32.const 3008) (i32.const 2) (i32.const 3000))))
      (i32.store (i32.const 0) (i32.const 3000))
      (i32.store (i32.const 4) (i32.const 40))
      (br_if $fail (local.tee $err (call $fd_write (global.get $internal) (i32.const 0) (i32.const 1) (i32.const 8))))
      (return (i32.const 0)))
    (i32.sub (i32.const 0) (local.get $err)))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_guest_is_not_told_readable_after_it_drained_the_socket() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, &[0x5a; 4096]).await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        });
        let watm = Watm::new(&wat::parse_str(BLOCKING_GUEST).unwrap(), Config::default()).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut got = vec![0u8; 40];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(u32_at(&got, 0), 1, "exactly one event");
        // A read event here would send a blocking guest into a read that
        // blocks (a single-threaded TinyGo worker then deadlocks).
        assert_eq!(fields(&got[8..40]).0, 6, "the clock, not a stale read event on a drained socket");
        conn.close().await.unwrap();
        peer.await.unwrap();
    })
    .await;
}
