//! Per-connection transport arguments: the bytes a guest's `pull_config`
//! reads are the module's config, a line break, then the connection's
//! arguments. A WAT fixture reads its config in `_water_init` and writes it,
//! byte for byte, to the network socket it dialed or accepted, so the test
//! sees exactly what the guest saw, over real loopback sockets.

mod support;

use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use water::{Config, Dialer, Error, Listener, Relay, TransportArgs, Watm};
use water_abi::args;

/// Reads the whole config into memory at 1024 (no config: zero bytes) and
/// writes it to the network fd of whichever role runs; the worker ends at
/// once, which closes the socket.
const CONFIG_ECHO: &str = include_str!("fixtures/config_echo.wat");

fn config_echo(config: Option<&str>) -> Watm {
    let wasm = wat::parse_str(CONFIG_ECHO).unwrap();
    let cfg = match config {
        Some(c) => Config::default().transport_config(c),
        None => Config::default(),
    };
    Watm::new(&wasm, cfg).unwrap()
}

/// A server that reads one connection to EOF.
async fn recorder() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    (addr, task)
}

/// What the dialing guest saw as its config.
async fn dialed_config(watm: &Watm, args: &TransportArgs) -> Result<Vec<u8>, Error> {
    let (addr, seen) = recorder().await;
    let conn = Dialer::new(watm)?.dial_with_args(addr, args).await?;
    let got = seen.await.unwrap();
    conn.close().await?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_guest_reads_config_then_connection_args_and_they_win() {
    bounded(async {
        let watm = config_echo(Some("method=a\nkey=module;mode=1"));
        let args = TransportArgs::new().arg("key", "conn;with=escapes\\").arg("target", "10.0.0.1:443");
        let seen = dialed_config(&watm, &args).await.unwrap();
        assert_eq!(
            seen,
            b"method=a\nkey=module;mode=1\nkey=conn\\;with\\=escapes\\\\;target=10.0.0.1:443".to_vec()
        );
        // What a guest's parser makes of it: the connection's key wins,
        // the module's other keys stay, the escapes come back.
        let key = args::find(&seen, "key").unwrap().unwrap();
        assert!(key.eq_bytes(b"conn;with=escapes\\"), "{key}");
        assert!(args::find(&seen, "mode").unwrap().unwrap().eq_bytes(b"1"));

        // Plain `dial` and empty arguments: the module's config untouched.
        let plain = dialed_config(&watm, &TransportArgs::new()).await.unwrap();
        assert_eq!(plain, b"method=a\nkey=module;mode=1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_alone_when_the_module_has_no_config() {
    bounded(async {
        let watm = config_echo(None);
        assert_eq!(dialed_config(&watm, &TransportArgs::new()).await.unwrap(), b"");
        let args = TransportArgs::parse("cert=AAAA==;iat-mode=0").unwrap();
        assert_eq!(dialed_config(&watm, &args).await.unwrap(), b"cert=AAAA==;iat-mode=0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_config_with_arguments_is_a_typed_error_and_no_connection() {
    bounded(async {
        // A bare hex key (xor's legacy config) is not key=value.
        let watm = config_echo(Some("c0ffee42\n"));
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let args = TransportArgs::new().arg("key", "00");
        match Dialer::new(&watm).unwrap().dial_with_args(addr.clone(), &args).await {
            Err(Error::ConfigNotKeyValue(why)) => assert!(why.contains("byte 0"), "{why}"),
            other => panic!("expected ConfigNotKeyValue, got {other:?}"),
        }
        // Nothing was dialed: the guest never ran.
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(200), server.accept()).await;
        assert!(nothing.is_err(), "the failed dial still connected");
        // Without arguments the legacy config still works as before.
        assert_eq!(dialed_config(&watm, &TransportArgs::new()).await.unwrap(), b"c0ffee42\n");
        // The listener refuses before it binds.
        let bound = Listener::bind_with_args(&watm, "127.0.0.1:0", args.clone()).await;
        assert!(matches!(bound, Err(Error::ConfigNotKeyValue(_))), "{bound:?}");
        assert!(matches!(Relay::new(&watm, addr).unwrap().with_args(args), Err(Error::ConfigNotKeyValue(_))));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_relay_guests_get_their_arguments() {
    bounded(async {
        let watm = config_echo(Some("k=module"));
        let args = TransportArgs::new().arg("k", "conn");

        let listener = Listener::bind_with_args(&watm, "127.0.0.1:0", args.clone()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let (conn, _) = listener.accept().await.unwrap();
        assert_eq!(client.await.unwrap(), b"k=module\nk=conn");
        conn.close().await.unwrap();

        let (remote, seen) = recorder().await;
        let relay = Relay::new(&watm, remote).unwrap().with_args(args).unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { relay.serve(front, stop.cancelled_owned()).await }
        });
        let _client = TcpStream::connect(front_addr).await.unwrap();
        assert_eq!(seen.await.unwrap(), b"k=module\nk=conn");
        stop.cancel();
        serving.await.unwrap().unwrap();
    })
    .await;
}

#[test]
fn args_debug_hides_values_and_parse_rejects_bad_text() {
    let args = TransportArgs::new().arg("password", "hunter2").arg("target", "a:1");
    let shown = format!("{args:?}");
    assert!(!shown.contains("hunter2") && shown.contains("password"), "{shown}");
    assert_eq!(args.get("password").as_deref(), Some(&b"hunter2"[..]));
    assert!(TransportArgs::parse("novalue").is_err());
    assert!(TransportArgs::parse("").unwrap().is_empty());
    let both = TransportArgs::parse("a=1").unwrap().extend(&TransportArgs::new().arg("a", "2"));
    assert_eq!(both.as_bytes(), b"a=1;a=2");
    assert_eq!(both.get("a").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_transport_declares_which_arguments_are_public() {
    let load = |name: &str| {
        let g = watm_artifacts::Guest::named(name).unwrap();
        water::Watm::new(&g.bytes(), water::Config::default()).unwrap()
    };
    // obfs4's bridge line: cert and iat-mode; its private key never.
    assert_eq!(load("obfs4").public_args(), ["cert", "iat-mode"]);
    // ss's password and xor's key are secrets: nothing is public.
    assert!(load("ss").public_args().is_empty());
    assert!(load("xor").public_args().is_empty());
}
