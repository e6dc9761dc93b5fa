//! The trust boundary: no guest or peer can crash, stall or exhaust the
//! host, and no abnormal end reaches the application as a clean one. Each
//! test names the hole it closes (issue #9).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use water::{Config, Dialer, Error, Listener, Watm};

/// A v0 module with every role; each argument replaces one function body.
/// Imports `$host_dial`, `$host_accept`, `$pull_config`, `$proc_exit`,
/// `$random_get`, `$fd_read`, `$fd_write` and `$poll_oneoff`; memory page 0
/// is scratch. Globals `$cancel`, and `$app`, `$net` for a role body that
/// sets them (see [`DIAL_KEEPING_FDS`]).
fn module_wat(init: &str, dial: &str, accept: &str, worker: &str) -> String {
    let associate = "(drop (call $host_accept)) (drop (call $host_dial)) i32.const 0";
    roles_wat(init, dial, accept, associate, worker)
}

/// [`module_wat`] with the relay's body too.
fn roles_wat(init: &str, dial: &str, accept: &str, associate: &str, worker: &str) -> String {
    format!(
        r#"(module
          (import "env" "host_dial" (func $host_dial (result i32)))
          (import "env" "host_accept" (func $host_accept (result i32)))
          (import "env" "pull_config" (func $pull_config (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
          (memory (export "memory") 1)
          (global $cancel (mut i32) (i32.const -1))
          (global $app (mut i32) (i32.const -1))
          (global $net (mut i32) (i32.const -1))
          (func (export "_water_v0"))
          (func (export "_water_init") (result i32) {init})
          (func (export "_water_cancel_with") (param i32) (result i32) local.get 0 global.set $cancel i32.const 0)
          (func (export "_water_dial") (param $internal i32) (result i32) {dial})
          (func (export "_water_accept") (param $internal i32) (result i32) {accept})
          (func (export "_water_associate") (result i32) {associate})
          (func (export "_water_worker") (result i32) {worker}))"#
    )
}

fn module(init: &str, dial: &str, accept: &str, worker: &str) -> Vec<u8> {
    wat::parse_str(module_wat(init, dial, accept, worker)).unwrap()
}

const OK: &str = "i32.const 0";

/// `fd_write(fd, no iovec)`: a write of zero bytes, as Go's
/// `conn.Write([]byte{})` issues.
fn empty_write(fd: &str) -> String {
    format!("(drop (call $fd_write ({fd}) (i32.const 0) (i32.const 0) (i32.const 8)))")
}

/// A listener whose accepted sockets have a tiny receive buffer, so that a
/// peer that reads slowly (or not at all) holds the sender back at once.
fn small_buffer_listener() -> tokio::net::TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(8).unwrap()
}

/// A peer that reads `chunk` bytes every `pause` until EOF; yields the byte
/// count. `pause: None` never reads (and holds the socket open).
async fn slow_sink(chunk: usize, pause: Option<Duration>) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let Some(pause) = pause else {
            tokio::time::sleep(LIMIT).await;
            return 0;
        };
        let mut buf = vec![0u8; chunk];
        let mut total = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            tokio::time::sleep(pause).await;
        }
    });
    (addr, task)
}

// Item 1: a zero-length write reached `Ring::push` with no storage and
// divided by zero: the listener's caller (water server's accept loop)
// unwound, and a dialer's application panicked in `write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_length_write_is_not_a_panic() {
    bounded(async {
        // The guest writes nothing to the application's end during
        // `_water_accept`, then every later call works.
        let accept = format!("{} call $host_accept", empty_write("local.get $internal"));
        let worker = format!("{} i32.const 0", empty_write("i32.const 3"));
        let watm = Watm::new(&module(OK, "call $host_dial", &accept, &worker), Config::default()).unwrap();
        let listener = Listener::bind(&watm, "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = connect(addr).await;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.map(|_| rest)
        });
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        conn.close().await.unwrap();
        client.await.unwrap().unwrap();

        // The application's empty write, then a real exchange.
        let echo = echo_server().await;
        let mut conn = Dialer::new(&guest("xor")).unwrap().dial(echo.to_string()).await.unwrap();
        assert_eq!(conn.write(&[]).await.unwrap(), 0);
        let sent = data(300 << 10, 21);
        assert!(exchange(conn, &sent).await.unwrap() == sent);
    })
    .await;
}

// Item 2: a worker task that vanished (here: dropped with its runtime) was
// read as a clean EOF and `close()` as `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_worker_is_an_error_not_a_clean_end() {
    bounded(async {
        let echo = echo_server().await;
        let dialer = Dialer::new(&guest("plain")).unwrap();
        // The connection's worker runs on a runtime of its own, which then
        // shuts down, dropping the task mid-connection.
        let conn = tokio::task::spawn_blocking(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let conn = rt.block_on(dialer.dial(echo.to_string())).unwrap();
            rt.shutdown_timeout(Duration::from_secs(5));
            conn
        })
        .await
        .unwrap();
        let mut conn = conn;
        let mut buf = [0u8; 16];
        let err = conn.read(&mut buf).await.expect_err("a vanished worker must not read as EOF");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        assert!(matches!(conn.close().await, Err(Error::WorkerLost)));
    })
    .await;
}

/// Connects with a 4 KiB send buffer (what the kernel holds is then small
/// next to what the worker still has to deliver).
struct SmallSendBuffer;

impl water::Connector for SmallSendBuffer {
    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'a>,
    > {
        Box::pin(async move {
            let socket = TcpSocket::new_v4()?;
            socket.set_send_buffer_size(4096)?;
            socket.connect(addr.parse().map_err(std::io::Error::other)?).await
        })
    }
}

