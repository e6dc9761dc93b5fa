//! The host runs "foreign-shaped" guests, modules not built with our SDK:
//! a TinyGo-shaped one (`_water_v0` a function, a `_start` that probes
//! preopens, args and clocks and then calls `proc_exit(0)`, `env.host_defer`)
//! and a Rust-std-shaped one (`_water_v0` an `i32` global, an init that
//! sleeps with a single clock subscription to `poll_oneoff`). Both are small
//! WAT fixtures with a blocking, sequential relay worker; each carries 1 MiB
//! to an echo server and back with a half-close in between.

mod support;

use support::*;
use water::{Config, Dialer, Errno, Error, Watm};

const SIZE: usize = 1 << 20;

/// The WASI preview1 imports a TinyGo v0 guest links (most unused here, but
/// every one must resolve), plus `sock_shutdown` for the half-close.
const TINYGO_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $fd_fdstat_set_flags (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (import "env" "host_accept" (func $host_accept (result i32)))
  (import "env" "host_defer" (func $host_defer))
"#;

/// What a Rust std (+ mio) v0 guest links, plus `sock_shutdown` and
/// `host_dial`.
const RUST_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $fd_fdstat_set_flags (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
"#;

/// Memory, fd bookkeeping, the dialer role and the worker, shared by both
/// fixtures (it expects `$fd_read`, `$fd_write`, `$sock_shutdown` and
/// `$host_dial` to be imported).
///
/// Layout of the one page: iovec at 0, nread/nwritten at 8, scratch at
/// 16..64, a poll subscription at 64, nevents at 120, events at 128, and
/// the 16 KiB data buffer at 1024.
const RELAY: &str = r#"
  (memory (export "memory") 1)
  (global $internal (mut i32) (i32.const -1))
  (global $net (mut i32) (i32.const -1))
  (global $cancel (mut i32) (i32.const -1))

  (func (export "_water_dial") (param $internal i32) (result i32)
    (local $fd i32)
    local.get $internal
    global.set $internal
    call $host_dial
    local.tee $fd
    i32.const 0
    i32.lt_s
    if
      local.get $fd
      return
    end
    local.get $fd
    global.set $net
    local.get $fd)

  (func (export "_water_cancel_with") (param $fd i32) (result i32)
    local.get $fd
    global.set $cancel
    i32.const 0)

  ;; Writes data[0..len] to fd, looping on short writes: 0 or -errno.
  (func $write_all (param $fd i32) (param $len i32) (result i32)
    (local $off i32) (local $err i32)
    block $done
      loop $again
        local.get $off
        local.get $len
        i32.ge_u
        br_if $done
        i32.const 0
        local.get $off
        i32.const 1024
        i32.add
        i32.store
        i32.const 4
        local.get $len
        local.get $off
        i32.sub
        i32.store
        local.get $fd
        i32.const 0
        i32.const 1
        i32.const 8
        call $fd_write
        local.tee $err
        if
          i32.const 0
          local.get $err
          i32.sub
          return
        end
        ;; A blocking write that moved nothing: give up rather than spin.
        i32.const 8
        i32.load
        i32.eqz
        if
          i32.const -29
          return
        end
        local.get $off
        i32.const 8
        i32.load
        i32.add
        local.set $off
        br $again
      end
    end
    i32.const 0)

  ;; Copies from -> to until EOF, then half-closes `to`: 0 or -errno.
  (func $pump (param $from i32) (param $to i32) (result i32)
    (local $n i32) (local $err i32)
    loop $more
      i32.const 0
      i32.const 1024
      i32.store
      i32.const 4
      i32.const 16384
      i32.store
      local.get $from
      i32.const 0
      i32.const 1
      i32.const 8
      call $fd_read
      local.tee $err
      if
        i32.const 0
        local.get $err
        i32.sub
        return
      end
      i32.const 8
      i32.load
      local.tee $n
      i32.eqz
      if
        local.get $to
        i32.const 2 ;; SDFLAGS_WR
        call $sock_shutdown
        local.tee $err
        if
          i32.const 0
          local.get $err
          i32.sub
          return
        end
        i32.const 0
        return
      end
      local.get $to
      local.get $n
      call $write_all
      local.tee $err
      if
        local.get $err
        return
      end
      br $more
    end
    unreachable)

  ;; Application -> network to EOF, then network -> application to EOF.
  (func (export "_water_worker") (result i32)
    (local $r i32)
    global.get $internal
    global.get $net
    call $pump
    local.tee $r
    if
      local.get $r
      return
    end
    global.get $net
    global.get $internal
    call $pump)
"#;

/// TinyGo shape: `_water_v0` is a function, `_start` initialises the
/// "runtime" the way TinyGo's does and ends with `proc_exit(0)`.
fn tinygo_wat() -> String {
    format!(
        r#"(module
{TINYGO_IMPORTS}
{RELAY}
  (func (export "_water_v0"))

  (func (export "_start")
    ;; No preopens: fd 3 must be badf, or TinyGo's runtime aborts.
    i32.const 3
    i32.const 16
    call $fd_prestat_get
    i32.const 8
    i32.ne
    if
      unreachable
    end
    i32.const 16
    i32.const 20
    call $args_sizes_get
    if
      unreachable
    end
    i32.const 1 ;; monotonic
    i64.const 1
    i32.const 24
    call $clock_time_get
    if
      unreachable
    end
    call $host_defer
    i32.const 0
    call $proc_exit)

  (func (export "_water_init") (result i32)
    call $host_defer
    i32.const 0)
)"#
    )
}

/// Rust std shape: `_water_v0` is an `i32` global and `_water_init` sleeps
/// 5 ms through `poll_oneoff` with one relative monotonic clock
/// subscription, checking the one event std insists on (same userdata, type
/// clock, no error) and that the time really passed. A failed check writes
/// its reason to stderr and returns -inval; a passed one returns `result`.
fn rust_wat(result: i32) -> String {
    format!(
        r#"(module
{RUST_IMPORTS}
{RELAY}
  (global (export "_water_v0") i32 (i32.const 0))

  (data (i32.const 512) "poll_oneoff failed\n")
  (data (i32.const 544) "not exactly one event\n")
  (data (i32.const 576) "wrong userdata\n")
  (data (i32.const 608) "event error is not 0\n")
  (data (i32.const 640) "event type is not clock\n")
  (data (i32.const 672) "woke up too early\n")
  (data (i32.const 704) "init refused\n")

  ;; Writes message (ptr, len) to stderr.
  (func $say (param $msg i32) (param $len i32)
    i32.const 0
    local.get $msg
    i32.store
    i32.const 4
    local.get $len
    i32.store
    i32.const 2
    i32.const 0
    i32.const 1
    i32.const 8
    call $fd_write
    drop)

  ;; Says why and returns -inval.
  (func $fail (param $msg i32) (param $len i32) (result i32)
    local.get $msg
    local.get $len
    call $say
    i32.const -28)

  (func (export "_water_init") (result i32)
    (local $t0 i64) (local $t1 i64)
    i32.const 1
    i64.const 1
    i32.const 16
    call $clock_time_get
    drop
    i32.const 16
    i64.load
    local.set $t0

    ;; subscription: userdata, tag clock, monotonic, 5 ms, precision, relative
    i32.const 64
    i64.const 0x5741544552763000
    i64.store
    i32.const 72
    i32.const 0
    i32.store8
    i32.const 80
    i32.const 1
    i32.store
    i32.const 88
    i64.const 5000000
    i64.store
    i32.const 96
    i64.const 1000
    i64.store
    i32.const 104
    i32.const 0
    i32.store16
    ;; poison what the host must overwrite
    i32.const 120
    i32.const -1
    i32.store
    i32.const 128
    i64.const -1
    i64.store
    i32.const 136
    i64.const -1
    i64.store

    i32.const 64
    i32.const 128
    i32.const 1
    i32.const 120
    call $poll_oneoff
    if
      i32.const 512
      i32.const 19
      call $fail
      return
    end
    i32.const 120
    i32.load
    i32.const 1
    i32.ne
    if
      i32.const 544
      i32.const 22
      call $fail
      return
    end
    i32.const 128
    i64.load
    i64.const 0x5741544552763000
    i64.ne
    if
      i32.const 576
      i32.const 15
      call $fail
      return
    end
    i32.const 136
    i32.load16_u
    if
      i32.const 608
      i32.const 21
      call $fail
      return
    end
    i32.const 138
    i32.load8_u
    if
      i32.const 640
      i32.const 24
      call $fail
      return
    end

    i32.const 1
    i64.const 1
    i32.const 16
    call $clock_time_get
    drop
    i32.const 16
    i64.load
    local.set $t1
    local.get $t1
    local.get $t0
    i64.sub
    i64.const 5000000
    i64.lt_u
    if
      i32.const 672
      i32.const 18
      call $fail
      return
    end

    i32.const {result}
    i32.const 0
    i32.lt_s
    if
      i32.const 704
      i32.const 13
      call $say
    end
    i32.const {result})
)"#
    )
}

