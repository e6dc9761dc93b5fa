//! Options for loading and running a WATM.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// Opens the network connection when a guest calls `host_dial`, to the
/// address the application (not the guest) gave. Implement it to go through
/// another proxy, or to pick sockets options.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr` (`host:port`).
    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;
}

/// A check on every address `host_dial` is about to connect to; `false`
/// refuses it with `PermissionDenied` (the guest sees `-acces`).
pub type DialFilter = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// [`Config::drain_timeout`]'s default: long enough for a download in
/// progress to finish, short enough for a service manager's stop.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// [`Config::handshake_timeout`]'s default, with
/// [`DEFAULT_HANDSHAKE_JITTER`]: shadowsocks-libev's (60 s + 0–59 s), so a
/// `water server -t ss` closes a silent or failed connection when
/// `ss-server` would; long enough for a client behind a slow, lossy path to
/// finish any handshake (obfs4proxy allows 30 s plus its close delay).
pub const DEFAULT_HANDSHAKE: Duration = Duration::from_secs(60);

/// The random part added to each connection's handshake deadline (uniform
/// from 0 up to this), so that the close time is not a fingerprint.
pub const DEFAULT_HANDSHAKE_JITTER: Duration = Duration::from_secs(60);

/// Options for a [`crate::Watm`]. Every field has a sensible default;
/// set what you need with the builder methods.
#[derive(Clone)]
pub struct Config {
    pub(crate) transport_config: Option<Arc<[u8]>>,
    pub(crate) connector: Option<Arc<dyn Connector>>,
    pub(crate) dial_filter: Option<DialFilter>,
    pub(crate) connect_timeout: Duration,
    pub(crate) memory_limit: usize,
    pub(crate) table_elements_limit: usize,
    pub(crate) setup_timeout: Duration,
    pub(crate) close_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) coarse_poll: bool,
    pub(crate) max_pending_setups: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_module_size: usize,
    pub(crate) max_functions: usize,
    pub(crate) spin_limit: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) orphan_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) handshake_jitter: Duration,
    pub(crate) compile_cache: Option<PathBuf>,
    /// `None`: counted under [`crate::metrics::UNNAMED`].
    pub(crate) metrics: Option<Arc<crate::metrics::Transport>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transport_config: None,
            connector: None,
            dial_filter: None,
            connect_timeout: Duration::from_secs(10),
            memory_limit: 16 << 20,
            table_elements_limit: 65_536,
            setup_timeout: Duration::from_secs(5),
            close_grace: Duration::from_secs(1),
            drain_timeout: DEFAULT_DRAIN,
            coarse_poll: false,
            max_pending_setups: 64,
            max_connections: None,
            max_module_size: 16 << 20,
            max_functions: 20_000,
            spin_limit: Duration::from_secs(1),
            idle_timeout: None,
            orphan_timeout: Some(Duration::from_secs(60)),
            handshake_timeout: Some(DEFAULT_HANDSHAKE),
            handshake_jitter: DEFAULT_HANDSHAKE_JITTER,
            compile_cache: None,
            metrics: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("transport_config", &self.transport_config.as_ref().map(|c| c.len()))
            .field("connector", &self.connector.is_some())
            .field("dial_filter", &self.dial_filter.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("memory_limit", &self.memory_limit)
            .field("table_elements_limit", &self.table_elements_limit)
            .field("setup_timeout", &self.setup_timeout)
            .field("close_grace", &self.close_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("coarse_poll", &self.coarse_poll)
            .field("max_pending_setups", &self.max_pending_setups)
            .field("max_connections", &self.max_connections)
            .field("max_module_size", &self.max_module_size)
            .field("max_functions", &self.max_functions)
            .field("spin_limit", &self.spin_limit)
            .field("idle_timeout", &self.idle_timeout)
            .field("orphan_timeout", &self.orphan_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("handshake_jitter", &self.handshake_jitter)
            .field("compile_cache", &self.compile_cache)
            .field("metrics_label", &self.metrics().label())
            .finish()
    }
}

impl Config {
    /// The bytes a guest gets from `pull_config` (without it, `pull_config`
    /// answers `-acces`, "no config").
    pub fn transport_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.transport_config = Some(bytes.into().into());
        self
    }

    /// Connects through `connector` instead of plain TCP.
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// Refuses to dial addresses for which `filter` returns `false`. With a
    /// [`Connector`], the filter is asked about the peer address of the
    /// socket the connector returns (which is the proxy's, when the
    /// connector goes through one), and a refused socket is closed.
    pub fn dial_filter(mut self, filter: impl Fn(SocketAddr) -> bool + Send + Sync + 'static) -> Self {
        self.dial_filter = Some(Arc::new(filter));
        self
    }

    /// Limit on each `host_dial` connect (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Most linear memory one instance may grow to (default 16 MiB). An
    /// instance has one memory (and one table): a module that defines more,
    /// or whose initial memory is larger, is refused at load
    /// ([`crate::Error::OverLimit`]); a `memory.grow` past it fails (-1).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Most elements the instance's table may hold (default 65,536, about
    /// 512 KiB). A module whose initial table is larger is refused at load
    /// ([`crate::Error::OverLimit`]); a `table.grow` past it fails (-1).
    pub fn table_elements_limit(mut self, elements: usize) -> Self {
        self.table_elements_limit = elements;
        self
    }

    /// Wall-clock limit on each setup step (instantiation, `_start`,
    /// `_water_init`, the role call, `_water_cancel_with`; default 5 s),
    /// time blocked in host calls included: a guest sleeping in
    /// `poll_oneoff`, waiting for a handshake that never comes or for a
    /// dial, is stopped there ([`crate::Error::Timeout`]). The worker has
    /// none: it lives as long as its connection.
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = timeout;
        self
    }

    /// How long [`Relay::serve`](crate::Relay::serve) and
    /// [`Forwarder::serve`](crate::Forwarder::serve) let open connections
    /// run on after their shutdown (default 10 s); then they are cancelled
    /// and counted as cut. New connections are refused from the shutdown on.
    pub fn drain_timeout(mut self, limit: Duration) -> Self {
        self.drain_timeout = limit;
        self
    }

    /// After the application closes a connection, the worker goes on while it
    /// makes progress (writes to the network); once it has written nothing
    /// for `grace`, it is cancelled (and if it had not half-closed the
    /// network by then, the close reports [`crate::Error::Cut`]). A cancelled
    /// worker then has `grace` to return before it is dropped
    /// ([`crate::Error::Stuck`]). Default 1 s: an inactivity limit, not a
    /// limit on how long a slow peer may take.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Most setups a [`crate::Listener`] runs at once (default 64), counting
    /// set-up connections not yet taken by `accept`. Past it, new
    /// connections wait in the kernel's backlog.
    pub fn max_pending_setups(mut self, setups: usize) -> Self {
        self.max_pending_setups = setups;
        self
    }

    /// Most connections alive at once through this module, in every role
    /// together, from the start of setup to the end of the worker (default:
    /// no limit; [`crate::fd_budget`] derives one from the fd limit). When
    /// full, a new connection takes the place of the oldest one a server's
    /// guest has not yet taken in (see [`Config::handshake_timeout`]), which
    /// is closed as a failed handshake ([`crate::Error::Shed`]): connections
    /// that never finish a handshake cannot lock real clients out. Only when
    /// every live connection is taken in is the new one refused: a dial
    /// fails with [`crate::Error::TooManyConnections`], and a listener,
    /// forwarder or relay closes the new connection at once, with a log
    /// line.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = Some(connections);
        self
    }

    /// Largest module [`crate::Watm::new`] accepts, in bytes (default
    /// 16 MiB; the reference guests are under 48 KiB, a TinyGo or Rust-std
    /// guest a few MiB). Larger is [`crate::Error::OverLimit`], before any
    /// parsing.
    pub fn max_module_size(mut self, bytes: usize) -> Self {
        self.max_module_size = bytes;
        self
    }

    /// Most functions a module may define (default 20,000): the compile
    /// budget. Compilation time and memory grow with the function count (a
    /// 0.9 MB module of 100,000 empty functions took 7.9 s and 583 MiB), so
    /// the count is checked before compiling: [`crate::Error::OverLimit`].
    pub fn max_functions(mut self, functions: usize) -> Self {
        self.max_functions = functions;
        self
    }

    /// The [`Config::max_module_size`] in force, for callers that read a
    /// module from somewhere and want to stop reading at it.
    pub fn module_size_limit(&self) -> u64 {
        self.max_module_size as u64
    }

    /// How long a server's guest (the accept role: [`crate::Listener`],
    /// [`crate::Forwarder`]) has, from the end of setup, to take its peer
    /// in, that is to move a first byte across the plain side (the
    /// application's end, or the upstream), plus a random part drawn per
    /// connection up to `jitter`. A connection not taken in by then is
    /// closed as its guest closes a failed handshake (its network socket
    /// gets a FIN after the guest read what came) and ends with
    /// [`crate::Error::Unauthenticated`]. `None` turns it off. Default
    /// [`DEFAULT_HANDSHAKE`] + [`DEFAULT_HANDSHAKE_JITTER`]. The same
    /// "taken in" decides which connection is shed when
    /// [`Config::max_connections`] is reached.
    pub fn handshake_timeout(mut self, limit: Option<Duration>, jitter: Duration) -> Self {
        self.handshake_timeout = limit;
        self.handshake_jitter = jitter;
        self
    }

    /// Longest the worker may run without waiting for anything (I/O, a
    /// timer, its cancel fd), without moving a byte and without calling
    /// `poll_oneoff` (default 1 s), other host calls or not: a transport
    /// with nothing to do waits in `poll_oneoff`. Past it the worker is
    /// stopped ([`crate::Error::Spinning`]). A worker that polls but finds
    /// something ready every time (tokio guests do, asking for write
    /// readiness on always-writable sockets) is only throttled. Before
    /// that, from 50 ms on, such a worker is throttled (it sleeps between
    /// epoch ticks) so that it does not starve other connections. Setup
    /// calls are bounded by [`Config::setup_timeout`] instead.
    pub fn spin_limit(mut self, limit: Duration) -> Self {
        self.spin_limit = limit;
        self
    }

    /// Cancels a connection through which no byte has moved (read or
    /// written by the guest, either side) for `timeout`
    /// ([`crate::Error::Idle`]; default: none).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Reclaims a worker whose application side has gone while its guest
    /// ignores that (default 60 s, Linux's `tcp_fin_timeout`; `None` turns
    /// it off). Once the application side has sent EOF — a [`crate::Connection`]
    /// shut down for writing, the socket handed to [`crate::Dialer::dial_socket`]
    /// or a [`crate::Forwarder`]'s upstream socket closed by its peer, for a
    /// [`crate::Relay`] either socket — and the
    /// guest has not passed that EOF on (half-closed or closed the other
    /// side), a worker through which no byte moves for `limit` is cancelled
    /// ([`crate::Error::Orphaned`]; the application, if still there, reads
    /// that error). An inactivity limit, not wall clock: a service that
    /// answers only after EOF, slowly, keeps its connection while bytes
    /// move, and a guest that passes the EOF on is never affected (the
    /// other side then decides, as with TCP). A TCP close and a half-close
    /// look alike until a write fails: a read or write of the application
    /// side that fails with a reset or broken pipe ends the connection as
    /// if the application had closed it ([`Config::close_grace`]).
    pub fn orphan_timeout(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.orphan_timeout = limit.into();
        self
    }

    /// Keeps compiled code in `dir` (default: `None`, compile at every
    /// load), so that a later [`crate::Watm::new`] of the same module, in
    /// this process or another, deserializes it instead of compiling it
    /// ([`crate::Watm::code_origin`] says which happened). Files are named
    /// by a SHA-256 over the module's bytes, wasmtime's compatibility hash
    /// of the engine (its version, target CPU features and compilation
    /// settings) and this crate's version; nothing else is ever loaded for
    /// a module.
    ///
    /// A cache file is native code, so it is trusted only if nobody but
    /// this process's effective uid can have written it:
    /// - `dir` is created with mode 0700 if missing; it is opened and
    ///   checked on the open descriptor: a directory owned by the effective
    ///   uid and not writable by group or others. Otherwise it is not used
    ///   (a warning per load, the module compiled, nothing written).
    /// - a file is opened relative to that descriptor with `O_NOFOLLOW`
    ///   (no symlinks) and must be a regular file owned by the effective
    ///   uid, not writable by group or others;
    /// - its header must name this module's key and hold the SHA-256 of
    ///   the code after it (against truncated or garbled files, and a file
    ///   copied under another's name), before wasmtime deserializes it
    ///   (and checks its own header).
    ///
    /// A file that fails a check, or that wasmtime refuses, is logged,
    /// and the module is compiled and the file replaced: the cache never
    /// makes a load fail. Files are written to a temporary name, `fsync`ed
    /// and renamed, so concurrent loads (threads or processes) never see a
    /// partial file. Entries are never removed: a new module or wasmtime
    /// version adds files (tens to hundreds of KiB each for the reference
    /// guests); delete the directory's files to reclaim them.
    ///
    /// Cost: a hit reads and hashes the file (SHA-256) instead of
    /// compiling; a miss compiles, serializes and writes it once.
    pub fn compile_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.compile_cache = dir;
        self
    }

    /// The transport label its connections are counted under in
    /// [`crate::metrics`] (default [`crate::metrics::UNNAMED`]): modules
    /// with the same label add up, and a reloaded module given its
    /// predecessor's label goes on with its counters. Shown as it is: not
    /// a secret, not a path the operator would not publish.
    pub fn metrics_label(mut self, label: &str) -> Self {
        self.metrics = Some(crate::metrics::transport(label));
        self
    }

    /// The counters its connections go to.
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Transport> {
        self.metrics.as_ref().unwrap_or_else(|| crate::metrics::unnamed())
    }

    /// Testing other hosts' behaviour: `poll_oneoff` reports every fd
    /// subscription ready whenever any one is, as wasi-common-based hosts
    /// (water-rs) do, so that a guest can be checked to take readiness as
    /// a hint (confirm a cancel, answer `again` by waiting). Off by default;
    /// it makes guests wake without cause.
    #[doc(hidden)]
    pub fn coarse_poll(mut self, on: bool) -> Self {
        self.coarse_poll = on;
        self
    }
}