// Item 3: `close()` cancelled the worker a fixed second after it, even while
// it was still delivering to a slow reader, and called the cut `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lingers_while_the_worker_delivers() {
    bounded(async {
        let grace = Duration::from_millis(100);
        let watm = Watm::new(
            &watm_artifacts::Guest::named("plain").unwrap().bytes(),
            Config::default().close_grace(grace).connector(SmallSendBuffer),
        )
        .unwrap();
        // Small kernel buffers at both ends, and a pause after every read of
        // at most a few KiB: under 1 MB/s, so that what the duplex holds at
        // close (up to 256 KiB) takes several close graces to deliver, while
        // the worker never stalls for a whole one.
        let (sink, received) = slow_sink(16 << 10, Some(Duration::from_millis(10))).await;
        let mut conn = Dialer::new(&watm).unwrap().dial(sink.to_string()).await.unwrap();
        let sent = data(1 << 20, 5);
        conn.write_all(&sent).await.unwrap();
        conn.close().await.unwrap();
        assert_eq!(received.await.unwrap(), sent.len(), "the slow reader lost the tail");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_delivery_is_its_own_error() {
    bounded(async {
        let grace = Duration::from_millis(100);
        let watm = Watm::new(
            &watm_artifacts::Guest::named("plain").unwrap().bytes(),
            Config::default().close_grace(grace),
        )
        .unwrap();
        // A peer that never reads: the worker stalls with bytes in hand.
        let (sink, _never) = slow_sink(0, None).await;
        let mut conn = Dialer::new(&watm).unwrap().dial(sink.to_string()).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.write_all(&data(8 << 20, 6))).await;
        match conn.close().await {
            Err(Error::Cut { idle }) => assert_eq!(idle, grace),
            other => panic!("a stalled delivery ended as {other:?}"),
        }
    })
    .await;
}

// Item 4: only memory size was limited. A module could grow a table without
// bound (1.2 GiB in under a second), or multiply the memory limit with many
// memories; and one whose initial memory was over the limit loaded, then
// failed every connection.
#[test]
fn memories_and_tables_are_limited_at_load() {
    let base = module_wat(OK, "call $host_dial", "call $host_accept", OK);
    let two_memories =
        base.replace(r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 1) (memory $second 1)"#);
    match Watm::new(&wat::parse_str(two_memories).unwrap(), Config::default()) {
        Err(Error::OverLimit { what: "memories", requested: 2, limit: 1 }) => {}
        other => panic!("two memories: {other:?}"),
    }
    let two_tables = base.replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 1) (table 1 funcref) (table 1 funcref)"#,
    );
    assert!(matches!(
        Watm::new(&wat::parse_str(two_tables).unwrap(), Config::default()),
        Err(Error::OverLimit { what: "tables", .. })
    ));
    let big_table = base
        .replace(r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 1) (table 100000 funcref)"#);
    let big_table = wat::parse_str(big_table).unwrap();
    let err = Watm::new(&big_table, Config::default().table_elements_limit(50_000)).unwrap_err();
    assert!(matches!(
        err,
        Error::OverLimit { what: "initial table elements", requested: 100_000, limit: 50_000 }
    ));
    assert!(err.to_string().contains("limit of 50000"), "{err}");
    // Within the limit it loads.
    Watm::new(&big_table, Config::default().table_elements_limit(100_000)).unwrap();
    let big_memory = base.replace(r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 512)"#);
    match Watm::new(&wat::parse_str(big_memory).unwrap(), Config::default().memory_limit(16 << 20)) {
        Err(Error::OverLimit { what: "bytes of initial memory", requested, limit }) => {
            assert_eq!((requested, limit), (32 << 20, 16 << 20))
        }
        other => panic!("initial memory over the limit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_cannot_grow_past_its_limit() {
    bounded(async {
        let echo = echo_server().await;
        // Grows its table by a million elements; answers -nomem when refused.
        // Its initial table is too large for a pool slot (mapped on demand,
        // where only the store's limits stop the growth).
        let grow = "(if (i32.eq (table.grow $t (ref.null func) (i32.const 1000000)) (i32.const -1))
                      (then (return (i32.const -48)))) i32.const 0";
        let wat = module_wat(grow, "call $host_dial", "call $host_accept", OK).replace(
            r#"(memory (export "memory") 1)"#,
            r#"(memory (export "memory") 1) (table $t 30000 funcref)"#,
        );
        let watm = Watm::new(&wat::parse_str(wat).unwrap(), Config::default()).unwrap();
        match Dialer::new(&watm).unwrap().dial(echo.to_string()).await {
            Err(Error::Guest { export: "_water_init", errno: water::Errno::NOMEM, .. }) => {}
            other => panic!("a million-element table.grow: {other:?}"),
        }
        let roomy = Watm::new(
            &watm_artifacts::Guest::named("plain").unwrap().bytes(),
            Config::default().table_elements_limit(2_000_000),
        )
        .unwrap();
        Dialer::new(&roomy).unwrap().dial(echo.to_string()).await.unwrap().abort().await.unwrap();
    })
    .await;
}

/// `poll_oneoff` with one clock subscription of an hour (subscription at
/// 64, events at 128, nevents at 120).
const SLEEP_AN_HOUR: &str = "(i64.store (i32.const 64) (i64.const 1))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 120)))";

