//! The `obfs4` transport against an independent implementation, obfs4proxy
//! 0.0.14 (Debian's `obfs4proxy`), in Tor PT managed mode, on loopback:
//! - `water client -t obfs4` (the bridge's `cert` and `iat-mode`) →
//!   obfs4proxy server → echo;
//! - obfs4proxy client (its SOCKS5 port, the bridge arguments in the SOCKS
//!   credentials) → `water server -t obfs4` with the identity from the same
//!   `obfs4_state.json` → echo;
//! - iat-mode 0 with 64 MiB each way, iat-modes 1 and 2 with smaller
//!   transfers written in random pieces (both ends sleep up to 10 ms
//!   between their pieces in those modes), and a recording relay that
//!   shows a water client's and a water server's pieces arriving apart;
//! - probes side by side against obfs4proxy's server and ours with the same
//!   identity: silence, garbage, a wrong cert;
//! - a tor bridge and a tor client, one over `water pt` and the other over
//!   obfs4proxy, both ways, in the loopback-only network namespace of
//!   `common::tor` (cfg `peer_tor` too).
//!
//! Every process is killed on drop, every wait is bounded, nothing leaves
//! 127.0.0.1 (tor runs only in the namespace). The tests need obfs4proxy (cfg `peer_obfs4proxy`, see
//! `build.rs`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tor;
use common::*;

/// How long a transfer's socket may wait for its next byte (64 MiB through
/// a debug-built host on a busy machine takes a while).
const TRANSFER_LIMIT: Duration = Duration::from_secs(180);
/// Bytes each way for the big transfers (iat-mode 0).
const BIG: usize = 64 << 20;
/// Bytes each way with iat-mode 1 or 2.
const SMALL: usize = 1 << 20;

/// `water ARGS`, once it printed `listening on ADDR`.
fn water(args: &[&str]) -> (Proc, SocketAddr) {
    Proc::listening_with(args, &[("WATER_LOG", "error")])
}

/// Reads a managed transport's stdout until the `METHOD` line (`SMETHOD
/// T ...` or `CMETHOD T ...`, `T` in `prefix`) and returns what follows
/// `prefix`; fails at a `*-ERROR` line, at exit, or after [`LIMIT`].
fn method_line(p: &mut Proc, what: &str, prefix: &str) -> String {
    let line = p
        .wait_for(LIMIT, |l| l.starts_with(prefix) || l.contains("-ERROR"))
        .unwrap_or_else(|seen| panic!("{what}: no {prefix:?} line: {seen:?}\n{}", p.stderr_so_far()));
    assert!(!line.contains("-ERROR"), "{what}: {line}");
    line[prefix.len()..].to_string()
}

/// obfs4proxy in managed mode with `env` (and nothing else of ours).
fn obfs4proxy(state: &Path, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new("obfs4proxy");
    cmd.args(["-enableLogging", "-logLevel", "DEBUG"])
        .env_clear()
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", state)
        .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd)
}

/// An obfs4proxy bridge on a free port in front of `orport`; its address
/// and the `cert` it publishes. `iat` overrides the state file's mode.
fn obfs4proxy_server(state: &Path, orport: SocketAddr, iat: Option<u8>) -> (Proc, SocketAddr, String) {
    let port = free_port();
    let mut env = vec![
        ("TOR_PT_SERVER_TRANSPORTS", "obfs4".to_string()),
        ("TOR_PT_SERVER_BINDADDR", format!("obfs4-127.0.0.1:{port}")),
        ("TOR_PT_ORPORT", orport.to_string()),
    ];
    if let Some(iat) = iat {
        env.push(("TOR_PT_SERVER_TRANSPORT_OPTIONS", format!("obfs4:iat-mode={iat}")));
    }
    let mut p = obfs4proxy(state, &env);
    let rest = method_line(&mut p, "obfs4proxy server", "SMETHOD obfs4 ");
    let (addr, args) = rest.split_once(' ').unwrap();
    let args = args.strip_prefix("ARGS:").unwrap();
    let cert = args.split(',').find_map(|a| a.strip_prefix("cert=")).unwrap().to_string();
    (p, addr.parse().unwrap(), cert)
}

/// An obfs4proxy client: its SOCKS5 address.
fn obfs4proxy_client(state: &Path) -> (Proc, SocketAddr) {
    let mut p = obfs4proxy(state, &[("TOR_PT_CLIENT_TRANSPORTS", "obfs4".to_string())]);
    let addr = method_line(&mut p, "obfs4proxy client", "CMETHOD obfs4 socks5 ");
    (p, addr.trim().parse().unwrap())
}

/// Connects through a SOCKS5 proxy to `to`, with the bridge arguments
/// `args` as Tor passes them: the first 255 bytes as the username, the rest
/// (or a single NUL) as the password.
fn socks5(proxy: SocketAddr, to: SocketAddr, args: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TRANSFER_LIMIT)).unwrap();
    s.write_all(&[5, 1, 2]).unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 2], "SOCKS5 method");
    let (user, pass) = if args.len() > 255 { args.split_at(255) } else { (args, "\0") };
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    s.write_all(&auth).unwrap();
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [1, 0], "SOCKS5 authentication");
    let SocketAddr::V4(v4) = to else { panic!("IPv4 only") };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut resp = [0u8; 10];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(resp[1], 0, "SOCKS5 connect reply {resp:?}");
    s
}

