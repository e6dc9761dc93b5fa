//! `water client`, `server` and `relay`: accept on `--listen`, run every
//! connection through the transport, stop cleanly on SIGINT/SIGTERM.
//!
//! A failing connection is logged and never takes the tunnel down; only
//! errors of the listening socket itself (and bad arguments) end it.

use std::io;
use std::time::Duration;

use anyhow::Context;
use std::io::Write;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use water::logging::Scrubbed;
use water::{Dialer, Forwarder, Relay};

use crate::{socks, transport};

/// Binds `addr` and announces it: exactly one line on stdout.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    bind_shared(addr, false).await
}

/// [`bind`]; with `reuse_port`, with `SO_REUSEPORT`, so that several
/// processes (each with the same flag) listen on one port and the kernel
/// spreads new connections among them.
pub async fn bind_shared(addr: &str, reuse_port: bool) -> anyhow::Result<TcpListener> {
    let listener = match reuse_port {
        false => TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?,
        true => {
            bind_reuse_port(addr).await.with_context(|| format!("cannot listen on {addr} (--reuse-port)"))?
        }
    };
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    Ok(listener)
}

async fn bind_reuse_port(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
    for a in tokio::net::lookup_host(addr).await? {
        let socket =
            if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As tokio's own bind: SO_REUSEADDR, so a restart need not wait out
        // TIME_WAIT; then SO_REUSEPORT for the sharing.
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        match socket.bind(a).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reloads `source` on every SIGHUP and gives the new module to each of
/// `reloaders`: new connections use it, open ones finish on theirs. The
/// module is read, checked (hash, signature), compiled and its init dry-run
/// first, off the accept path; if any of that fails the old module goes on
/// serving and the error is logged. SIGHUPs that come during a reload are
/// one more reload after it.
pub fn reload_on_hangup(source: transport::Source, reloaders: Vec<water::Reloader>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&source, &reloaders).await;
        }
    });
    Ok(())
}

/// One reload of `source` into `reloaders` (see [`reload_on_hangup`]).
pub async fn reload(source: &transport::Source, reloaders: &[water::Reloader]) {
    let name = &source.transport;
    let watm = match source.load().await {
        Ok(watm) => watm,
        Err(e) => {
            // A failed `replace` below counts itself in the metrics.
            water::metrics::transport(&crate::metrics::label(name)).reload_failed();
            tracing::error!("reload of {name} failed; the previous module goes on serving: {e:#}");
            return;
        }
    };
    for r in reloaders {
        if let Err(e) = r.replace(&watm) {
            tracing::error!("reload of {name} failed; the previous module goes on serving: {e}");
            return;
        }
    }
    let count = reloaders.first().map_or(0, |r| r.reloads());
    tracing::info!("reloaded {name} (WATM {}): new connections use it; reload {count}", watm.abi());
}

/// What SIGINT and SIGTERM say: the first signal `stop`s accepting and
/// starts the drain; a second one (or the drain's end) cuts what is still
/// open, `now`.
#[derive(Clone, Debug)]
pub struct Signals {
    pub stop: CancellationToken,
    pub now: CancellationToken,
}

impl Signals {
    /// Watches SIGINT and SIGTERM.
    pub fn watch() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let signals = Signals { stop: CancellationToken::new(), now: CancellationToken::new() };
        let tokens = signals.clone();
        tokio::spawn(async move {
            for first in [true, false] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if first {
                    tracing::info!("signal received: no new connections; open ones drain");
                    tokens.stop.cancel();
                } else {
                    tracing::info!("second signal: ending every connection now");
                    tokens.now.cancel();
                }
            }
        });
        Ok(signals)
    }
}

/// What ends one connection's task early: `setup` at the first signal
/// (shutdown does not wait for a setup), `cut` at the drain's end.
#[derive(Clone, Debug)]
pub struct Stops {
    pub setup: CancellationToken,
    pub cut: CancellationToken,
}

/// Logs how a drain ended: a clean one at info, cut connections at warn.
fn report_drain(finished: usize, cut: usize, drain: Duration) {
    if cut == 0 {
        tracing::info!("stopped: {finished} open connections finished during the drain");
    } else {
        tracing::warn!(
            "stopped: {cut} connections still open after the drain ({drain:?}) were cut; {finished} finished"
        );
    }
}

