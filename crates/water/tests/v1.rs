//! WATM v1 modules as deployed: water-go's own v1 test modules (TinyGo,
//! `tests/fixtures/v1`, checked against their recorded SHA-256) run in every
//! role over real sockets, against our v0 reference guests and an echo
//! service, byte for byte; and WAT v1 modules for what those cannot show:
//! the config file under `/conf`, the dialer whose guest names the address
//! (only under the application's dial filter), and hostile arguments.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Error, Relay, Role, Watm};

use support::{bounded, data, echo_server, echoing_listener, guest};

/// A fixture, after checking its hash.
fn fixture(name: &str) -> Vec<u8> {
    let want = match name {
        "plain" => "4fb6e0010553ed13be7dbea4497b6736896ddf5c6a1987733352eaddc0808dd4",
        "reverse" => "6d5ab48d5345dc6055786206715cb01bdc0f23adc7cda344e304f65b08848ec6",
        _ => unreachable!(),
    };
    let path = format!("{}/tests/fixtures/v1/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap();
    let got: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, want, "{path} is not the module the README records");
    bytes
}

fn v1(name: &str, config: Config) -> Watm {
    Watm::new(&fixture(name), config).unwrap()
}

/// The fixture loaded with the default config, compiled once for every
/// test here (a 660 KiB TinyGo module takes seconds in a debug build).
fn v1_default(name: &str) -> Watm {
    static LOADED: std::sync::Mutex<Vec<(String, Watm)>> = std::sync::Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap();
    if let Some((_, w)) = loaded.iter().find(|(n, _)| n == name) {
        return w.clone();
    }
    let w = v1(name, Config::default());
    loaded.push((name.to_string(), w.clone()));
    w
}

/// An echo service that counts the bytes it got.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counted.fetch_add(n, Ordering::SeqCst);
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// Sends `sent` in 32 KiB pieces, reading each one back before the next
/// (no half-close: a v1 worker ends at the first EOF it sees). One piece at
/// a time: the v1 library's single-threaded worker blocks writing one way
/// while it cannot read the other, so a peer that echoes everything at once
/// can fill both ways' buffers and wait on it for ever (water-go's host has
/// the same limit).
async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    sent: &[u8],
) -> Vec<u8> {
    let mut got = vec![0u8; sent.len()];
    for (out, back) in sent.chunks(32 << 10).zip(got.chunks_mut(32 << 10)) {
        s.write_all(out).await.unwrap();
        s.read_exact(back).await.unwrap();
    }
    got
}

