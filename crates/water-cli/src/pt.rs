//! `water pt`: a Tor pluggable transport in managed mode (pt-spec, version
//! 1), so that tor's `ClientTransportPlugin` / `ServerTransportPlugin ...
//! exec water pt` lines run WATM transports.
//!
//! tor speaks to the PT through environment variables (in) and stdout
//! lines (out):
//! - `TOR_PT_MANAGED_TRANSPORT_VER` → `VERSION 1` or `VERSION-ERROR`;
//!   `TOR_PT_STATE_LOCATION` (created; our log file lives there, the only
//!   place we write); a missing or bad variable → `ENV-ERROR`;
//! - client (`TOR_PT_CLIENT_TRANSPORTS`): a SOCKS5 listener per transport
//!   in bridge mode ([`socks`]), `CMETHOD <name> socks5 <addr>` each,
//!   `CMETHOD-ERROR` for a name we do not know, then `CMETHODS DONE`;
//!   `TOR_PT_PROXY` is answered `PROXY-ERROR` (not supported) and we exit;
//! - server (`TOR_PT_SERVER_TRANSPORTS`, `..._BINDADDR`,
//!   `..._TRANSPORT_OPTIONS`): a listener per transport whose connections'
//!   guests get the transport's options as arguments, `SMETHOD <name> <addr>
//!   [ARGS:...]` each, then `SMETHODS DONE`; each decoded stream goes to
//!   `TOR_PT_ORPORT`, or to the Extended ORPort
//!   (`TOR_PT_EXTENDED_SERVER_PORT` + `TOR_PT_AUTH_COOKIE_FILE`,
//!   [`extorport`]) with the client's address and the transport's name.
//!
//! Signals: the first SIGINT stops accepting and lets open connections
//! drain (a second one ends them); SIGTERM, or stdin closing under
//! `TOR_PT_EXIT_ON_STDIN_CLOSE=1`, ends everything at once.
//!
//! Logs go to `water-pt.log` in the state directory (`WATER_LOG` sets the
//! level), warnings and errors also to tor as PT `LOG` lines; never to
//! stderr, which tor does not read. Transport arguments are never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use water::{Dialer, Listener, Role, TransportArgs, Watm};
use water_abi::args::Args;

use crate::extorport::{self, Cookie};
use crate::tunnel::log_end;
use crate::{socks, transport};

/// The log file's name in the state directory.
pub const LOG_FILE: &str = "water-pt.log";

/// A PT protocol failure: the line for tor has been printed; exit non-zero.
#[derive(Debug)]
struct Reported;

/// Prints one protocol line to stdout, flushed (tor reads it at once).
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable that is absent or empty counts as absent (tor sets
/// `TOR_PT_EXTENDED_SERVER_PORT=` when there is no Extended ORPort).
fn env_nonempty(name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

fn env_error(message: impl std::fmt::Display) -> Reported {
    // One line: tor logs it as is.
    say(format_args!("ENV-ERROR {}", one_line(&message.to_string())));
    Reported
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Warnings and errors also go to tor as PT `LOG` lines (`LOG
/// SEVERITY=warning MESSAGE="..."`), which tor writes to its own log.
struct PtLog;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PtLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let severity = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => return,
        };
        let mut text = Message(String::new());
        event.record(&mut text);
        say(format_args!("LOG SEVERITY={severity} MESSAGE={}", quoted(&text.0)));
    }
}

/// The event's message, then its fields as ` key=value`.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// A double-quoted string with C escapes, as tor's key=value lines take.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `NAME=PATH` options (`--transport`, `--config`) by name.
fn parse_named(flag: &str, specs: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut map = BTreeMap::new();
    for spec in specs {
        let (name, path) =
            spec.split_once('=').with_context(|| format!("{flag} {spec}: expected NAME=PATH"))?;
        anyhow::ensure!(valid_name(name), "{flag} {spec}: `{name}` is not a transport name (C identifier)");
        anyhow::ensure!(!path.is_empty(), "{flag} {spec}: empty path");
        map.insert(name.to_string(), PathBuf::from(path));
    }
    Ok(map)
}