/// The library limits a tunnel's flags set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `--max-connections`; `None`: from the open-file limit.
    pub max_connections: Option<usize>,
    /// `--handshake-timeout`: `None` for the library's default (60 s and
    /// up to 60 s more), zero for none.
    pub handshake_timeout: Option<std::time::Duration>,
    /// `--idle-timeout`: a connection through which no byte moved for this
    /// long is cancelled, whatever its guest does (one that ignores EOF
    /// would otherwise hold both sockets).
    pub idle_timeout: Option<std::time::Duration>,
    /// `--orphan-timeout`: `None` for the library's default (60 s), zero
    /// for none. A connection whose application side closed, while its
    /// guest ignores that, is cancelled once no byte has moved for this
    /// long.
    pub orphan_timeout: Option<std::time::Duration>,
    /// `--drain`: how long open connections may go on after the first
    /// signal.
    pub drain: Duration,
}

/// The library options a tunnel's flags set, for one of `share`
/// transports in the process (each gets its part of the fd budget).
pub fn library_config(l: Limits, share: usize) -> water::Config {
    let mut cfg = water::Config::default();
    match l.max_connections {
        Some(n) => cfg = cfg.max_connections(n),
        // Each connection holds two sockets (client and upstream, SOCKS
        // client and remote, client and tor's ORPort).
        None => match water::fd_budget(2 * share.max(1)) {
            Ok((cap, limit)) => {
                tracing::info!(
                    "at most {cap} connections at once (open files: {limit}); --max-connections to change"
                );
                cfg = cfg.max_connections(cap);
            }
            Err(e) => tracing::warn!("cannot read the open-file limit ({e}); no connection cap"),
        },
    }
    if let Some(t) = l.handshake_timeout {
        cfg = match t.is_zero() {
            true => cfg.handshake_timeout(None, std::time::Duration::ZERO),
            // The random part as long again, as the default's.
            false => cfg.handshake_timeout(Some(t), t),
        };
    }
    if let Some(t) = l.idle_timeout {
        cfg = cfg.idle_timeout(t);
    }
    if let Some(t) = l.orphan_timeout {
        cfg = cfg.orphan_timeout((!t.is_zero()).then_some(t));
    }
    cfg.drain_timeout(l.drain)
}

/// Where a tunnel listens.
#[derive(Clone, Debug)]
pub struct Listen {
    pub addr: String,
    /// `--reuse-port`.
    pub reuse_port: bool,
}

/// Loads `source` (see [`transport::Source::load`]) and says what runs.
async fn load_checked(source: &transport::Source) -> anyhow::Result<water::Watm> {
    let watm = source.load().await?;
    tracing::info!("transport {}: WATM {}; SIGHUP reloads it", source.transport, watm.abi());
    Ok(watm)
}

pub async fn client(
    source: transport::Source,
    limits: Limits,
    listen: &Listen,
    remote: String,
) -> anyhow::Result<()> {
    let dialer = Dialer::new(&load_checked(&source).await?)?;
    // Signals are watched before the `listening on` line: a SIGHUP (or
    // SIGTERM) sent as soon as the port is announced must find its
    // handler, not the default action (or an inherited SIG_IGN).
    let signals = Signals::watch()?;
    reload_on_hangup(source, vec![dialer.reloader()])?;
    let listener = bind_shared(&listen.addr, listen.reuse_port).await?;
    run_client(dialer, listener, remote, signals, limits.drain).await
}

/// The client tunnel on a bound listener, until `signals` (then drained).
pub async fn run_client(
    dialer: Dialer,
    listener: TcpListener,
    remote: String,
    signals: Signals,
    drain: Duration,
) -> anyhow::Result<()> {
    serve(listener, signals, drain, |stream, stops| {
        let (dialer, remote) = (dialer.clone(), remote.clone());
        async move {
            // The accepted socket is the guest's plain side: no copy here.
            let mut tunnel = tokio::select! {
                t = dialer.dial_socket(remote.clone(), stream) => t?,
                () = stops.setup.cancelled() => return Ok(()),
            };
            tokio::select! {
                r = tunnel.wait() => Ok(r?),
                () = stops.cut.cancelled() => Ok(tunnel.abort().await?),
            }
        }
    })
    .await
}

/// `water client --socks5`: SOCKS5 in front of the dialer (see [`socks::Mode`]).
pub async fn socks_client(
    source: transport::Source,
    limits: Limits,
    listen: &Listen,
    mode: socks::Mode,
) -> anyhow::Result<()> {
    let dialer = Dialer::new(&load_checked(&source).await?)?;
    // Signals are watched before the `listening on` line: a SIGHUP (or
    // SIGTERM) sent as soon as the port is announced must find its
    // handler, not the default action (or an inherited SIG_IGN).
    let signals = Signals::watch()?;
    reload_on_hangup(source, vec![dialer.reloader()])?;
    let listener = bind_shared(&listen.addr, listen.reuse_port).await?;
    socks::serve(dialer, listener, mode, signals, limits.drain).await
}

