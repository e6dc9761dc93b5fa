//! Bad input gets a clear, typed error, and never disturbs a healthy
//! connection running beside it.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use water::{Config, Dialer, Errno, Error, Listener, Watm};

/// A minimal v0 module; each argument replaces one function body.
fn module(init: &str, dial: &str, worker: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(module_wat(init, dial, worker, extra)).unwrap()
}

/// [`module`]'s text.
fn module_wat(init: &str, dial: &str, worker: &str, extra: &str) -> String {
    format!(
        r#"(module
          (import "env" "host_dial" (func $host_dial (result i32)))
          (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          {extra}
          (memory (export "memory") 1)
          (func (export "_water_v0"))
          (func (export "_water_init") (result i32) {init})
          (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
          (func (export "_water_dial") (param $internal i32) (result i32) {dial})
          (func (export "_water_worker") (result i32) {worker}))"#
    )
}

const OK: &str = "i32.const 0";
const DIAL: &str = "call $host_dial";

fn load(bytes: &[u8]) -> Result<Watm, Error> {
    Watm::new(bytes, Config::default().setup_timeout(Duration::from_millis(300)))
}

async fn dial(bytes: &[u8], addr: std::net::SocketAddr) -> Result<water::Connection, Error> {
    Dialer::new(&load(bytes)?)?.dial(addr.to_string()).await
}

#[test]
fn not_wasm_and_invalid_wasm() {
    assert!(matches!(load(b"hello, world"), Err(Error::NotWasm)));
    assert!(matches!(load(b"\0asm\x01\0\0\0\xff\xff"), Err(Error::Invalid(_))));
}

#[test]
fn not_v0() {
    let bytes = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "_water_init") (result i32) i32.const 0))"#,
    )
    .unwrap();
    assert!(matches!(load(&bytes), Err(Error::NotV0)));
}

#[test]
fn missing_worker_is_named() {
    let bytes = module(OK, DIAL, OK, "").into_iter().collect::<Vec<_>>();
    assert!(load(&bytes).is_ok());
    let no_worker = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "_water_v0"))
           (func (export "_water_init") (result i32) i32.const 0)
           (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    match load(&no_worker) {
        Err(Error::MissingExport { name, expected }) => {
            assert_eq!(name, "_water_worker");
            assert_eq!(expected, "function () -> (i32)");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_signature_is_named_with_both_types() {
    let bytes = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "_water_v0"))
           (func (export "_water_init") (result i32) i32.const 0)
           (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
           (func (export "_water_dial") (param i64) (result i32) i32.const 0)
           (func (export "_water_worker") (result i32) i32.const 0))"#,
    )
    .unwrap();
    let err = load(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "export `_water_dial` has the wrong type: expected function (i32) -> (i32), found function (i64) -> (i32)"
    );
}

