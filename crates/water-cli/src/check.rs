//! `water check T`: validate the module, then self-test every role it
//! exports on loopback, a few lines per role.
//!
//! A transport's wire format is its own, so each role is tested against the
//! transport itself: dial → listener (same transport) → forwarded to the
//! service, as `water server` does; dial → listener (same transport) whose
//! application is the service; plain client → relay → listener (same
//! transport) → service. A module that exports no accept has its dialer
//! tested against the service directly, which only a transport whose wire
//! format is symmetric (the same codec both ways, like `xor`) passes.
//!
//! Per role, three exchanges, each on a fresh connection:
//! - **basic** (decides PASS/FAIL and the exit status): send, read all of
//!   it back, then close — no half-close, which some sound guests (water-go's
//!   TinyGo workers, shadowsocks) treat as the end of the connection;
//! - **half-close**: send, shut down writing, read to EOF, through a
//!   service that replies only after it has read to EOF (as an HTTP/1.0
//!   server does); a worker that ends at the first EOF loses the reply: a
//!   WARN line, not a failure;
//! - **large**: 8 MiB with a reader that starts late, so socket buffers
//!   fill and writes come back short; a guest that drops the rest of a
//!   short write, or stalls (a worker blocked writing one direction cannot
//!   drain the other), fails here: a WARN line naming the cause. It is
//!   bounded by progress (no byte for 5 s), not by its total time, so a
//!   slow but working guest passes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Dialer, Listener, Relay, Role, Watm};

use crate::loopback::{exchange, pattern};
use crate::transport;
use water_bench::echo_server;

/// The basic and half-close exchanges: small enough to fit in the buffers
/// of a chain of blocking single-threaded workers (a larger one can
/// deadlock them, which is the large exchange's business).
const SIZE: usize = 64 << 10;
const LARGE: usize = 8 << 20;
/// How long the large exchange's reader waits before its first read.
const LATE_READER: Duration = Duration::from_millis(300);
/// Longest wait for the next byte: past it an exchange has stalled.
const STALL: Duration = Duration::from_secs(5);
/// Longest any one exchange or set-up may take.
const LIMIT: Duration = Duration::from_secs(60);

pub async fn run(t: &str, config: Option<&Path>) -> anyhow::Result<()> {
    let watm = match transport::load(t, config) {
        Ok(w) => w,
        Err(e) => {
            println!("FAIL load: {e:#}");
            return Err(e);
        }
    };
    let roles: Vec<_> = [
        (Role::Dialer, "dial"),
        (Role::Listener, "accept"),
        (Role::Relay, "associate"),
        (Role::GuestDialer, "dial-by-guest"),
    ]
    .into_iter()
    .filter(|(r, _)| watm.supports(*r))
    .map(|(_, n)| n)
    .collect();
    println!(
        "PASS load: valid WATM {} module (roles: {})",
        watm.abi(),
        if roles.is_empty() { "none".into() } else { roles.join(", ") }
    );
    if roles.is_empty() {
        bail!("{t} exports no role function");
    }
    if watm.supports(Role::GuestDialer) {
        println!("SKIP dial-by-guest: the guest names its own address, which a self-test cannot serve");
    }
    let stop = CancellationToken::new();
    let echo = echo_server().await?;
    let deferred = reply_after_eof_server().await?;
    let mut failed = 0;
    for (role, name) in [(Role::Dialer, "dial"), (Role::Listener, "accept"), (Role::Relay, "associate")] {
        if !watm.supports(role) {
            continue;
        }
        let needs_dial = role != Role::Dialer && !watm.supports(Role::Dialer);
        let needs_accept = role == Role::Relay && !watm.supports(Role::Listener);
        if needs_dial || needs_accept {
            println!(
                "SKIP {name}: the self-test pairs it with this transport's {}",
                if needs_dial { "dialer" } else { "listener" }
            );
            continue;
        }
        let opened = async {
            let streaming = Route::open(&watm, role, Service::Echo, echo, stop.clone()).await?;
            let deferred = Route::open(&watm, role, Service::ReplyAfterEof, deferred, stop.clone()).await?;
            anyhow::Ok((streaming, deferred))
        };
        let (path, after_eof) = match tokio::time::timeout(LIMIT, opened).await {
            Ok(Ok(routes)) => routes,
            Ok(Err(e)) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
                continue;
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: setting up took longer than {LIMIT:?}");
                continue;
            }
        };
        match bounded(path.basic()).await {
            Ok(()) => println!("PASS {name}: {} KiB round trip on loopback, byte for byte", SIZE >> 10),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
                continue;
            }
        }
        match bounded(after_eof.half_close()).await {
            Ok(()) => println!("PASS {name} half-close: the reply after a half-close came back whole"),
            Err(e) => println!(
                "WARN {name} half-close: the worker ends at the first EOF; a reply after a half-close is lost ({e:#})"
            ),
        }
        match bounded(path.large()).await {
            Ok(()) => {
                println!("PASS {name} large: {} MiB with full socket buffers, byte for byte", LARGE >> 20)
            }
            Err(e) => println!(
                "WARN {name} large: {} MiB with full socket buffers: {e:#}; the guest {}",
                LARGE >> 20,
                if e.is::<Stalled>() {
                    "stops moving bytes once buffers fill (for example a worker blocked in one \
                     direction while the other waits)"
                } else {
                    "may drop the rest of a short write"
                }
            ),
        }
    }
    stop.cancel();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn bounded(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(r) => r,
        Err(_) => bail!("no answer within {LIMIT:?}"),
    }
}

