//! WATM v0: the `env` imports, and the life of one instance (one connection)
//! from instantiation to the end of `_water_worker`.
//!
//! Order of calls, as real guests need it: `_initialize` (when exported: a
//! WASI reactor, such as a Rust `cdylib` with std, runs its initialisers
//! there), `_start` (when exported; TinyGo initialises its runtime there),
//! `_water_init`, one role call, then
//! `_water_cancel_with(cancel_fd)`, then `_water_worker`.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use wasmtime::{Caller, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc, UpdateDeadline};
use water_abi::{Errno, status, v0 as abi};

use crate::abi::{Abi, Names};

use crate::config::Config;
use crate::duplex::DuplexEnd;
use crate::error::Error;
use crate::policy::admission::Slot;
use crate::policy::handshake;
use crate::policy::linger::{Ending, Watched, until_silent, until_still, watch};
use crate::policy::replay::Filter;
use crate::policy::throttle::{Counters, Throttle, Verdict};
use crate::wasi::gate::{Gated, MAX_NEED};
use crate::wasi::p1::GuestExit;
use crate::wasi::table::{Desc, Stream};
use crate::wasi::{WasiCtx, WasiView, Watch, errno};
use crate::watm::{EPOCH_TICK, Inner, Linked};
use crate::watm::{Role, Watm};

/// Store data of one instance.
pub struct Ctx {
    wasi: WasiCtx,
    limits: StoreLimits,
    config: Config,
    /// Where `host_dial` connects (the application's address).
    dial_target: Option<String>,
    /// The outcome of this instance's one `host_dial` (v0 dials once per
    /// instance; a retry answers the first outcome again without a new DNS
    /// lookup or connect).
    dialed: Option<Result<(), Errno>>,
    /// The connection `host_accept` hands out (accepted by the host before
    /// the instance was created).
    pending_accept: Option<TcpStream>,
    /// How many leading bytes of the accepted connection the replay filter
    /// checks before the guest sees them (the guest's
    /// `_water_unique_prefix`; `None`: none).
    unique_prefix: Option<usize>,
    /// The host-side error of the last failed `host_dial`, so the
    /// application sees `ConnectionRefused` rather than a bare errno.
    dial_error: Option<io::Error>,
    /// The fds of the sockets `host_accept` and `host_dial` handed out.
    sockets: Vec<u32>,
    /// The fd `host_accept` handed out: a relay's plain side.
    accepted_fd: Option<u32>,
    /// The application's end (`internal_fd`), once handed to the role call.
    internal_fd: Option<u32>,
    /// The network fd the role call returned.
    net_fd: Option<u32>,
    /// Deadline of the current setup call; `None` while the worker runs.
    deadline: Option<Instant>,
    /// Nanoseconds the current setup step's limit is extended by, for the
    /// host's own waits (a dial's connect).
    extended: Arc<std::sync::atomic::AtomicU64>,
    /// The worker's CPU policy.
    throttle: Throttle,
    /// When the worker last resumed after a yield or a pause (set by the
    /// yield's own future, which completes when the task runs again).
    resumed: Arc<std::sync::Mutex<Instant>>,
}

impl WasiView for Ctx {
    fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("wasi", &self.wasi).field("dial_target", &self.dial_target).finish()
    }
}

impl Ctx {
    /// Hands a socket to the guest.
    fn insert_socket(&mut self, stream: TcpStream) -> Result<u32, Errno> {
        self.insert_stream(Stream::Tcp(Arc::new(stream)))
    }

    fn insert_stream(&mut self, stream: Stream) -> Result<u32, Errno> {
        let fd = self.wasi.table.insert(Desc::Stream { stream, nonblocking: false })?;
        self.sockets.push(fd);
        Ok(fd)
    }
}

/// The host's side of `host_accept` (v0) and `water_accept` (v1): hands
/// the accepted connection to the guest, behind the replay gate when the
/// guest named its unique prefix. `notconn` when there is none (not a
/// listener or relay, or the one connection was taken).
pub(crate) fn hand_over_accepted(ctx: &mut Ctx) -> Result<u32, Errno> {
    let Some(stream) = ctx.pending_accept.take() else { return Err(Errno::NOTCONN) };
    let stream = Arc::new(stream);
    let stream = match ctx.unique_prefix {
        // A replay is refused before the guest sees a byte of it.
        Some(need) => Stream::Gated(Gated::new(stream, need, Box::new(|p| Filter::global().fresh(p)))),
        None => Stream::Tcp(stream),
    };
    ctx.insert_stream(stream).inspect(|&fd| ctx.accepted_fd = Some(fd))
}

/// The host's side of `pull_config` (v0): a read-only fd holding the
/// config; `acces` without one (what the Go host answers; guests read it as
/// "no config").
pub(crate) fn config_fd(ctx: &mut Ctx) -> Result<u32, Errno> {
    match ctx.config.transport_config.clone() {
        Some(data) => ctx.wasi.table.insert(Desc::Config { data, pos: 0 }),
        None => Err(Errno::ACCES),
    }
}

