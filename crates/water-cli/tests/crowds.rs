//! A `water server -t ss` against crowds, as a censor or a careless botnet
//! would send them, with a real `water client -t ss` beside them:
//! - under a low open-file limit, hundreds of silent connections neither
//!   exhaust the server's fds nor lock the client out (each costs one
//!   socket, the upstream being dialed only once a client is taken in, and
//!   a full server sheds the oldest silent connection for a new one);
//! - probes cause no upstream connection;
//! - a silent connection is closed at the handshake deadline.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{LIMIT, Proc, echo, exchange, pattern, temp_dir};

const WATER: &str = env!("CARGO_BIN_EXE_water");

fn config(dir: &Path, name: &str, target: Option<SocketAddr>) -> String {
    let mut text = "method=chacha20-ietf-poly1305\npassword=crowd test\n".to_string();
    if let Some(t) = target {
        text += &format!("target={t}\n");
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `water args` started by `sh` under an open-file limit of `nofile`
/// (soft and hard), and its address.
fn water_limited(nofile: u32, args: &[&str]) -> (Proc, SocketAddr) {
    let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    let mut all = vec!["-c", script.as_str(), WATER];
    all.extend_from_slice(args);
    let mut p = Proc::start("sh", &all, &[("WATER_LOG", "info")]);
    let line =
        p.line(LIMIT).unwrap_or_else(|| panic!("no `listening on` line; stderr:\n{}", p.stderr_text()));
    let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
    (p, addr)
}

#[test]
fn silent_crowds_under_a_low_fd_limit_do_not_lock_a_client_out() {
    let dir = temp_dir("crowds-fd");
    let echo = echo();
    let fwd = echo.addr.to_string();
    let server_cfg = config(&dir, "server", None);
    let (server, server_addr) = water_limited(
        256,
        &["server", "-t", "ss", "--config", &server_cfg, "--listen", "127.0.0.1:0", "--forward", &fwd],
    );
    // The cap it derived from its limit, said at start.
    let said = server.wait_stderr(LIMIT, |l| l.contains("connections at once")).unwrap();
    assert!(said.contains("open files: 256"), "{said}");
    let client_cfg = config(&dir, "client", Some(echo.addr));
    let remote = server_addr.to_string();
    let (_client, client_addr) = Proc::listening(&[
        "client",
        "-t",
        "ss",
        "--config",
        &client_cfg,
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote,
    ]);
    // More silent connections than the server has fds.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server_addr).unwrap());
    }
    // A real client still gets through, byte for byte, time and again.
    for i in 0..5 {
        let sent = pattern(256 << 10, i);
        assert!(exchange(client_addr, &sent) == sent, "exchange {i}");
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 5, "the silent connections reached the upstream");
    // The server never ran out of fds.
    let log = server.stderr_so_far();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    // The oldest silent ones were closed to make room: read EOF (or a
    // reset), never data.
    silent[0].set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(silent[0].read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let dir = temp_dir("crowds-deadline");
    let echo = echo();
    let fwd = echo.addr.to_string();
    let cfg = config(&dir, "server", None);
    let (_server, addr) = Proc::listening(&[
        "server",
        "-t",
        "ss",
        "--config",
        &cfg,
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &fwd,
        "--handshake-timeout",
        "1",
    ]);
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 16];
    // A clean close (FIN), as ss-server closes at its timeout, never data.
    let n = silent.read(&mut buf).expect("a reset, or held past the test's limit");
    assert_eq!(n, 0);
    // The limit, plus up to as much again; a lower bound only.
    assert!(start.elapsed() >= Duration::from_secs(1), "closed after {:?}", start.elapsed());
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0, "a silent connection reached the upstream");
}
