//! `water client --socks5`, spawned as a user would: `curl
//! --socks5-hostname` through it to a `water server` in front of Python's
//! web server (bridge mode), the credentials reaching the guest as transport
//! arguments, the SOCKS target reaching it as `target=` (proxy mode), and
//! malformed or unsupported requests answered with their reply codes while
//! the process keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;

use common::*;

/// The config-echo fixture (a guest that writes its whole config to the
/// network socket it dialed) as a `.wasm` file.
fn config_echo_wasm(dir: &std::path::Path) -> PathBuf {
    let wat = include_str!("../../water/tests/fixtures/config_echo.wat");
    let path = dir.join("config_echo.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

/// A server that reads one connection to EOF, in a thread.
fn recorder() -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let task = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    (addr, task)
}

fn socks(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Sends `bytes` and reads until the server closes. (The server may close
/// before reading everything, so writing may fail: that is fine.)
fn answer(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = socks(addr);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// Greets with username/password, sends the credentials and a CONNECT to
/// 127.0.0.1:`port`; returns the stream and the bytes of both replies.
fn connect_with_credentials(proxy: SocketAddr, user: &[u8], pass: &[u8], port: u16) -> (TcpStream, Vec<u8>) {
    let mut s = socks(proxy);
    let mut msg = vec![5, 1, 2, 1, user.len() as u8];
    msg.extend_from_slice(user);
    msg.push(pass.len() as u8);
    msg.extend_from_slice(pass);
    msg.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1]);
    msg.extend_from_slice(&port.to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut replies = vec![0u8; 2 + 2 + 10];
    s.read_exact(&mut replies).unwrap();
    (s, replies)
}

#[test]
#[cfg_attr(not(peer_curl), ignore = "needs curl and python3: apt-get install curl python3")]
fn curl_through_socks5_bridge_mode_over_plain_and_xor() {
    let dir = temp_dir("socks-curl");
    let body = pattern(300_000, 5);
    std::fs::write(dir.join("file.bin"), &body).unwrap();
    let (_web, web) = web_server(&dir);
    // xor's config is still its legacy bare hex key (a `key=` argument
    // comes with the Shadowsocks work), so the key is a --config file here.
    std::fs::write(dir.join("key"), "c0ffee42").unwrap();
    let key = dir.join("key");
    for t in ["plain", "xor"] {
        let config: &[&str] = if t == "xor" { &["--config", key.to_str().unwrap()] } else { &[] };
        let server_args =
            [&["server", "-t", t, "--listen", "127.0.0.1:0", "--forward", &web.to_string()], config];
        let (_server, server) = Proc::listening(&server_args.concat());
        let (mut client, proxy) =
            Proc::listening(&[&["client", "-t", t, "--socks5", "--listen", "127.0.0.1:0"], config].concat());
        // The SOCKS target is the water server: the transport dials it.
        let got = curl_socks(&proxy.to_string(), &format!("http://{server}/file.bin"), &[])
            .unwrap_or_else(|e| panic!("{t}: {e}; water: {}", client.stderr_text()));
        assert!(got == body, "{t}: {} bytes back, not the file", got.len());

        // A target with nothing listening: curl is told the connection was
        // refused (reply 5), and the proxy serves on.
        let (_dead, dead) = common::refusing_addr();
        let err = curl_socks(&proxy.to_string(), &format!("http://{dead}/"), &[]).unwrap_err();
        assert!(err.contains("SOCKS5") && err.contains("(5)"), "{t}: reply 5 expected: {err}");
        assert!(curl_socks(&proxy.to_string(), &format!("http://{server}/file.bin"), &[]).is_ok());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bridge_mode_credentials_are_the_guests_arguments_and_never_logged() {
    let dir = temp_dir("socks-args");
    let wasm = config_echo_wasm(&dir);
    let mut client = Proc::start(
        WATER,
        &["client", "-t", wasm.to_str().unwrap(), "--socks5", "--listen", "127.0.0.1:0"],
        &[("WATER_LOG", "trace")],
    );
    let proxy: SocketAddr =
        client.line(LIMIT).unwrap().strip_prefix("listening on ").unwrap().parse().unwrap();

    // Tor's form: the arguments in the username, the password one NUL.
    let (target, seen) = recorder();
    let (_s, replies) = connect_with_credentials(proxy, b"k=v;secret=hunter2", b"\0", target.port());
    assert_eq!(replies[..4], [5, 2, 1, 0], "method user/pass, auth success");
    assert_eq!(replies[4..6], [5, 0], "CONNECT succeeded");
    assert_eq!(seen.join().unwrap(), b"k=v;secret=hunter2");

    // Split across username and password: concatenated.
    let (target, seen) = recorder();
    let (_s, replies) = connect_with_credentials(proxy, b"key=ab", b"cd;x=1", target.port());
    assert_eq!(replies[2..6], [1, 0, 5, 0]);
    assert_eq!(seen.join().unwrap(), b"key=abcd;x=1");

    // Not key=value: authentication fails (RFC 1929 status 1), no dial.
    let mut s = socks(proxy);
    s.write_all(b"\x05\x01\x02\x01\x07hunter2\x01\x00").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(got, [5, 2, 1, 1]);
    // That failure is logged (a path that formats what the client sent)...
    let line = client
        .wait_stderr(LIMIT, |l| l.contains("not key=value"))
        .unwrap_or_else(|log| panic!("the refused credentials were not logged:\n{log}"));
    assert!(!line.contains("hunter2"), "a secret argument reached the log: {line}");

    // ...and so is a dial that fails with secret arguments.
    let (_closed, closed) = common::refusing_addr();
    let closed = closed.port();
    let mut s = socks(proxy);
    let mut msg = b"\x05\x01\x02\x01\x0esecret=hunter2\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01".to_vec();
    msg.extend_from_slice(&closed.to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut replies = [0u8; 14];
    s.read_exact(&mut replies).unwrap();
    assert_eq!(replies[..6], [5, 2, 1, 0, 5, 5], "auth success, then connection refused");
    let line = client
        .wait_stderr(LIMIT, |l| l.contains("connection failed: dial [scrubbed]"))
        .unwrap_or_else(|log| panic!("the failed dial was not logged:\n{log}"));
    assert!(!line.contains("hunter2"), "a secret argument reached the log: {line}");

    // Nothing else the proxy logged at trace level holds it either.
    let log = client.stderr_text();
    assert!(!log.contains("hunter2"), "a secret argument reached the log:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proxy_mode_dials_remote_and_the_target_is_an_argument() {
    let dir = temp_dir("socks-proxy");
    let wasm = config_echo_wasm(&dir);
    let (remote, seen) = recorder();
    let (_client, proxy) = Proc::listening(&[
        "client",
        "-t",
        wasm.to_str().unwrap(),
        "--socks5",
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote.to_string(),
    ]);
    // A name as target (ATYP 3): never resolved nor dialed here, only
    // handed to the guest.
    let mut s = socks(proxy);
    s.write_all(b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.org\x01\xbb").unwrap();
    let mut replies = [0u8; 12];
    s.read_exact(&mut replies).unwrap();
    assert_eq!(replies[..4], [5, 0, 5, 0]);
    assert_eq!(seen.join().unwrap(), b"target=example.org:443");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_and_unsupported_requests_get_reply_codes_and_the_proxy_lives_on() {
    let echo_addr = echo_server();
    let (mut client, proxy) =
        Proc::listening(&["client", "-t", "plain", "--socks5", "--listen", "127.0.0.1:0"]);
    let reply = |code: u8| vec![5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    // SOCKS4: not answered, closed.
    assert_eq!(answer(proxy, b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00"), b"");
    // Only GSSAPI offered: no acceptable method.
    assert_eq!(answer(proxy, b"\x05\x01\x01"), [5, 0xff]);
    // BIND and UDP ASSOCIATE: command not supported.
    assert_eq!(answer(proxy, b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"), reply(7));
    assert_eq!(answer(proxy, b"\x05\x01\x00\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50"), reply(7));
    // Address type 9: not supported.
    assert_eq!(answer(proxy, b"\x05\x01\x00\x05\x01\x00\x09"), reply(8));
    // A name that is not UTF-8: host unreachable.
    assert_eq!(answer(proxy, b"\x05\x01\x00\x05\x01\x00\x03\x02\xff\xfe\x00\x50"), reply(4));
    // Truncated, then the client leaves.
    assert_eq!(answer(proxy, b"\x05\x01\x00\x05\x01"), [5, 0]);
    // Garbage.
    assert_eq!(answer(proxy, &[0xff; 64]), b"");

    // Still serving: a real CONNECT through plain to an echo service.
    let mut s = socks(proxy);
    let mut msg = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01".to_vec();
    msg.extend_from_slice(&echo_addr.port().to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut replies = [0u8; 12];
    s.read_exact(&mut replies).unwrap();
    assert_eq!(replies, *reply(0));
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    assert!(client.child.try_wait().unwrap().is_none(), "the proxy exited: {}", client.stderr_text());
}

// Issue 16 item 6: a connection whose guest fails after the reply ended
// the SOCKS client's socket with a FIN, a clean end of a truncated stream.
#[test]
fn a_failed_connection_resets_the_socks_client() {
    let dir = temp_dir("socks-fails");
    let wasm = dir.join("fails.wasm");
    let wat = r#"(module
      (import "env" "host_dial" (func $host_dial (result i32)))
      (memory (export "memory") 1)
      (func (export "_water_v0"))
      (func (export "_water_init") (result i32) i32.const 0)
      (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
      (func (export "_water_dial") (param i32) (result i32) call $host_dial)
      (func (export "_water_worker") (result i32) i32.const -71))"#;
    std::fs::write(&wasm, wat::parse_str(wat).unwrap()).unwrap();
    let echo = echo_server();
    let (_client, proxy) =
        Proc::listening(&["client", "-t", wasm.to_str().unwrap(), "--socks5", "--listen", "127.0.0.1:0"]);
    let mut s = socks(proxy);
    let mut msg = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01".to_vec();
    msg.extend_from_slice(&echo.port().to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut replies = [0u8; 12];
    s.read_exact(&mut replies).unwrap();
    assert_eq!(replies[..4], [5, 0, 5, 0], "the dial succeeded");
    let end = s.read_to_end(&mut Vec::new());
    assert!(matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{end:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