/// The host's side of `host_dial` (v0) and `water_dial_fixed` (v1): dials
/// the address the application gave (never the guest's), once per
/// instance.
pub(crate) async fn dial_app_target(caller: &mut Caller<'_, Ctx>) -> Result<u32, Errno> {
    let Some(target) = caller.data().dial_target.clone() else {
        return Err(Errno::NOTSUP);
    };
    dial_once(caller, target, None).await
}

/// The host's side of v1's `water_dial`: dials the address the guest named
/// (`network` `tcp`, `tcp4` or `tcp6`; `address` `host:port`), once per
/// instance like every dial. Only where the application said which
/// addresses a guest may reach (`Config::dial_filter`), and under that
/// filter: a guest that could dial anywhere would reach the host's own
/// network.
pub(crate) async fn dial_guest_named(
    caller: &mut Caller<'_, Ctx>,
    network: &[u8],
    address: &[u8],
) -> Result<u32, Errno> {
    if caller.data().config.dial_filter.is_none() {
        return Err(Errno::ACCES);
    }
    let family = match network {
        b"tcp" => None,
        b"tcp4" => Some(false),
        b"tcp6" => Some(true),
        _ => return Err(Errno::AFNOSUPPORT),
    };
    let address = std::str::from_utf8(address).map_err(|_| Errno::INVAL)?;
    dial_once(caller, address.to_string(), family).await
}

/// Dials `target` (for `ipv6: Some(v6)`, only addresses of that family),
/// once per instance: a retry answers the first outcome again, without a
/// new lookup or connect.
async fn dial_once(caller: &mut Caller<'_, Ctx>, target: String, ipv6: Option<bool>) -> Result<u32, Errno> {
    let ctx = caller.data_mut();
    match ctx.dialed {
        Some(Ok(())) => return Err(Errno::ISCONN),
        Some(Err(first)) => return Err(first),
        None => {}
    }
    let mut config = ctx.config.clone();
    if let (Some(v6), Some(filter)) = (ipv6, config.dial_filter.clone()) {
        config.dial_filter =
            Some(Arc::new(move |addr: std::net::SocketAddr| addr.is_ipv6() == v6 && filter(addr)));
    }
    // The connect's time is the host's, not the guest's: the setup step's
    // wall-clock limit is extended by the connect's own limit while it
    // runs, then by what it took.
    let extended = ctx.extended.clone();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    extended.fetch_add(nanos(config.connect_timeout), std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let connected = connect(&config, &target).await;
    let took = started.elapsed().min(config.connect_timeout);
    extended.fetch_sub(nanos(config.connect_timeout - took), std::sync::atomic::Ordering::Relaxed);
    if let Some(deadline) = &mut caller.data_mut().deadline {
        *deadline += took;
    }
    match connected {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            let ctx = caller.data_mut();
            ctx.dialed = Some(Ok(()));
            ctx.insert_socket(stream)
        }
        Err(e) => {
            let code = errno::from_io(&e);
            tracing::debug!(target: "water", target = %crate::logging::Scrubbed(&target), error = %e, "dial failed");
            let ctx = caller.data_mut();
            ctx.dial_error = Some(e);
            ctx.dialed = Some(Err(code));
            Err(code)
        }
    }
}

async fn connect(config: &Config, target: &str) -> io::Result<TcpStream> {
    let refused = |addr| {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("dial to {addr} refused by the dial filter"))
    };
    let attempt = async {
        if let Some(connector) = &config.connector {
            let stream = connector.connect(target).await?;
            // The filter sees where the connector's socket leads: the
            // target itself, or the proxy the connector goes through.
            if let Some(filter) = &config.dial_filter {
                let peer = stream.peer_addr()?;
                if !filter(peer) {
                    return Err(refused(peer));
                }
            }
            return Ok(stream);
        }
        let mut last = None;
        for addr in tokio::net::lookup_host(target).await? {
            if let Some(filter) = &config.dial_filter
                && !filter(addr)
            {
                last = Some(refused(addr));
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no address", crate::logging::Scrubbed(&target)),
            )
        }))
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {} timed out", crate::logging::Scrubbed(&target)),
        )),
    }
}

/// What a role needs from the host before its call.
pub(crate) enum Setup {
    Dial {
        internal: Stream,
        target: String,
    },
    /// v1's dialer whose guest names the address (`water_dial`).
    DialByGuest {
        internal: Stream,
    },
    Accept {
        internal: Stream,
        accepted: TcpStream,
    },
    Associate {
        accepted: TcpStream,
        target: String,
    },
}

