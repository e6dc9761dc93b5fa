//! What `poll_oneoff` reports for a socket, seen from inside a guest: a
//! WAT dialer whose worker polls its network fd and hands the raw 32-byte
//! events to the application, which checks them.
//!
//! - With bytes waiting and the peer still open: the read event fires, no
//!   error, `nbytes` ≥ 1, no hang-up flag.
//! - At EOF, after every byte was read: the read event fires at once with
//!   the hang-up flag and `nbytes` 0 (a guest waiting for EOF must wake).

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use water::{Config, Dialer, Watm};

/// Memory layout: iovec at 0, nread/nwritten at 8, the subscription at 64
/// (48 bytes), nevents at 120, the first event at 128 and the second at 160
/// (32 bytes each), a one-byte message at 200, the read buffer at 1024.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (data (i32.const 200) "k")

  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_dial") (param $internal i32) (result i32)
    local.get $internal
    global.set $internal
    call $host_dial
    global.set $net
    global.get $net)

  ;; One read subscription (userdata 7) on the network fd; its event is
  ;; written at `$at`. Returns poll_oneoff's errno, or 1000 + nevents when
  ;; not exactly one event came.
  (func $poll (param $at i32) (result i32)
    (local $err i32)
    i32.const 64
    i64.const 7
    i64.store
    i32.const 72
    i32.const 1 ;; fd_read
    i32.store8
    i32.const 80
    global.get $net
    i32.store
    i32.const 64
    local.get $at
    i32.const 1
    i32.const 120
    call $poll_oneoff
    local.tee $err
    if
      local.get $err
      return
    end
    i32.const 120
    i32.load
    i32.const 1
    i32.ne
    if
      i32.const 1000
      i32.const 120
      i32.load
      i32.add
      return
    end
    i32.const 0)

  ;; One fd_write of (ptr, len) to fd: its errno.
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    i32.const 0
    local.get $ptr
    i32.store
    i32.const 4
    local.get $len
    i32.store
    local.get $fd
    i32.const 0
    i32.const 1
    i32.const 8
    call $fd_write)

  ;; Every step that fails leaves through $fail with its errno in $err.
  (func (export "_water_worker") (result i32)
    (local $err i32)
    (block $fail
      ;; 1. Bytes are waiting; the peer is open.
      (br_if $fail (local.tee $err (call $poll (i32.const 128))))
      ;; Tell the server to hang up.
      (drop (call $write (global.get $net) (i32.const 200) (i32.const 1)))
      ;; 2. Read to EOF (blocking reads into 1024..5120), then poll again.
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 4096))
      (loop $more
        (br_if $fail
          (local.tee $err (call $fd_read (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8))))
        (br_if $more (i32.load (i32.const 8))))
      (br_if $fail (local.tee $err (call $poll (i32.const 160))))
      ;; Both events to the application.
      (br_if $fail (local.tee $err (call $write (global.get $internal) (i32.const 128) (i32.const 64))))
      (return (i32.const 0)))
    (i32.sub (i32.const 0) (local.get $err)))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_read_events_carry_bytes_then_hang_up() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
            // Hang up only when the guest says it has seen the bytes, so the
            // first event cannot carry the hang-up.
            let mut k = [0u8; 1];
            s.read_exact(&mut k).await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        });
        let watm = Watm::new(&wat::parse_str(GUEST).unwrap(), Config::default()).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut events = [0u8; 64];
        conn.read_exact(&mut events).await.unwrap();

        let (userdata, error, kind, nbytes, flags) = fields(&events[..32]);
        assert_eq!((userdata, error, kind), (7, 0, 1), "data event: userdata, error, type");
        assert!(nbytes >= 1, "data event: nbytes {nbytes}, want at least 1");
        assert_eq!(flags & 1, 0, "data event: hang-up flag set while the peer is open");

        let (userdata, error, kind, nbytes, flags) = fields(&events[32..]);
        assert_eq!((userdata, error, kind), (7, 0, 1), "EOF event: userdata, error, type");
        assert_eq!(nbytes, 0, "EOF event: nbytes");
        assert_eq!(flags & 1, 1, "EOF event: no hang-up flag");
        conn.close().await.unwrap();
        peer.await.unwrap();
    })
    .await;
}