/// The transports `water pt` knows: the built-ins, `--transport
/// NAME=PATH.wasm` (which may also replace a built-in's name), and each
/// one's `--config NAME=FILE`.
#[derive(Debug, Default)]
pub struct Modules {
    paths: BTreeMap<String, PathBuf>,
    configs: BTreeMap<String, PathBuf>,
    /// `--transport-sha256 NAME=HEX`.
    pins: BTreeMap<String, [u8; 32]>,
    /// `--trusted-key`, for every module file.
    keys: Vec<crate::trust::TrustedKey>,
    /// The library options every transport is loaded with (the limits).
    config: water::Config,
}

/// `water pt`'s module rules: `--transport-sha256 NAME=HEX` and
/// `--trusted-key FILE` (see `crate::trust`).
#[derive(Debug, Default)]
pub struct TrustArgs {
    pub sha256: Vec<String>,
    pub keys: Vec<PathBuf>,
}

impl Modules {
    #[cfg(test)]
    fn parse(transports: &[String], configs: &[String]) -> anyhow::Result<Modules> {
        Modules::parse_trusted(transports, configs, &TrustArgs::default())
    }

    pub fn parse_trusted(
        transports: &[String],
        configs: &[String],
        trust: &TrustArgs,
    ) -> anyhow::Result<Modules> {
        let mut pins = BTreeMap::new();
        for spec in &trust.sha256 {
            let (name, hex) = spec
                .split_once('=')
                .with_context(|| format!("--transport-sha256 {spec}: expected NAME=HEX"))?;
            let hash = crate::trust::parse_sha256(hex)
                .map_err(|e| anyhow::anyhow!("--transport-sha256 {name}: {e}"))?;
            pins.insert(name.to_string(), hash);
        }
        let keys =
            trust.keys.iter().map(|k| crate::trust::TrustedKey::from_file(k)).collect::<Result<_, _>>()?;
        Ok(Modules {
            paths: parse_named("--transport", transports)?,
            configs: parse_named("--config", configs)?,
            pins,
            keys,
            config: water::Config::default(),
        })
    }

    fn trust(&self, name: &str) -> crate::trust::Trust {
        crate::trust::Trust { sha256: self.pins.get(name).copied(), keys: self.keys.clone() }
    }

    /// Names from a `TOR_PT_*_TRANSPORTS` list (`*`: every one we have).
    fn requested(&self, names: &str) -> Vec<String> {
        if names == "*" {
            let mut all: Vec<String> = transport::builtins().into_iter().map(String::from).collect();
            all.extend(self.paths.keys().filter(|n| !all.contains(n)).cloned().collect::<Vec<_>>());
            return all;
        }
        names.split(',').filter(|n| !n.is_empty()).map(String::from).collect()
    }

    /// The module a transport name means, with its config; `None` for a
    /// name we do not know.
    fn load(&self, name: &str) -> Option<anyhow::Result<Watm>> {
        let config = self.configs.get(name).map(PathBuf::as_path);
        let trust = self.trust(name);
        if let Some(path) = self.paths.get(name) {
            return Some(transport::load_trusted(
                &path.to_string_lossy(),
                config,
                self.config.clone().metrics_label(name),
                &trust,
            ));
        }
        let builtin = valid_name(name) && transport::builtins().contains(&name);
        builtin
            .then(|| transport::load_trusted(name, config, self.config.clone().metrics_label(name), &trust))
    }

    /// [`load`](Self::load) for a reload: compiled on a blocking thread,
    /// then its init dry-run.
    async fn reload(self: &Arc<Self>, name: &str) -> anyhow::Result<Watm> {
        let (own, owned) = (self.clone(), name.to_string());
        let loaded = tokio::task::spawn_blocking(move || own.load(&owned))
            .await
            .context("the loading thread failed")?;
        let watm = loaded.context("no such transport")??;
        watm.check_init().await.context("the transport rejects its configuration")?;
        Ok(watm)
    }
}