/// A set-up instance whose worker is ready to run.
pub(crate) struct Session {
    store: Store<Ctx>,
    worker: TypedFunc<(), i32>,
    /// The export names of the module's ABI (for errors).
    names: Names,
    cancel: CancellationToken,
    /// The deadline for the guest to take the peer in, from the worker's
    /// start (a server's connections only).
    handshake: Option<Duration>,
    slot: Slot,
    /// Whether its instance is in a pool slot.
    pooled: bool,
    /// Its metrics, counted to its end (set by `Session::start`).
    metrics: Option<crate::metrics::Conn>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// A failed instantiation: a trap in the module's start section is the
/// guest's; anything else is the host refusing resources (the memory cap
/// below the module's initial memory, no address space or memory left).
fn instantiate_error(e: wasmtime::Error, limit: Duration) -> Error {
    if e.downcast_ref::<Trap>().is_some() || e.downcast_ref::<GuestExit>().is_some() {
        return classify("instantiate", e, limit);
    }
    Error::Exhausted(format!("instantiating the module: {e:#}"))
}

/// Why the host stopped a worker in the epoch callback: it ran
/// `Config::spin_limit` without waiting or moving a byte.
#[derive(Debug)]
struct Spun;

impl std::fmt::Display for Spun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest ran too long without waiting or moving a byte")
    }
}

impl std::error::Error for Spun {}

fn classify(export: &'static str, e: wasmtime::Error, limit: Duration) -> Error {
    if let Some(exit) = e.downcast_ref::<GuestExit>() {
        return Error::Exit { export, code: exit.0 };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::Timeout { export, limit },
        Some(trap) => Error::Trap { export, message: trap.to_string() },
        None => Error::Trap { export, message: format!("{e:#}") },
    }
}

/// The worker's epoch tick: [`Throttle`] judges it, and a pause is slept
/// here (which leaves the runtime's threads to the connections that have
/// I/O to do). Every yield's future notes when the worker resumes, so that
/// time queued behind other tasks is not counted as the guest's.
fn worker_tick(data: &mut Ctx) -> wasmtime::Result<UpdateDeadline> {
    let now = Instant::now();
    let resumed = *data.resumed.lock().unwrap_or_else(|e| e.into_inner());
    let counters =
        Counters { waited: data.wasi.waited, polls: data.wasi.polls, moved: data.wasi.activity.moved() };
    let pause = match data.throttle.tick(now, resumed, counters) {
        Verdict::Stop => {
            data.config.metrics().stopped();
            return Err(wasmtime::Error::new(Spun));
        }
        Verdict::Run => Duration::ZERO,
        Verdict::Pause(ticks) => {
            if ticks == 1 {
                // The pause doubles from one: a busy streak's first.
                data.config.metrics().throttled();
            }
            EPOCH_TICK * ticks
        }
    };
    let resumed = data.resumed.clone();
    // The new deadline counts from the end of the pause: one tick of work.
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(async move {
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
            *resumed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }),
    ))
}

/// A store for `ctx` in `engine`, with the limits and the epoch deadline.
fn new_store(engine: &wasmtime::Engine, ctx: Ctx) -> Result<Store<Ctx>, Error> {
    // try_new: out of memory is this connection's error, not a panic that
    // takes every other connection down with it.
    let mut store = Store::try_new(engine, ctx)
        .map_err(|e| Error::Exhausted(format!("creating the instance's store: {e:#}")))?;
    store.limiter(|ctx| &mut ctx.limits);
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        match data.deadline {
            Some(deadline) if Instant::now() >= deadline => Ok(UpdateDeadline::Interrupt),
            Some(_) => Ok(UpdateDeadline::Yield(1)),
            // The worker: called once per tick while it runs in wasm.
            None => worker_tick(data),
        }
    });
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Instantiates the module in a free pool slot, or, when every slot is
/// taken (or the module is not pooled), mapped on demand.
async fn instantiate(
    inner: &Inner,
    mut ctx: Ctx,
    limit: Duration,
) -> Result<(Store<Ctx>, wasmtime::Instance, &Linked), Error> {
    if let Some(pooled) = &inner.pooled {
        let mut store = new_store(pooled.pre.module().engine(), ctx)?;
        match pooled.pre.instantiate_async(&mut store).await {
            Ok(instance) => return Ok((store, instance, pooled)),
            Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                tracing::trace!("instance pool full; mapping this instance on demand");
                ctx = store.into_data();
            }
            Err(e) => return Err(instantiate_error(e, limit)),
        }
    }
    let linked = &inner.on_demand;
    let mut store = new_store(linked.pre.module().engine(), ctx)?;
    let instance = linked.pre.instantiate_async(&mut store).await.map_err(|e| instantiate_error(e, limit))?;
    Ok((store, instance, linked))
}

/// Runs one setup step under the wall-clock `limit`. Time spent blocked in
/// a host call counts (a guest sleeping in `poll_oneoff`, or reading an fd
/// nothing will ever write): the step is dropped at the limit, which
/// cancels the guest's call; the store is then dropped with the session.
async fn step<T>(
    limit: Duration,
    export: &'static str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, work).await.unwrap_or(Err(Error::Timeout { export, limit }))
}