/// A blocking `fd_read` of up to 16 bytes from `fd` (iovec at 0, buffer at
/// 256, nread at 8).
fn blocking_read(fd: &str) -> String {
    format!(
        "(i32.store (i32.const 0) (i32.const 256)) (i32.store (i32.const 4) (i32.const 16))
         (drop (call $fd_read ({fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"
    )
}

// Item 5: the setup deadline counted only time in wasm; a setup call
// blocked in a host call was never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_time_is_wall_clock_even_inside_host_calls() {
    let limit = Duration::from_millis(300);
    let echo = echo_server().await;
    let dial_with = |wat: String| async move {
        let watm = Watm::new(&wat::parse_str(wat).unwrap(), Config::default().setup_timeout(limit)).unwrap();
        // Far below the hour the guest asks for, well above the limit.
        tokio::time::timeout(Duration::from_secs(20), Dialer::new(&watm).unwrap().dial(echo.to_string()))
            .await
            .expect("a setup blocked in a host call was not stopped")
    };
    let cases = [
        // _water_init sleeps an hour in poll_oneoff.
        ("_water_init", module_wat(&format!("{SLEEP_AN_HOUR} i32.const 0"), "call $host_dial", OK, OK)),
        // _water_dial reads the application's end first: a deadlock, since
        // the application cannot write before dial returns.
        (
            "_water_dial",
            module_wat(OK, &format!("{} call $host_dial", blocking_read("local.get $internal")), OK, OK),
        ),
        // _water_cancel_with reads the cancel fd.
        (
            "_water_cancel_with",
            module_wat(OK, "call $host_dial", OK, OK).replace(
                "local.get 0 global.set $cancel i32.const 0",
                &format!("{} i32.const 0", blocking_read("local.get 0")),
            ),
        ),
    ];
    for (export, wat) in cases {
        match dial_with(wat).await {
            Err(Error::Timeout { export: e, limit: l }) => assert_eq!((e, l), (export, limit)),
            other => panic!("{export} blocked: {other:?}"),
        }
    }
}

/// A listener module whose `_water_accept` waits for a one-byte handshake
/// from the peer before it returns.
fn handshake_listener(config: Config) -> Watm {
    let accept = format!(
        "(local $net i32) (local.set $net (call $host_accept)) {} local.get $net",
        blocking_read("local.get $net")
    );
    Watm::new(&module(OK, "call $host_dial", &accept, OK), config).unwrap()
}

// Item 6: `Listener::accept` ran the guest's setup inline: one peer that
// never sent its handshake held every later connection (and `water
// server`'s accept loop) for the setup timeout; and dropping `accept` lost
// the connection in setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_setup_delays_only_its_own_connection() {
    bounded(async {
        let watm = handshake_listener(Config::default().setup_timeout(Duration::from_secs(60)));
        let listener = Listener::bind(&watm, "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = connect(addr).await;
        let mut prompt = connect(addr).await;
        prompt.write_all(b"!").await.unwrap();
        let (_conn, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a silent peer's setup blocked the next connection")
            .unwrap();
        assert_eq!(peer, prompt.local_addr().unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_cancel_safe() {
    bounded(async {
        let watm = handshake_listener(Config::default().setup_timeout(Duration::from_secs(60)));
        let listener = Listener::bind(&watm, "127.0.0.1:0").await.unwrap();
        let mut late = connect(listener.local_addr().unwrap()).await;
        // The caller gives up while the setup waits for the handshake...
        assert!(tokio::time::timeout(Duration::from_millis(200), listener.accept()).await.is_err());
        // ...and the connection is not lost: the next accept returns it.
        late.write_all(b"!").await.unwrap();
        let (_conn, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the connection set up under a dropped accept was lost")
            .unwrap();
        assert_eq!(peer, late.local_addr().unwrap());
    })
    .await;
}

// Item 8: no cap on live connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_beyond_the_cap() {
    bounded(async {
        let echo = echo_server().await;
        let plain = watm_artifacts::Guest::named("plain").unwrap().bytes();
        let watm = Watm::new(&plain, Config::default().max_connections(2)).unwrap();
        let dialer = Dialer::new(&watm).unwrap();
        let a = dialer.dial(echo.to_string()).await.unwrap();
        let b = dialer.dial(echo.to_string()).await.unwrap();
        assert!(matches!(dialer.dial(echo.to_string()).await, Err(Error::TooManyConnections(2))));
        // A slot is free again once a connection has ended.
        a.close().await.unwrap();
        let c = dialer.dial(echo.to_string()).await.unwrap();
        let sent = data(100 << 10, 8);
        assert!(exchange(c, &sent).await.unwrap() == sent);
        b.abort().await.unwrap();

        // A listener whose every connection is taken in by its guest (a
        // byte crossed) closes the connection past its cap at once.
        let watm = Watm::new(&plain, Config::default().max_connections(1)).unwrap();
        let listener = Listener::bind(&watm, "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut first = connect(addr).await;
        let (mut held, _) = listener.accept().await.unwrap();
        first.write_all(b"x").await.unwrap();
        held.read_exact(&mut [0u8; 1]).await.unwrap();
        let mut refused = connect(addr).await;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf))
            .await
            .expect("the connection past the cap was left open");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        drop(first);
        held.close().await.unwrap();
        let again = connect(addr).await;
        let (conn, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, again.local_addr().unwrap());
        conn.abort().await.unwrap();
    })
    .await;
}

// Shedding outpaced teardown: each arrival past `max_connections` shed the
// oldest connection not taken in, but a shed connection keeps its sockets
// until its worker ends (a close grace for one that ignores its cancel), so
// a burst of silent connections held as many sockets as it had members,
// and under a low fd limit `water server` ran out of fds. Now at most
// `max / 16 + 8` are being shed at once; the rest wait in the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_waits_in_the_backlog_while_shed_connections_end() {
    bounded(async {
        let upstream = echo_server().await;
        // `max / 16 + 8` shed at once at most.
        let (max, bound, burst) = (4, 8, 40);
        // Taken in by `host_accept`, never authenticated, deaf to its
        // cancel: each shed connection lingers a whole close grace.
        let config = Config::default()
            .max_connections(max)
            .close_grace(Duration::from_millis(500))
            .handshake_timeout(Some(Duration::from_secs(2)), Duration::ZERO)
            .metrics_label("test-shedding");
        let watm =
            Watm::new(&module(OK, "call $host_dial", "call $host_accept", &ignores_everything()), config)
                .unwrap();
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn({
            let (forwarder, stop) =
                (water::Forwarder::new(&watm, upstream.to_string()).unwrap(), stop.clone());
            async move { forwarder.serve(front, stop.cancelled_owned()).await }
        });
        let open = || -> (u64, u64, u64) {
            let t =
                water::metrics::snapshot().transports.into_iter().find(|t| t.transport == "test-shedding");
            t.map_or((0, 0, 0), |t| {
                t.roles
                    .iter()
                    .fold((0, 0, 0), |(o, s, r), role| (o + role.open, s + role.started, r + role.refused))
            })
        };
        let mut clients = Vec::new();
        for _ in 0..burst {
            clients.push(connect(addr).await);
        }
        // Every member of the burst is taken in turn and closed (shed, or
        // at the handshake deadline), while the connections open at once
        // never pass the cap and the bound.
        let mut most = 0;
        let all_closed = async {
            for c in &mut clients {
                let mut buf = [0u8; 16];
                assert!(matches!(c.read(&mut buf).await, Ok(0) | Err(_)), "the server sent bytes");
            }
        };
        tokio::pin!(all_closed);
        loop {
            tokio::select! {
                () = &mut all_closed => break,
                () = tokio::time::sleep(Duration::from_millis(2)) => most = most.max(open().0),
            }
        }
        let (_, started, refused) = open();
        assert!(
            most <= (max + bound) as u64,
            "{most} connections open at once (cap {max}, shed at once {bound})"
        );
        assert!(most > max as u64, "nothing was being shed: {most} open at most");
        assert_eq!((started, refused), (burst as u64, 0));
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

// Item 11: a failed `host_dial` could be retried without limit, a DNS
// lookup and a connect each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dial_attempt_per_instance() {
    bounded(async {
        let echo = echo_server().await;
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = attempts.clone();
        let config = Config::default().dial_filter(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            false
        });
        let retry =
            "(drop (call $host_dial)) (drop (call $host_dial)) (drop (call $host_dial)) call $host_dial";
        let watm = Watm::new(&module(OK, retry, OK, OK), config).unwrap();
        match Dialer::new(&watm).unwrap().dial(echo.to_string()).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied),
            other => panic!("refused dial: {other:?}"),
        }
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "a retry dialed again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_joins_nothing_is_an_error() {
    bounded(async {
        let echo = echo_server().await;
        // Returns success at once; its worker would wait for the cancel fd.
        let worker = format!("{} i32.const 0", blocking_read("global.get $cancel"));
        let wat = roles_wat(OK, "call $host_dial", "call $host_accept", OK, &worker);
        let relay = water::Relay::new(
            &Watm::new(&wat::parse_str(wat).unwrap(), Config::default()).unwrap(),
            echo.to_string(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { relay.serve(listener, stop.cancelled_owned()).await }
        });
        let mut client = connect(addr).await;
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "a relay that neither accepted nor dialed was kept running");
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

// Item 12: the dial filter was skipped when a Connector was set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_filter_applies_to_a_connector() {
    bounded(async {
        let echo = echo_server().await;
        let plain = watm_artifacts::Guest::named("plain").unwrap().bytes();
        let config = Config::default().connector(SmallSendBuffer).dial_filter(move |addr| addr != echo);
        match Dialer::new(&Watm::new(&plain, config).unwrap()).unwrap().dial(echo.to_string()).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
            other => panic!("a filtered address reached through a connector: {other:?}"),
        }
        let config = Config::default().connector(SmallSendBuffer).dial_filter(move |addr| addr == echo);
        let conn =
            Dialer::new(&Watm::new(&plain, config).unwrap()).unwrap().dial(echo.to_string()).await.unwrap();
        let sent = data(10 << 10, 12);
        assert!(exchange(conn, &sent).await.unwrap() == sent);
    })
    .await;
}

// Item 14: a full fd table was reported as an invalid module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fd_table_is_the_guests_mfile() {
    bounded(async {
        let echo = echo_server().await;
        // Opens the config 64 times: the table is full before the role call.
        let hoard = "(local $i i32) (loop $l (drop (call $pull_config))
                     (local.set $i (i32.add (local.get $i) (i32.const 1)))
                     (br_if $l (i32.lt_u (local.get $i) (i32.const 64)))) i32.const 0";
        let watm =
            Watm::new(&module(hoard, "call $host_dial", OK, OK), Config::default().transport_config("k"))
                .unwrap();
        match Dialer::new(&watm).unwrap().dial(echo.to_string()).await {
            Err(e @ Error::Guest { export: "_water_dial", errno: water::Errno::MFILE, .. }) => {
                assert!(e.to_string().contains("mfile"), "{e}")
            }
            other => panic!("full fd table: {other:?}"),
        }
    })
    .await;
}

// Item 15: proc_exit(0) from the worker is a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_zero_in_the_worker_is_a_clean_end() {
    bounded(async {
        let echo = echo_server().await;
        let exits = |code: i32| format!("(call $proc_exit (i32.const {code})) i32.const 0");
        let watm = Watm::new(&module(OK, "call $host_dial", OK, &exits(0)), Config::default()).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        conn.close().await.unwrap();
        let watm = Watm::new(&module(OK, "call $host_dial", OK, &exits(3)), Config::default()).unwrap();
        let conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        assert!(matches!(conn.close().await, Err(Error::Exit { code: 3, .. })));
    })
    .await;
}

// Item 16: a v0 guest's private -1 read as "2big (errno 1)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_private_codes_are_shown_as_such() {
    bounded(async {
        let echo = echo_server().await;
        let watm = Watm::new(&module("i32.const -1", "call $host_dial", OK, OK), Config::default()).unwrap();
        let err = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap_err();
        assert!(matches!(err, Error::Guest { errno: water::Errno(1), .. }));
        let text = err.to_string();
        assert!(text.contains("-1 (a private code of the guest"), "{text}");
        // A code outside that range reads as its errno alone.
        let watm = Watm::new(&module("i32.const -28", "call $host_dial", OK, OK), Config::default()).unwrap();
        let text = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap_err().to_string();
        assert!(text.contains("inval (errno 28)") && !text.contains("private"), "{text}");
    })
    .await;
}

// Item 10: `random_get` of the whole memory ran synchronously on a runtime
// thread (1 GiB: 2.95 s of one thread). On a one-thread runtime, another
// task must get turns while a guest's 32 MiB request is filled.
#[tokio::test(flavor = "current_thread")]
async fn a_huge_random_get_lets_other_tasks_run() {
    bounded(async {
        let echo = echo_server().await;
        let init = "(drop (call $random_get (i32.const 0) (i32.const 33554432))) i32.const 0";
        let wat = module_wat(init, "call $host_dial", OK, OK)
            .replace(r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 512)"#);
        let watm =
            Watm::new(&wat::parse_str(wat).unwrap(), Config::default().memory_limit(64 << 20)).unwrap();
        let turns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = tokio::spawn({
            let turns = turns.clone();
            async move {
                loop {
                    turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let dialer = Dialer::new(&watm).unwrap();
        let before = turns.load(std::sync::atomic::Ordering::Relaxed);
        let conn = dialer.dial(echo.to_string()).await.unwrap();
        let during = turns.load(std::sync::atomic::Ordering::Relaxed) - before;
        counter.abort();
        conn.abort().await.unwrap();
        // 512 chunks of 64 KiB, a turn between each; without chunking only
        // the setup's own few awaits (and an epoch tick or two) give turns.
        assert!(during >= 256, "the other task ran {during} times during setup");
    })
    .await;
}

// Item 13: loading had no budget (a 0.9 MB module of 100,000 functions:
// 7.9 s and 583 MiB).
#[test]
fn compile_bombs_are_refused_before_compiling() {
    let with_functions = |n: usize| {
        let functions: String = (0..n).map(|_| "(func)").collect();
        let wat = module_wat(OK, "call $host_dial", OK, OK).replace(
            r#"(memory (export "memory") 1)"#,
            &format!(r#"(memory (export "memory") 1) {functions}"#),
        );
        wat::parse_str(wat).unwrap()
    };
    // Over the default budget: refused by counting, without compiling.
    let bomb = with_functions(30_000);
    let started = std::time::Instant::now();
    match Watm::new(&bomb, Config::default()) {
        Err(Error::OverLimit { what: "functions", requested, limit: 20_000 }) => {
            assert!(requested > 30_000, "{requested}")
        }
        other => panic!("30,000 functions: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The budget is the caller's to set.
    let small = with_functions(1_500);
    assert!(matches!(
        Watm::new(&small, Config::default().max_functions(1_000)),
        Err(Error::OverLimit { what: "functions", .. })
    ));
    Watm::new(&small, Config::default().max_functions(2_000)).unwrap();

    let mut huge = b"\0asm\x01\0\0\0".to_vec();
    huge.resize(17 << 20, 0);
    let err = Watm::new(&huge, Config::default()).unwrap_err();
    assert!(
        matches!(err, Error::OverLimit { what: "bytes of module", limit, .. } if limit == 16 << 20),
        "{err}"
    );
}

// Item 17: a bad transport config was noticed only on the first
// connection; `check_init` finds it up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_init_reports_a_rejected_config() {
    bounded(async {
        let xor = watm_artifacts::Guest::named("xor").unwrap().bytes();
        let bad = Watm::new(&xor, Config::default().transport_config("not hex")).unwrap();
        match bad.check_init().await {
            Err(Error::Guest { export: "_water_init", message: Some(m), .. }) => assert!(!m.is_empty()),
            other => panic!("xor with a bad key: {other:?}"),
        }
        guest("xor").check_init().await.unwrap();
    })
    .await;
}

// Item 7: a worker that spins without calling the host kept its thread
// share and its sockets until its owner happened to cancel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_worker_is_stopped_with_a_clear_error() {
    bounded(async {
        let echo = echo_server().await;
        let spin = Duration::from_millis(300);
        let watm = Watm::new(
            &module(OK, "call $host_dial", OK, "(loop br 0) i32.const 0"),
            Config::default().spin_limit(spin),
        )
        .unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        // Nobody cancels it: the host stops it by itself.
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        match conn.close().await {
            Err(Error::Spinning { export: "_water_worker", limit }) => assert_eq!(limit, spin),
            other => panic!("a spinning worker: {other:?}"),
        }
        // Calling the host in the loop does not hide a spin.
        let busy_calls = "(loop (drop (call $random_get (i32.const 0) (i32.const 1))) (br 0)) i32.const 0";
        let watm =
            Watm::new(&module(OK, "call $host_dial", OK, busy_calls), Config::default().spin_limit(spin))
                .unwrap();
        let conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        match tokio::time::timeout(Duration::from_secs(10), conn.close()).await {
            Ok(Err(Error::Spinning { .. })) => {}
            other => panic!("a worker spinning on host calls: {other:?}"),
        }
        // A worker that polls and finds something ready every time (an
        // idle tokio guest does) is throttled, not stopped.
        let polling = format!(
            "(loop {} (br 0)) i32.const 0",
            SLEEP_AN_HOUR.replace("(i64.const 3600000000000)", "(i64.const 0)")
        );
        let watm =
            Watm::new(&module(OK, "call $host_dial", OK, &polling), Config::default().spin_limit(spin))
                .unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(read.is_err(), "a polling worker was stopped: {read:?}");
        // A worker busy with real work, moving bytes between chunks, is
        // not spinning.
        let xor = Watm::new(
            &watm_artifacts::Guest::named("xor").unwrap().bytes(),
            Config::default().transport_config(XOR_KEY).spin_limit(Duration::from_millis(50)),
        )
        .unwrap();
        let conn = Dialer::new(&xor).unwrap().dial(echo.to_string()).await.unwrap();
        let sent = data(8 << 20, 13);
        assert!(exchange(conn, &sent).await.unwrap() == sent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    bounded(async {
        let echo = echo_server().await;
        let idle = Duration::from_millis(300);
        let watm = Watm::new(
            &watm_artifacts::Guest::named("plain").unwrap().bytes(),
            Config::default().idle_timeout(idle),
        )
        .unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        // Traffic for longer than the timeout keeps it open...
        for _ in 0..6 {
            conn.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ...silence closes it.
        let mut buf = [0u8; 4];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        assert!(matches!(conn.close().await, Err(Error::Idle(limit)) if limit == idle));
    })
    .await;
}

/// A peer that accepts and closes at once.
async fn closer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    addr
}

// Item 7: a worker that ignored EOF kept its sockets after both sides had
// gone (CLOSE-WAIT, held for minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_both_eofs_is_reclaimed() {
    bounded(async {
        let remote = closer().await;
        // Waits for the cancel fd, whatever happens on its streams.
        let deaf = format!("{} i32.const 0", blocking_read("global.get $cancel"));
        let watm = Watm::new(
            &module(OK, "call $host_dial", OK, &deaf),
            Config::default().close_grace(Duration::from_millis(100)),
        )
        .unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(remote.to_string()).await.unwrap();
        // The application half-closes and waits for a reply that cannot come.
        conn.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
            .await
            .expect("a worker ignoring both EOFs held the connection");
        assert!(read.is_err(), "{read:?}");
        assert!(matches!(conn.close().await, Err(Error::Cut { .. })));
    })
    .await;
}

// ...but a slow application is not a stalled guest: with both sides hung
// up, bytes it has yet to read keep the worker alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_after_both_eofs_gets_every_byte() {
    bounded(async {
        // Reads the request to EOF, answers and closes. The answer is more
        // than the duplex holds (256 KiB), so that the guest waits for the
        // application, and little enough for the rest to fit in the kernel's
        // buffers, so that the remote's FIN arrives (both sides hung up).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let reply = data(300 << 10, 14);
        let sent = reply.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            s.read_to_end(&mut request).await.unwrap();
            s.write_all(&sent).await.unwrap();
        });
        let watm = Watm::new(
            &watm_artifacts::Guest::named("plain").unwrap().bytes(),
            Config::default().close_grace(Duration::from_millis(100)),
        )
        .unwrap();
        // Ten close graces before the application reads.
        let got = request_then_read(&watm, remote, Duration::from_secs(1)).await;
        assert!(got == reply, "{} of {} bytes", got.len(), reply.len());
    })
    .await;
}

// ...and in a listener's setup, a clean end of that connection, not an
// error handed to the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_zero_in_accept_is_no_error() {
    bounded(async {
        let exits = "(call $proc_exit (i32.const 0)) i32.const 0";
        let watm = Watm::new(&module(OK, "call $host_dial", exits, OK), Config::default()).unwrap();
        let listener = Listener::bind(&watm, "127.0.0.1:0").await.unwrap();
        let mut client = connect(listener.local_addr().unwrap()).await;
        // The client's connection is closed...
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the connection the guest ended was left open");
        // ...and accept has nothing to report.
        assert!(tokio::time::timeout(Duration::from_millis(300), listener.accept()).await.is_err());
    })
    .await;
}

/// A dial body that keeps the application's and the network's fds in the
/// globals `$app` and `$net`.
const DIAL_KEEPING_FDS: &str =
    "(global.set $app (local.get $internal)) (global.set $net (call $host_dial)) (global.get $net)";

/// A worker that carries the network's bytes to the application and never
/// reads the application's side (so never sees its EOF), ignoring failed
/// writes; it returns at the network's EOF.
const REPLY_ONLY: &str = "(loop $l
      (i32.store (i32.const 0) (i32.const 256)) (i32.store (i32.const 4) (i32.const 16))
      (i32.store (i32.const 8) (i32.const 0))
      (drop (call $fd_read (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (i32.eqz (i32.load (i32.const 8))) (then (return (i32.const 0))))
      (i32.store (i32.const 4) (i32.load (i32.const 8)))
      (drop (call $fd_write (global.get $app) (i32.const 0) (i32.const 1) (i32.const 12)))
      (br $l))
    i32.const 0";

/// A worker that sleeps an hour at a time, forever: it ignores EOF and its
/// cancel fd.
fn ignores_everything() -> String {
    format!("(loop {SLEEP_AN_HOUR} (br 0)) i32.const 0")
}

/// A remote that holds the connection open, reads what comes, and reports
/// how long after `start` it saw the connection closed.
async fn holder() -> (SocketAddr, tokio::sync::oneshot::Receiver<std::time::Instant>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.read_to_end(&mut Vec::new()).await;
        let _ = tx.send(std::time::Instant::now());
    });
    (addr, rx)
}

/// Dials `remote`, sends "request" and half-closes, waits `pause`, reads
/// to EOF and closes cleanly; yields what it read.
async fn request_then_read(watm: &Watm, remote: SocketAddr, pause: Duration) -> Vec<u8> {
    let mut conn = Dialer::new(watm).unwrap().dial(remote.to_string()).await.unwrap();
    conn.write_all(b"request").await.unwrap();
    conn.shutdown().await.unwrap();
    tokio::time::sleep(pause).await;
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    conn.close().await.unwrap();
    got
}

/// A short orphan limit and close grace, for tests.
fn orphan_config(limit: Duration) -> Config {
    Config::default().close_grace(Duration::from_millis(100)).orphan_timeout(limit)
}

// Item 7, the orphan: the application half-closes (or its client hangs
// up), the guest ignores that EOF, the remote stays open: the worker held
// both sockets for ever. Now the orphan limit cancels it, and the
// application, still there, reads a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_connection_whose_guest_ignores_eof_is_reclaimed() {
    bounded(async {
        let limit = Duration::from_millis(300);
        let config = orphan_config(limit);
        // One guest waits for its cancel fd, the other ignores it too.
        let deaf = format!("{} i32.const 0", blocking_read("global.get $cancel"));
        for worker in [deaf, ignores_everything()] {
            let watm = Watm::new(&module(OK, "call $host_dial", OK, &worker), config.clone()).unwrap();
            let (remote, closed) = holder().await;
            let mut conn = Dialer::new(&watm).unwrap().dial(remote.to_string()).await.unwrap();
            conn.write_all(b"request").await.unwrap();
            conn.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let err = conn.read_to_end(&mut rest).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
            match conn.close().await {
                Err(Error::Orphaned(l)) => assert_eq!(l, limit),
                other => panic!("an orphaned worker: {other:?}"),
            }
            // Its network socket is closed too.
            closed.await.unwrap();
        }
    })
    .await;
}

// The same through a tunnel (`water client`'s shape): the client closes its
// socket, which the guest holds as its application side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_client_left_is_reclaimed() {
    bounded(async {
        let limit = Duration::from_millis(300);
        let config = orphan_config(limit);
        let watm = Watm::new(&module(OK, "call $host_dial", OK, &ignores_everything()), config).unwrap();
        let (remote, closed) = holder().await;
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = connect(front.local_addr().unwrap()).await;
        let (app, _) = front.accept().await.unwrap();
        let mut tunnel = Dialer::new(&watm).unwrap().dial_socket(remote.to_string(), app).await.unwrap();
        client.write_all(b"then gone").await.unwrap();
        let left = std::time::Instant::now();
        drop(client);
        assert!(matches!(tunnel.wait().await, Err(Error::Orphaned(l)) if l == limit));
        let held = closed.await.unwrap() - left;
        assert!(held >= limit, "closed after {held:?}, before the orphan limit");
    })
    .await;
}

// A TCP close looks like a half-close until a write fails: a guest that
// keeps carrying the remote's bytes to a client that has gone (and ignores
// the broken pipe) moves bytes for ever, so the orphan limit alone never
// ends it. The failed write does, as if the application had closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_to_a_gone_client_ends_the_tunnel() {
    bounded(async {
        // The default orphan limit (60 s), which this must not wait for.
        let watm = Watm::new(
            &module(OK, DIAL_KEEPING_FDS, OK, REPLY_ONLY),
            Config::default().close_grace(Duration::from_millis(100)),
        )
        .unwrap();
        // The remote sends a byte every 20 ms until its socket fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let (tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                    () = tokio::time::sleep(Duration::from_millis(20)) => {
                        if s.write_all(b"x").await.is_err() { break }
                    }
                }
            }
            let _ = tx.send(());
        });
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = connect(front.local_addr().unwrap()).await;
        let (app, _) = front.accept().await.unwrap();
        let mut tunnel = Dialer::new(&watm).unwrap().dial_socket(remote.to_string(), app).await.unwrap();
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(20), tunnel.wait())
            .await
            .expect("a guest writing to a gone client held the tunnel");
        assert!(ended.is_err(), "{ended:?}");
        tokio::time::timeout(Duration::from_secs(10), closed).await.unwrap().unwrap();
    })
    .await;
}

