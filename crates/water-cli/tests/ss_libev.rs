//! The `ss` transport against an independent implementation,
//! shadowsocks-libev (Debian's `shadowsocks-libev`: `ss-server`,
//! `ss-tunnel`), on loopback, for every method:
//! - `water client -t ss` → `ss-server` → echo, and `water::Dialer` →
//!   `ss-server` → echo;
//! - `ss-tunnel` → `water server -t ss` → echo;
//! - wrong passwords both ways, and a prober's garbage: no byte crosses,
//!   nothing reaches the echo service, the server end holds silently until
//!   the client closes (ours exactly as libev's);
//! - altered and truncated bytes on the wire: the connection dies, only a
//!   true prefix is delivered.
//!
//! libev tears a connection down on a half-close, so every client here
//! sends, reads everything back, and only then closes. Every process is
//! killed on drop and every wait is bounded. Without the libev binaries
//! the tests that need them are ignored, with the reason (the build script
//! sees the binaries, `build.rs`); under CI they are required.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Proc, WATER, echo, free_port, temp_dir};

const LIMIT: Duration = Duration::from_secs(120);
const METHODS: [&str; 4] =
    ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm", "xchacha20-ietf-poly1305"];
/// Bytes each way for the big transfers.
const BIG: usize = 64 << 20;
const PASSWORD: &str = "correct horse battery staple";