/// [`step`], whose limit grows by what `extended` holds (nanoseconds the
/// host's own waits took, see `host_dial`).
async fn step_extended<T>(
    limit: Duration,
    extended: &std::sync::atomic::AtomicU64,
    export: &'static str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let start = tokio::time::Instant::now();
    let deadline =
        || start + limit + Duration::from_nanos(extended.load(std::sync::atomic::Ordering::Relaxed));
    tokio::pin!(work);
    loop {
        tokio::select! {
            // The work first: a call that returns at once never arms the
            // timer (arming one can wake another thread for nothing).
            biased;
            r = &mut work => return r,
            () = tokio::time::sleep_until(deadline()) => {
                if tokio::time::Instant::now() >= deadline() {
                    return Err(Error::Timeout { export, limit });
                }
            }
        }
    }
}

/// An instance whose `_start` and `_water_init` have run.
struct Initialized<'a> {
    store: Store<Ctx>,
    instance: wasmtime::Instance,
    linked: &'a Linked,
    limit: Duration,
}

impl<'a> Initialized<'a> {
    /// Instantiates `watm` and runs `_initialize` and `_start` (each if
    /// exported) and `_water_init`, each step under the setup time limit.
    /// `pulled_config`, when given, replaces the module's config as what
    /// `pull_config` reads (the connection's arguments merged after it, see
    /// `TransportArgs::merged_config`).
    async fn new(
        watm: &'a Watm,
        label: String,
        pulled_config: Option<Arc<[u8]>>,
        activity: Arc<crate::wasi::Activity>,
    ) -> Result<Initialized<'a>, Error> {
        let inner = &watm.inner;
        let mut config = inner.config.clone();
        if pulled_config.is_some() {
            config.transport_config = pulled_config;
        }
        let (limit, spin_limit) = (config.setup_timeout, config.spin_limit);
        let ctx = Ctx {
            wasi: WasiCtx::new(label).coarse_poll(config.coarse_poll).with_activity(activity),
            limits: StoreLimitsBuilder::new()
                .memory_size(config.memory_limit)
                .memories(crate::watm::MAX_MEMORIES)
                .table_elements(config.table_elements_limit)
                .tables(crate::watm::MAX_TABLES)
                .instances(1)
                .build(),
            config,
            dial_target: None,
            dialed: None,
            pending_accept: None,
            unique_prefix: None,
            dial_error: None,
            sockets: Vec::new(),
            accepted_fd: None,
            internal_fd: None,
            net_fd: None,
            deadline: Some(Instant::now() + limit),
            extended: Arc::default(),
            throttle: Throttle::new(spin_limit),
            resumed: Arc::new(std::sync::Mutex::new(Instant::now())),
        };
        let (store, instance, linked) = step(limit, "instantiate", instantiate(inner, ctx, limit)).await?;
        let mut this = Initialized { store, instance, linked, limit };
        // water-go's v1 library drops bytes on a short or refused write;
        // a guest that declares it handles them (our SDK's v1 builds) is
        // left non-blocking, as a v0 guest (a whole write can deadlock a
        // single-threaded worker whose peer waits for it to read).
        this.store.data_mut().wasi.whole_writes = inner.exports.abi == Abi::V1 && !inner.short_writes;
        // v1 reads its config from a file: a read-only directory holding
        // it, preopened (the first fd after stdio) before the guest's
        // runtime starts and looks for preopens.
        if inner.exports.abi == Abi::V1
            && let Some(data) = this.store.data().config.transport_config.clone()
        {
            let dir = Desc::Dir {
                path: water_abi::v1::CONFIG_DIR.into(),
                files: Arc::new([(water_abi::v1::CONFIG_FILE.into(), data)]),
            };
            this.store
                .data_mut()
                .wasi
                .table
                .insert(dir)
                .map_err(|e| Error::Exhausted(format!("the config directory's fd: {e}")))?;
        }

        // A reactor's `_initialize`, then a command's `_start`, each once,
        // before any v0 export.
        for (present, name) in
            [(inner.exports.initialize, abi::INITIALIZE_EXPORT), (inner.exports.start, abi::START_EXPORT)]
        {
            if !present {
                continue;
            }
            let entry = this.func(name).typed::<(), ()>(&this.store).expect("validated");
            this.store.data_mut().deadline = Some(Instant::now() + limit);
            let store = &mut this.store;
            let started = step(limit, name, async { Ok(entry.call_async(store, ()).await) });
            match started.await? {
                Ok(()) => {}
                // A WASI command's `_start` ends with proc_exit(0): that is success.
                Err(e) if e.downcast_ref::<GuestExit>() == Some(&GuestExit(0)) => {}
                Err(e) => return Err(classify(name, e, limit)),
            }
        }