// The orphan limit is one of inactivity, not wall clock: a service that
// answers only after EOF, slowly, gets every byte through, both with a
// guest that ignores the EOF (bytes keep moving) and with one that passes
// it on (never an orphan: the remote decides, as with TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_after_eof_is_not_an_orphan() {
    bounded(async {
        let limit = Duration::from_millis(500);
        let reply_only = module(OK, DIAL_KEEPING_FDS, OK, REPLY_ONLY);
        let plain = watm_artifacts::Guest::named("plain").unwrap().bytes();
        // (guest, pause between chunks): a pause under the limit for the
        // guest that ignores EOF (and never carries the request: the
        // service answers without it), over it for the one that passes the
        // request and its EOF on.
        for (bytes, pause) in [(reply_only, Duration::from_millis(150)), (plain, Duration::from_millis(700))]
        {
            let carries_request = pause > limit;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let remote = listener.local_addr().unwrap();
            let reply = data(8 * 1000, 21);
            let sent = reply.clone();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                if carries_request {
                    let mut request = Vec::new();
                    s.read_to_end(&mut request).await.unwrap();
                    assert_eq!(request, b"request");
                }
                for chunk in sent.chunks(1000) {
                    tokio::time::sleep(pause).await;
                    s.write_all(chunk).await.unwrap();
                }
            });
            let watm = Watm::new(&bytes, orphan_config(limit)).unwrap();
            let got = request_then_read(&watm, remote, Duration::ZERO).await;
            assert!(got == reply, "{} of {} bytes", got.len(), reply.len());
        }
    })
    .await;
}

