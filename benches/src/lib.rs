//! Measurements of the WATER host next to native baselines, shared by the
//! criterion benches (`benches/`) and `water bench`.
//!
//! Every figure is taken against an echo service on loopback, through one of
//! these [`Path`]s, so that baselines and WATER share everything but the part
//! being measured:
//! - [`Path::Direct`]: the application talks TCP to the echo service.
//! - [`Path::Native`]: a plain Rust task sits exactly where the guest would —
//!   the same in-process duplex on the application side, the same TCP socket
//!   on the other — and copies bytes with no wasm.
//! - [`Path::Water`]: a [`water::Dialer`] through a WATM.
//!
//! Functions return raw durations; the callers take medians and ratios.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A byte stream of any of the paths.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How the application reaches the echo service.
#[derive(Debug, Clone)]
pub enum Path {
    Direct,
    Native,
    Water(water::Dialer),
}

impl Path {
    /// Opens one connection to `echo`.
    pub async fn connect(&self, echo: SocketAddr) -> io::Result<Pin<Box<dyn Stream>>> {
        match self {
            Path::Direct => {
                let s = TcpStream::connect(echo).await?;
                s.set_nodelay(true)?;
                Ok(Box::pin(s))
            }
            Path::Native => {
                let (app, mut guest_side) = water::__bench::duplex_pair();
                let mut net = TcpStream::connect(echo).await?;
                net.set_nodelay(true)?;
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut guest_side,
                        &mut net,
                        GUEST_BUFFER,
                        GUEST_BUFFER,
                    )
                    .await;
                });
                Ok(Box::pin(app))
            }
            Path::Water(dialer) => {
                Ok(Box::pin(dialer.dial(echo.to_string()).await.map_err(io::Error::from)?))
            }
        }
    }
}

/// The copy buffer of the native baselines: the same as each of the guest
/// SDK's buffers, so both move bytes in chunks of the same size.
pub const GUEST_BUFFER: usize = water_guest::BUFFER_SIZE;

/// A TCP echo service on 127.0.0.1 (runs until the runtime ends).
pub async fn echo_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// `n` echo services (see [`echo_server`]), for measuring setups: every
/// setup leaves a socket in TIME_WAIT for a minute, and the kernel's search
/// for a free local port toward one destination does more work with each
/// of them (measured: 1–2 µs more per connect, and more CPU, with 100,000
/// of them), so sequential setups spread over several destinations measure
/// the setup rather than the runs before it.
pub async fn echo_servers(n: usize) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(echo_server().await?);
    }
    Ok(out)
}

/// How many echo services a setup measurement cycles through.
pub const SETUP_ECHOES: usize = 64;

/// A one-hop TCP forwarder to `to` (the native stand-in for `water client`).
pub async fn tcp_forwarder(to: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = up.set_nodelay(true);
                    let _ =
                        tokio::io::copy_bidirectional_with_sizes(&mut s, &mut up, GUEST_BUFFER, GUEST_BUFFER)
                            .await;
                }
            });
        }
    });
    Ok(addr)
}

/// The same one-hop forwarder with a WATER dialer in the hop: each accepted
/// socket is handed to the guest (`Dialer::dial_socket`), as `water client`
/// does.
pub async fn water_forwarder(dialer: water::Dialer, to: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let dialer = dialer.clone();
            tokio::spawn(async move {
                if let Ok(mut tunnel) = dialer.dial_socket(to.to_string(), s).await {
                    let _ = tunnel.wait().await;
                }
            });
        }
    });
    Ok(addr)
}

/// The xor key the benchmarks configure (the `water` command's demo key).
pub const XOR_KEY: &str = "5741544552";

/// A reference guest (`plain`, `xor` with [`XOR_KEY`], `reverse`), loaded.
/// Panics on an unknown name: benchmarks have no other guests.
pub fn reference_guest(name: &str) -> water::Watm {
    let guest = watm_artifacts::Guest::named(name).expect("plain, xor or reverse");
    let config = water::Config::default();
    let config = if name == "xor" { config.transport_config(XOR_KEY) } else { config };
    water::Watm::new(guest.wasm, config).expect("load the reference guest")
}

/// Size of each write in the throughput measurements.
pub const WRITE_SIZE: usize = 64 << 10;

/// Sends `total` bytes in [`WRITE_SIZE`] writes while reading the echo; the
/// time until the last byte is back. Checks the count, not the content (the
/// tests check content).
pub async fn echo_bulk(stream: Pin<Box<dyn Stream>>, total: usize) -> io::Result<Duration> {
    let (mut r, mut w) = tokio::io::split(stream);
    let start = Instant::now();
    let write = async {
        let chunk = vec![0xa5u8; WRITE_SIZE];
        let mut left = total;
        while left > 0 {
            let n = left.min(WRITE_SIZE);
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        w.shutdown().await
    };
    let read = async {
        let mut buf = vec![0u8; WRITE_SIZE];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("echo ended at {got} of {total}"),
                ));
            }
            got += n;
        }
        Ok(())
    };
    tokio::try_join!(write, read)?;
    Ok(start.elapsed())
}

/// `count` ping-pongs of `size` bytes on one connection; each round trip.
pub async fn ping_pong(
    stream: &mut Pin<Box<dyn Stream>>,
    size: usize,
    count: usize,
) -> io::Result<Vec<Duration>> {
    let ping = vec![0x5au8; size];
    let mut pong = vec![0u8; size];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Connect, send one byte, get it back: connection setup as the
/// application sees it.
pub async fn setup(path: &Path, echo: SocketAddr) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = path.connect(echo).await?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    let took = t.elapsed();
    drop(s);
    Ok(took)
}

/// `conns` connections at once, each echoing `each` bytes; the time until
/// the last is done.
pub async fn concurrent(path: &Path, echo: SocketAddr, conns: usize, each: usize) -> io::Result<Duration> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(path.connect(echo).await?);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in streams {
        tasks.spawn(echo_bulk(s, each));
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(io::Error::other)??;
    }
    Ok(start.elapsed())
}

/// The median of some durations (`ZERO` for none).
pub fn median(mut d: Vec<Duration>) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.sort();
    d[d.len() / 2]
}

/// `N` distinct ports free on 127.0.0.1 now, for child programs that take
/// a port number and not 0, chosen from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`).
///
/// A port the kernel chose (`bind(:0)`) and we let go of is one it may
/// hand to any program's next `bind(:0)` or outgoing connection before the
/// child binds it: the child then fails to bind, and whoever took the port
/// answers in its place (CI, 2026-12-03: a test's `ss-server`). Below the
/// range only an explicit bind takes a port. Each is held while the others
/// are found, then all are released; the search starts somewhere new each
/// call, so a caller handing out many (the CLI's tests) still checks for
/// repeats.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let first = low.saturating_sub(10_000).max(1_024);
    let span = u32::from(low.saturating_sub(first)).max(1);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let start = (seed.subsec_nanos() ^ std::process::id()) % span;
    let mut held = Vec::with_capacity(N);
    for i in 0..span {
        if held.len() == N {
            break;
        }
        let port = first + ((start + i) % span) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    // A machine whose range starts too low to leave room: the kernel's
    // choice, as a last resort.
    while held.len() < N {
        held.push(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&held) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}