/// A libev binary listening on `port`, once it accepts connections and
/// is still running (one that failed to bind has exited: whatever
/// listens there is not it).
fn libev(program: &'static str, args: &[&str], port: u16) -> Proc {
    let mut p = Proc::start(program, args, &[]);
    let start = Instant::now();
    loop {
        let listening = TcpStream::connect(("127.0.0.1", port)).is_ok();
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("{program} on port {port} exited ({status}): {}", p.stderr_so_far());
        }
        if listening {
            return p;
        }
        assert!(start.elapsed() < LIMIT, "{program} is not listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic bytes: xorshift, so that 64 MiB need not be kept twice.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Sends `len` pattern bytes and reads them back, comparing as they come;
/// closes only after everything is back. Returns how many bytes matched
/// before the stream ended or an error (all of them on success).
fn round_trip(stream: TcpStream, len: usize, seed: u64, timeout: Duration) -> Result<usize, String> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut p = Pattern(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = buf.len().min(len - sent);
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
    let mut leftover: Vec<u8> = Vec::new();
    let result = loop {
        if matched == len {
            break Ok(len);
        }
        let n = match r.read(&mut got) {
            Ok(0) => break Err(format!("EOF after {matched} of {len} bytes")),
            Ok(n) => n,
            Err(e) => break Err(format!("{e} after {matched} of {len} bytes")),
        };
        leftover.extend_from_slice(&got[..n]);
        // Compare in 8-byte-aligned steps of the pattern.
        let whole = leftover.len() / 8 * 8;
        let whole = whole.min(len - matched);
        if whole > 0 {
            let k = whole.min(expect.len());
            want.fill(&mut expect[..k]);
            if leftover[..k] != expect[..k] {
                let at = leftover.iter().zip(&expect[..k]).position(|(a, b)| a != b).unwrap();
                return Err(format!("CORRUPT byte at {}", matched + at));
            }
            matched += k;
            leftover.drain(..k);
        }
    };
    // Unblocks the writer if the far end stopped reading.
    let _ = r.shutdown(Shutdown::Both);
    let _ = writer.join();
    result.map_err(|e| format!("{e} (matched {matched})")).map(|_| len)
}

fn config_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ss_server(method: &str, password: &str) -> (Proc, u16) {
    let port = free_port();
    let p = port.to_string();
    let proc =
        libev("ss-server", &["-s", "127.0.0.1", "-p", &p, "-k", password, "-m", method, "-t", "120"], port);
    (proc, port)
}

fn ss_tunnel(method: &str, password: &str, server: SocketAddr, to: SocketAddr) -> (Proc, u16) {
    let port = free_port();
    let (l, sp, fwd) = (port.to_string(), server.port().to_string(), to.to_string());
    let proc = libev(
        "ss-tunnel",
        &[
            "-s",
            "127.0.0.1",
            "-p",
            &sp,
            "-b",
            "127.0.0.1",
            "-l",
            &l,
            "-k",
            password,
            "-m",
            method,
            "-L",
            &fwd,
            "-t",
            "120",
        ],
        port,
    );
    (proc, port)
}

/// `water client|server -t ss --config CFG` listening on a free port, with
/// `--remote` (client) or `--forward` (server) `to`.
fn water_ss(kind: &str, cfg: &Path, to: &str) -> (Proc, SocketAddr) {
    water_with("ss", kind, cfg, to)
}

/// As [`water_ss`], with `-t transport` (a built-in or a `.wasm` path).
fn water_with(transport: &str, kind: &str, cfg: &Path, to: &str) -> (Proc, SocketAddr) {
    let flag = if kind == "client" { "--remote" } else { "--forward" };
    let cfg = cfg.to_str().unwrap();
    Proc::listening(&[kind, "-t", transport, "--config", cfg, "--listen", "127.0.0.1:0", flag, to])
}

/// The `ss` guest built as WATM v1 (the SDK's feature `v1`): a file, as an
/// operator would hand it to `-t`.
fn ss_v1() -> String {
    let v1 = watm_artifacts::GUESTS_V1.iter().find(|g| g.name == "ss").unwrap();
    v1.path.to_string()
}

fn ss_config(method: &str, password: &str, target: Option<SocketAddr>) -> String {
    let mut c = format!("method={method}\npassword={}\n", password.replace('\\', "\\\\").replace(';', "\\;"));
    if let Some(t) = target {
        c += &format!("target={t}\n");
    }
    c
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn water_client_through_ss_server_64_mib_each_way_for_every_method() {
    let dir = temp_dir("client");
    let echo = echo();
    for method in METHODS {
        let (_server, port) = ss_server(method, PASSWORD);
        let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, Some(echo.addr)));
        let remote = format!("127.0.0.1:{port}");
        let (_client, addr) = water_ss("client", &cfg, &remote);
        let before = echo.bytes.load(Ordering::SeqCst);
        let start = Instant::now();
        round_trip(TcpStream::connect(addr).unwrap(), BIG, 1, LIMIT)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        eprintln!("{method}: water client -> ss-server: {:?}", start.elapsed());
        assert_eq!(echo.bytes.load(Ordering::SeqCst) - before, BIG, "{method}");
    }
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn ss_tunnel_through_water_server_64_mib_each_way_for_every_method() {
    let dir = temp_dir("server");
    let echo = echo();
    for method in METHODS {
        let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, None));
        let fwd = echo.addr.to_string();
        let (_server, server) = water_ss("server", &cfg, &fwd);
        let (_tunnel, port) = ss_tunnel(method, PASSWORD, server, echo.addr);
        let start = Instant::now();
        round_trip(TcpStream::connect(("127.0.0.1", port)).unwrap(), BIG, 2, LIMIT)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        eprintln!("{method}: ss-tunnel -> water server: {:?}", start.elapsed());
    }
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn water_dialer_through_ss_server_64_mib_each_way_for_every_method() {
    let echo = echo();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for method in METHODS {
        let (_server, port) = ss_server(method, PASSWORD);
        let watm = water::Watm::new(
            watm_artifacts::Guest::named("ss").unwrap().wasm,
            water::Config::default().transport_config(ss_config(method, PASSWORD, Some(echo.addr))),
        )
        .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let conn = water::Dialer::new(&watm).unwrap().dial(format!("127.0.0.1:{port}")).await.unwrap();
            let (mut r, mut w) = tokio::io::split(conn);
            let writer = tokio::spawn(async move {
                let mut p = Pattern(3);
                let mut buf = vec![0u8; 64 * 1024];
                for _ in 0..BIG / buf.len() {
                    p.fill(&mut buf);
                    w.write_all(&buf).await.unwrap();
                }
                w
            });
            let mut want = Pattern(3);
            let (mut got, mut expect) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
            let mut total = 0;
            while total < BIG {
                let n = tokio::time::timeout(LIMIT, r.read_exact(&mut got)).await.unwrap().unwrap();
                want.fill(&mut expect);
                assert!(got[..n] == expect[..n], "{method}: corrupt bytes near {total}");
                total += n;
            }
            let w = writer.await.unwrap();
            let conn = r.unsplit(w);
            let _ = conn.close().await;
        });
    }
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn the_v1_build_of_ss_with_libev_64_mib_each_way_both_ways_for_every_method() {
    let dir = temp_dir("v1");
    let echo = echo();
    let v1 = ss_v1();
    let out = Command::new(WATER).args(["check", &v1]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("PASS load: valid WATM v1 module (roles: dial, accept, associate)"), "{said}");
    for method in METHODS {
        // water client (v1) -> ss-server -> echo.
        let (_server, port) = ss_server(method, PASSWORD);
        let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, Some(echo.addr)));
        let (_client, addr) = water_with(&v1, "client", &cfg, &format!("127.0.0.1:{port}"));
        let before = echo.bytes.load(Ordering::SeqCst);
        let start = Instant::now();
        round_trip(TcpStream::connect(addr).unwrap(), BIG, 4, LIMIT)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        eprintln!("{method}: water client (v1) -> ss-server: {:?}", start.elapsed());
        assert_eq!(echo.bytes.load(Ordering::SeqCst) - before, BIG, "{method}");
        // ss-tunnel -> water server (v1) -> echo.
        let cfg = config_file(&dir, &format!("{method}-server"), &ss_config(method, PASSWORD, None));
        let (_ours, server) = water_with(&v1, "server", &cfg, &echo.addr.to_string());
        let (_tunnel, tport) = ss_tunnel(method, PASSWORD, server, echo.addr);
        let start = Instant::now();
        round_trip(TcpStream::connect(("127.0.0.1", tport)).unwrap(), BIG, 5, LIMIT)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        eprintln!("{method}: ss-tunnel -> water server (v1): {:?}", start.elapsed());
    }
}