        let init = inner.exports.abi.names().init;
        let r = this.call(init, None).await?;
        if let Err(errno) = status::decode(r) {
            return Err(this.guest_err(init, errno));
        }
        // Where the guest lists the bytes a quiet worker may give back:
        // asked on the module's first connection only (a static's address,
        // the same in every instance; a guest that lies about it can only
        // lose its own bytes), so it costs the others no setup call.
        if inner.exports.scratch {
            let table = match inner.scratch_table.get() {
                Some(table) => *table,
                None => {
                    let r = this.call(abi::SCRATCH.name, None).await?;
                    *inner.scratch_table.get_or_init(|| u32::try_from(r).ok().filter(|&t| t > 0))
                }
            };
            this.store.data_mut().wasi.scratch = table;
        }
        Ok(this)
    }

    /// A validated export.
    fn func(&mut self, name: &'static str) -> wasmtime::Func {
        let export = self.linked.index.get(name).expect("validated");
        self.instance
            .get_module_export(&mut self.store, export)
            .and_then(|e| e.into_func())
            .expect("validated")
    }

    /// Calls a setup export (`() -> i32` or `(i32) -> i32`) under the limit.
    ///
    /// The time of a dial's connect (bounded by `Config::connect_timeout`)
    /// is the host's, not the guest's: `host_dial` extends the limit by it,
    /// so that the connect's own limit can fire.
    async fn call(&mut self, name: &'static str, arg: Option<i32>) -> Result<i32, Error> {
        let limit = self.limit;
        let extended = self.store.data().extended.clone();
        extended.store(0, std::sync::atomic::Ordering::Relaxed);
        self.store.data_mut().deadline = Some(Instant::now() + limit);
        let f = self.func(name);
        let store = &mut self.store;
        let run = async {
            let r = match arg {
                Some(a) => f.typed::<i32, i32>(&*store).expect("validated").call_async(&mut *store, a).await,
                None => f.typed::<(), i32>(&*store).expect("validated").call_async(&mut *store, ()).await,
            };
            r.map_err(|e| classify(name, e, limit))
        };
        step_extended(limit, &extended, name, run).await
    }

    /// The guest's failure, with its last stderr line.
    fn guest_err(&mut self, export: &'static str, errno: Errno) -> Error {
        Error::Guest { export, errno, message: self.store.data_mut().wasi.output.last_stderr_line() }
    }
}

/// Runs `_start` and `_water_init` in a fresh instance of `watm`, then
/// drops it: what the first connection would meet, checked up front (a bad
/// transport config, a module that traps at start).
pub(crate) async fn dry_init(watm: &Watm) -> Result<(), Error> {
    Initialized::new(watm, "check".into(), None, Arc::default()).await.map(drop)
}

impl Session {
    /// Instantiates `watm` and runs every setup call for `setup`'s role,
    /// each step (instantiation included) under the setup time limit.
    /// `pulled_config`, when given, replaces the module's config as what
    /// `pull_config` reads.
    ///
    /// A connection shed to make room (see `policy::admission`) while its
    /// setup runs ends with [`Error::Shed`].
    pub(crate) async fn start(
        watm: &Watm,
        slot: Slot,
        setup: Setup,
        cancel: CancellationToken,
        label: String,
        pulled_config: Option<Arc<[u8]>>,
    ) -> Result<Session, Error> {
        let shed = slot.entry().shed().clone();
        let max = watm.inner.config.max_connections.unwrap_or_default();
        let role = crate::metrics::Role::of(match &setup {
            Setup::Dial { .. } | Setup::DialByGuest { .. } => Role::Dialer,
            Setup::Accept { .. } => Role::Listener,
            Setup::Associate { .. } => Role::Relay,
        });
        // Counted from here; dropped with this future, it is `abandoned`.
        let mut metrics = watm.inner.config.metrics().start(role, slot.entry().activity().clone());
        // Boxed: the setup's state (instantiation, every setup call) is
        // several KiB, and a future that awaits this one and then lives on
        // with the connection (a serve loop's task, a tunnel's) would
        // otherwise keep that much for the connection's life. Measured
        // with heaptrack: 6.3 KiB per held `water server` connection.
        let started = tokio::select! {
            r = Box::pin(Session::start_unshed(watm, slot, setup, cancel, label, pulled_config)) => r,
            () = shed.cancelled() => Err(Error::Shed(max)),
        };
        match started {
            Ok(mut session) => {
                metrics.set_up(Some(session.pooled));
                session.metrics = Some(metrics);
                Ok(session)
            }
            Err(e) => {
                metrics.set_up(None);
                metrics.end(Err(&e));
                Err(e)
            }
        }
    }