/// Deterministic bytes (xorshift).
struct Pattern(u64);

impl Pattern {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Sends `len` pattern bytes in pieces of `piece(i)` bytes and reads them
/// back, comparing as they come; closes only after everything is back.
fn round_trip(stream: TcpStream, len: usize, seed: u64, random_pieces: bool) -> Result<(), String> {
    stream.set_read_timeout(Some(TRANSFER_LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let (mut p, mut sizes) = (Pattern(seed), Pattern(seed ^ 0x5555));
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let want = if random_pieces { 1 + (sizes.next() % 5000) as usize } else { buf.len() };
            let n = want.min(len - sent);
            p.fill(&mut buf[..n]);
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
        }
    });
    let mut r = stream;
    let mut want = Pattern(seed);
    let (mut got, mut expect) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut matched = 0;
    let result = loop {
        if matched == len {
            break Ok(());
        }
        let n = match r.read(&mut got[..(len - matched).min(64 * 1024)]) {
            Ok(0) => break Err(format!("EOF after {matched} of {len} bytes")),
            Ok(n) => n,
            Err(e) => break Err(format!("{e} after {matched} of {len} bytes")),
        };
        want.fill(&mut expect[..n]);
        if got[..n] != expect[..n] {
            let at = got.iter().zip(&expect[..n]).position(|(a, b)| a != b).unwrap();
            break Err(format!("CORRUPT byte at {}", matched + at));
        }
        matched += n;
    };
    let _ = r.shutdown(Shutdown::Both);
    let _ = writer.join();
    result
}

struct Bridge {
    _dir: PathBuf,
    _proc: Proc,
    addr: SocketAddr,
    cert: String,
    /// A copy of obfs4proxy's state file, alone in its directory: the same
    /// identity as a `water server --config` (the CLI reads the JSON).
    state: PathBuf,
}

fn bridge(tag: &str, orport: SocketAddr, iat: Option<u8>) -> Bridge {
    bridge_with(tag, orport, iat, None)
}

/// A bridge with the identity of `state` (an `obfs4_state.json`) if given,
/// else the one obfs4proxy generates.
fn bridge_with(tag: &str, orport: SocketAddr, iat: Option<u8>, state: Option<&str>) -> Bridge {
    let dir = temp_dir(tag);
    if let Some(state) = state {
        std::fs::write(dir.join("obfs4_state.json"), state).unwrap();
    }
    let (proc, addr, cert) = obfs4proxy_server(&dir, orport, iat);
    // obfs4proxy (re)writes its state before it prints SMETHOD; water gets
    // a copy of what it wrote, checked whole, so that no later write of
    // obfs4proxy's can be read half done.
    let json = std::fs::read_to_string(dir.join("obfs4_state.json")).unwrap();
    let trimmed = json.trim();
    assert!(trimmed.starts_with('{') && trimmed.ends_with('}'), "obfs4proxy's state after SMETHOD: {json:?}");
    let state = temp_dir(&format!("{tag}-copy")).join("obfs4_state.json");
    std::fs::write(&state, &json).unwrap();
    Bridge { _dir: dir, _proc: proc, addr, cert, state }
}

/// The iat test's bridge identity in obfs4proxy's `obfs4_state.json`
/// format; its `drbg-seed`'s length table has no 0.
fn iat_state(iat: u8) -> String {
    format!(
        concat!(
            r#"{{"node-id":"d43baf97267ebc275bc0fa510c6d7189bfa2db26","#,
            r#""private-key":"ed8b0185a78f656166bcee253c4158873f279e573f9907e8349f787b961d8479","#,
            r#""public-key":"0941965232a81a54ecc4ee9264c8041ff5bfdc0cf0576105e1def321ec727606","#,
            r#""drbg-seed":"{}","iat-mode":{}}}"#
        ),
        IAT_DRBG_SEED, iat
    )
}

/// See [`iat_state`]; the guest's tests check its table.
const IAT_DRBG_SEED: &str = "5e1a887b34dbf3e55b377f7b008e006e969cc18f6d2f4e4c";

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn water_client(dir: &Path, cert: &str, iat: u8, remote: SocketAddr) -> (Proc, SocketAddr) {
    let cfg = write_config(dir, &format!("client-{iat}.conf"), &format!("cert={cert}\niat-mode={iat}\n"));
    water(&[
        "client",
        "-t",
        "obfs4",
        "--config",
        &cfg,
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote.to_string(),
    ])
}