/// What a prober sees: whether the server said anything or closed within
/// `wait` of sending `probe`, and whether it closed after the prober did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    replied_or_closed_early: bool,
    closed_after_client: bool,
}

fn probe(addr: SocketAddr, probe: &[u8]) -> Probe {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(probe).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 1024];
    let early = !matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    // More garbage is still read and dropped, then the prober closes its
    // sending side: the server ends the connection.
    let _ = s.write_all(&[0x55; 4096]);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let closed = matches!(s.read(&mut buf), Ok(0)) || matches!(s.read(&mut buf), Ok(0));
    Probe { replied_or_closed_early: early, closed_after_client: closed }
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn probers_and_wrong_passwords_get_silence_from_both_servers() {
    let dir = temp_dir("probe");
    let echo = echo();
    let want = Probe { replied_or_closed_early: false, closed_after_client: true };
    // Every probe waits; they run side by side.
    std::thread::scope(|scope| {
        for method in METHODS {
            let (dir, echo) = (&dir, &echo);
            scope.spawn(move || {
                let (_libev, port) = ss_server(method, PASSWORD);
                let libev = SocketAddr::from(([127, 0, 0, 1], port));
                let cfg = config_file(dir, method, &ss_config(method, PASSWORD, None));
                let fwd = echo.addr.to_string();
                let (_ours, ours) = water_ss("server", &cfg, &fwd);
                // ss-tunnel with the wrong password, against our server.
                let (_tunnel, tport) = ss_tunnel(method, "wrong password", ours, echo.addr);
                // Our client with the wrong password, against libev's server.
                let bad = config_file(dir, &format!("{method}-bad"), &ss_config(method, "wrong password", Some(echo.addr)));
                let remote = libev.to_string();
                let (_client, caddr) = water_ss("client", &bad, &remote);
                std::thread::scope(|probes| {
                    // Garbage of several lengths (shorter than a salt, a salt
                    // and a bit, several chunks' worth): the same observations
                    // from libev and from us.
                    for len in [7usize, 60, 3000] {
                        let garbage: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                        let g = garbage.clone();
                        probes.spawn(move || {
                            assert_eq!(probe(libev, &g), want, "{method}: ss-server, {len} bytes of garbage")
                        });
                        probes.spawn(move || {
                            assert_eq!(probe(ours, &garbage), want, "{method}: water server, {len} bytes of garbage")
                        });
                    }
                    probes.spawn(move || {
                        let tunnel = SocketAddr::from(([127, 0, 0, 1], tport));
                        assert_eq!(probe(tunnel, b"hello"), want, "{method}: ss-tunnel with a wrong password");
                    });
                    probes.spawn(move || {
                        let mut s = TcpStream::connect(caddr).unwrap();
                        s.write_all(b"hello").unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
                        let r = s.read(&mut [0u8; 64]);
                        assert!(
                            matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
                            "{method}: water client with a wrong password: {r:?}"
                        );
                    });
                });
            });
        }
    });
    assert_eq!(echo.bytes.load(Ordering::SeqCst), 0, "a byte reached the echo service");
}