    async fn start_unshed(
        watm: &Watm,
        slot: Slot,
        setup: Setup,
        cancel: CancellationToken,
        label: String,
        pulled_config: Option<Arc<[u8]>>,
    ) -> Result<Session, Error> {
        let activity = slot.entry().activity().clone();
        let mut this = Initialized::new(watm, label, pulled_config, activity).await?;

        let role = match &setup {
            Setup::Dial { .. } => Role::Dialer,
            Setup::DialByGuest { .. } => Role::GuestDialer,
            Setup::Accept { .. } => Role::Listener,
            Setup::Associate { .. } => Role::Relay,
        };
        let names = watm.inner.exports.abi.names();
        let export = role
            .export(watm.inner.exports.abi)
            .ok_or(Error::RoleNotSupported { role: role.name(), export: "(none in this ABI)" })?;
        let (internal, accepted, target) = match setup {
            Setup::Dial { internal, target } => (Some(internal), None, Some(target)),
            Setup::DialByGuest { internal } => (Some(internal), None, None),
            Setup::Accept { internal, accepted } => (Some(internal), Some(accepted), None),
            Setup::Associate { accepted, target } => (None, Some(accepted), Some(target)),
        };
        // A server's guest may name the bytes that make a connection
        // unique, for the replay filter.
        if role == Role::Listener && watm.inner.exports.unique_prefix {
            let n = this.call(abi::UNIQUE_PREFIX.name, None).await?;
            this.store.data_mut().unique_prefix =
                usize::try_from(n).ok().filter(|&n| n > 0).map(|n| n.min(MAX_NEED));
        }
        let ctx = this.store.data_mut();
        ctx.pending_accept = accepted;
        ctx.dial_target = target;
        let arg = match internal {
            Some(stream) => {
                let fd = ctx
                    .wasi
                    .table
                    .insert(Desc::Stream { stream, nonblocking: false })
                    .map_err(|errno| Error::Guest { export, errno, message: None })?;
                ctx.internal_fd = Some(fd);
                Some(fd as i32)
            }
            None => None,
        };
        let r = this.call(export, arg).await?;
        match status::decode(r) {
            Err(errno) => {
                if let Some(e) = this.store.data_mut().dial_error.take() {
                    return Err(Error::Io(e));
                }
                return Err(this.guest_err(export, errno));
            }
            Ok(fd) if arg.is_some() => {
                // The network fd the guest returned must be one it holds.
                if !matches!(this.store.data_mut().wasi.table.get(fd), Ok(Desc::Stream { .. }))
                    || Some(fd as i32) == arg
                {
                    return Err(Error::BogusFd { export, fd: r });
                }
                this.store.data_mut().net_fd = Some(fd);
            }
            Ok(_) => {
                // The relay's guest must have joined the two connections.
                let ctx = this.store.data_mut();
                if ctx.pending_accept.is_some() {
                    return Err(Error::Incomplete { export, missing: "calling host_accept" });
                }
                if ctx.dialed != Some(Ok(())) {
                    return Err(Error::Incomplete { export, missing: "a successful host_dial" });
                }
            }
        }

        let cancel_fd = this
            .store
            .data_mut()
            .wasi
            .table
            .insert(Desc::Cancel { token: cancel.clone(), nonblocking: false })
            .map_err(|errno| Error::Guest { export: names.cancel, errno, message: None })?;
        let r = this.call(names.cancel, Some(cancel_fd as i32)).await?;
        if let Err(errno) = status::decode(r) {
            return Err(this.guest_err(names.cancel, errno));
        }

        // What the policies watch, told to the preview1 layer in its own
        // terms: the plain fd (bytes across it: the peer is taken in), the
        // network fd (its write end: all delivered), and the fds whose
        // reset means the application is gone.
        let ctx = this.store.data_mut();
        let peers = match ctx.internal_fd {
            Some(fd) => vec![fd],
            // A relay's two sockets are both peers; neither is the network.
            None => ctx.sockets.clone(),
        };
        ctx.wasi.watch = Watch::new(ctx.internal_fd, ctx.net_fd, &peers);
        this.store.data_mut().deadline = None;
        let worker = this.func(names.worker).typed::<(), i32>(&this.store).expect("validated");
        // A server's connection must be taken in by its guest within the
        // handshake deadline.
        let config = &this.store.data().config;
        let handshake = match (role, config.handshake_timeout) {
            (Role::Listener, Some(limit)) if !slot.entry().authenticated() => {
                Some(handshake::draw(limit, config.handshake_jitter))
            }
            _ => None,
        };
        let pooled = watm.inner.pooled.as_ref().is_some_and(|p| std::ptr::eq(p, this.linked));
        Ok(Session { store: this.store, worker, names, cancel, handshake, slot, pooled, metrics: None })
    }

    /// The fds bytes reach the guest through: the application's end and
    /// the network, or a relay's two sockets.
    fn inbound_fds(&self) -> Vec<u32> {
        let data = self.store.data();
        match (data.internal_fd, data.net_fd) {
            (Some(internal), Some(net)) => vec![internal, net],
            _ => data.sockets.clone(),
        }
    }