fn water_server(state: &Path, forward: SocketAddr) -> (Proc, SocketAddr) {
    let cfg = state.to_str().unwrap();
    water(&[
        "server",
        "-t",
        "obfs4",
        "--config",
        cfg,
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &forward.to_string(),
    ])
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_client_through_obfs4proxy_server_64_mib_each_way() {
    let echo = echo();
    let b = bridge("client0", echo.addr, None);
    let dir = temp_dir("client0-cfg");
    let (_client, addr) = water_client(&dir, &b.cert, 0, b.addr);
    let start = Instant::now();
    round_trip(TcpStream::connect(addr).unwrap(), BIG, 1, false).unwrap();
    eprintln!("water client -> obfs4proxy server, 64 MiB each way: {:?}", start.elapsed());
    assert_eq!(echo.bytes.load(Ordering::SeqCst), BIG);
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn obfs4proxy_client_through_water_server_64_mib_each_way() {
    let echo = echo();
    // The identity obfs4proxy generated, served by water instead.
    let b = bridge("server0", echo.addr, None);
    let (_server, server) = water_server(&b.state, echo.addr);
    let (_client, socks) = obfs4proxy_client(&temp_dir("server0-client"));
    let start = Instant::now();
    let s = socks5(socks, server, &format!("cert={};iat-mode=0", b.cert));
    round_trip(s, BIG, 2, false).unwrap();
    eprintln!("obfs4proxy client -> water server, 64 MiB each way: {:?}", start.elapsed());
    assert_eq!(echo.bytes.load(Ordering::SeqCst), BIG);
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn iat_modes_1_and_2_both_ways_in_random_pieces() {
    let echo = echo();
    for iat in [1u8, 2] {
        // A fixed identity whose length table has no 0: obfs4proxy 0.0.14
        // panics ("BUG: Write(), iat length was 0", the whole process) when
        // in iat-mode 2 it samples a 0-byte write, and a fresh identity has
        // 0 in its table about once in 30 (see
        // `iat_test_identity_has_no_zero_length` in the guest's tests).
        let state = iat_state(iat);
        let b = bridge_with(&format!("iat{iat}"), echo.addr, Some(iat), Some(&state));
        // obfs4proxy records the mode it was given in its state file.
        let json = std::fs::read_to_string(&b.state).unwrap();
        assert!(json.contains(&format!("\"iat-mode\":{iat}")), "{json}");
        let dir = temp_dir(&format!("iat{iat}-cfg"));
        // water client (iat-mode n) → obfs4proxy server (iat-mode n).
        let (_client, addr) = water_client(&dir, &b.cert, iat, b.addr);
        round_trip(TcpStream::connect(addr).unwrap(), SMALL, 10 + iat as u64, true)
            .unwrap_or_else(|e| panic!("iat-mode {iat}, water client: {e}"));
        // obfs4proxy client (iat-mode n) → water server (iat-mode n), the
        // same identity from the test's own copy of the state, which no
        // obfs4proxy rewrites.
        let (_server, server) = water_server(Path::new(&write_config(&dir, "state.json", &state)), echo.addr);
        let (_c, socks) = obfs4proxy_client(&temp_dir(&format!("iat{iat}-client")));
        let s = socks5(socks, server, &format!("cert={};iat-mode={iat}", b.cert));
        round_trip(s, SMALL, 20 + iat as u64, true)
            .unwrap_or_else(|e| panic!("iat-mode {iat}, water server: {e}"));
    }
}

/// A TCP relay on loopback to `to` that records the size of every read it
/// makes from its client (`up`) and from `to` (`down`): a sender that
/// writes in pieces with gaps between them arrives as many reads, one that
/// writes a burst at once as few. Its sockets time out after
/// [`TRANSFER_LIMIT`].
struct Recorder {
    addr: SocketAddr,
    up: Arc<Mutex<Vec<usize>>>,
    down: Arc<Mutex<Vec<usize>>>,
}

fn recording_relay(to: SocketAddr) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (up, down) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (u, d) = (Arc::clone(&up), Arc::clone(&down));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(client) = s else { return };
            let Ok(remote) = TcpStream::connect(to) else { return };
            copy_recording(client.try_clone().unwrap(), remote.try_clone().unwrap(), Arc::clone(&u));
            copy_recording(remote, client, Arc::clone(&d));
        }
    });
    Recorder { addr, up, down }
}