// A relay's two sockets are both peers: a client that hangs up on a guest
// ignoring its EOF, the remote staying open, leaves an orphan too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_client_left_is_reclaimed() {
    bounded(async {
        let limit = Duration::from_millis(300);
        let config = orphan_config(limit);
        let watm = Watm::new(&module(OK, "call $host_dial", OK, &ignores_everything()), config).unwrap();
        let (remote, closed) = holder().await;
        let relay = water::Relay::new(&watm, remote.to_string()).unwrap();
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { relay.serve(front, stop.cancelled_owned()).await }
        });
        let mut client = connect(front_addr).await;
        client.write_all(b"then gone").await.unwrap();
        drop(client);
        // Closed by the orphan limit, with the relay still serving.
        closed.await.unwrap();
        assert!(!serving.is_finished());
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

/// A dialer whose worker never waits: it spins about a millisecond, then
/// writes one byte to the network, for ever, ignoring its cancel fd. Each
/// byte is the longest pause (in ms, at most 255) the guest has seen in
/// its own monotonic clock between two turns: a throttled worker sees the
/// host's pauses there.
const BUSY_MOVER: &str = r#"(module
  (import "env" "host_dial" (func $host_dial (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (global $net (mut i32) (i32.const -1))
  (func (export "_water_v0"))
  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_dial") (param i32) (result i32) (global.set $net (call $host_dial)) (global.get $net))
  (func $now (result i64) (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 16))) (i64.load (i32.const 16)))
  (func (export "_water_worker") (result i32)
    (local $i i32) (local $last i64) (local $now i64) (local $max i64)
    (local.set $last (call $now))
    (loop $turn
      (local.set $i (i32.const 0))
      (loop $spin
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $i) (i32.const 1000000))))
      (local.set $now (call $now))
      (if (i64.gt_u (i64.sub (local.get $now) (local.get $last)) (local.get $max))
        (then (local.set $max (i64.sub (local.get $now) (local.get $last)))))
      (local.set $last (local.get $now))
      (i32.store8 (i32.const 256)
        (select (i32.const 255) (i32.wrap_i64 (i64.div_u (local.get $max) (i64.const 1000000)))
          (i64.gt_u (local.get $max) (i64.const 255000000))))
      (i32.store (i32.const 0) (i32.const 256)) (i32.store (i32.const 4) (i32.const 1))
      (drop (call $fd_write (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $turn))
    i32.const 0))"#;

