//! Shared fixtures for the host tests: an echo server, random data, the
//! reference guests' codecs, and an fd counter. Every server is bound to
//! 127.0.0.1:0 and every wait is bounded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use water::{Config, Watm};
use water_guest::testing::{Segmentation, pump};
use water_guest::{Role, Transport};

/// Every test gives up after this long instead of hanging CI.
pub const LIMIT: Duration = Duration::from_secs(60);

pub const XOR_KEY: &str = "9f3c51a7e0";

pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("test timed out")
}

/// Loads a reference guest (xor with [`XOR_KEY`]).
pub fn guest(name: &str) -> Watm {
    let g = watm_artifacts::Guest::named(name).expect("built guest");
    let config = if name == "xor" { Config::default().transport_config(XOR_KEY) } else { Config::default() };
    Watm::new(&g.bytes(), config).expect("load guest")
}

pub const GUESTS: [&str; 3] = ["plain", "xor", "reverse"];

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A TCP echo server; runs until the test's runtime ends.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The wire encoding of `plain` under guest `name`'s encoder.
pub fn encode(name: &str, plain: &[u8]) -> Vec<u8> {
    let seg = Segmentation::default();
    match name {
        "plain" => pump(watm_plain::Plain.encoder(Role::Dialer, &()), plain, &seg).unwrap(),
        "xor" => pump(
            watm_xor::Xor::from_config(XOR_KEY.as_bytes()).unwrap().encoder(Role::Dialer, &()),
            plain,
            &seg,
        )
        .unwrap(),
        "reverse" => pump(watm_reverse::Reverse.encoder(Role::Dialer, &()), plain, &seg).unwrap(),
        _ => unreachable!(),
    }
}

/// The plain bytes of a wire stream under guest `name`'s decoder.
pub fn decode(name: &str, wire: &[u8]) -> Vec<u8> {
    let seg = Segmentation::default();
    match name {
        "plain" => pump(watm_plain::Plain.decoder(Role::Listener, &()), wire, &seg).unwrap(),
        "xor" => pump(
            watm_xor::Xor::from_config(XOR_KEY.as_bytes()).unwrap().decoder(Role::Listener, &()),
            wire,
            &seg,
        )
        .unwrap(),
        "reverse" => pump(watm_reverse::Reverse.decoder(Role::Listener, &()), wire, &seg).unwrap(),
        _ => unreachable!(),
    }
}

/// Writes `out` and reads to EOF at the same time; returns what was read.
pub async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    out: &[u8],
) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        w.write_all(out).await?;
        w.shutdown().await
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    tokio::try_join!(write, read)?;
    Ok(got)
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// A preview1 event's fields, as a WAT guest hands them over: (userdata,
/// error, type, nbytes, flags).
pub fn fields(e: &[u8]) -> (u64, u16, u8, u64, u16) {
    (
        u64::from_le_bytes(e[0..8].try_into().unwrap()),
        u16::from_le_bytes(e[8..10].try_into().unwrap()),
        e[10],
        u64::from_le_bytes(e[16..24].try_into().unwrap()),
        u16::from_le_bytes(e[24..26].try_into().unwrap()),
    )
}

/// The little-endian `u32` at `at`.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A listener of `watm` whose application echoes every connection;
/// returns its address. Runs until the test's runtime ends.
pub async fn echoing_listener(watm: &Watm) -> SocketAddr {
    let listener = water::Listener::bind(watm, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An address on loopback that refuses connections for as long as the
/// returned socket lives: bound, never listening. (A listener bound and
/// dropped gives its port back, and a test beside this one binding `:0`
/// may take it: then it no longer refuses.)
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}