fn copy_recording(mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<usize>>>) {
    std::thread::spawn(move || {
        from.set_read_timeout(Some(TRANSFER_LIMIT)).unwrap();
        to.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            log.lock().unwrap().push(n);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Bytes of the block whose pieces [`paced_reads`] counts.
const PACED_BLOCK: usize = 60_000;

/// A service for [`paced_reads`]: on each connection it echoes a 5-byte
/// hello, then answers a 1-byte go with [`PACED_BLOCK`] pattern bytes
/// (from `seed`) in one write, then echoes everything. So its block
/// reaches the water server in front of it at once, however the client
/// paces.
fn blaster(seed: u64) -> SocketAddr {
    service(move |mut s| {
        s.set_read_timeout(Some(TRANSFER_LIMIT)).unwrap();
        let mut hello = [0u8; 6];
        if s.read_exact(&mut hello[..5]).is_err() || s.write_all(&hello[..5]).is_err() {
            return;
        }
        if s.read_exact(&mut hello[5..]).is_err() {
            return;
        }
        let mut block = vec![0u8; PACED_BLOCK];
        Pattern(seed).fill(&mut block);
        if s.write_all(&block).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

/// Over `stream`, which reaches a [`blaster`] through a recording relay:
/// a hello first (the handshake done, both directions flowing), then the
/// go and the blaster's block, then one write of [`PACED_BLOCK`] pattern
/// bytes and their echo; every byte compared. Returns how many reads the
/// relay made of the blaster's block on its way down, and of ours on its
/// way up: each phase alone, so a peer's pacing of the other way cannot
/// cut the block counted.
fn paced_reads(mut stream: TcpStream, relay: &Recorder, seed: u64) -> (usize, usize) {
    let count = |log: &Mutex<Vec<usize>>| log.lock().unwrap().len();
    stream.set_read_timeout(Some(TRANSFER_LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    let mark = count(&relay.down);
    stream.write_all(b"g").unwrap();
    let (mut got, mut want) = (vec![0u8; PACED_BLOCK], vec![0u8; PACED_BLOCK]);
    stream.read_exact(&mut got).unwrap();
    Pattern(seed).fill(&mut want);
    assert!(got == want, "the blaster's block came altered");
    let down = count(&relay.down) - mark;
    let mark = count(&relay.up);
    Pattern(seed ^ 1).fill(&mut want);
    stream.write_all(&want).unwrap();
    stream.read_exact(&mut got).unwrap();
    assert!(got == want, "our block came back altered");
    (down, count(&relay.up) - mark)
}

/// The pacing of iat-modes 1 and 2 is real on the wire: a 60,000-byte
/// write into a water client, and a 60,000-byte write out of the service
/// behind a water server, reach a recording relay beside each as many
/// separate reads (about 43 pieces of up to 1448 bytes in mode 1, about
/// 87 of drawn lengths in mode 2, each followed by a gap of 0.4 to
/// 9.9 ms: the pinned identity's iat table has no 0), where iat-mode 0
/// writes each burst at once (its counts are only printed). No time is
/// asserted: the threshold, a quarter of mode 1's pieces, holds unless
/// the relay's thread sleeps through most gaps. obfs4proxy is the peer
/// each way; bytes are compared exactly.
#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_writes_in_paced_pieces_in_iat_modes_1_and_2() {
    const AT_LEAST: usize = 10;
    for iat in [0u8, 1, 2] {
        let seed = 30 + u64::from(iat);
        let service = blaster(seed);
        let state = iat_state(iat);
        let b = bridge_with(&format!("pace{iat}"), service, Some(iat), Some(&state));
        let dir = temp_dir(&format!("pace{iat}-cfg"));
        // water client → relay → obfs4proxy server → blaster: the water
        // client's block is the relay's way up.
        let relay = recording_relay(b.addr);
        let (_client, addr) = water_client(&dir, &b.cert, iat, relay.addr);
        let (_, client_reads) = paced_reads(TcpStream::connect(addr).unwrap(), &relay, seed);
        // obfs4proxy client → relay → water server → blaster: the water
        // server's block (the blaster's) is the relay's way down.
        let (_server, server) = water_server(Path::new(&write_config(&dir, "state.json", &state)), service);
        let relay = recording_relay(server);
        let (_c, socks) = obfs4proxy_client(&temp_dir(&format!("pace{iat}-client")));
        let s = socks5(socks, relay.addr, &format!("cert={};iat-mode={iat}", b.cert));
        let (server_reads, _) = paced_reads(s, &relay, seed);
        eprintln!(
            "iat-mode {iat}: water client's block in {client_reads} reads, water server's in {server_reads}"
        );
        if iat > 0 {
            assert!(
                client_reads >= AT_LEAST,
                "iat-mode {iat}: the water client's block came in {client_reads} reads"
            );
            assert!(
                server_reads >= AT_LEAST,
                "iat-mode {iat}: the water server's block came in {server_reads} reads"
            );
        }
    }
}

/// What a probe saw: bytes that came back within `wait`, and whether the
/// server closed in that time.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    bytes: usize,
    closed: bool,
}

fn probe(addr: SocketAddr, send: &[u8], wait: Duration) -> Seen {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.write_all(send).unwrap();
    let deadline = Instant::now() + wait;
    let mut bytes = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Seen { bytes, closed: false };
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Seen { bytes, closed: true },
            Ok(n) => bytes += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Seen { bytes, closed: false };
            }
            Err(_) => return Seen { bytes, closed: true },
        }
    }
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn probes_get_what_obfs4proxy_gives_them() {
    let echo = echo();
    let b = bridge("probe", echo.addr, None);
    let dir = temp_dir("probe-cfg");
    let (_server, ours) = water_server(&b.state, echo.addr);
    let mut garbage = vec![0u8; 10_000];
    Pattern(99).fill(&mut garbage);
    // Both servers, the same identity, the same probes. obfs4proxy closes a
    // failed connection only 30 to 89 s after it opened; over a few seconds
    // both say nothing and keep the connection open.
    let wait = Duration::from_secs(3);
    for (what, send) in [("silence", &[][..]), ("100 bytes", &garbage[..100]), ("10000 bytes", &garbage[..])]
    {
        let theirs = probe(b.addr, send, wait);
        let mine = probe(ours, send, wait);
        eprintln!("{what}: obfs4proxy {theirs:?}, water {mine:?}");
        assert_eq!(theirs, Seen { bytes: 0, closed: false }, "{what}: obfs4proxy");
        assert_eq!(mine, theirs, "{what}");
    }
    // A client with a wrong cert (another bridge's) gets silence from both.
    let other = bridge("probe-other", echo.addr, None);
    for (name, server) in [("obfs4proxy", b.addr), ("water", ours)] {
        let (_client, addr) = water_client(&dir, &other.cert, 0, server);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"hello").unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 16];
        let got = s.read(&mut buf);
        assert!(matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{name}: {got:?}");
    }
    assert_eq!(echo.bytes.load(Ordering::SeqCst), 0, "no probe reached the service");
}

/// How a probe's connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// A FIN: read returned 0.
    Fin,
    /// A reset.
    Reset,
    /// Still open when the probe gave up.
    Open,
}

/// What a probe that waits for the close saw: how and when (from the
/// connect) the server ended the connection, and the bytes it sent.
#[derive(Debug)]
struct Closed {
    end: End,
    after: Duration,
    bytes: usize,
}

/// Connects, sends `send` (then a FIN if `half_close`), reads until the
/// server closes or `limit` passes.
fn probe_close(addr: SocketAddr, send: &[u8], half_close: bool, limit: Duration) -> Closed {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.write_all(send).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut bytes = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Closed { end: End::Open, after: start.elapsed(), bytes };
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Closed { end: End::Fin, after: start.elapsed(), bytes },
            Ok(n) => bytes += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Closed { end: End::Reset, after: start.elapsed(), bytes };
            }
            Err(e) => panic!("{addr}: {e}"),
        }
    }
}