/// The threads of this process named `name`: nanoseconds spent on a CPU
/// plus waiting for one (runnable), from `/proc/self/task/*/schedstat`.
/// What is left of wall time is time asleep, whatever else loads the
/// machine.
fn busy_or_runnable_ns(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat"))
            .expect("/proc/self/task/*/schedstat (CONFIG_SCHED_INFO) is needed to measure a CPU share");
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        total += fields.next().unwrap() + fields.next().unwrap();
    }
    total
}

// Item 7, the CPU budget: moving a byte now and then made a busy worker
// "not hogging", so one that spins and trickles a byte per tick kept a
// whole thread for ever. Now it is throttled like any hog (it sees the
// host's pauses in its own clock), it is not stopped (it moves bytes), and
// a healthy connection beside such guests stays byte-exact. Its share is
// judged by the runtime's threads' scheduler statistics: unthrottled, four
// spinning movers keep both threads on a CPU or runnable all the time,
// however loaded the machine; throttled, they sleep most of it.
#[test]
fn a_busy_worker_that_trickles_bytes_is_throttled() {
    const THREADS: &str = "mover-test";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bounded(async {
        const MOVERS: usize = 4;
        // Each mover's remote reads until it sees a pause of 100 ms or
        // more (the throttle's longest is 190 ms), then reports.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let (tx, mut throttled) = tokio::sync::mpsc::channel(MOVERS);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if buf[..n].iter().any(|&ms| ms >= 100) {
                            let _ = tx.send(()).await;
                            break;
                        }
                    }
                    // Keeps reading, so that the mover never waits to write.
                    while let Ok(1..) = s.read(&mut buf).await {}
                });
            }
        });
        let busy = Watm::new(
            &wat::parse_str(BUSY_MOVER).unwrap(),
            Config::default().close_grace(Duration::from_millis(100)),
        )
        .unwrap();
        let mut movers = Vec::new();
        for _ in 0..MOVERS {
            movers.push(Dialer::new(&busy).unwrap().dial(remote.to_string()).await.unwrap());
        }
        let echo = echo_server().await;
        let conn = Dialer::new(&guest("xor")).unwrap().dial(echo.to_string()).await.unwrap();
        let sent = data(8 << 20, 23);
        assert!(exchange(conn, &sent).await.unwrap() == sent, "the healthy connection lost bytes");
        for _ in 0..MOVERS {
            tokio::time::timeout(Duration::from_secs(20), throttled.recv())
                .await
                .expect("a busy worker that moves a byte per turn was never throttled");
        }
        // Over a second, the two threads running the four movers are busy
        // or runnable a small part of the time (throttled: ~1/20 of a thread
        // each, 10 % of the pair; unthrottled: 100 %).
        let (busy0, wall0) = (busy_or_runnable_ns(THREADS), std::time::Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = busy_or_runnable_ns(THREADS) - busy0;
        let share = busy as f64 / (2.0 * wall0.elapsed().as_nanos() as f64);
        assert!(share < 0.5, "four throttled movers kept the runtime's threads {:.0} % busy", share * 100.0);
        // Throttled, not stopped: each is still running, and ends when
        // aborted (dropped after the grace, since it ignores its cancel).
        for mover in movers {
            assert!(matches!(mover.abort().await, Err(Error::Stuck(_))));
        }
    }));
}

