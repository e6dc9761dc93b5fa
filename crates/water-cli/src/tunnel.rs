//! `water client`, `server` and `relay`: accept on `--listen`, run every
//! connection through the transport, stop cleanly on SIGINT/SIGTERM.
//!
//! A failing connection is logged and never takes the tunnel down; only
//! errors of the listening socket itself (and bad arguments) end it.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use std::io::Write;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use water::logging::Scrubbed;
use water::{Dialer, Forwarder, Relay};

use crate::{socks, transport};

/// How long connections still open at shutdown get before the process exits.
const DRAIN: Duration = Duration::from_millis(1500);

/// Binds `addr` and announces it: exactly one line on stdout.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    Ok(listener)
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: stopping");
        token.cancel();
    });
    Ok(stop)
}

/// Accept errors that concern one connection, or a passing shortage.
fn transient(e: &io::Error) -> bool {
    // Linux: ENFILE, EMFILE, ENOMEM, ENOBUFS.
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| [23, 24, 12, 105].contains(&c))
}

/// Waits for the connection tasks, at most [`DRAIN`].
async fn drain(mut tasks: JoinSet<()>) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, all).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; exiting anyway");
    }
}

/// The library limits a tunnel's flags set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--idle-timeout`: a connection through which no byte moved for this
    /// long is cancelled, whatever its guest does (one that ignores EOF
    /// would otherwise hold both sockets).
    pub idle_timeout: Option<std::time::Duration>,
    /// `--orphan-timeout`: `None` for the library's default (60 s), zero
    /// for none. A connection whose application side closed, while its
    /// guest ignores that, is cancelled once no byte has moved for this
    /// long.
    pub orphan_timeout: Option<std::time::Duration>,
}

/// The library options a tunnel's flags set.
fn library_config(l: Limits) -> water::Config {
    let mut cfg = water::Config::default();
    if let Some(n) = l.max_connections {
        cfg = cfg.max_connections(n);
    }
    if let Some(t) = l.idle_timeout {
        cfg = cfg.idle_timeout(t);
    }
    if let Some(t) = l.orphan_timeout {
        cfg = cfg.orphan_timeout((!t.is_zero()).then_some(t));
    }
    cfg
}

/// Loads transport `t` with the tunnel's limits, then runs its
/// `_water_init` once (with the config) in a throwaway instance: a bad config
/// is an error at start-up, not on each connection.
async fn load_checked(t: &str, config: Option<&Path>, limits: Limits) -> anyhow::Result<water::Watm> {
    let watm = transport::load_with(t, config, library_config(limits))?;
    watm.check_init().await.context("the transport rejects its configuration")?;
    Ok(watm)
}

pub async fn client(
    t: &str,
    config: Option<&Path>,
    limits: Limits,
    listen: &str,
    remote: String,
) -> anyhow::Result<()> {
    let dialer = Dialer::new(&load_checked(t, config, limits).await?)?;
    let listener = bind(listen).await?;
    run_client(dialer, listener, remote, on_signal()?).await
}

/// The client tunnel on a bound listener, until `stop`.
pub async fn run_client(
    dialer: Dialer,
    listener: TcpListener,
    remote: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    serve(listener, stop, |stream, stop| {
        let (dialer, remote) = (dialer.clone(), remote.clone());
        async move {
            // The accepted socket is the guest's plain side: no copy here.
            let mut tunnel = tokio::select! {
                t = dialer.dial_socket(remote.clone(), stream) => t?,
                // Shutdown does not wait for a setup.
                () = stop.cancelled() => return Ok(()),
            };
            tokio::select! {
                r = tunnel.wait() => Ok(r?),
                () = stop.cancelled() => Ok(tunnel.abort().await?),
            }
        }
    })
    .await
}

/// `water client --socks5`: SOCKS5 in front of the dialer (see [`socks::Mode`]).
pub async fn socks_client(
    t: &str,
    config: Option<&Path>,
    limits: Limits,
    listen: &str,
    mode: socks::Mode,
) -> anyhow::Result<()> {
    let dialer = Dialer::new(&load_checked(t, config, limits).await?)?;
    let listener = bind(listen).await?;
    socks::serve(dialer, listener, mode, on_signal()?).await
}

pub async fn server(
    t: &str,
    config: Option<&Path>,
    limits: Limits,
    listen: &str,
    forward: String,
) -> anyhow::Result<()> {
    // The guest reads and writes the upstream socket itself: no copy
    // through the host (see `water::Forwarder`). A module without
    // `_water_accept` is refused here (`Error::RoleNotSupported`).
    let forwarder = Forwarder::new(&load_checked(t, config, limits).await?, forward)?;
    let listener = bind(listen).await?;
    let stop = on_signal()?;
    forwarder.serve(listener, stop.cancelled()).await.context("server")?;
    Ok(())
}

pub async fn relay(
    t: &str,
    config: Option<&Path>,
    limits: Limits,
    listen: &str,
    remote: String,
) -> anyhow::Result<()> {
    let relay = Relay::new(&load_checked(t, config, limits).await?, remote)?;
    let listener = bind(listen).await?;
    let stop = on_signal()?;
    relay.serve(listener, stop.cancelled()).await.context("relay")?;
    Ok(())
}

/// Accepts until `stop`, running `handle` per connection as its own task.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(TcpStream, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let work = handle(stream, stop.clone());
                tasks.spawn(async move { log_end(peer, work.await) });
            }
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "accept failed; continuing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("accept failed"),
        }
        while tasks.try_join_next().is_some() {}
    }
    drain(tasks).await;
    Ok(())
}

/// Logs how a connection ended: failures at warn, rate-limited
/// ([`water::logging::connection_warning`]); the peer's address scrubbed
/// unless `--unsafe-logging`.
pub(crate) fn log_end(peer: std::net::SocketAddr, result: anyhow::Result<()>) {
    let peer = Scrubbed(peer);
    match result {
        Ok(()) => tracing::debug!(%peer, "connection ended"),
        Err(e) => water::logging::connection_warning(
            error_kind(&e),
            || tracing::warn!(%peer, "connection failed: {e:#}"),
        ),
    }
}

/// The kind of a connection's failure, for counting: the host's error
/// variant, or `Io`.
pub(crate) fn error_kind(e: &anyhow::Error) -> &'static str {
    e.chain().find_map(|c| c.downcast_ref::<water::Error>()).map_or("Io", water::Error::kind_name)
}

/// `water echo` (hidden): echoes every connection until a signal.
pub async fn echo(listen: &str) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    let stop = on_signal()?;
    serve(listener, stop, |mut stream, _stop| async move {
        let (mut r, mut w) = stream.split();
        tokio::io::copy(&mut r, &mut w).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut w).await?;
        Ok(())
    })
    .await
}