/// A TCP proxy that passes client → server untouched and alters the
/// server → client stream: flips a bit at byte `flip`, or ends it at byte
/// `cut`.
fn tamper(server: SocketAddr, flip: Option<usize>, cut: Option<usize>, upstream: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        let server = TcpStream::connect(server).unwrap();
        let pass = |mut from: TcpStream, mut to: TcpStream, alter: bool| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                let mut pos = 0;
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut n = n;
                    if alter {
                        if let Some(f) = flip.filter(|f| (pos..pos + n).contains(f)) {
                            buf[f - pos] ^= 0x04;
                        }
                        if let Some(c) = cut.filter(|c| *c < pos + n) {
                            n = c - pos;
                            let _ = to.write_all(&buf[..n]);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    pos += n;
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        };
        pass(client.try_clone().unwrap(), server.try_clone().unwrap(), upstream);
        pass(server, client, !upstream);
    });
    addr
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn altered_or_truncated_bytes_kill_the_connection_and_deliver_nothing_corrupt() {
    let dir = temp_dir("tamper");
    let echo = echo();
    let method = "chacha20-ietf-poly1305";
    let len = 4 << 20;
    let (_server, port) = ss_server(method, PASSWORD);
    let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, Some(echo.addr)));
    // ss-server → water client: a flipped bit well inside, or a cut inside a
    // chunk. The client end fails; what was delivered is a true prefix.
    for (flip, cut) in [(Some(1 << 20), None), (Some(40), None), (None, Some((2 << 20) + 5))] {
        let proxy = tamper(SocketAddr::from(([127, 0, 0, 1], port)), flip, cut, false);
        let remote = proxy.to_string();
        let (_client, addr) = water_ss("client", &cfg, &remote);
        let err = round_trip(TcpStream::connect(addr).unwrap(), len, 5, Duration::from_secs(10))
            .expect_err("tampering went unnoticed");
        assert!(!err.contains("CORRUPT"), "{flip:?} {cut:?}: {err}");
    }
    // The failure reads as an error, not a clean end: the client's socket
    // is reset. (A small request, all of it read by the tunnel: a close
    // with unread bytes resets anyway, and a concurrent writer may take
    // the reset's error from the reader.)
    let proxy = tamper(SocketAddr::from(([127, 0, 0, 1], port)), Some(40), None, false);
    let (_client, addr) = water_ss("client", &cfg, &proxy.to_string());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(&[7u8; 100]).unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert!(matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset), "{end:?}");
    assert!(got.is_empty(), "{} bytes of a reply that failed to authenticate", got.len());
    // ss-tunnel → water server, a bit flipped on the way in: our server end
    // stops delivering (nothing corrupt reaches the echo service) and falls
    // silent; the client sees its data stop short.
    let scfg = config_file(&dir, "server", &ss_config(method, PASSWORD, None));
    let fwd = echo.addr.to_string();
    let (_ours, ours) = water_ss("server", &scfg, &fwd);
    let proxy = tamper(ours, Some(1 << 20), None, true);
    let (_tunnel, tport) = ss_tunnel(method, PASSWORD, proxy, echo.addr);
    let before = echo.bytes.load(Ordering::SeqCst);
    let s = TcpStream::connect(("127.0.0.1", tport)).unwrap();
    let err = round_trip(s, len, 6, Duration::from_secs(3)).expect_err("tampering went unnoticed");
    assert!(!err.contains("CORRUPT"), "{err}");
    let reached = echo.bytes.load(Ordering::SeqCst) - before;
    assert!(reached < 1 << 20, "{reached} bytes reached the echo service past the flipped bit");
}