// Issue 16, item 10: a guest's `fd_close` of its network socket sent no
// FIN while the worker ran (the host's own handles kept the socket open):
// the peer waited for the worker's end. Now the close ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_the_guest_closes_ends_at_its_peer_while_the_worker_runs() {
    bounded(async {
        let (remote, closed_at) = holder().await;
        let dial = "(global.set $net (call $host_dial)) (global.get $net)";
        let worker = format!("(drop (call $fd_close (global.get $net))) {SLEEP_AN_HOUR} i32.const 0");
        let watm = Watm::new(
            &module(OK, dial, OK, &worker),
            Config::default().close_grace(Duration::from_millis(100)),
        )
        .unwrap();
        let conn = Dialer::new(&watm).unwrap().dial(remote.to_string()).await.unwrap();
        // The remote reads EOF while the worker sleeps its hour.
        closed_at.await.unwrap();
        let _ = conn.abort().await;
    })
    .await;
}

// Issue 16, item 11: `connect_timeout` (10 s) could never fire under the
// 5 s setup limit, so a dial that timed out was a setup timeout of the
// guest's (and SOCKS answered "general failure"). The connect's time is
// the host's now: its own limit fires, as a TimedOut I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_times_out_is_a_timed_out_dial_not_a_setup_timeout() {
    bounded(async {
        // A listener that never accepts, its queue filled: a further connect
        // gets no answer (its SYN is dropped).
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(1).unwrap();
        let addr = full.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => queued.push(s),
                _ => break,
            }
        }
        let config =
            Config::default().connect_timeout(Duration::from_secs(2)).setup_timeout(Duration::from_secs(1));
        let watm = Watm::new(&watm_artifacts::Guest::named("plain").unwrap().bytes(), config).unwrap();
        let r = Dialer::new(&watm).unwrap().dial(addr.to_string()).await;
        assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
        drop((queued, full));
    })
    .await;
}