#[test]
fn unknown_imports_are_named() {
    let env = module(OK, DIAL, OK, r#"(import "env" "host_teleport" (func))"#);
    assert!(
        matches!(load(&env), Err(Error::UnknownImport { module, name }) if module == "env" && name == "host_teleport")
    );
    let wasi = module(OK, DIAL, OK, r#"(import "wasi_snapshot_preview1" "fd_teleport" (func (result i32)))"#);
    assert!(matches!(load(&wasi), Err(Error::UnknownImport { name, .. }) if name == "fd_teleport"));
    let other = module(OK, DIAL, OK, r#"(import "elsewhere" "f" (func))"#);
    assert!(matches!(load(&other), Err(Error::UnknownImport { module, .. }) if module == "elsewhere"));
    // A real preview1 function with the wrong type.
    let bad = module(
        OK,
        DIAL,
        OK,
        r#"(import "wasi_snapshot_preview1" "sched_yield" (func (param i32) (result i32)))"#,
    );
    assert!(
        matches!(load(&bad), Err(Error::BadImport { name, .. }) if name == "sched_yield"),
        "{:?}",
        load(&bad)
    );
    // A preview1 function we do not implement links, and answers nosys.
    let unimplemented = module(
        OK,
        DIAL,
        OK,
        r#"(import "wasi_snapshot_preview1" "fd_pread" (func (param i32 i32 i32 i64 i32) (result i32)))"#,
    );
    assert!(load(&unimplemented).is_ok());
}

#[test]
fn a_role_the_module_lacks_is_refused() {
    let watm = load(&module(OK, DIAL, OK, "")).unwrap();
    assert!(Dialer::new(&watm).is_ok());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(Listener::bind(&watm, "127.0.0.1:0")).unwrap_err();
    assert!(matches!(err, Error::RoleNotSupported { export: "_water_accept", .. }));
}

/// Every run-time failure, each while a healthy 4 MiB transfer runs beside
/// it on the same runtime; the transfer must come through intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_failures_are_typed_and_isolated() {
    bounded(async {
        let echo = echo_server().await;
        let healthy = {
            let dialer = Dialer::new(&guest("xor")).unwrap();
            tokio::spawn(async move {
                let conn = dialer.dial(echo.to_string()).await.unwrap();
                let sent = data(4 << 20, 3);
                // Trickle so that it overlaps the failures.
                let (mut r, mut w) = tokio::io::split(conn);
                let writer = async {
                    for chunk in sent.chunks(64 << 10) {
                        w.write_all(chunk).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    w.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let reader = r.read_to_end(&mut got);
                let ((), n) = tokio::join!(writer, reader);
                n.unwrap();
                got == sent
            })
        };

        // Refused: a port nobody listens on.
        let (_closed, closed) = refusing_addr();
        match Dialer::new(&guest("plain")).unwrap().dial(closed.to_string()).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
            other => panic!("refused dial: {other:?}"),
        }

        // Init loops forever: stopped at the setup deadline.
        match dial(&module("(loop br 0) i32.const 0", DIAL, OK, ""), echo).await {
            Err(Error::Timeout { export: "_water_init", .. }) => {}
            other => panic!("looping init: {other:?}"),
        }

        // A private negative code is kept raw.
        match dial(&module("i32.const -1", DIAL, OK, ""), echo).await {
            Err(Error::Guest { export: "_water_init", errno, .. }) => assert_eq!(errno, Errno(1)),
            other => panic!("init -1: {other:?}"),
        }

        // xor with no config says why, from the guest's stderr.
        let xor = watm_artifacts::Guest::named("xor").unwrap();
        match Dialer::new(&Watm::new(&xor.bytes(), Config::default()).unwrap()).unwrap().dial(echo.to_string()).await {
            Err(Error::Guest { export: "_water_init", errno: Errno::INVAL, message: Some(m) }) => {
                assert!(m.contains("no config"), "{m}")
            }
            other => panic!("xor without key: {other:?}"),
        }

        // A bogus fd from _water_dial.
        match dial(&module(OK, "call $host_dial drop i32.const 99", OK, ""), echo).await {
            Err(Error::BogusFd { export: "_water_dial", fd: 99 }) => {}
            other => panic!("bogus fd: {other:?}"),
        }
        // ... or the internal fd handed back.
        match dial(&module(OK, "call $host_dial drop local.get $internal", OK, ""), echo).await {
            Err(Error::BogusFd { .. }) => {}
            other => panic!("internal fd returned: {other:?}"),
        }

        // A hostile pointer: fd_write with an iovec past the end of memory
        // answers `fault`; the guest passes it on.
        let hostile = "(i32.store (i32.const 0) (i32.const 65530)) (i32.store (i32.const 4) (i32.const 100))
                       (i32.sub (i32.const 0) (call $fd_write (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 8)))";
        let conn = dial(&module(OK, DIAL, hostile, ""), echo).await.unwrap();
        match conn.close().await {
            Err(Error::Guest { export: "_water_worker", errno: Errno::FAULT, .. }) => {}
            other => panic!("hostile pointer: {other:?}"),
        }

        // A trap mid-stream: the worker reads the first bytes, then traps.
        let trap = "(i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 16))
                    (drop (call $fd_read (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 8)))
                    unreachable";
        let mut conn = dial(&module(OK, DIAL, trap, ""), echo).await.unwrap();
        conn.write_all(b"first bytes").await.unwrap();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        match conn.close().await {
            Err(Error::Trap { export: "_water_worker", .. }) => {}
            other => panic!("trap: {other:?}"),
        }

        assert!(healthy.await.unwrap(), "the healthy connection's bytes were damaged");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_capped_per_instance() {
    bounded(async {
        let echo = echo_server().await;
        // Grows by 32 MiB in init; answers -nomem when the host refuses.
        let greedy = module(
            "(if (i32.eq (memory.grow (i32.const 512)) (i32.const -1)) (then (return (i32.const -48)))) i32.const 0",
            DIAL,
            OK,
            "",
        );
        let capped = Watm::new(&greedy, Config::default().memory_limit(16 << 20)).unwrap();
        match Dialer::new(&capped).unwrap().dial(echo.to_string()).await {
            Err(Error::Guest { export: "_water_init", errno: Errno::NOMEM, .. }) => {}
            other => panic!("16 MiB cap: {other:?}"),
        }
        let roomy = Watm::new(&greedy, Config::default().memory_limit(64 << 20)).unwrap();
        Dialer::new(&roomy).unwrap().dial(echo.to_string()).await.unwrap().abort().await.unwrap();
        // A module whose initial memory (32 MiB) is above the cap: refused
        // at load, not on every connection (see trust.rs).
        let big = module_wat(OK, DIAL, OK, "")
            .replace(r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 512)"#);
        let big = wat::parse_str(big).unwrap();
        match Watm::new(&big, Config::default().memory_limit(16 << 20)) {
            Err(Error::OverLimit { what, .. }) => assert!(what.contains("memory"), "{what}"),
            other => panic!("initial memory above the cap: {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connection_does_not_stop_the_listener() {
    bounded(async {
        let listener = Listener::bind(&guest("reverse"), "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let (conn, _) = listener.accept().await.unwrap();
                let (mut r, mut w) = tokio::io::split(conn);
                let copied = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
                outcomes.push(copied.map_err(|e| e.kind()));
            }
            outcomes
        });
        // A zero-length frame is a protocol error in `reverse`.
        let mut bad = connect(addr).await;
        bad.write_all(b"\x00\x00").await.unwrap();
        let mut rest = Vec::new();
        let _ = bad.read_to_end(&mut rest).await;
        // The next client is served as if nothing happened.
        let sent = data(1 << 20, 4);
        let back = exchange(connect(addr).await, &encode("reverse", &sent)).await.unwrap();
        assert!(decode("reverse", &back) == sent);
        let outcomes = app.await.unwrap();
        assert!(outcomes[0].is_err(), "the bad connection's application saw no error");
        assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
    })
    .await;
}

/// A module whose worker fails at once (`-EPROTO`), in the forwarder's and
/// the relay's roles.
const FAILS_AT_ONCE: &str = r#"(module
  (import "env" "host_accept" (func $host_accept (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $plain (mut i32) (i32.const -1))
  (func (export "_water_v0"))
  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_accept") (param i32) (result i32) (global.set $plain (local.get 0)) call $host_accept)
  (func (export "_water_associate") (result i32) (drop (call $host_accept)) (drop (call $host_dial)) i32.const 0)
  ;; A forwarder's upstream exists once the guest uses its plain side: a
  ;; byte to it first (a relay has none), then the failure.
  (func (export "_water_worker") (result i32)
    (if (i32.ge_s (global.get $plain) (i32.const 0)) (then
      (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1))
      (drop (call $fd_write (global.get $plain) (i32.const 0) (i32.const 1) (i32.const 8)))))
    i32.const -71))"#;

/// Reads `s` to its end: `Ok(bytes)` at a clean EOF, else the error kind.
async fn read_end(mut s: tokio::net::TcpStream) -> Result<usize, std::io::ErrorKind> {
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.expect("no end").map_err(|e| e.kind())
}

// Issue 16 item 6: a failed worker ended the plain side with a FIN, which
// reads as a clean end of a truncated stream. It is a reset now: the
// forwarder's upstream and the relay's client see an error.
#[tokio::test]
async fn a_failed_worker_resets_the_plain_side_of_a_forwarder_and_a_relay() {
    bounded(async {
        let watm = Watm::new(&wat::parse_str(FAILS_AT_ONCE).unwrap(), Config::default()).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();

        // Forwarder: the upstream is the plain side.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarder = water::Forwarder::new(&watm, upstream.local_addr().unwrap().to_string()).unwrap();
        let s = stop.clone();
        tokio::spawn(async move { forwarder.serve(listener, s.cancelled()).await });
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (plain, _) = upstream.accept().await.unwrap();
        assert_eq!(read_end(plain).await, Err(std::io::ErrorKind::ConnectionReset), "forwarder's upstream");

        // Relay: the accepted client is the plain side.
        let remote = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = water::Relay::new(&watm, remote.local_addr().unwrap().to_string()).unwrap();
        let s = stop.clone();
        tokio::spawn(async move { relay.serve(listener, s.cancelled()).await });
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_end(client).await, Err(std::io::ErrorKind::ConnectionReset), "relay's client");
        stop.cancel();
    })
    .await;
}
