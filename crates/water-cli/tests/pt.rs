//! `water pt` driven as tor drives it (environment in, PT protocol lines
//! out), without tor: version and environment errors, client and server
//! methods, unknown names, per-transport options, a bad cookie file, the
//! SOCKS5 client half, and the signal and stdin-close semantics. Only
//! loopback sockets; every wait bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs `water pt` to its end with exactly `env` (plus PATH); stdout,
/// stderr and whether it succeeded.
fn pt_once(env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(WATER)
        .arg("pt")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A SOCKS5 CONNECT (no auth) to `target`; the stream after a success
/// reply, or the reply code.
fn socks_connect(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let SocketAddr::V4(v4) = target else { panic!("IPv4 only") };
    let mut msg = vec![5, 1, 0, 5, 1, 0, 1];
    msg.extend_from_slice(&v4.ip().octets());
    msg.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..2], [5, 0]);
    if reply[3] == 0 { Ok(s) } else { Err(reply[3]) }
}

fn round_trip(s: &mut TcpStream, text: &[u8]) {
    s.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, text);
}

/// The protocol lines up to `done`, without `LOG` lines (returned apart).
fn methods_and_logs(pt: &mut Proc, done: &str) -> (Vec<String>, Vec<String>) {
    pt.lines_until(LIMIT, |l| l == done).into_iter().partition(|l| !l.starts_with("LOG "))
}

fn methods(pt: &mut Proc, done: &str) -> Vec<String> {
    methods_and_logs(pt, done).0
}