/// pt-spec: transport names are C identifiers.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Entry point: runs the PT to its end and gives the exit code.
pub fn main(
    transports: Vec<String>,
    configs: Vec<String>,
    trust: TrustArgs,
    limits: crate::tunnel::Limits,
    metrics: Option<String>,
) -> ExitCode {
    let result = run(transports, configs, trust, limits, metrics);
    water::logging::flush_warnings();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Reported) => ExitCode::FAILURE,
    }
}

fn run(
    transports: Vec<String>,
    configs: Vec<String>,
    trust: TrustArgs,
    limits: crate::tunnel::Limits,
    metrics: Option<String>,
) -> Result<(), Reported> {
    let drain = limits.drain;
    // The version comes first: nothing else means anything without it.
    let Some(versions) = env("TOR_PT_MANAGED_TRANSPORT_VER") else {
        return Err(env_error("TOR_PT_MANAGED_TRANSPORT_VER is not set (water pt is run by tor)"));
    };
    if !versions.split(',').any(|v| v == "1") {
        say("VERSION-ERROR no-version");
        return Err(Reported);
    }
    say("VERSION 1");

    let Some(state) = env_nonempty("TOR_PT_STATE_LOCATION") else {
        return Err(env_error("TOR_PT_STATE_LOCATION is not set"));
    };
    let state = PathBuf::from(state);
    if let Err(e) = std::fs::create_dir_all(&state) {
        return Err(env_error(format_args!("cannot create the state directory {}: {e}", state.display())));
    }
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(state.join(LOG_FILE)) {
        Ok(f) => f,
        Err(e) => return Err(env_error(format_args!("cannot open {}: {e}", state.join(LOG_FILE).display()))),
    };
    {
        use tracing_subscriber::prelude::*;
        let filter = tracing_subscriber::EnvFilter::try_from_env("WATER_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let file = tracing_subscriber::fmt::layer().with_writer(std::sync::Mutex::new(log)).with_ansi(false);
        tracing_subscriber::registry().with(filter).with(file).with(PtLog).init();
    }

    let mut own = Modules::parse_trusted(&transports, &configs, &trust)
        .map_err(|e| env_error(format_args!("{e:#}")))?;
    let client = env_nonempty("TOR_PT_CLIENT_TRANSPORTS");
    let server = env_nonempty("TOR_PT_SERVER_TRANSPORTS");
    // Every transport started shares the process's fd budget.
    let started =
        [&client, &server].iter().filter_map(|l| l.as_deref()).map(|l| own.requested(l).len()).sum();
    own.config = crate::tunnel::library_config(limits, started);
    if client.is_none() && server.is_none() {
        return Err(env_error("neither TOR_PT_CLIENT_TRANSPORTS nor TOR_PT_SERVER_TRANSPORTS is set"));
    }
    if client.is_some() && env_nonempty("TOR_PT_PROXY").is_some() {
        say("PROXY-ERROR water pt does not support an upstream proxy (TOR_PT_PROXY)");
        return Err(Reported);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| env_error(format_args!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        if let Some(addr) = &metrics {
            crate::metrics::serve(addr).await.map_err(|e| env_error(format_args!("{e:#}")))?;
        }
        let pt = Pt::new();
        // Before the first method line: tor may signal as soon as it reads
        // one (SIGHUP too: it reloads whatever has started by then).
        watch_signals(pt.accepting.clone(), pt.kill.clone(), drain, pt.tasks.clone());
        let own = Arc::new(own);
        pt.reload_on_hangup(own.clone());
        if let Some(names) = client {
            pt.start_clients(&names, &own).await;
        }
        if let Some(names) = server {
            pt.start_servers(&names, &own, &state).await?;
        }
        pt.run().await;
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// The running PT: what stops accepting, what ends connections, and the
/// connections.
struct Pt {
    /// Cancelled by the first SIGINT: listeners stop.
    accepting: CancellationToken,
    /// Cancelled by SIGTERM, a second SIGINT or stdin closing: connections
    /// are aborted.
    kill: CancellationToken,
    /// Listener loops and connections.
    tasks: TaskTracker,
    /// Each started transport's module, by name, for SIGHUP.
    reloaders: Arc<std::sync::Mutex<Vec<(String, water::Reloader)>>>,
}

impl Pt {
    fn new() -> Pt {
        Pt {
            accepting: CancellationToken::new(),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
            reloaders: Arc::default(),
        }
    }

    fn reloadable(&self, name: &str, reloader: water::Reloader) {
        self.reloaders.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), reloader));
    }

    /// On SIGHUP, reads every started transport's module and config again
    /// (under the same hash and signature rules) and swaps each one that
    /// loads: new connections use it, open ones finish on theirs. One that
    /// fails to load keeps serving with its previous module (logged).
    fn reload_on_hangup(&self, own: Arc<Modules>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot watch SIGHUP: no reloads");
            return;
        };
        let reloaders = self.reloaders.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let list = reloaders.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (name, reloader) in list {
                    // A failed `replace` counts itself; a failed load only we see.
                    let loaded = own
                        .reload(&name)
                        .await
                        .inspect_err(|_| water::metrics::transport(&name).reload_failed());
                    match loaded.and_then(|w| Ok(reloader.replace(&w).map(|()| w)?)) {
                        Ok(watm) => tracing::info!(
                            transport = %name,
                            "reloaded (WATM {}): new connections use it; reload {}",
                            watm.abi(),
                            reloader.reloads()
                        ),
                        Err(e) => tracing::error!(
                            transport = %name,
                            "reload failed; the previous module goes on serving: {e:#}"
                        ),
                    }
                }
            }
        });
    }

    async fn start_clients(&self, names: &str, own: &Modules) {
        for name in own.requested(names) {
            let dialer = match own.load(&name) {
                None => Err(anyhow::anyhow!(
                    "no such transport (built-ins: {})",
                    transport::builtins().join(", ")
                )),
                Some(watm) => watm.and_then(|w| Ok(Dialer::new(&w)?)),
            };
            let bound = match dialer {
                Ok(dialer) => TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("cannot listen on 127.0.0.1")
                    .map(|listener| (dialer, listener)),
                Err(e) => Err(e),
            };
            match bound.and_then(|(d, l)| Ok((d, l.local_addr()?, l))) {
                Ok((dialer, addr, listener)) => {
                    say(format_args!("CMETHOD {name} socks5 {addr}"));
                    tracing::info!(transport = %name, %addr, "client transport listening (SOCKS5)");
                    self.reloadable(&name, dialer.reloader());
                    self.tasks.spawn(self.clone_handles().serve_socks(dialer, listener));
                }
                Err(e) => say(format_args!("CMETHOD-ERROR {name} {}", one_line(&format!("{e:#}")))),
            }
        }
        say("CMETHODS DONE");
    }

    async fn start_servers(&self, names: &str, own: &Modules, state: &Path) -> Result<(), Reported> {
        let upstream = Upstream::from_env()?;
        let binds = parse_bindaddrs(env("TOR_PT_SERVER_BINDADDR").as_deref().unwrap_or(""));
        let options = parse_options(env("TOR_PT_SERVER_TRANSPORT_OPTIONS").as_deref().unwrap_or(""))
            .map_err(|e| env_error(format_args!("TOR_PT_SERVER_TRANSPORT_OPTIONS: {e}")))?;
        for name in own.requested(names) {
            let mut args = options.get(&name).cloned().unwrap_or_default();
            // What the SMETHOD line publishes (what tor puts in the bridge's
            // descriptor): for the built-in obfs4, its cert and iat-mode,
            // derived from its state; for any other transport, the options
            // whose keys the transport declares public, none if it declares
            // none (the options may hold the server's secrets).
            let mut published = None;
            if name == "obfs4" && !own.paths.contains_key(&name) {
                match obfs4_server(state, &args, own.configs.get(&name).map(PathBuf::as_path)) {
                    Ok((guest, public)) => (args, published) = (guest, Some(public)),
                    Err(e) => {
                        say(format_args!("SMETHOD-ERROR {name} {}", one_line(&format!("{e:#}"))));
                        continue;
                    }
                }
            }
            let bind = binds.get(&name).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
            let started = async {
                let watm = match own.load(&name) {
                    None => anyhow::bail!("no such transport"),
                    Some(watm) => watm?,
                };
                anyhow::ensure!(
                    watm.supports(Role::Listener),
                    "the module has no listener role (_water_accept)"
                );
                // The options are checked before binding: a bad combination
                // is an SMETHOD-ERROR, not a port that fails every client.
                let listener = Listener::bind_with_args(&watm, bind.as_str(), args.clone())
                    .await
                    .with_context(|| format!("bind {bind}"))?;
                let published = published.clone().unwrap_or_else(|| public_only(&args, watm.public_args()));
                Ok((listener, published))
            };
            match started.await {
                Ok((listener, published)) => {
                    let addr = listener.local_addr().expect("bound");
                    say(format_args!("SMETHOD {name} {addr}{}", smethod_args(&published)));
                    tracing::info!(transport = %name, %addr, "server transport listening");
                    self.reloadable(&name, listener.reloader());
                    let (name, upstream) = (name.clone(), upstream.clone());
                    self.tasks.spawn(self.clone_handles().serve_transport(name, listener, upstream));
                }
                Err(e) => say(format_args!("SMETHOD-ERROR {name} {}", one_line(&format!("{e:#}")))),
            }
        }
        say("SMETHODS DONE");
        Ok(())
    }

    fn clone_handles(&self) -> Pt {
        Pt {
            accepting: self.accepting.clone(),
            kill: self.kill.clone(),
            tasks: self.tasks.clone(),
            reloaders: self.reloaders.clone(),
        }
    }

    /// Client half: SOCKS5 in bridge mode; every connection a task.
    async fn serve_socks(self, dialer: Dialer, listener: TcpListener) {
        self.accept_loop(listener, move |stream, _peer, kill| {
            socks::carry(
                dialer.clone(),
                stream,
                socks::Mode::Bridge,
                crate::tunnel::Stops { setup: kill.clone(), cut: kill },
            )
        })
        .await
    }

    /// Server half: decode through the transport, forward to tor.
    async fn serve_transport(self, name: String, listener: Listener, upstream: Upstream) {
        let name = Arc::<str>::from(name);
        loop {
            let accepted = tokio::select! {
                () = self.accepting.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((conn, peer)) => {
                    let (name, upstream, kill) = (name.clone(), upstream.clone(), self.kill.clone());
                    self.tasks.spawn(async move {
                        let r = forward(conn, peer, &name, &upstream, kill).await;
                        log_end(peer, r);
                    });
                }
                Err(water::Error::Io(e)) if !water::is_transient_accept_error(&e) => {
                    tracing::error!(transport = %name, error = %e, "accept failed; this transport stops");
                    return;
                }
                Err(e) => water::logging::connection_warning(
                    e.kind_name(),
                    || tracing::warn!(transport = %name, error = %e, "incoming connection failed"),
                ),
            }
        }
    }

    async fn accept_loop<F, Fut>(self, listener: TcpListener, handle: F)
    where
        F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let no_limit = || std::future::ready(());
        let accepted =
            water::accept_each(&listener, self.accepting.cancelled(), no_limit, |stream, peer, ()| {
                let work = handle(stream, peer, self.kill.clone());
                self.tasks.spawn(async move { log_end(peer, work.await) });
            })
            .await;
        if let Err(e) = accepted {
            tracing::error!(error = %e, "accept failed; this transport stops");
        }
    }

    /// Waits for the end: signals and stdin decide (see the module docs).
    async fn run(self) {
        if env("TOR_PT_EXIT_ON_STDIN_CLOSE").as_deref() == Some("1") {
            let kill = self.kill.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 256];
                while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
                tracing::info!("stdin closed: exiting");
                kill.cancel();
            });
        }
        self.tasks.close();
        tokio::select! {
            () = self.kill.cancelled() => {
                // Connections abort on `kill`; give them a moment.
                let _ = tokio::time::timeout(Duration::from_millis(500), self.tasks.wait()).await;
            }
            () = self.tasks.wait() => {}
        }
        tracing::info!("exiting");
    }
}