pub async fn server(
    source: transport::Source,
    limits: Limits,
    listen: &Listen,
    forward: String,
) -> anyhow::Result<()> {
    // The guest reads and writes the upstream socket itself: no copy
    // through the host (see `water::Forwarder`). A module without
    // `_water_accept` is refused here (`Error::RoleNotSupported`).
    let forwarder = Forwarder::new(&load_checked(&source).await?, forward)?;
    // Signals are watched before the `listening on` line: a SIGHUP (or
    // SIGTERM) sent as soon as the port is announced must find its
    // handler, not the default action (or an inherited SIG_IGN).
    let signals = Signals::watch()?;
    reload_on_hangup(source, vec![forwarder.reloader()])?;
    let listener = bind_shared(&listen.addr, listen.reuse_port).await?;
    until_second_signal(
        &signals,
        limits.drain,
        forwarder.serve(listener, signals.stop.clone().cancelled_owned()),
    )
    .await
    .context("server")
}

/// Runs a library serve loop (which drains by itself after `stop`), unless
/// a second signal comes first: then it is dropped, and with it every
/// connection.
async fn until_second_signal(
    signals: &Signals,
    drain: Duration,
    serve: impl std::future::Future<Output = io::Result<water::Drained>>,
) -> io::Result<()> {
    tokio::select! {
        r = serve => {
            let drained = r?;
            report_drain(drained.finished, drained.cut, drain);
        }
        () = signals.now.cancelled() => {}
    }
    Ok(())
}

pub async fn relay(
    source: transport::Source,
    limits: Limits,
    listen: &Listen,
    remote: String,
) -> anyhow::Result<()> {
    let relay = Relay::new(&load_checked(&source).await?, remote)?;
    // Signals are watched before the `listening on` line: a SIGHUP (or
    // SIGTERM) sent as soon as the port is announced must find its
    // handler, not the default action (or an inherited SIG_IGN).
    let signals = Signals::watch()?;
    reload_on_hangup(source, vec![relay.reloader()])?;
    let listener = bind_shared(&listen.addr, listen.reuse_port).await?;
    until_second_signal(&signals, limits.drain, relay.serve(listener, signals.stop.clone().cancelled_owned()))
        .await
        .context("relay")
}

/// Accepts until the first signal, running `handle` per connection as its
/// own task with its [`Stops`]; then drains: open connections go on
/// until they end, `drain` passes or a second signal comes, and those
/// left are cut (each aborts within its close grace) and counted.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    signals: Signals,
    drain: Duration,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(TcpStream, Stops) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let cut = CancellationToken::new();
    let stops = Stops { setup: signals.stop.clone(), cut: cut.clone() };
    let no_limit = || std::future::ready(());
    water::accept_each(&listener, signals.stop.cancelled(), no_limit, |stream, peer, ()| {
        // Ended connections leave the set as new ones come.
        while tasks.try_join_next().is_some() {}
        let work = handle(stream, stops.clone());
        tasks.spawn(async move { log_end(peer, work.await) });
    })
    .await
    .context("accept failed")?;
    drop(listener);
    // Connections that ended before the signal but were not yet taken
    // from the set are not the drain's to count.
    while tasks.try_join_next().is_some() {}
    let mut finished = 0;
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(_) => finished += 1,
                None => break,
            },
            () = &mut deadline => break,
            () = signals.now.cancelled() => break,
        }
    }
    // Those that ended as the drain did are finished, not cut.
    while tasks.try_join_next().is_some() {
        finished += 1;
    }
    let cut_count = tasks.len();
    cut.cancel();
    // A cut connection aborts its worker, which ends within the close
    // grace (or is dropped then); a second signal does not wait for that.
    tokio::select! {
        () = async { while tasks.join_next().await.is_some() {} } => {}
        () = signals.now.cancelled() => {}
    }
    report_drain(finished, cut_count, drain);
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
    let signals = Signals::watch()?;
    let listener = bind(listen).await?;
    serve(listener, signals, Duration::ZERO, |mut stream, _stop| async move {
        let (mut r, mut w) = stream.split();
        tokio::io::copy(&mut r, &mut w).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut w).await?;
        Ok(())
    })
    .await
}