#[test]
fn the_fixtures_load_as_v1_with_every_role() {
    for name in ["plain", "reverse"] {
        let watm = v1_default(name);
        assert_eq!(watm.abi(), "v1");
        for role in [Role::Dialer, Role::Listener, Role::Relay, Role::GuestDialer] {
            assert!(watm.supports(role), "{name}: {role:?}");
        }
    }
    assert_eq!(guest("plain").abi(), "v0");
    assert!(!guest("plain").supports(Role::GuestDialer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_dialer_reaches_an_echo_service_byte_for_byte() {
    bounded(async {
        let (echo, count) = counting_echo().await;
        let watm = v1_default("plain");
        let sent = data(1 << 20, 1);
        let conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        let got = round_trip(conn, &sent).await;
        assert!(got == sent, "{} bytes back", got.len());
        // With a half-close: the guest ends at the application's EOF (its
        // library has no half-close); every byte sent reaches the service.
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        let before = count.load(Ordering::SeqCst);
        let sent = &sent[..64 << 10];
        conn.write_all(sent).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        let _ = conn.read_to_end(&mut back).await;
        assert!(back.len() <= sent.len() && back == sent[..back.len()], "a wrong byte came back");
        let _ = conn.close().await;
        // The service sees every byte: wait for it (bounded by the test).
        while count.load(Ordering::SeqCst) - before < sent.len() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(count.load(Ordering::SeqCst) - before, sent.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v0_plain_talk_to_each_other_both_ways() {
    if std::env::var("V1_DEBUG").is_ok() {
        let _ = tracing_subscriber::fmt().with_env_filter("water=debug,warn").with_test_writer().try_init();
    }
    bounded(async {
        let echo = echo_server().await;
        let (ours, theirs) = (guest("plain"), v1_default("plain"));
        let sent = data(512 << 10, 2);
        for (dialer, listener, what) in
            [(&theirs, &ours, "v1 dialer, v0 listener"), (&ours, &theirs, "v0 dialer, v1 listener")]
        {
            let addr = echoing_listener(listener).await;
            let conn = Dialer::new(dialer).unwrap().dial(addr.to_string()).await.unwrap();
            assert!(round_trip(conn, &sent).await == sent, "{what}");
        }
        // And a v1 dialer straight to the service, while another runs.
        let conn = Dialer::new(&theirs).unwrap().dial(echo.to_string()).await.unwrap();
        assert!(round_trip(conn, &sent).await == sent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_reverse_dialer_and_listener_carry_messages() {
    if std::env::var("V1_DEBUG").is_ok() {
        let _ = tracing_subscriber::fmt().with_env_filter("water=trace,warn").with_test_writer().try_init();
    }
    bounded(async {
        let watm = v1_default("reverse");
        let addr = echoing_listener(&watm).await;
        let mut conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        // One message at a time, each smaller than the guest's 1 KiB read
        // buffer: reverse reverses each read, so a message must arrive whole.
        for (i, len) in [1usize, 17, 500, 1000].into_iter().enumerate() {
            let msg = data(len, 10 + i as u64);
            conn.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; len];
            conn.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg, "message {i}");
        }
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_relay_joins_a_client_to_the_service() {
    bounded(async {
        let echo = echo_server().await;
        let watm = v1_default("plain");
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let stop = CancellationToken::new();
        let relay = Relay::new(&watm, echo.to_string()).unwrap();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { relay.serve(front, stop.cancelled_owned()).await }
        });
        let sent = data(256 << 10, 3);
        for _ in 0..2 {
            let s = TcpStream::connect(addr).await.unwrap();
            assert!(round_trip(s, &sent).await == sent);
        }
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_named_address_needs_the_applications_dial_filter() {
    bounded(async {
        // plain.wasm's "fixed" dialer names tcp localhost:7700 itself.
        let watm = v1_default("plain");
        let r = Dialer::new(&watm).unwrap().dial_by_guest().await;
        assert!(matches!(&r, Err(Error::Guest { errno, .. }) if *errno == water::Errno::ACCES), "{r:?}");
        // A filter that refuses that address: refused before any packet.
        let watm = v1("plain", Config::default().dial_filter(|addr| addr.port() != 7700));
        let r = Dialer::new(&watm).unwrap().dial_by_guest().await;
        assert!(r.is_err(), "{r:?}");
        // A filter that allows it: the guest's own address is reached.
        let Ok(listener) = TcpListener::bind("127.0.0.1:7700").await else {
            eprintln!("port 7700 is taken here: the allowed guest-named dial is not exercised");
            return;
        };
        let watm =
            v1("plain", Config::default().dial_filter(|addr| addr.ip().is_loopback() && addr.port() == 7700));
        let dial = tokio::spawn(async move { Dialer::new(&watm).unwrap().dial_by_guest().await });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut conn = dial.await.unwrap().unwrap();
        conn.write_all(b"to the guest's address").await.unwrap();
        let mut got = [0u8; 22];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to the guest's address");
        let _ = conn.close().await;
    })
    .await;
}

#[test]
fn a_v0_module_has_no_guest_named_dialer() {
    let r = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Dialer::new(&guest("plain")).unwrap().dial_by_guest());
    assert!(matches!(r, Err(Error::RoleNotSupported { .. })), "{r:?}");
}

/// A v1 module (WAT) whose `watm_init_v1` reads its config the way a
/// TinyGo guest's `os.Open("/conf/watm.cfg")` does (the preopen scan, then
/// `path_open` under it) and fails with `-(100 + step)` at the first step
/// that does not answer as it should; hostile arguments included.
const CONFIG_READER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "env" "water_dial_fixed" (func $dial_fixed (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "watm.cfg")
  (data (i32.const 220) "../watm.cfg")
  (data (i32.const 240) "/conf")
  (func $fail (param i32) (result i32) (i32.sub (i32.const -100) (local.get 0)))
  (func (export "watm_init_v1") (result i32)
    ;; fd 3 is the preopen /conf: tag 0 (dir), name length 5.
    (if (call $prestat (i32.const 3) (i32.const 0)) (then (return (call $fail (i32.const 1)))))
    (if (i32.ne (i32.load (i32.const 4)) (i32.const 5)) (then (return (call $fail (i32.const 2)))))
    (if (call $dir_name (i32.const 3) (i32.const 16) (i32.const 5)) (then (return (call $fail (i32.const 3)))))
    (if (i32.ne (i32.load (i32.const 16)) (i32.load (i32.const 240))) (then (return (call $fail (i32.const 4)))))
    ;; fd 4 is not a preopen: badf ends the scan.
    (if (i32.ne (call $prestat (i32.const 4) (i32.const 0)) (i32.const 8)) (then (return (call $fail (i32.const 5)))))
    ;; Hostile: a path outside memory is fault; a name not in it, noent;
    ;; write rights, rofs; creating, rofs; never a trap.
    (if (i32.ne (call $open (i32.const 3) (i32.const 0) (i32.const 65530) (i32.const 100) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)) (i32.const 21))
      (then (return (call $fail (i32.const 6)))))
    (if (i32.ne (call $open (i32.const 3) (i32.const 0) (i32.const 220) (i32.const 11) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)) (i32.const 44))
      (then (return (call $fail (i32.const 7)))))
    (if (i32.ne (call $open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 0) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 32)) (i32.const 69))
      (then (return (call $fail (i32.const 8)))))
    (if (i32.ne (call $open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 1) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)) (i32.const 69))
      (then (return (call $fail (i32.const 9)))))
    ;; The file, read-only: its bytes.
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32))
      (then (return (call $fail (i32.const 10)))))
    (i32.store (i32.const 40) (i32.const 300)) (i32.store (i32.const 44) (i32.const 64))
    (if (call $read (i32.load (i32.const 32)) (i32.const 40) (i32.const 1) (i32.const 48)) (then (return (call $fail (i32.const 11)))))
    (if (i32.ne (i32.load (i32.const 48)) (i32.const 6)) (then (return (call $fail (i32.const 12)))))
    (if (i32.ne (i32.load (i32.const 300)) (i32.const 0x3d79656b)) (then (return (call $fail (i32.const 13)))))
    (i32.const 0))
  (func (export "watm_ctrlpipe_v1") (param i32) (result i32) (i32.const 0))
  (func (export "watm_dial_v1") (param i32) (result i32) (call $dial_fixed))
  (func (export "watm_start_v1") (result i32) (i32.const 0)))"#;

#[tokio::test]
async fn a_v1_guest_reads_its_config_from_conf_and_hostile_opens_are_errors() {
    let module = wat::parse_str(CONFIG_READER).unwrap();
    let watm = Watm::new(&module, Config::default().transport_config("key=42")).unwrap();
    assert_eq!(watm.abi(), "v1");
    watm.check_init().await.unwrap();
    // Without a config there is no /conf: the guest's first step fails.
    let bare = Watm::new(&module, Config::default()).unwrap();
    let r = bare.check_init().await;
    assert!(matches!(&r, Err(Error::Guest { errno, .. }) if errno.0 == 101), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_forwarder_serves_our_v0_dialer_like_water_server() {
    bounded(async {
        let echo = echo_server().await;
        let watm = v1_default("plain");
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let stop = CancellationToken::new();
        let forwarder = water::Forwarder::new(&watm, echo.to_string()).unwrap();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { forwarder.serve(front, stop.cancelled_owned()).await }
        });
        let sent = data(256 << 10, 4);
        for _ in 0..2 {
            let conn = Dialer::new(&guest("plain")).unwrap().dial(addr.to_string()).await.unwrap();
            assert!(round_trip(conn, &sent).await == sent);
        }
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

/// One reference guest's configs for a pair of ends: (name, server end,
/// client end). obfs4's client end names the bridge by its node ID and
/// public key (what a `cert` encodes); ss's client end needs a `target`,
/// which a listener checks but does not connect to.
fn pair_configs() -> Vec<(&'static str, Option<String>, Option<String>)> {
    // obfs4proxy's own state (guests/obfs4's known-answer identity).
    const NODE: &str = "a936ec4d8a02ec2f939e3864e18332cd92984dec";
    const PRIVATE: &str = "e63895f18796cea0c1710cd61a85813ce3cdd719bb2fa424630a8bcc17a7b7c9";
    const PUBLIC: &str = "8e854b9673f71843dedcdad25bdc5ea291df9f2f8a30f10a1baac46e095c6e6a";
    const SEED: &str = "94dc33c220248b3fa0e4e7202129f4600cd0e8cb72c3df6a";
    let ss = "method=chacha20-ietf-poly1305\npassword=v1 and v0\n".to_string();
    vec![
        ("plain", None, None),
        ("reverse", None, None),
        ("xor", Some(support::XOR_KEY.into()), Some(support::XOR_KEY.into())),
        ("ss", Some(ss.clone()), Some(ss + "target=127.0.0.1:9\n")),
        (
            "obfs4",
            Some(format!("node-id={NODE};private-key={PRIVATE};drbg-seed={SEED};iat-mode=0")),
            Some(format!("node-id={NODE};public-key={PUBLIC};iat-mode=0")),
        ),
    ]
}

fn built(guest: watm_artifacts::Guest, config: &Option<String>) -> Watm {
    let mut c = Config::default();
    if let Some(text) = config {
        c = c.transport_config(text.clone());
    }
    Watm::new(guest.wasm, c).unwrap_or_else(|e| panic!("{}: {e}", guest.name))
}

/// Every reference guest's v1 build (the SDK's feature `v1`) against its
/// v0 build, both ways round: a v1 dialer to a v0 listener and a v0 dialer
/// to a v1 listener, 1 MiB each way and the reply after a half-close, byte
/// for byte. Same SDK worker, other exports: the wire must not differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_v1_builds_talk_to_their_v0_builds_both_ways() {
    for (name, server, client) in pair_configs() {
        let v0 = watm_artifacts::Guest::named(name).unwrap();
        let v1 = *watm_artifacts::GUESTS_V1.iter().find(|g| g.name == name).unwrap();
        // Compiled outside the time bound: a debug build of the compiler
        // takes seconds per module on a loaded machine.
        let (v0_server, v0_client) = (built(v0, &server), built(v0, &client));
        let (v1_server, v1_client) = (built(v1, &server), built(v1, &client));
        assert_eq!((v0_server.abi(), v1_server.abi()), ("v0", "v1"), "{name}");
        // The SDK's v1 builds declare that they handle short writes, so
        // their writes stay non-blocking (made whole, a single-threaded
        // worker can deadlock with a peer that waits for it to read).
        let declares = wasmparser::Parser::new(0).parse_all(v1.wasm).map_while(Result::ok).any(
            |p| matches!(p, wasmparser::Payload::CustomSection(s) if s.name() == water::SHORT_WRITES_SECTION),
        );
        assert!(declares, "{name}: the v1 build lacks {}", water::SHORT_WRITES_SECTION);
        for (dialing, listening, how) in [
            (&v1_client, &v0_server, "v1 dialer -> v0 listener"),
            (&v0_client, &v1_server, "v0 dialer -> v1 listener"),
        ] {
            bounded(async {
                let addr = echoing_listener(listening).await;
                let mut conn = Dialer::new(dialing).unwrap().dial(addr.to_string()).await.unwrap();
                // reverse reverses each read: whole-message checks only hold
                // for messages one read takes, so it gets small ones.
                let sent = if name == "reverse" { data(900, 7) } else { data(1 << 20, 7) };
                let (mut r, mut w) = tokio::io::split(&mut conn);
                let writer = async {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let reader = r.read_to_end(&mut got);
                let ((), read) = tokio::join!(writer, reader);
                read.unwrap_or_else(|e| panic!("{name}, {how}: {e}"));
                assert!(got == sent, "{name}, {how}: {} bytes back of {}", got.len(), sent.len());
            })
            .await;
        }
    }
}