/// SIGINT once: stop accepting; open connections drain for at most
/// `drain`, then are cut (and counted). SIGINT twice or SIGTERM: end
/// everything.
fn watch_signals(accepting: CancellationToken, kill: CancellationToken, drain: Duration, tasks: TaskTracker) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: exiting");
                    kill.cancel();
                }
                _ = int.recv() => if accepting.is_cancelled() {
                    tracing::info!("second SIGINT: exiting");
                    kill.cancel();
                } else {
                    tracing::info!("SIGINT: no new connections; open ones drain for at most {drain:?}");
                    accepting.cancel();
                    let (kill, tasks) = (kill.clone(), tasks.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            () = tokio::time::sleep(drain) => {
                                // Listener loops are gone; what is left is connections.
                                tracing::warn!("{} connections still open after the drain were cut", tasks.len());
                                kill.cancel();
                            }
                            () = kill.cancelled() => {}
                        }
                    });
                },
            }
        }
    });
}

/// Where a server transport's decoded streams go.
#[derive(Clone, Debug)]
enum Upstream {
    OrPort(String),
    Extended { addr: String, cookie: Cookie },
}

impl Upstream {
    fn from_env() -> Result<Upstream, Reported> {
        if let Some(addr) = env_nonempty("TOR_PT_EXTENDED_SERVER_PORT") {
            let Some(path) = env_nonempty("TOR_PT_AUTH_COOKIE_FILE") else {
                return Err(env_error(
                    "TOR_PT_EXTENDED_SERVER_PORT is set but TOR_PT_AUTH_COOKIE_FILE is not",
                ));
            };
            let cookie =
                Cookie::read(std::path::Path::new(&path)).map_err(|e| env_error(format_args!("{e:#}")))?;
            tracing::info!(%addr, "forwarding to tor's Extended ORPort (SAFE_COOKIE)");
            return Ok(Upstream::Extended { addr, cookie });
        }
        match env_nonempty("TOR_PT_ORPORT") {
            Some(addr) => {
                tracing::info!(%addr, "forwarding to tor's ORPort");
                Ok(Upstream::OrPort(addr))
            }
            None => Err(env_error("neither TOR_PT_ORPORT nor TOR_PT_EXTENDED_SERVER_PORT is set")),
        }
    }