/// The close test's bridge seed: a close delay of 3 s (the guest's
/// `close_test_identity_has_a_three_second_delay` checks it).
const CLOSE_DRBG_SEED: &str = "6bc9e078b84ccfa4e81a7462701b559337931b6dee1e5425";

/// What a prober waiting for the close sees, side by side. obfs4proxy
/// reads and drops everything from a client whose handshake failed (or
/// never came) and closes it 30 s plus a per-bridge delay (0 to 59 s, from
/// its `drbg-seed`) after it opened; ours, with the same identity, must do
/// the same: no byte, the same kind of close, and not before that time (a
/// lower bound only: the test waits as long as it takes, within a bound of
/// its own). A prober that half-closes is closed at once by both.
#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn a_failed_handshake_is_closed_as_obfs4proxy_closes_it() {
    let echo = echo();
    let state = iat_state(0).replace(IAT_DRBG_SEED, CLOSE_DRBG_SEED);
    let b = bridge_with("close", echo.addr, None, Some(&state));
    let (_server, ours) = water_server(&b.state, echo.addr);
    let seed: [u8; 24] =
        core::array::from_fn(|i| u8::from_str_radix(&CLOSE_DRBG_SEED[2 * i..2 * i + 2], 16).unwrap());
    let delay = watm_obfs4::dist::close_delay(&seed);
    let floor = Duration::from_secs(watm_obfs4::handshake::SERVER_HANDSHAKE_TIMEOUT_SECS + delay);
    let mut garbage = vec![0u8; 10_000];
    Pattern(98).fill(&mut garbage);
    // A real client's handshake, made for another bridge.
    let wrong = recorded_request(OTHER_CERT);
    assert!(wrong.len() >= 64 + 77, "a whole request: {} bytes", wrong.len());
    let probes: Vec<(&str, Vec<u8>, bool)> = vec![
        ("silence", vec![], false),
        ("100 bytes", garbage[..100].to_vec(), false),
        ("10000 bytes", garbage.clone(), false),
        ("another bridge's handshake", wrong, false),
        ("100 bytes and a FIN", garbage[..100].to_vec(), true),
    ];
    // Every probe against both at once: the wait is one floor, not ten.
    let limit = floor + LIMIT;
    let runs: Vec<_> = probes
        .iter()
        .flat_map(|(what, send, half)| {
            [b.addr, ours].map(|addr| {
                let (send, half) = (send.clone(), *half);
                (*what, half, std::thread::spawn(move || probe_close(addr, &send, half, limit)))
            })
        })
        .collect();
    let mut seen = runs.into_iter().map(|(what, half, run)| (what, half, run.join().unwrap()));
    while let (Some((what, half, theirs)), Some((_, _, mine))) = (seen.next(), seen.next()) {
        eprintln!("{what}: obfs4proxy {theirs:?}, water {mine:?} (floor {floor:?})");
        assert_eq!((theirs.bytes, mine.bytes), (0, 0), "{what}: a byte came back");
        assert_eq!(theirs.end, End::Fin, "{what}: obfs4proxy");
        assert_eq!(mine.end, theirs.end, "{what}");
        if !half {
            assert!(theirs.after >= floor, "{what}: obfs4proxy closed after {:?}", theirs.after);
            assert!(mine.after >= floor, "{what}: water closed after {:?}, before {floor:?}", mine.after);
        }
    }
    assert_eq!(echo.bytes.load(Ordering::SeqCst), 0, "no probe reached the service");
}