    /// Makes the close of the plain side's socket (the application's, when
    /// it is a socket: a tunnel's client, a forwarder's upstream, a relay's
    /// accepted connection) a reset: a connection that ended in error must
    /// not read as a clean end there, as a FIN after a truncated stream
    /// would. The guest's own duplicate handles close with the store.
    fn reset_plain_side(&self) {
        let data = self.store.data();
        let Some(fd) = data.internal_fd.or(data.accepted_fd) else { return };
        if let Some(socket) = self.stream(fd).and_then(|s| s.tcp()) {
            let _ = socket.set_zero_linger();
        }
    }

    fn plain_connect_failure(&self) -> Option<io::Error> {
        self.stream(self.store.data().internal_fd?)?.connect_failure()
    }

    fn stream(&self, fd: u32) -> Option<Stream> {
        self.store.data().wasi.table.stream(fd).ok().cloned()
    }

    /// The streams bytes reach the guest through (see `inbound_fds`).
    fn inbound(&self) -> Vec<Stream> {
        self.inbound_fds().into_iter().filter_map(|fd| self.stream(fd)).collect()
    }

    /// Each side, with the fd its EOF should be passed on to: the
    /// application's end to the network and the network to the
    /// application's end, or both ways between a relay's sockets.
    fn eof_paths(&self) -> Vec<(Stream, u32)> {
        let data = self.store.data();
        let pairs = match (data.internal_fd, data.net_fd, data.sockets.as_slice()) {
            (Some(internal), Some(net), _) => vec![(internal, net), (net, internal)],
            (None, _, &[a, b]) => vec![(a, b), (b, a)],
            _ => Vec::new(),
        };
        pairs.into_iter().filter_map(|(from, to)| Some((self.stream(from)?, to))).collect()
    }

    /// Runs `_water_worker` to its end. `-canceled` after a cancellation is
    /// success; any other negative result is [`Error::Guest`].
    pub(crate) async fn run(&mut self) -> Result<(), Error> {
        let r = match self.worker.call_async(&mut self.store, ()).await {
            Ok(r) => r,
            // The worker may end the instance with proc_exit(0), as a WASI
            // program does: a clean end.
            Err(e) if e.downcast_ref::<GuestExit>() == Some(&GuestExit(0)) => return Ok(()),
            Err(e) if e.downcast_ref::<Spun>().is_some() => {
                let limit = self.store.data().config.spin_limit;
                return Err(Error::Spinning { export: self.names.worker, limit });
            }
            Err(e) => return Err(classify(self.names.worker, e, Duration::ZERO)),
        };
        match status::decode(r) {
            Ok(_) => Ok(()),
            Err(Errno::CANCELED) if self.cancel.is_cancelled() => Ok(()),
            // The first v1 library (the one water-go's test modules and
            // early deployed modules are built with) ends its worker with
            // `-pipe` at the first EOF of either side: its normal end.
            Err(Errno::PIPE) if self.names.worker == water_abi::v1::START.name => Ok(()),
            // A plain side connected on first use (a forwarder's upstream)
            // that could not be: that is the news, not the guest's errno.
            Err(_) if let Some(e) = self.plain_connect_failure() => Err(Error::Io(e)),
            Err(errno) => Err(Error::Guest {
                export: self.names.worker,
                errno,
                message: self.store.data_mut().wasi.output.last_stderr_line(),
            }),
        }
    }
}

/// The signals between a connection's owner and its worker task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Links {
    /// The owner left: the worker may finish while it makes progress, then
    /// is cancelled.
    pub closing: CancellationToken,
    /// Cancel now: the guest's cancel fd becomes readable.
    pub cancel: CancellationToken,
}

/// Why the host stopped a worker (`Done`: it did not, or the owner
/// cancelled).
#[derive(Debug, Clone, Copy)]
enum Stop {
    Done,
    Cut,
    Idle,
    Orphaned,
    /// Not taken in by the handshake deadline.
    Unauthenticated(Duration),
    /// Shed to make room for a new connection.
    Shed,
}

/// How a worker task ended, as its owner receives it.
pub(crate) type Done = tokio::sync::oneshot::Receiver<Result<(), Error>>;

/// Waits for the worker behind `done`. A task that vanished without a
/// result (it panicked, or its runtime was shut down) is an error, never a
/// clean end.
pub(crate) async fn finished(done: Done) -> Result<(), Error> {
    done.await.unwrap_or(Err(Error::WorkerLost))
}

/// Reports the worker's end, whatever it is: if the task is dropped or
/// unwinds before [`Report::send`], the application reads an error instead
/// of a clean EOF, and its owner gets [`Error::WorkerLost`].
struct Report {
    tx: Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
    app_link: Option<Arc<DuplexEnd>>,
}