    async fn connect(&self, peer: SocketAddr, transport: &str) -> std::io::Result<TcpStream> {
        match self {
            Upstream::OrPort(addr) => {
                let s = TcpStream::connect(addr.as_str()).await?;
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Upstream::Extended { addr, cookie } => extorport::connect(addr, cookie, peer, transport).await,
        }
    }
}

async fn forward(
    mut conn: water::Connection,
    peer: SocketAddr,
    transport: &str,
    upstream: &Upstream,
    kill: CancellationToken,
) -> anyhow::Result<()> {
    let mut tor = upstream.connect(peer, transport).await.context("connect to tor's ORPort")?;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut conn, &mut tor) => {
            if let Err(e) = r {
                // Failed: tor sees a reset, not a clean end of a truncated stream.
                let _ = tor.set_zero_linger();
                return Err(e.into());
            }
        }
        () = kill.cancelled() => { conn.abort().await?; return Ok(()); }
    }
    conn.close().await?;
    Ok(())
}

/// `TOR_PT_SERVER_BINDADDR`: `name-addr,name-addr`.
fn parse_bindaddrs(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|item| item.split_once('-'))
        .map(|(name, addr)| (name.to_string(), addr.to_string()))
        .collect()
}

/// obfs4proxy's state file in the PT state directory.
pub const OBFS4_STATE: &str = "obfs4_state.json";
/// obfs4proxy's bridge line file, written beside it.
pub const OBFS4_BRIDGELINE: &str = "obfs4_bridgeline.txt";