/// Arguments for one connection, on top of the transport's config: what the
/// guest reads from `pull_config` is the module's config, a line break, then
/// these arguments, in the `key=value` grammar of [`water_abi::args`] (Tor's
/// per-bridge argument syntax, `cert=AAAA;iat-mode=0`).
///
/// **Precedence:** a guest reads its config with [`water_abi::args::find`],
/// where the later pair wins, so a connection's argument overrides the
/// module's config for the same key.
///
/// **A config that is not `key=value`** (e.g. a bare hex key written for
/// `xor` before it took `key=<hex>`) cannot have arguments appended: the
/// connection fails with [`Error::ConfigNotKeyValue`](crate::Error::ConfigNotKeyValue)
/// before any instance is created, instead of handing the guest a garbled
/// config. Empty arguments leave any config untouched.
///
/// Values may hold secrets (a password): `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TransportArgs {
    /// Escaped `key=value` pairs separated by `;`; always valid.
    text: Vec<u8>,
}

impl TransportArgs {
    /// No arguments.
    pub fn new() -> TransportArgs {
        TransportArgs::default()
    }

    /// Adds `key=value` (escaped as needed); later pairs win over earlier
    /// ones and over the module's config.
    ///
    /// # Panics
    /// If `key` is empty (the grammar has no empty keys; keys are the
    /// program's constants, text from outside goes through [`parse`](Self::parse)).
    pub fn arg(mut self, key: &str, value: impl AsRef<[u8]>) -> TransportArgs {
        assert!(!key.is_empty(), "transport argument with an empty key");
        let key = key.as_bytes();
        if !self.text.is_empty() {
            self.text.push(b';');
        }
        water_abi::args::escape(key, |b| self.text.push(b));
        self.text.push(b'=');
        water_abi::args::escape(value.as_ref(), |b| self.text.push(b));
        self
    }