impl Report {
    fn send(mut self, result: Result<(), Error>) {
        if let (Err(e), Some(link)) = (&result, &self.app_link) {
            link.fail(io::ErrorKind::ConnectionAborted, e.to_string());
        }
        // The application's end first, so that a reader woken by the
        // result finds the error in place.
        drop(self.app_link.take());
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            if let Some(link) = &self.app_link {
                link.fail(io::ErrorKind::ConnectionAborted, Error::WorkerLost.to_string());
            }
            let _ = tx.send(Err(Error::WorkerLost));
        }
    }
}

/// Runs a session's worker as its own task. After `links.closing`, the
/// worker may go on while it makes progress (writes to the network); once
/// it has made none for `grace`, it is cancelled, and if it had not
/// half-closed the network by then, its end is [`Error::Cut`]. The same
/// once both the application's side and the network have hung up (nothing
/// more can reach the guest), with any byte it moves as progress: a guest
/// that ignores both EOFs does not hold its sockets for ever. Once
/// cancelled, it has `grace` to return before it is dropped
/// ([`Error::Stuck`]). On failure the application's side of `app_link` (if
/// any) reads the error instead of EOF.
pub(crate) fn spawn_worker(
    mut session: Session,
    links: Links,
    grace: Duration,
    app_link: Option<Arc<DuplexEnd>>,
) -> Done {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let report = Report { tx: Some(tx), app_link };
    let activity = session.store.data().wasi.activity.clone();
    let config = &session.store.data().config;
    let (idle_timeout, orphan_timeout) = (config.idle_timeout, config.orphan_timeout);
    // A reader who takes none of the bytes waiting for it for the orphan
    // limit (a minute without one) is stalled.
    let patience = orphan_timeout.unwrap_or(Duration::from_secs(60));
    let watched = Watched::new(session.inbound(), session.eof_paths(), activity.clone(), patience);
    let (handshake, entry) = (session.handshake, session.slot.entry().clone());
    let max = config.max_connections.unwrap_or_default();
    // Often enough for the orphan limit to be kept to a quarter of itself.
    let every = orphan_timeout.map_or(grace, |limit| grace.min(limit / 4)).max(EPOCH_TICK);
    tokio::spawn(async move {
        let Links { closing, cancel } = links;
        // After the owner left (or the application side failed), the worker
        // may go on while it writes to the network; once both its inbound
        // sides hung up, while it moves any bytes (it may still be
        // delivering to a slow application).
        let linger = async {
            let owner_left = tokio::select! {
                () = closing.cancelled() => true,
                ending = watch(&watched, orphan_timeout, every) => match ending {
                    Ending::AppGone => true,
                    Ending::BothHungUp => false,
                    Ending::Orphaned => return Stop::Orphaned,
                },
            };
            // Whether cancelling now cuts a delivery: after the owner left,
            // unless the guest had half-closed the network; after both
            // sides hung up, always (the application is still there, and a
            // guest done with both directions would have returned).
            if owner_left {
                until_still(|| activity.sent(), grace).await;
                if activity.delivered() { Stop::Done } else { Stop::Cut }
            } else {
                until_still(|| watched.progress(), grace).await;
                Stop::Cut
            }
        };
        let mut stop = Stop::Done;
        let result = {
            let work = session.run();
            tokio::pin!(work);
            let deadline = async {
                stop = tokio::select! {
                    () = cancel.cancelled() => Stop::Done,
                    why = linger => why,
                    () = until_silent(&activity, idle_timeout) => Stop::Idle,
                    () = async {
                        match handshake {
                            Some(limit) => handshake::expired(&entry, limit).await,
                            None => std::future::pending().await,
                        }
                    } => Stop::Unauthenticated(handshake.unwrap_or_default()),
                    () = entry.shed().cancelled() => Stop::Shed,
                };
                cancel.cancel();
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                r = &mut work => r,
                () = deadline => Err(Error::Stuck(grace)),
            }
        };
        let result = match (result, stop) {
            (Ok(()), Stop::Idle) => Err(Error::Idle(idle_timeout.unwrap_or_default())),
            (Ok(()), Stop::Cut) => Err(Error::Cut { idle: grace }),
            // A guest that ignored its application's EOF may ignore the
            // cancel too: why it was stopped is the news.
            (Ok(()) | Err(Error::Stuck(_)), Stop::Orphaned) => {
                Err(Error::Orphaned(orphan_timeout.unwrap_or_default()))
            }
            // The guest's end after the cancel does not matter: it had not
            // taken its peer in.
            (_, Stop::Unauthenticated(limit)) => Err(Error::Unauthenticated(limit)),
            (_, Stop::Shed) => Err(Error::Shed(max)),
            (other, _) => other,
        };
        if result.is_err() {
            session.reset_plain_side();
        }
        let metrics = session.metrics.take();
        // Frees the instance and closes every fd it held, now.
        drop(session);
        if let Some(metrics) = metrics {
            metrics.end(result.as_ref().copied());
        }
        report.send(result);
    });
    rx
}