/// The built-in obfs4 as a server, the way obfs4proxy finds its identity:
/// from the options (`private-key`, `node-id`, `drbg-seed`, `iat-mode`), or
/// the transport's `--config obfs4=FILE`, or `obfs4_state.json` in the state
/// directory, made (with `obfs4_bridgeline.txt`) on first run. The options
/// win key by key. Returns the arguments every connection's guest gets and
/// the ones to publish: only `cert` and `iat-mode`, never a key.
fn obfs4_server(
    state: &Path,
    options: &TransportArgs,
    config: Option<&Path>,
) -> anyhow::Result<(TransportArgs, TransportArgs)> {
    let has = |key: &str| Args::new(options.as_bytes()).flatten().any(|a| a.key.eq_bytes(key.as_bytes()));
    let base: Vec<u8> = if has("private-key") {
        Vec::new()
    } else if let Some(config) = config {
        let bytes = std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
        if bytes.trim_ascii_start().starts_with(b"{") {
            transport::obfs4_state_to_config(&bytes)?
        } else {
            bytes
        }
    } else {
        let path = state.join(OBFS4_STATE);
        if !path.exists() {
            new_obfs4_state(state)?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        transport::obfs4_state_to_config(&bytes).with_context(|| format!("{}", path.display()))?
    };
    let guest = TransportArgs::parse(base.clone())
        .map_err(|e| anyhow::anyhow!("obfs4 identity: {e}"))?
        .extend(options);
    let parsed = watm_obfs4::Obfs4::from_config(guest.as_bytes())
        .map_err(|e| anyhow::anyhow!("obfs4 identity: {}", e.message()))?;
    let identity = parsed.identity().context("obfs4: no private-key, node-id and drbg-seed")?;
    let mut cert = [0u8; 70];
    watm_obfs4::cert_string(&identity.bridge, &mut cert);
    let published =
        TransportArgs::new().arg("cert", cert).arg("iat-mode", parsed.iat_mode().number().to_string());
    Ok((guest, published))
}

/// A new obfs4 bridge identity in obfs4proxy's state file format (which
/// obfs4proxy reads as is), and its bridge line file; the state file is
/// readable by its owner only. `public-key` is the key obfs4proxy derives
/// from `private-key` on load.
fn new_obfs4_state(state: &Path) -> anyhow::Result<()> {
    let mut secret = [0u8; 20 + 32 + 24];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let (node_id, rest) = secret.split_at(20);
    let (private, seed) = rest.split_at(32);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let identity = watm_obfs4::handshake::Identity::new(
        node_id.try_into().expect("20"),
        private.try_into().expect("32"),
        seed.try_into().expect("24"),
    );
    let json = format!(
        "{{\"node-id\":\"{}\",\"private-key\":\"{}\",\"public-key\":\"{}\",\"drbg-seed\":\"{}\",\"iat-mode\":0}}",
        hex(node_id),
        hex(private),
        hex(&identity.bridge.public),
        hex(seed)
    );
    let path = state.join(OBFS4_STATE);
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
    }
    .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(json.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cert = [0u8; 70];
    watm_obfs4::cert_string(&identity.bridge, &mut cert);
    let line = format!(
        "# obfs4 torrc client bridge line, written by water pt (as obfs4proxy writes it).\n\
         # Replace <IP ADDRESS>, <PORT> and <FINGERPRINT> with the bridge's.\n\n\
         Bridge obfs4 <IP ADDRESS>:<PORT> <FINGERPRINT> cert={} iat-mode=0\n",
        String::from_utf8_lossy(&cert)
    );
    std::fs::write(state.join(OBFS4_BRIDGELINE), line)
        .with_context(|| format!("cannot write {}", state.join(OBFS4_BRIDGELINE).display()))?;
    tracing::info!(state = %path.display(), "new obfs4 bridge identity");
    Ok(())
}

/// `TOR_PT_SERVER_TRANSPORT_OPTIONS`: `name:key=value;name:key=value`, with
/// `\` escapes, parsed by `water_abi::args` (the key of each pair is
/// `name:key`), into each transport's arguments.
fn parse_options(text: &str) -> anyhow::Result<BTreeMap<String, TransportArgs>> {
    let mut map: BTreeMap<String, TransportArgs> = BTreeMap::new();
    for arg in Args::new(text.as_bytes()) {
        let arg = arg.map_err(|e| anyhow::anyhow!("{e}"))?;
        let key: Vec<u8> = arg.key.bytes().collect();
        let key =
            String::from_utf8(key).map_err(|_| anyhow::anyhow!("option at byte {} is not UTF-8", arg.at))?;
        let Some((name, key)) = key.split_once(':').filter(|(n, k)| !n.is_empty() && !k.is_empty()) else {
            anyhow::bail!("option at byte {} is not transport:key=value", arg.at);
        };
        let value: Vec<u8> = arg.value.bytes().collect();
        let args = map.remove(name).unwrap_or_default().arg(key, value);
        map.insert(name.to_string(), args);
    }
    Ok(map)
}

/// The arguments among `args` whose keys are in `public`.
fn public_only(args: &TransportArgs, public: &[String]) -> TransportArgs {
    let mut out = TransportArgs::new();
    for arg in Args::new(args.as_bytes()).flatten() {
        let key: Vec<u8> = arg.key.bytes().collect();
        if let Some(key) = public.iter().find(|p| p.as_bytes() == key.as_slice()) {
            out = out.arg(key, arg.value.bytes().collect::<Vec<u8>>());
        }
    }
    out
}

/// ` ARGS:k=v,k=v` for an `SMETHOD` line (what a client's bridge line
/// needs), with `,`, `=` and `\` in keys and values escaped; empty without
/// arguments.
fn smethod_args(args: &TransportArgs) -> String {
    let mut out = Vec::new();
    for arg in Args::new(args.as_bytes()).flatten() {
        out.push(if out.is_empty() { b':' } else { b',' });
        for (i, text) in [arg.key, arg.value].into_iter().enumerate() {
            if i == 1 {
                out.push(b'=');
            }
            for b in text.bytes() {
                if matches!(b, b',' | b'=' | b'\\') {
                    out.push(b'\\');
                }
                out.push(b);
            }
        }
    }
    if out.is_empty() { String::new() } else { format!(" ARGS{}", one_line(&String::from_utf8_lossy(&out))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_become_per_transport_arguments() {
        let map = parse_options(r"xor:key=c0ffee;plain:a=1;xor:mode=x\;y\:z").unwrap();
        assert_eq!(map["xor"].get("key").as_deref(), Some(&b"c0ffee"[..]));
        assert_eq!(map["xor"].get("mode").as_deref(), Some(&b"x;y:z"[..]));
        assert_eq!(map["plain"].as_bytes(), b"a=1");
        assert!(parse_options("novalue").is_err());
        assert!(parse_options("nokey=1").is_err());
        assert!(parse_options("").unwrap().is_empty());
    }

    #[test]
    fn bindaddrs_and_smethod_args() {
        let b = parse_bindaddrs("plain-127.0.0.1:5555,xor-[::1]:6666");
        assert_eq!(b["plain"], "127.0.0.1:5555");
        assert_eq!(b["xor"], "[::1]:6666");
        let args = TransportArgs::new().arg("key", "c0").arg("cert", "a,b=");
        assert_eq!(smethod_args(&args), r" ARGS:key=c0,cert=a\,b\=");
        assert_eq!(smethod_args(&TransportArgs::new()), "");
    }

    #[test]
    fn log_messages_are_quoted_on_one_line() {
        assert_eq!(quoted("a \"b\" c\\d\ne"), r#""a \"b\" c\\d\ne""#);
    }

    #[test]
    fn names() {
        assert!(valid_name("obfs4") && valid_name("_x") && !valid_name("4x") && !valid_name("a-b"));
        assert!(Modules::parse(&["mine=/tmp/m.wasm".into()], &["xor=/etc/key".into()]).is_ok());
        assert!(Modules::parse(&["mine".into()], &[]).is_err());
        assert!(Modules::parse(&["a-b=/x".into()], &[]).is_err());
        assert!(Modules::parse(&[], &["x=".into()]).is_err());
    }
}
