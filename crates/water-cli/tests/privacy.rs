//! What `water` logs about its users, run as an operator would: a client's
//! address and a SOCKS target read `[scrubbed]` unless `--unsafe-logging`
//! asks for them; text a peer chose is escaped, so it cannot forge a log
//! line; a crowd of failing connections costs ten lines a minute and a
//! summary, not a line each.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use common::*;

/// A port nothing listens on: every upstream dial to it is refused.
fn dead_port() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Connects to `addr` and waits for the server to close; our address.
fn connect_and_wait_for_close(addr: SocketAddr) -> SocketAddr {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let me = s.local_addr().unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    me
}

#[test]
fn a_clients_address_is_scrubbed_unless_the_operator_asks_for_it() {
    let dead = dead_port();
    for unsafe_logging in [false, true] {
        let mut args = vec!["server", "-t", "plain", "--listen", "127.0.0.1:0", "--forward", &dead];
        if unsafe_logging {
            args.push("--unsafe-logging");
        }
        let (server, addr) = Proc::listening(&args);
        let me = connect_and_wait_for_close(addr).to_string();
        let line = server
            .wait_stderr(LIMIT, |l| l.contains("connection failed"))
            .unwrap_or_else(|log| panic!("the failed connection was not logged:\n{log}"));
        if unsafe_logging {
            assert!(line.contains(&format!("peer={me}")), "--unsafe-logging: {line}");
        } else {
            assert!(line.contains("peer=[scrubbed]") && !line.contains(&me), "{line}");
        }
    }
}

#[test]
fn a_crowd_of_failing_connections_costs_ten_lines_and_a_summary() {
    let dead = dead_port();
    let (mut server, addr) =
        Proc::listening(&["server", "-t", "plain", "--listen", "127.0.0.1:0", "--forward", &dead]);
    for _ in 0..40 {
        connect_and_wait_for_close(addr);
    }
    // The tenth is logged; the rest are counted, and summed up at exit.
    let tenth = server.wait_stderr(LIMIT, |l| l.contains("connection failed"));
    assert!(tenth.is_ok(), "{tenth:?}");
    server.signal(libc::SIGTERM);
    assert!(server.exited().success());
    let log = server.stderr_so_far();
    let failed = log.lines().filter(|l| l.contains("connection failed")).count();
    assert_eq!(failed, 10, "{log}");
    assert!(log.contains("30 more connection warnings not logged") && log.contains("Io 30"), "{log}");
}

/// A SOCKS5 CONNECT (no auth) to the domain `name`, port 80; the reply's
/// code.
fn socks_connect_to_name(proxy: SocketAddr, name: &[u8]) -> u8 {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut msg = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
    msg.extend_from_slice(name);
    msg.extend_from_slice(&80u16.to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    reply[3]
}

#[test]
fn a_socks_target_is_scrubbed_and_a_forged_log_line_is_escaped() {
    // A name with a line break (a forged log line behind it) and a NUL,
    // which fails the lookup before any resolver is asked: no packet
    // leaves this machine.
    let name = b"evil\nERROR forged line\0";
    for unsafe_logging in [false, true] {
        let mut args = vec!["client", "-t", "plain", "--socks5", "--listen", "127.0.0.1:0"];
        if unsafe_logging {
            args.push("--unsafe-logging");
        }
        let (client, proxy) = Proc::listening(&args);
        assert_ne!(socks_connect_to_name(proxy, name), 0, "the dial of a NUL name succeeded");
        let line = client
            .wait_stderr(LIMIT, |l| l.contains("connection failed"))
            .unwrap_or_else(|log| panic!("the failed dial was not logged:\n{log}"));
        if unsafe_logging {
            assert!(line.contains(r"dial evil\nERROR forged line\u{0}:80"), "{line}");
        } else {
            assert!(line.contains("dial [scrubbed]") && !line.contains("evil"), "{line}");
        }
        let log = client.stderr_so_far();
        assert!(!log.lines().any(|l| l.starts_with("ERROR forged")), "a peer forged a log line:\n{log}");
    }
}