#[test]
fn water_check_ss_passes_with_a_config_and_names_what_is_missing() {
    let dir = temp_dir("check");
    let cfg = config_file(&dir, "ok", "method=chacha20-ietf-poly1305\npassword=x\ntarget=127.0.0.1:9\n");
    let out = Command::new(WATER).args(["check", "ss", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // load, then per role: the round trip, half-close, large transfer.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("PASS")).count(), 10, "{stdout}");
    let bad = config_file(&dir, "bad", "method=chacha20-ietf-poly1305\npasswd=x\n");
    let out = Command::new(WATER).args(["check", "ss", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("unknown config key `passwd`"), "{all}");
}

/// SOCKS5 proxy mode over `ss`, as a Shadowsocks client is used: curl asks
/// `water client --socks5` for a host, the transport always dials
/// shadowsocks-libev's `ss-server` (`--remote`), and the SOCKS target reaches
/// the guest as the argument `target=host:port`, which it sends in its
/// first chunk; ss-server connects there. The config names no target.
#[test]
#[cfg_attr(
    not(all(peer_ss_libev, peer_curl)),
    ignore = "needs shadowsocks-libev and curl: apt-get install shadowsocks-libev curl python3"
)]
fn curl_through_socks5_proxy_mode_over_ss_to_ss_server() {
    let dir = temp_dir("ss-socks");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let body = common::pattern(300_000, 5);
    std::fs::write(site.join("file.bin"), &body).unwrap();
    let (_web, web) = common::web_server(&site);
    let method = "chacha20-ietf-poly1305";
    let (_server, port) = ss_server(method, PASSWORD);
    let cfg = config_file(&dir, "client", &ss_config(method, PASSWORD, None));
    let remote = format!("127.0.0.1:{port}");
    let (_client, socks) = Proc::listening(&[
        "client",
        "-t",
        "ss",
        "--config",
        cfg.to_str().unwrap(),
        "--socks5",
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote,
    ]);
    // By name: the proxy resolves it, so the guest's target is a domain.
    let url = format!("http://localhost:{}/file.bin", web.port());
    let got = common::curl_socks(&socks.to_string(), &url, &[]).unwrap_or_else(|e| panic!("curl: {e}"));
    assert!(got == body, "{} bytes came back, not the file's {}", got.len(), body.len());
    // A wrong password: ss-server stays silent, and curl gets no page.
    let wrong = config_file(&dir, "wrong", &ss_config(method, "not the password", None));
    let (_client, socks) = Proc::listening(&[
        "client",
        "-t",
        "ss",
        "--config",
        wrong.to_str().unwrap(),
        "--socks5",
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote,
    ]);
    let denied = common::curl_socks(&socks.to_string(), &url, &["--max-time", "3"]);
    assert!(denied.is_err(), "a page came through with the wrong password");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relay from a fresh port to `server` that records what each client
/// sends; a connection's recording arrives once both its directions have
/// ended, with whether the server sent anything back. (ss-tunnel's
/// readiness check, a bare connect, is a connection too.)
fn recorder(server: SocketAddr) -> (SocketAddr, std::sync::mpsc::Receiver<(Vec<u8>, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut up = TcpStream::connect(server).unwrap();
                let (mut client_w, mut up_r) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                let back = std::thread::spawn(move || {
                    let n = std::io::copy(&mut up_r, &mut client_w).unwrap_or(0);
                    let _ = client_w.shutdown(Shutdown::Write);
                    n > 0
                });
                let mut recorded = Vec::new();
                let mut buf = [0u8; 16 << 10];
                loop {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            recorded.extend_from_slice(&buf[..n]);
                            if up.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = up.shutdown(Shutdown::Write);
                let replied = back.join().unwrap_or(false);
                let _ = tx.send((recorded, replied));
            });
        }
    });
    (addr, rx)
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn a_replayed_libev_connection_is_refused_by_both_servers_alike() {
    let dir = temp_dir("replay");
    let method = "chacha20-ietf-poly1305";
    let echo = echo();
    let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, None));
    let (_ours, ours) = water_ss("server", &cfg, &echo.addr.to_string());
    let (_libev, port) = ss_server(method, PASSWORD);
    let libev_addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (name, server) in [("water server", ours), ("ss-server", libev_addr)] {
        // libev's own client, its bytes recorded on the way.
        let (rec, recording) = recorder(server);
        let (_tunnel, tport) = ss_tunnel(method, PASSWORD, rec, echo.addr);
        let mut s = TcpStream::connect(("127.0.0.1", tport)).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"the one request").unwrap();
        let mut back = [0u8; 15];
        s.read_exact(&mut back).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&back, b"the one request", "{name}");
        drop(s);
        // The recording of the connection the server answered.
        let flight = loop {
            let (bytes, replied) = recording.recv_timeout(LIMIT).expect("the recording");
            if replied {
                break bytes;
            }
        };
        assert!(flight.len() > 32, "{name}: recorded {} bytes", flight.len());
        // The same bytes again, as a censor replays them: no reply, and the
        // server closes only after the prober's EOF.
        let before = echo.connections.load(Ordering::SeqCst);
        let mut replay = TcpStream::connect(server).unwrap();
        replay.set_read_timeout(Some(LIMIT)).unwrap();
        replay.write_all(&flight).unwrap();
        replay.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let r = replay.read_to_end(&mut got);
        assert!(got.is_empty(), "{name}: the replay got {} bytes back ({r:?})", got.len());
        // The upstream saw the one request, not its replay.
        assert_eq!(
            echo.connections.load(Ordering::SeqCst),
            before,
            "{name}: the replay reached the upstream"
        );
    }
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn with_the_upstream_down_probes_see_the_same_from_both_servers() {
    // `water server` forwards to a port nobody listens on; ss-server's
    // upstream is whatever a client names, which a prober never gets to.
    let dir = temp_dir("probe-down");
    let method = "chacha20-ietf-poly1305";
    let (_dead, dead) = common::refusing_addr();
    let (_libev, port) = ss_server(method, PASSWORD);
    let libev = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = config_file(&dir, method, &ss_config(method, PASSWORD, None));
    let (_ours, ours) = water_ss("server", &cfg, &dead.to_string());
    let (_t1, to_libev) = ss_tunnel(method, "wrong password", libev, dead);
    let (_t2, to_ours) = ss_tunnel(method, "wrong password", ours, dead);
    let wrong = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    std::thread::scope(|probes| {
        // Silence, garbage from one byte to 4 KiB, a wrong password.
        for len in [0usize, 1, 31, 33, 200, 4096] {
            let garbage: Vec<u8> = (0..len).map(|i| (i * 131 + 11) as u8).collect();
            probes.spawn(move || {
                let (theirs, mine) = std::thread::scope(|s| {
                    let a = s.spawn(|| probe(libev, &garbage));
                    let b = s.spawn(|| probe(ours, &garbage));
                    (a.join().unwrap(), b.join().unwrap())
                });
                assert_eq!(mine, theirs, "{len} bytes of garbage: water server vs ss-server");
                assert!(!mine.replied_or_closed_early, "{len} bytes: {mine:?}");
            });
        }
        probes.spawn(move || {
            let (theirs, mine) = (probe(wrong(to_libev), b"hello"), probe(wrong(to_ours), b"hello"));
            assert_eq!(mine, theirs, "a wrong password: water server vs ss-server");
        });
    });
}