    /// Arguments already in the `key=value;key=value` grammar (a Tor bridge
    /// line's arguments, a SOCKS5 username), checked here.
    pub fn parse(text: impl Into<Vec<u8>>) -> Result<TransportArgs, water_abi::args::ArgsError> {
        let text = text.into();
        water_abi::args::Args::validate(&text)?;
        Ok(TransportArgs { text })
    }

    /// Appends `other`'s pairs after these (so they win).
    pub fn extend(mut self, other: &TransportArgs) -> TransportArgs {
        if !self.text.is_empty() && !other.text.is_empty() {
            self.text.push(b';');
        }
        self.text.extend_from_slice(&other.text);
        self
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        water_abi::args::Args::new(&self.text).next().is_none()
    }

    /// The escaped text, as the guest will read it after the config.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// The value of the last pair named `key`, unescaped.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = water_abi::args::find(&self.text, key).ok().flatten()?;
        Some(found.bytes().collect())
    }

    /// The bytes `pull_config` gives a guest: `module` (the transport's
    /// config), a line break, these arguments. `Ok(None)` keeps the module's
    /// config as it is (no arguments).
    pub(crate) fn merged_config(&self, module: Option<&[u8]>) -> Result<Option<Arc<[u8]>>, crate::Error> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(module) = module else {
            return Ok(Some(self.text.as_slice().into()));
        };
        water_abi::args::Args::validate(module)
            .map_err(|e| crate::Error::ConfigNotKeyValue(e.to_string()))?;
        let mut merged = Vec::with_capacity(module.len() + 1 + self.text.len());
        merged.extend_from_slice(module);
        merged.push(b'\n');
        merged.extend_from_slice(&self.text);
        Ok(Some(merged.into()))
    }
}

impl fmt::Debug for TransportArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values may be secrets.
        let mut list = f.debug_list();
        for arg in water_abi::args::Args::new(&self.text).flatten() {
            list.entry(&format_args!("{}=…", arg.key));
        }
        list.finish()
    }
}