/// `water pt` serving obfs4 (managed mode) in front of `orport`; its
/// address and the SMETHOD line's `ARGS:` text.
fn water_pt(state: &Path, orport: SocketAddr, options: Option<&str>) -> (Proc, SocketAddr, String) {
    let port = free_port();
    let mut cmd = Command::new(WATER);
    cmd.arg("pt")
        .env("WATER_LOG", "error")
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", state)
        .env("TOR_PT_SERVER_TRANSPORTS", "obfs4")
        .env("TOR_PT_SERVER_BINDADDR", format!("obfs4-127.0.0.1:{port}"))
        .env("TOR_PT_ORPORT", orport.to_string())
        .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1");
    if let Some(o) = options {
        cmd.env("TOR_PT_SERVER_TRANSPORT_OPTIONS", o);
    }
    let mut p = Proc::spawn(cmd);
    let rest = method_line(&mut p, "water pt", "SMETHOD obfs4 ");
    let (addr, args) = rest.split_once(' ').unwrap_or((&rest, ""));
    let args = args.strip_prefix("ARGS:").unwrap_or("").to_string();
    (p, addr.parse().unwrap(), args)
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_pt_serves_the_identity_obfs4proxy_made() {
    let echo = echo();
    let b = bridge("pt-theirs", echo.addr, None);
    let state_dir = b.state.parent().unwrap().to_path_buf();
    let (_pt, addr, args) = water_pt(&state_dir, echo.addr, None);
    // Only what a bridge line needs: the same cert, the mode.
    assert_eq!(args, format!("cert={},iat-mode=0", b.cert));
    let (_c, socks) = obfs4proxy_client(&temp_dir("pt-theirs-client"));
    let s = socks5(socks, addr, &format!("cert={};iat-mode=0", b.cert));
    round_trip(s, SMALL, 30, true).unwrap();
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_pt_makes_an_identity_obfs4proxy_serves_unchanged() {
    let echo = echo();
    let dir = temp_dir("pt-ours");
    let (pt, _, args) = water_pt(&dir, echo.addr, None);
    drop(pt);
    let cert = args.strip_prefix("cert=").and_then(|a| a.strip_suffix(",iat-mode=0")).unwrap().to_string();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join("obfs4_state.json")).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600, "the state file holds the private key");
    let line = std::fs::read_to_string(dir.join("obfs4_bridgeline.txt")).unwrap();
    assert!(line.contains(&format!("cert={cert} iat-mode=0")), "{line}");
    // obfs4proxy, on the state water made, publishes the same cert and
    // serves a water client that knows it.
    let (_proxy, addr, theirs) = obfs4proxy_server(&dir, echo.addr, None);
    assert_eq!(theirs, cert);
    let (_client, local) = water_client(&temp_dir("pt-ours-cfg"), &cert, 0, addr);
    round_trip(TcpStream::connect(local).unwrap(), SMALL, 31, true).unwrap();
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_pt_takes_the_identity_from_options_and_never_publishes_the_key() {
    let echo = echo();
    // An identity obfs4proxy made, given as options instead of a state file.
    let b = bridge("pt-options", echo.addr, None);
    let json = std::fs::read_to_string(&b.state).unwrap();
    let field = |k: &str| {
        let at = json.find(&format!("\"{k}\":\"")).unwrap() + k.len() + 4;
        json[at..at + json[at..].find('"').unwrap()].to_string()
    };
    let options = format!(
        "obfs4:node-id={};obfs4:private-key={};obfs4:drbg-seed={};obfs4:iat-mode=1",
        field("node-id"),
        field("private-key"),
        field("drbg-seed")
    );
    let dir = temp_dir("pt-options-state");
    let (_pt, addr, args) = water_pt(&dir, echo.addr, Some(&options));
    assert_eq!(args, format!("cert={},iat-mode=1", b.cert));
    assert!(!dir.join("obfs4_state.json").exists(), "no state file beside options");
    let (_c, socks) = obfs4proxy_client(&temp_dir("pt-options-client"));
    let s = socks5(socks, addr, &format!("cert={};iat-mode=1", b.cert));
    round_trip(s, SMALL, 32, true).unwrap();
}

#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn water_pt_client_reaches_an_obfs4proxy_bridge_with_the_bridge_line_args() {
    // As tor runs a client PT: no config, the bridge line's cert and
    // iat-mode in the SOCKS5 credentials of each connection.
    let echo = echo();
    let b = bridge("pt-client", echo.addr, None);
    let mut cmd = Command::new(WATER);
    cmd.arg("pt")
        .env("WATER_LOG", "error")
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", temp_dir("pt-client-state"))
        .env("TOR_PT_CLIENT_TRANSPORTS", "obfs4")
        .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1");
    let mut pt = Proc::spawn(cmd);
    let socks: SocketAddr = method_line(&mut pt, "water pt", "CMETHOD obfs4 socks5 ").trim().parse().unwrap();
    let s = socks5(socks, b.addr, &format!("cert={};iat-mode=0", b.cert));
    round_trip(s, SMALL, 33, true).unwrap();
    // A wrong cert: the bridge stays silent and nothing reaches the service.
    let other = bridge("pt-client-other", echo.addr, None);
    let before = echo.bytes.load(Ordering::SeqCst);
    let mut s = socks5(socks, b.addr, &format!("cert={};iat-mode=0", other.cert));
    s.write_all(b"hello").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let got = s.read(&mut [0u8; 16]);
    assert!(matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{got:?}");
    assert_eq!(echo.bytes.load(Ordering::SeqCst), before);
}

/// `water check obfs4` runs every role against itself; one config holds
/// both ends' keys. The cert was computed apart from this code (Python's
/// `cryptography`, X25519 of the private key), so the check passing also
/// says our key derivation agrees with it.
#[test]
fn water_check_passes_every_role_with_a_config_for_both_ends() {
    let dir = temp_dir("check");
    let cfg = write_config(
        &dir,
        "both.conf",
        "node-id=000102030405060708090a0b0c0d0e0f10111213\n\
         private-key=a8abf8b3b6d7f5e0a6ac1d7ac3bfa1c0d9e0ac1c2b3a495867768594a3b2c1d0\n\
         drbg-seed=0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778\n\
         iat-mode=0\n\
         cert=AAECAwQFBgcICQoLDA0ODxAREhP/SpIifuh6/jTmf7S+YETpDkLX26AP8V+jAHU+aPqpAQ\n",
    );
    let (status, text, stderr) = run(&["check", "obfs4", "--config", &cfg]);
    assert!(status.success(), "{text}{stderr}");
    assert!(!text.contains("FAIL") && text.contains("PASS associate large"), "{text}");
}

/// An obfs4proxy client's handshake request to `bridge`, recorded by a
/// listener that stands in for the bridge.
fn recorded_request(cert: &str) -> Vec<u8> {
    let rec = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_c, socks) = obfs4proxy_client(&temp_dir("replay-client"));
    let to = rec.local_addr().unwrap();
    let cert = cert.to_string();
    // obfs4proxy answers the SOCKS request only after the handshake, which
    // never comes (it then fails the request): ask from a thread, step by
    // step as `socks5` does but without its assertions.
    std::thread::spawn(move || {
        let Ok(mut s) = TcpStream::connect(socks) else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let args = format!("cert={cert};iat-mode=0");
        let mut auth = vec![1, args.len() as u8];
        auth.extend_from_slice(args.as_bytes());
        auth.extend_from_slice(&[1, 0]);
        let SocketAddr::V4(v4) = to else { return };
        let mut connect = vec![5, 1, 0, 1];
        connect.extend_from_slice(&v4.ip().octets());
        connect.extend_from_slice(&v4.port().to_be_bytes());
        for (send, reply) in [(&[5u8, 1, 2][..], 2), (&auth[..], 2), (&connect[..], 10)] {
            if s.write_all(send).is_err() || s.read_exact(&mut vec![0u8; reply]).is_err() {
                return;
            }
        }
    });
    rec.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut r = loop {
        match rec.accept() {
            Ok((r, _)) => break r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < LIMIT, "obfs4proxy's client never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    r.set_nonblocking(false).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 9000];
    while let Ok(n @ 1..) = r.read(&mut buf) {
        request.extend_from_slice(&buf[..n]);
    }
    request
}

/// A recorded client handshake and request, replayed: obfs4proxy ignores
/// the copy (its filter of client MACs), and so does `water server`: the
/// obfs4 guest names its 32-byte representative as its unique prefix and
/// the host's replay filter silences a repeat before the guest sees it.
#[test]
#[cfg_attr(not(peer_obfs4proxy), ignore = "needs obfs4proxy: apt-get install obfs4proxy")]
fn a_replayed_handshake_is_ignored_by_both_servers() {
    let echo = echo();
    let b = bridge("replay", echo.addr, None);
    let (_server, ours) = water_server(&b.state, echo.addr);
    let request = recorded_request(&b.cert);
    assert!(request.len() >= 64 + 77, "a whole request: {} bytes", request.len());
    let wait = Duration::from_secs(2);
    let theirs = [probe(b.addr, &request, wait), probe(b.addr, &request, wait)];
    assert!(theirs[0].bytes > 0, "obfs4proxy answers the first copy: {:?}", theirs[0]);
    assert_eq!(theirs[1].bytes, 0, "obfs4proxy ignores the replay");
    let mine = [probe(ours, &request, wait), probe(ours, &request, wait)];
    assert!(mine[0].bytes > 0, "water answers the first copy: {:?}", mine[0]);
    assert_eq!(mine[1].bytes, 0, "water ignores the replay: {:?}", mine[1]);
}

/// Where `program` is on PATH (tor's `exec` wants a path).
fn on_path(program: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
        .to_string_lossy()
        .into_owned()
}

/// The `cert=... iat-mode=...` of the obfs4 bridge line the bridge tor in
/// `dir/bridge` saved (tor writes `bridgelines` from its transport's
/// `SMETHOD ... ARGS:`), as a bridge line's arguments; and that line.
fn saved_bridge_args(dir: &Path) -> (String, String) {
    let file = dir.join("bridge/bridgelines");
    let line = wait_file_line(&file, tor::TOR_STEP, |l| l.contains("obfs4") && l.contains("cert="))
        .unwrap_or_else(|text| panic!("the bridge tor saved no obfs4 bridge line:\n{text}"));
    let args: Vec<&str> =
        line.split_whitespace().filter(|w| w.starts_with("cert=") || w.starts_with("iat-mode=")).collect();
    assert_eq!(args.len(), 2, "cert and iat-mode in {line:?}");
    (args.join(" "), line)
}

/// A tor bridge over `bridge_pt` and a tor client over `client_pt` (both
/// serving `obfs4`, through the Extended ORPort), the bridge line built
/// from what the bridge's transport published: the client reaches the
/// bridge's fresh descriptor. First, if `negative`, a client whose bridge
/// line has another bridge's cert must not, within [`NEGATIVE_WAIT`].
fn tor_over_obfs4(tag: &str, bridge_pt: &str, client_pt: &str, negative: bool) -> std::path::PathBuf {
    tor::enter_namespace();
    let dir = temp_dir(&format!("obfs4-tor-{tag}"));
    let (_bridge, addr, fp) = tor::bridge(&dir, "obfs4", bridge_pt, "ExtORPort auto\n");
    let (args, saved) = saved_bridge_args(&dir);
    eprintln!("{tag}: the bridge saved {saved:?}");
    if negative {
        let wrong = format!("obfs4 {addr} {fp} cert={OTHER_CERT} iat-mode=0");
        let r = tor::client(&dir, "obfs4", client_pt, &wrong, NEGATIVE_WAIT);
        assert!(r.is_err(), "{tag}: another bridge's cert still fetched the descriptor: {r:?}");
        std::fs::remove_dir_all(dir.join("client")).unwrap();
    }
    match tor::client(&dir, "obfs4", client_pt, &format!("obfs4 {addr} {fp} {args}"), tor::TOR_STEP) {
        Ok(line) => eprintln!("{tag}: {line}"),
        Err(seen) => {
            panic!("{tag}: no fresh bridge descriptor within {:?}:\n{}", tor::TOR_STEP, seen.join("\n"))
        }
    }
    dir
}

/// A well-formed cert of a bridge that is not there (the one of
/// [`water_check_passes_every_role_with_a_config_for_both_ends`]).
const OTHER_CERT: &str = "AAECAwQFBgcICQoLDA0ODxAREhP/SpIifuh6/jTmf7S+YETpDkLX26AP8V+jAHU+aPqpAQ";
/// How long a negative control waits for what must not happen.
const NEGATIVE_WAIT: Duration = Duration::from_secs(8);

#[test]
#[cfg_attr(
    not(all(peer_tor, peer_obfs4proxy)),
    ignore = "needs tor, unshare and ip, as root, and obfs4proxy: apt-get install tor iproute2 util-linux obfs4proxy"
)]
fn tor_bridge_over_water_pt_and_tor_client_over_obfs4proxy() {
    tor::in_namespace("netns_water_bridge_obfs4proxy_client");
}