fn load(wat: &str) -> Watm {
    Watm::new(&wat::parse_str(wat).expect("fixture WAT"), Config::default()).expect("load fixture")
}

async fn round_trip(watm: &Watm, seed: u64) {
    let echo = echo_server().await;
    let conn = Dialer::new(watm).unwrap().dial(echo.to_string()).await.unwrap();
    let sent = data(SIZE, seed);
    let got = exchange(conn, &sent).await.unwrap();
    assert!(
        got == sent,
        "{} bytes back of {}, first difference at {:?}",
        got.len(),
        sent.len(),
        got.iter().zip(&sent).position(|(a, b)| a != b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinygo_shaped_guest_relays_a_request_and_its_response() {
    bounded(async {
        let watm = load(&tinygo_wat());
        round_trip(&watm, 1).await;
        // One instance per connection: `_start` runs again for the second.
        round_trip(&watm, 2).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_std_shaped_guest_sleeps_in_init_and_relays() {
    bounded(async {
        let watm = load(&rust_wat(0));
        round_trip(&watm, 3).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_init_result_is_a_typed_guest_error() {
    bounded(async {
        let echo = echo_server().await;
        // A known errno, and an unknown code kept as its raw number.
        for (result, want) in [(-65, Errno::PROTO), (-1000, Errno(1000))] {
            let watm = load(&rust_wat(result));
            match Dialer::new(&watm).unwrap().dial(echo.to_string()).await {
                Err(Error::Guest { export, errno, message }) => {
                    assert_eq!(export, "_water_init");
                    assert_eq!(errno, want);
                    assert_eq!(message.as_deref(), Some("init refused"));
                }
                other => panic!("init returned {result}: expected Error::Guest, got {other:?}"),
            }
        }
    })
    .await;
}