#[test]
fn version_and_environment_errors_are_pt_lines_and_nothing_on_stderr() {
    let dir = temp_dir("pt-env");
    let state = dir.join("state");
    let state_s = state.to_str().unwrap();
    let blocker = dir.join("file");
    std::fs::write(&blocker, "").unwrap();
    let under_file = blocker.join("state");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "ENV-ERROR TOR_PT_MANAGED_TRANSPORT_VER"),
        (&[("TOR_PT_MANAGED_TRANSPORT_VER", "2,3")], "VERSION-ERROR no-version"),
        (
            &[("TOR_PT_MANAGED_TRANSPORT_VER", "1"), ("TOR_PT_CLIENT_TRANSPORTS", "plain")],
            "ENV-ERROR TOR_PT_STATE_LOCATION",
        ),
        (
            &[
                ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
                ("TOR_PT_STATE_LOCATION", under_file.to_str().unwrap()),
                ("TOR_PT_CLIENT_TRANSPORTS", "plain"),
            ],
            "ENV-ERROR cannot create the state directory",
        ),
        (&[("TOR_PT_MANAGED_TRANSPORT_VER", "1"), ("TOR_PT_STATE_LOCATION", state_s)], "ENV-ERROR neither"),
        (
            &[
                ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
                ("TOR_PT_STATE_LOCATION", state_s),
                ("TOR_PT_CLIENT_TRANSPORTS", "plain"),
                ("TOR_PT_PROXY", "socks5://127.0.0.1:1"),
            ],
            "PROXY-ERROR",
        ),
        (
            &[
                ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
                ("TOR_PT_STATE_LOCATION", state_s),
                ("TOR_PT_SERVER_TRANSPORTS", "plain"),
            ],
            "ENV-ERROR neither TOR_PT_ORPORT nor TOR_PT_EXTENDED_SERVER_PORT",
        ),
    ];
    for (env, want) in cases {
        let (ok, out, err) = pt_once(env);
        assert!(!ok, "{env:?}: exited 0; stdout {out:?}");
        let last = out.lines().last().unwrap_or_default();
        assert!(last.starts_with(want), "{env:?}: last line {last:?}, want {want:?}");
        assert!(err.is_empty(), "{env:?}: stderr {err:?}");
    }
    // Every line after VERSION names an error: no partial methods.
    let (_, out, _) = pt_once(cases[3].0);
    assert_eq!(out.lines().next(), Some("VERSION 1"));

    // A cookie file that is not one: ENV-ERROR before any method.
    let cookie = dir.join("cookie");
    std::fs::write(&cookie, b"! Extended ORPort Auth Cookie !\n too short").unwrap();
    let (ok, out, err) = pt_once(&[
        ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
        ("TOR_PT_STATE_LOCATION", state_s),
        ("TOR_PT_SERVER_TRANSPORTS", "plain"),
        ("TOR_PT_EXTENDED_SERVER_PORT", "127.0.0.1:1"),
        ("TOR_PT_AUTH_COOKIE_FILE", cookie.to_str().unwrap()),
    ]);
    assert!(!ok && err.is_empty());
    assert!(out.lines().last().unwrap().starts_with("ENV-ERROR") && out.contains("auth cookie"), "{out}");
    assert!(!out.contains("SMETHOD"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_methods_socks_half_and_exit_on_stdin_close() {
    let dir = temp_dir("pt-client");
    let state = dir.join("fresh/state");
    let echo = echo_server();
    let mut pt = Proc::start(
        WATER,
        &["pt"],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", state.to_str().unwrap()),
            ("TOR_PT_CLIENT_TRANSPORTS", "plain,nope,xor"),
            ("TOR_PT_EXIT_ON_STDIN_CLOSE", "1"),
        ],
    );
    let (lines, logs) = methods_and_logs(&mut pt, "CMETHODS DONE");
    // Built-in xor without --config: the demo key, said to tor.
    assert!(
        logs.iter().any(|l| l.starts_with("LOG SEVERITY=warning MESSAGE=") && l.contains("demo key")),
        "{logs:?}"
    );
    assert_eq!(lines[0], "VERSION 1");
    assert!(lines[1].starts_with("CMETHOD plain socks5 127.0.0.1:"), "{lines:?}");
    assert!(lines[2].starts_with("CMETHOD-ERROR nope "), "{lines:?}");
    assert!(lines[3].starts_with("CMETHOD xor socks5 127.0.0.1:"), "{lines:?}");
    let plain: SocketAddr = lines[1].rsplit(' ').next().unwrap().parse().unwrap();

    // The SOCKS half: a CONNECT through plain, then bad requests get codes.
    let mut s = socks_connect(plain, echo).unwrap();
    round_trip(&mut s, b"through the client PT");
    let mut bad = TcpStream::connect(plain).unwrap();
    bad.set_read_timeout(Some(LIMIT)).unwrap();
    bad.write_all(b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50").unwrap();
    let mut reply = Vec::new();
    let _ = bad.read_to_end(&mut reply);
    assert_eq!(reply, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    let (_dead, dead) = common::refusing_addr();
    assert_eq!(socks_connect(plain, dead).unwrap_err(), 5);

    // State directory created, the log in it, nothing on stderr.
    assert!(state.join("water-pt.log").is_file());
    // Closing stdin ends it.
    drop(pt.stdin.take());
    let status = pt.wait(LIMIT).expect("water pt did not exit when stdin closed");
    assert!(status.success(), "{status}");
    assert_eq!(pt.stderr_text(), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_methods_options_and_forwarding_to_the_orport() {
    let dir = temp_dir("pt-server");
    let state = dir.join("state");
    let orport = echo_server();
    // The built-in plain, with a `water.public_args` custom section that
    // declares `mode` public (what a client needs), appended.
    let mut public = watm_artifacts::Guest::named("plain").unwrap().bytes().to_vec();
    let (name, keys) = (b"water.public_args", b"mode");
    public.extend_from_slice(&[0, (1 + name.len() + keys.len()) as u8, name.len() as u8]);
    public.extend_from_slice(name);
    public.extend_from_slice(keys);
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("pub.wasm");
    std::fs::write(&module, public).unwrap();
    let module_arg = format!("pub={}", module.display());
    let mut pt = Proc::start(
        WATER,
        &["pt", "--transport", &module_arg],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", state.to_str().unwrap()),
            ("TOR_PT_SERVER_TRANSPORTS", "plain,nope,xor,pub"),
            ("TOR_PT_SERVER_TRANSPORT_OPTIONS", r"plain:mode=a\;b;xor:key=00;pub:mode=a\;b;pub:secret=s"),
            ("TOR_PT_ORPORT", &orport.to_string()),
            ("TOR_PT_EXTENDED_SERVER_PORT", ""),
        ],
    );
    let lines = methods(&mut pt, "SMETHODS DONE");
    assert_eq!(lines[0], "VERSION 1");
    let parts: Vec<&str> = lines[1].split(' ').collect();
    // Options are published only where the transport declares them public:
    // plain and xor declare nothing (xor's key is its secret).
    assert_eq!((parts[0], parts[1], parts.len()), ("SMETHOD", "plain", 3), "{lines:?}");
    assert!(lines[2].starts_with("SMETHOD-ERROR nope "), "{lines:?}");
    // Built-in xor's demo config is key=value, so its key can come as an
    // option; it is not published.
    assert!(lines[3].starts_with("SMETHOD xor ") && !lines[3].contains("ARGS"), "{lines:?}");
    assert!(lines[4].starts_with("SMETHOD pub ") && lines[4].ends_with(" ARGS:mode=a;b"), "{lines:?}");

    let addr: SocketAddr = parts[2].parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    round_trip(&mut s, b"to the ORPort and back");

    // SIGTERM ends it, open connection and all.
    pt.signal(libc::SIGTERM);
    let status = pt.wait(LIMIT).expect("no exit after SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(pt.stderr_text(), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn first_sigint_stops_accepting_and_drains_the_second_ends_it() {
    let dir = temp_dir("pt-sigint");
    let echo = echo_server();
    let mut pt = Proc::start(
        WATER,
        &["pt"],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", dir.join("state").to_str().unwrap()),
            ("TOR_PT_CLIENT_TRANSPORTS", "plain"),
        ],
    );
    let lines = methods(&mut pt, "CMETHODS DONE");
    let proxy: SocketAddr = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
    let mut open = socks_connect(proxy, echo).unwrap();
    round_trip(&mut open, b"before");

    pt.signal(libc::SIGINT);
    // The listener goes away: new connections are refused...
    let deadline = std::time::Instant::now() + LIMIT;
    let mut refused = false;
    while !refused && std::time::Instant::now() < deadline {
        refused = TcpStream::connect(proxy).is_err();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "still accepting after SIGINT");
    // ...while the open one carries on.
    round_trip(&mut open, b"after the first SIGINT");
    assert!(pt.child.try_wait().unwrap().is_none(), "exited with a connection open");

    pt.signal(libc::SIGINT);
    let status = pt.wait(LIMIT).expect("no exit after the second SIGINT");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_transport_options_reach_the_guest_as_its_arguments() {
    let dir = temp_dir("pt-options");
    // The config-echo fixture writes its whole config to the connection it
    // accepted: what the guest saw.
    let wasm = dir.join("config_echo.wasm");
    let wat = include_str!("../../water/tests/fixtures/config_echo.wat");
    std::fs::write(&wasm, wat::parse_str(wat).unwrap()).unwrap();
    let config = dir.join("echo.conf");
    std::fs::write(&config, "mode=module\n").unwrap();
    let mut pt = Proc::start(
        WATER,
        &[
            "pt",
            "--transport",
            &format!("echo={}", wasm.display()),
            "--config",
            &format!("echo={}", config.display()),
        ],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", dir.join("state").to_str().unwrap()),
            ("TOR_PT_SERVER_TRANSPORTS", "echo"),
            ("TOR_PT_SERVER_TRANSPORT_OPTIONS", r"echo:secret=a\;b;echo:mode=bridge"),
            ("TOR_PT_ORPORT", &echo_server().to_string()),
        ],
    );
    let lines = methods(&mut pt, "SMETHODS DONE");
    let addr: SocketAddr = lines[1].split(' ').nth(2).unwrap().parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut seen = Vec::new();
    s.read_to_end(&mut seen).unwrap();
    // The module's config, then the bridge's options for this transport,
    // re-escaped; the later `mode` wins for a guest reading it.
    assert_eq!(String::from_utf8_lossy(&seen), "mode=module\n\nsecret=a\\;b;mode=bridge");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_connection_is_a_pt_log_line_for_tor_and_the_pt_serves_on() {
    let dir = temp_dir("pt-log");
    let (_dead, dead) = common::refusing_addr();
    let mut pt = Proc::start(
        WATER,
        &["pt"],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", dir.join("state").to_str().unwrap()),
            ("TOR_PT_SERVER_TRANSPORTS", "plain"),
            ("TOR_PT_ORPORT", &dead.to_string()),
        ],
    );
    let lines = methods(&mut pt, "SMETHODS DONE");
    let addr: SocketAddr = lines[1].split(' ').nth(2).unwrap().parse().unwrap();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let me = s.local_addr().unwrap().to_string();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let log = pt.wait_for(LIMIT, |l| l.starts_with("LOG ")).expect("no LOG line");
        assert!(
            log.starts_with("LOG SEVERITY=warning MESSAGE=\"connection failed: connect to tor's ORPort"),
            "{log}"
        );
        // tor's log, and ours, never name the client.
        assert!(log.contains("peer=[scrubbed]") && !log.contains(&me), "{log}");
        let file = std::fs::read_to_string(dir.join("state").join("water-pt.log")).unwrap();
        assert!(file.contains("peer=[scrubbed]") && !file.contains(&me), "{file}");
    }
    assert!(pt.child.try_wait().unwrap().is_none(), "the PT exited");
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 16: the first SIGINT's drain had no bound; an open connection kept
// the PT alive for ever. `--drain` bounds it, and the cut is logged.
#[test]
fn the_first_sigints_drain_is_bounded() {
    let dir = temp_dir("pt-drain");
    let echo = echo_server();
    let state = dir.join("state");
    let mut pt = Proc::start(
        WATER,
        &["pt", "--drain", "1"],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", state.to_str().unwrap()),
            ("TOR_PT_CLIENT_TRANSPORTS", "plain"),
        ],
    );
    let lines = methods(&mut pt, "CMETHODS DONE");
    let proxy: SocketAddr = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
    let mut open = socks_connect(proxy, echo).unwrap();
    round_trip(&mut open, b"held open through the drain");
    pt.signal(libc::SIGINT);
    let status = pt.wait(LIMIT).expect("the drain did not end");
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(state.join("water-pt.log")).unwrap();
    assert!(log.contains("1 connections still open after the drain were cut"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