#[test]
#[ignore = "inner half: run through tor_bridge_over_water_pt_and_tor_client_over_obfs4proxy"]
fn netns_water_bridge_obfs4proxy_client() {
    let dir = tor_over_obfs4("water-bridge", &format!("{WATER} pt"), &on_path("obfs4proxy"), false);
    // The cert tor published is the one of the identity water pt made.
    let made = std::fs::read_to_string(dir.join("bridge/pt_state/obfs4_bridgeline.txt")).unwrap();
    let (args, _) = saved_bridge_args(&dir);
    assert!(made.contains(&args), "tor's {args:?} is not water pt's:\n{made}");
    tor::bridge_pt_log_is_clean(&dir, "obfs4", "Extended ORPort (SAFE_COOKIE)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(all(peer_tor, peer_obfs4proxy)),
    ignore = "needs tor, unshare and ip, as root, and obfs4proxy: apt-get install tor iproute2 util-linux obfs4proxy"
)]
fn tor_bridge_over_obfs4proxy_and_tor_client_over_water_pt() {
    tor::in_namespace("netns_obfs4proxy_bridge_water_client");
}

#[test]
#[ignore = "inner half: run through tor_bridge_over_obfs4proxy_and_tor_client_over_water_pt"]
fn netns_obfs4proxy_bridge_water_client() {
    let dir = tor_over_obfs4("obfs4proxy-bridge", &on_path("obfs4proxy"), &format!("{WATER} pt"), true);
    let log = std::fs::read_to_string(dir.join("client/pt_state/water-pt.log")).unwrap();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "the client PT logged a failure:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The obfs4 guest's secretbox (`watm_aead::salsa`: SIMD128 XSalsa20,
/// two-lane Poly1305) checked where its lanes are real, inside wasm: the
/// test-only `obfs4-check` guest seals every length up to 1500 bytes and a
/// few up to 16383 with it and with RustCrypto's `crypto_secretbox`
/// compiled beside it, at init, and refuses to start on a difference;
/// `water check` then runs every role through it. With `flip=1` (one bit
/// of ours flipped) the same check must fail: the negative control.
#[test]
fn the_secretbox_in_wasm_matches_crypto_secretbox_and_the_check_can_fail() {
    let dir = temp_dir("obfs4-check");
    let wasm = dir.join("obfs4-check.wasm");
    std::fs::write(&wasm, watm_artifacts::OBFS4_CHECK.wasm).unwrap();
    let wasm = wasm.to_str().unwrap();
    let (status, out, err) = run(&["check", wasm]);
    assert!(status.success() && !out.contains("FAIL"), "{out}{err}");
    let flip = write_config(&dir, "flip.conf", "flip=1\n");
    let (status, out, err) = run(&["check", wasm, "--config", &flip]);
    assert!(!status.success(), "a flipped bit passed:\n{out}{err}");
    assert!(format!("{out}{err}").contains("differs from crypto_secretbox"), "{out}{err}");
}