/// How a self-test reaches the role under test.
enum Route {
    /// The transport's dialer, to `addr` (the echo service, or the
    /// transport's own echoing listener).
    Dial(Dialer, SocketAddr),
    /// Plain TCP to a relay in front of the transport's listener.
    Plain(SocketAddr),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// What the far end does with the bytes.
#[derive(Clone, Copy)]
enum Service {
    /// Sends each byte back as it comes.
    Echo,
    /// Reads to EOF, then sends it all back and closes.
    ReplyAfterEof,
}

impl Route {
    /// `service` is the far end for the dialer role (an address that runs
    /// `kind`); the other roles run `kind` behind the transport's listener.
    async fn open(
        watm: &Watm,
        role: Role,
        kind: Service,
        service: SocketAddr,
        stop: CancellationToken,
    ) -> anyhow::Result<Route> {
        Ok(match role {
            Role::Dialer if watm.supports(Role::Listener) => {
                Route::Dial(Dialer::new(watm)?, forwarding_listener(watm, service, stop).await?)
            }
            Role::Dialer => Route::Dial(Dialer::new(watm)?, service),
            Role::Listener => Route::Dial(Dialer::new(watm)?, echoing_listener(watm, kind, stop).await?),
            Role::Relay => {
                let remote = echoing_listener(watm, kind, stop.clone()).await?;
                let relay = Relay::new(watm, remote.to_string())?;
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                tokio::spawn(async move { relay.serve(listener, stop.cancelled_owned()).await });
                Route::Plain(addr)
            }
            other => anyhow::bail!("no self-test for the {other:?} role"),
        })
    }

    async fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        Ok(match self {
            Route::Dial(dialer, addr) => Box::new(dialer.dial(addr.to_string()).await.context("dial")?),
            Route::Plain(addr) => Box::new(TcpStream::connect(addr).await.context("connect to the relay")?),
        })
    }

    /// Send, read it all back, close.
    async fn basic(&self) -> anyhow::Result<()> {
        self.without_half_close(SIZE, Duration::ZERO).await
    }

    /// Send, half-close, read to EOF.
    async fn half_close(&self) -> anyhow::Result<()> {
        let sent = pattern(SIZE);
        let got = exchange(self.connect().await?, &sent, |_| {}).await?;
        same(&got, &sent)
    }

    /// Send a lot to a reader that starts late.
    async fn large(&self) -> anyhow::Result<()> {
        self.without_half_close(LARGE, LATE_READER).await
    }

    async fn without_half_close(&self, len: usize, read_after: Duration) -> anyhow::Result<()> {
        let sent = pattern(len);
        let (mut r, mut w) = tokio::io::split(self.connect().await?);
        let write = async {
            w.write_all(&sent).await?;
            w.flush().await?;
            anyhow::Ok(())
        };
        let read = async {
            tokio::time::sleep(read_after).await;
            let mut got = Vec::with_capacity(len);
            let mut buf = vec![0u8; 64 << 10];
            while got.len() < len {
                match tokio::time::timeout(STALL, r.read(&mut buf)).await {
                    Err(_) => return Err(anyhow::Error::new(Stalled { got: got.len(), of: len })),
                    Ok(read) => match read? {
                        0 => break,
                        n => got.extend_from_slice(&buf[..n]),
                    },
                }
            }
            anyhow::Ok(got)
        };
        let ((), got) = tokio::try_join!(write, read)?;
        same(&got, &sent)
    }
}

/// No byte came back for [`STALL`].
#[derive(Debug)]
struct Stalled {
    got: usize,
    of: usize,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stalled after {} of {} bytes (nothing for {STALL:?})", self.got, self.of)
    }
}

impl std::error::Error for Stalled {}

fn same(got: &[u8], sent: &[u8]) -> anyhow::Result<()> {
    if got.len() != sent.len() {
        bail!("{} of {} bytes came back", got.len(), sent.len());
    }
    if got != sent {
        let at = got.iter().zip(sent).position(|(a, b)| a != b).unwrap_or(0);
        bail!("the bytes that came back differ from byte {at}");
    }
    Ok(())
}

/// A listener of `watm` whose application runs `kind`; returns its address.
async fn echoing_listener(watm: &Watm, kind: Service, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    listening(watm, stop, move |conn| serve(conn, kind)).await
}

/// A listener of `watm` whose application forwards each connection to `to`,
/// as `water server` does; returns its address.
async fn forwarding_listener(
    watm: &Watm,
    to: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    listening(watm, stop, move |mut conn| async move {
        if let Ok(mut upstream) = TcpStream::connect(to).await {
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        }
    })
    .await
}

/// A listener of `watm` that hands each accepted connection to `app` in a
/// task of its own, until `stop`; returns its address.
async fn listening<F>(
    watm: &Watm,
    stop: CancellationToken,
    app: impl Fn(water::Connection) -> F + Send + 'static,
) -> anyhow::Result<SocketAddr>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = Listener::bind(watm, "127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            if let Ok((conn, _)) = accepted {
                tokio::spawn(app(conn));
            }
        }
    });
    Ok(addr)
}

async fn serve(conn: impl AsyncRead + AsyncWrite, kind: Service) {
    let (mut r, mut w) = tokio::io::split(conn);
    match kind {
        Service::Echo => {
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        Service::ReplyAfterEof => {
            let mut all = Vec::new();
            if r.read_to_end(&mut all).await.is_ok() {
                let _ = w.write_all(&all).await;
            }
        }
    }
    let _ = w.shutdown().await;
}

/// A plain TCP service that replies only after reading to EOF.
async fn reply_after_eof_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, Service::ReplyAfterEof));
        }
    });
    Ok(addr)
}
