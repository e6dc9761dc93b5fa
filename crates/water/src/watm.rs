//! Loading a WATM: compile once, validate against the ABI, pre-link.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Engine, ExternType, FuncType, InstancePre, Linker, Module, ModuleExport, ValType};
use water_abi::{FuncSig, v0 as abi};

use crate::abi::Abi;
use crate::cache::{self, CompileCache, Lookup};
use crate::config::Config;
use crate::error::Error;
use crate::session::Ctx;
use crate::wasi;

/// How often the shared engine's epoch advances: the granularity of the
/// setup time limit, and how often a guest that never calls the host yields
/// its thread to other connections.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instance slots in the pooled engine, unless `WATER_POOL_SLOTS` says
/// otherwise (`0`: no pool).
pub const DEFAULT_POOL_SLOTS: u32 = 1024;

/// Guest memory kept resident in a pool slot for its next instance.
const KEEP_RESIDENT: usize = 256 << 10;

/// Table memory kept resident in a pool slot (zeroed in place).
const TABLE_KEEP_RESIDENT: usize = 16 << 10;

/// The process-wide engines: compiled code and the epoch ticker are shared
/// by every loaded module.
///
/// - `pooled`: wasmtime's pooling allocator, a fixed number of instance
///   slots reserved once and reused. A new connection then maps nothing:
///   its memory, tables and async stack are a reused slot, and its guest
///   memory's dirty pages (up to [`KEEP_RESIDENT`]) were reset in place
///   rather than unmapped and faulted in again. `None` when the pool cannot
///   be reserved here (address-space limits) or is turned off.
/// - `on_demand`: maps every instance afresh. It takes the connections the
///   pool has no free slot for, and modules the pool cannot hold, so that
///   the pool's size is never a limit on connections.
///
/// Both compile code the same way, so a module compiled once is loaded
/// into the other by deserialization instead of a second compilation.
pub(crate) struct Engines {
    pub pooled: Option<Engine>,
    pub on_demand: Engine,
}

/// The process's address-space limit (`RLIMIT_AS`, as some sandboxes set),
/// if it has one.
fn address_space_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the plain struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// `reserve`: whether each memory gets the 4 GiB reservation (see below);
/// without it, exact-size memories with explicit bounds checks.
fn base_config(reserve: bool) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    // One instance per connection means thousands of live instances, and
    // Linux caps a process's memory mappings (vm.max_map_count, 65,530
    // by default). Each memory keeps wasmtime's 4 GiB reservation with a
    // guard region after it, which costs no memory and one mapping split
    // (reserved / accessible), but lets compiled code skip the bounds
    // check on every load and store: the XOR guest's per-byte cost fell
    // by half with it. What costs mappings without paying for itself
    // here is off: the guard before the memory and the copy-on-write
    // image (small WATMs copy their data segments at instantiation).
    // Four mappings per instance (memory: 2, async stack and its guard:
    // 2), and 4 GiB of address space, of which x86-64 has 128 TiB; under
    // an address-space limit, exact-size memories instead.
    if reserve {
        cfg.memory_reservation(4 << 30);
        cfg.memory_guard_size(32 << 20);
    } else {
        cfg.memory_reservation(0);
        cfg.memory_guard_size(0);
    }
    cfg.memory_reservation_for_growth(0);
    cfg.guard_before_linear_memory(false);
    cfg.memory_init_cow(false);
    // `WATER_PROFILE=perfmap`: wasmtime writes /tmp/perf-<pid>.map so
    // that `perf report` names each wasm function (see BENCHMARKS.md).
    if std::env::var_os("WATER_PROFILE").is_some_and(|v| v == "perfmap") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    cfg
}

/// The pool's size: `WATER_POOL_SLOTS` if it is a number, else the default.
fn pool_slots() -> u32 {
    match std::env::var("WATER_POOL_SLOTS") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value = %v, "WATER_POOL_SLOTS is not a number; using {DEFAULT_POOL_SLOTS}");
            DEFAULT_POOL_SLOTS
        }),
        Err(_) => DEFAULT_POOL_SLOTS,
    }
}

fn pooled_engine(slots: u32) -> Option<Engine> {
    if slots == 0 {
        return None;
    }
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_core_instances(slots).total_memories(slots).total_tables(slots).total_stacks(slots);
    // A slot spans the whole reservation anyway; the store's limiter
    // (`Config::memory_limit`) is what bounds a guest's memory.
    pool.max_memory_size(4 << 30);
    pool.linear_memory_keep_resident(KEEP_RESIDENT);
    // The same for tables: a guest's funcref table is a page or a few, and
    // giving it back at every instance's end cost a `madvise` per
    // connection (one system call of the few a setup makes beyond a
    // plain connect's).
    pool.table_keep_resident(TABLE_KEEP_RESIDENT);
    // Reset only the pages a guest dirtied (Linux 6.7+), so that a slot
    // keeps resident what its last guest used, not all of KEEP_RESIDENT.
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    // Reuse slots that were used before over fresh ones: what stays
    // resident is then bounded by the peak number of connections.
    pool.max_unused_warm_slots(0);
    let mut cfg = base_config(true);
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&cfg) {
        Ok(engine) => Some(engine),
        Err(e) => {
            tracing::warn!("no instance pool ({e:#}): every instance is mapped on demand");
            None
        }
    }
}

pub(crate) fn engines() -> &'static Engines {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    ENGINES.get_or_init(|| {
        // Under an address-space limit, 4 GiB per instance would make the
        // connections after the first few fail: exact-size memories, and no
        // pool (which reserves its slots up front).
        let capped = address_space_limit();
        if let Some(limit) = capped {
            tracing::info!(
                limit,
                "address space is limited (RLIMIT_AS): exact-size guest memories, no instance pool"
            );
        }
        let slots = if capped.is_none() { pool_slots() } else { 0 };
        let pooled = pooled_engine(slots);
        crate::metrics::set_pool_slots(if pooled.is_some() { slots.into() } else { 0 });
        // A pool that could not be reserved means address space is scarce
        // here (a small virtual address size, say): then 4 GiB per instance
        // would not fit either.
        let reserve = capped.is_none() && (slots == 0 || pooled.is_some());
        if capped.is_none() && !reserve {
            tracing::warn!("exact-size guest memories: the address space could not hold the pool");
        }
        let on_demand =
            Engine::new(&base_config(reserve)).expect("the default engine configuration is valid");
        // The engines live as long as the process (a static), so the ticker
        // holds them and never ends.
        let ticked: Vec<Engine> = pooled.iter().chain([&on_demand]).cloned().collect();
        std::thread::Builder::new()
            .name("water-epoch".into())
            .spawn(move || {
                loop {
                    ticked.iter().for_each(Engine::increment_epoch);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawn the epoch thread");
        Engines { pooled, on_demand }
    })
}

/// The module's ABI and which optional exports it has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exports {
    pub abi: Abi,
    /// `_initialize`: a WASI reactor's initialisers.
    pub initialize: bool,
    /// `_start`: a WASI command's entry (TinyGo's runtime set-up).
    pub start: bool,
    pub dial: bool,
    pub accept: bool,
    pub associate: bool,
    /// v1's `watm_dial_fixed_v1`: the dialer whose guest names the address.
    pub dial_by_guest: bool,
    /// `_water_unique_prefix` (our extension, for the replay filter).
    pub unique_prefix: bool,
    /// `_water_scratch` (our extension: what a quiet guest's memory may
    /// give back).
    pub scratch: bool,
}

/// The functions the host calls, resolved once per module so that setting
/// up a connection does no lookups by name.
pub(crate) struct ExportIndex(Vec<(&'static str, ModuleExport)>);

impl ExportIndex {
    fn new(module: &Module) -> Self {
        let names = [abi::INITIALIZE_EXPORT, abi::START_EXPORT].into_iter().chain(
            abi::EXPORTS
                .iter()
                .chain(abi::EXTENSION_EXPORTS)
                .chain(water_abi::v1::EXPORTS)
                .map(|sig| sig.name),
        );
        ExportIndex(names.filter_map(|name| Some((name, module.get_export_index(name)?))).collect())
    }

    /// The export's location, when the module has it.
    pub fn get(&self, name: &str) -> Option<&ModuleExport> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, e)| e)
    }
}

/// A module compiled into one engine, linked, with its exports located.
pub(crate) struct Linked {
    pub pre: InstancePre<Ctx>,
    pub index: ExportIndex,
}

impl Linked {
    fn new(engine: &Engine, module: &Module) -> Result<Linked, Error> {
        let mut linker = Linker::new(engine);
        crate::abi::add_to_linker(&mut linker).map_err(|e| Error::Invalid(format!("{e:#}")))?;
        wasi::p1::add_to_linker(&mut linker, module).map_err(|e| Error::Invalid(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(module).map_err(|e| link_error(module, e))?;
        Ok(Linked { pre, index: ExportIndex::new(module) })
    }

    /// The same module in the pooled engine: deserialized from
    /// `serialized` (the on-demand engine's code), not compiled again.
    /// `None` (logged) when the pool cannot hold it, say a module with a
    /// larger table than a slot has.
    fn pooled(engine: &Engine, serialized: &[u8]) -> Option<Linked> {
        // SAFETY: `serialized` is what `Module::serialize` produced in this
        // process, or a cache file that passed `cache`'s checks (written by
        // our uid, for this module and engine, intact) and that the
        // on-demand engine has just deserialized; both engines share one
        // compilation config (`base_config`), which deserialization checks.
        let loaded = unsafe { Module::deserialize(engine, serialized) };
        let linked = match loaded {
            Ok(pooled) => Linked::new(engine, &pooled).map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        linked.map_err(|e| tracing::debug!("module not pooled, mapped on demand: {e}")).ok()
    }
}

pub(crate) struct Inner {
    /// Where the code came from.
    pub origin: CodeOrigin,
    /// In the pooled engine, when there is one and the module fits.
    pub pooled: Option<Linked>,
    pub on_demand: Linked,
    pub exports: Exports,
    pub config: Config,
    /// Connections alive (from setup to the worker's end), for
    /// `Config::max_connections`.
    pub admission: Arc<crate::policy::admission::Admission>,
    /// The argument keys the module declares public ([`PUBLIC_ARGS_SECTION`]).
    pub public_args: Vec<String>,
    /// The module declares that it handles short and refused writes
    /// ([`SHORT_WRITES_SECTION`]).
    pub short_writes: bool,
    /// What `_water_scratch` returned on the module's first connection
    /// (the address of a static, the same in every instance: asked once).
    pub scratch_table: std::sync::OnceLock<Option<u32>>,
}

/// A compiled, validated WATM v0 module, ready to be instantiated once per
/// connection. Cheap to clone (shared).
#[derive(Clone)]
pub struct Watm {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Watm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watm")
            .field("exports", &self.inner.exports)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Where a [`Watm`]'s compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeOrigin {
    /// Compiled by this load (no [`Config::compile_cache`], no usable file
    /// in it, or a file that failed a check).
    Compiled,
    /// Deserialized from a checked file of [`Config::compile_cache`].
    Cache,
}

/// A connection role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// `_water_dial` (v0), `watm_dial_v1` (v1): to the application's
    /// address.
    Dialer,
    /// `_water_accept`, `watm_accept_v1`.
    Listener,
    /// `_water_associate`, `watm_associate_v1`.
    Relay,
    /// `watm_dial_fixed_v1` (v1 only): the guest names the address, under
    /// the application's dial filter ([`crate::Dialer::dial_by_guest`]).
    GuestDialer,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Dialer => "dialer",
            Role::Listener => "listener",
            Role::Relay => "relay",
            Role::GuestDialer => "guest-addressed dialer",
        }
    }

    /// The role's export in `abi` (`None`: the ABI has no such role).
    pub(crate) fn export(self, abi: Abi) -> Option<&'static str> {
        let names = abi.names();
        match self {
            Role::Dialer => Some(names.dial),
            Role::Listener => Some(names.accept),
            Role::Relay => Some(names.associate),
            Role::GuestDialer => names.dial_by_guest,
        }
    }
}

impl Watm {
    /// Compiles and validates a module.
    ///
    /// Errors: [`Error::NotWasm`], [`Error::Invalid`], [`Error::NotV0`], and
    /// for a v0 module whose exports or imports do not match the ABI,
    /// [`Error::MissingExport`], [`Error::BadExport`], [`Error::UnknownImport`]
    /// or [`Error::BadImport`]. Cost: one compilation (milliseconds to tens of
    /// milliseconds for a small module); instantiation per connection is then
    /// cheap: a reused slot of the instance pool while one is free (see
    /// [`DEFAULT_POOL_SLOTS`]), a fresh mapping otherwise.
    ///
    /// With [`Config::compile_cache`], the compilation is replaced by a
    /// checked read of the cache file when there is one (see there), and
    /// otherwise its result is written to it; the checks against the ABI
    /// and the budgets are the same either way.
    pub fn new(bytes: &[u8], config: Config) -> Result<Watm, Error> {
        if !bytes.starts_with(b"\0asm") {
            return Err(Error::NotWasm);
        }
        check_compile_budget(bytes, &config)?;
        let engines = engines();
        let (module, serialized, origin) = load_code(engines, bytes, config.compile_cache.as_deref())?;
        let exports = validate(&module)?;
        check_resources(&module, &config)?;
        let on_demand = Linked::new(&engines.on_demand, &module)?;
        let pooled = match (&engines.pooled, &serialized) {
            (Some(engine), Some(serialized)) => Linked::pooled(engine, serialized),
            _ => None,
        };
        let public_args = public_args(bytes);
        let short_writes = has_section(bytes, SHORT_WRITES_SECTION);
        Ok(Watm {
            inner: Arc::new(Inner {
                origin,
                pooled,
                on_demand,
                exports,
                config,
                admission: Arc::default(),
                public_args,
                short_writes,
                scratch_table: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reads and loads a `.wasm` file; see [`Watm::new`].
    pub fn from_file(path: impl AsRef<Path>, config: Config) -> Result<Watm, Error> {
        let bytes = std::fs::read(path.as_ref())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.as_ref().display())))?;
        Watm::new(&bytes, config)
    }

    /// Whether the module exports the function of `role`.
    pub fn supports(&self, role: Role) -> bool {
        let e = self.inner.exports;
        match role {
            Role::Dialer => e.dial,
            Role::Listener => e.accept,
            Role::Relay => e.associate,
            Role::GuestDialer => e.dial_by_guest,
        }
    }

    /// The argument keys the transport declares public, in the module's
    /// `water.public_args` custom section ([`PUBLIC_ARGS_SECTION`]): what a
    /// client needs, and so what a Tor bridge may publish. Empty when it
    /// declares none: then nothing is public.
    pub fn public_args(&self) -> &[String] {
        &self.inner.public_args
    }

    /// The ABI the module speaks, `"v0"` or `"v1"`, as its exports say.
    pub fn abi(&self) -> &'static str {
        self.inner.exports.abi.label()
    }

    /// Whether its connections take slots of the instance pool (while one
    /// is free). `false` when the pool is off (`WATER_POOL_SLOTS=0`), could
    /// not be reserved, or cannot hold this module (a table larger than a
    /// slot's 20,000 elements): then every instance is mapped on demand,
    /// which is slower to set up but has no other limit.
    pub fn pooled(&self) -> bool {
        self.inner.pooled.is_some()
    }

    /// Whether its code was compiled by this load or read from
    /// [`Config::compile_cache`].
    pub fn code_origin(&self) -> CodeOrigin {
        self.inner.origin
    }

    /// Runs `_start` and `_water_init` once in a throwaway instance, and
    /// reports what the first connection would meet there: a transport
    /// config the guest rejects ([`Error::Guest`] with its stderr line), a
    /// trap, a timeout. For start-up checks; connections need not call it.
    pub async fn check_init(&self) -> Result<(), Error> {
        crate::session::dry_init(self).await
    }

    /// The options it was loaded with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn require(&self, role: Role) -> Result<(), Error> {
        if self.supports(role) {
            Ok(())
        } else {
            let export = role.export(self.inner.exports.abi).unwrap_or("(none in this ABI)");
            Err(Error::RoleNotSupported { role: role.name(), export })
        }
    }
}

/// The module in the on-demand engine, from `cache_dir` when it holds a
/// checked file for it, else compiled (and then written there); with its
/// serialized code when the pooled engine or the cache needs it.
fn load_code(
    engines: &Engines,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Module, Option<Vec<u8>>, CodeOrigin), Error> {
    let engine = &engines.on_demand;
    let cache = cache_dir.and_then(|dir| {
        CompileCache::open(dir)
            .map_err(|why| {
                tracing::warn!(
                    "compile cache {} not used: {why}; it must be a directory owned by this user \
                     and not writable by others. Compiling instead.",
                    dir.display()
                )
            })
            .ok()
    });
    let key = cache.as_ref().map(|_| cache::Key::new(engine, wasm));
    if let (Some(cache), Some(key)) = (&cache, &key) {
        let file = cache.file(key);
        match cache.read(key) {
            Lookup::Hit(code) => {
                // SAFETY: the file passed `cache`'s checks: in a directory
                // only our uid can write to, a regular file (not a link)
                // owned by our uid and writable by nobody else, whose
                // header names this module's key (its bytes, this engine's
                // compatibility hash, this crate's version) and the SHA-256
                // of this code. wasmtime checks its own header too.
                match unsafe { Module::deserialize(engine, &code) } {
                    Ok(module) => {
                        tracing::debug!("compiled code from the cache: {}", file.display());
                        return Ok((module, Some(code), CodeOrigin::Cache));
                    }
                    Err(e) => tracing::warn!(
                        "compile cache file {} refused by wasmtime ({e:#}); compiling and replacing it",
                        file.display()
                    ),
                }
            }
            Lookup::Absent => tracing::debug!("no compile cache file {} yet; compiling", file.display()),
            Lookup::Rejected(why) => {
                tracing::warn!(
                    "compile cache file {} not used: {why}; compiling and replacing it",
                    file.display()
                )
            }
        }
    }
    let module = Module::new(engine, wasm).map_err(|e| Error::Invalid(format!("{e:#}")))?;
    let serialized = if engines.pooled.is_some() || cache.is_some() {
        match module.serialize() {
            Ok(code) => Some(code),
            Err(e) => {
                tracing::debug!("module not serialized, so neither pooled nor cached: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let (Some(cache), Some(key), Some(code)) = (&cache, &key, &serialized) {
        match cache.write(key, code) {
            Ok(()) => tracing::debug!("compiled code cached in {}", cache.file(key).display()),
            Err(e) => tracing::warn!("cannot write compile cache file {}: {e}", cache.file(key).display()),
        }
    }
    Ok((module, serialized, CodeOrigin::Compiled))
}

fn conv(t: water_abi::ValType) -> ValType {
    match t {
        water_abi::ValType::I32 => ValType::I32,
    }
}

fn same_sig(ty: &FuncType, sig: &FuncSig) -> bool {
    let eq = |have: Vec<ValType>, want: &[water_abi::ValType]| {
        have.len() == want.len() && have.iter().zip(want).all(|(h, w)| ValType::eq(h, &conv(*w)))
    };
    eq(ty.params().collect(), sig.params) && eq(ty.results().collect(), sig.results)
}

/// Whether the module exports `name` as a `() -> ()` function (a WASI
/// entry point); any other kind or signature is an error.
fn entry_point(module: &Module, name: &'static str) -> Result<bool, Error> {
    match module.get_export(name) {
        None => Ok(false),
        Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => Ok(true),
        Some(other) => Err(Error::BadExport {
            name: name.into(),
            expected: "function () -> ()".into(),
            found: describe(&other),
        }),
    }
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let list = |v: Vec<ValType>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            format!("function ({}) -> ({})", list(f.params().collect()), list(f.results().collect()))
        }
        ExternType::Global(_) => "a global".into(),
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Tag(_) => "a tag".into(),
    }
}

fn expected(sig: &FuncSig) -> String {
    let list = |v: &[water_abi::ValType]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    format!("function ({}) -> ({})", list(sig.params), list(sig.results))
}

fn validate(module: &Module) -> Result<Exports, Error> {
    // v0 is recognised by the name alone: TinyGo exports a function, some
    // Rust guests an i32 global. v1 by its init function.
    let abi = if module.get_export(abi::VERSION_EXPORT).is_some() {
        Abi::V0
    } else if module.get_export(water_abi::v1::INIT.name).is_some() {
        Abi::V1
    } else {
        return Err(Error::NotV0);
    };
    let check = |sig: &'static FuncSig, required: bool| -> Result<bool, Error> {
        match module.get_export(sig.name) {
            None if required => Err(Error::MissingExport { name: sig.name, expected: expected(sig) }),
            None => Ok(false),
            Some(ExternType::Func(ty)) if same_sig(&ty, sig) => Ok(true),
            Some(other) => Err(Error::BadExport {
                name: sig.name.into(),
                expected: expected(sig),
                found: describe(&other),
            }),
        }
    };
    let exports = match abi {
        Abi::V0 => {
            for sig in abi::REQUIRED_EXPORTS {
                check(sig, true)?;
            }
            Exports {
                abi,
                initialize: entry_point(module, abi::INITIALIZE_EXPORT)?,
                start: entry_point(module, abi::START_EXPORT)?,
                dial: check(&abi::DIAL, false)?,
                accept: check(&abi::ACCEPT, false)?,
                associate: check(&abi::ASSOCIATE, false)?,
                dial_by_guest: false,
                unique_prefix: check(&abi::UNIQUE_PREFIX, false)?,
                scratch: check(&abi::SCRATCH, false)?,
            }
        }
        Abi::V1 => {
            use water_abi::v1;
            for sig in v1::REQUIRED_EXPORTS {
                check(sig, true)?;
            }
            Exports {
                abi,
                initialize: entry_point(module, abi::INITIALIZE_EXPORT)?,
                start: entry_point(module, abi::START_EXPORT)?,
                dial: check(&v1::DIAL, false)?,
                accept: check(&v1::ACCEPT, false)?,
                associate: check(&v1::ASSOCIATE, false)?,
                dial_by_guest: check(&v1::DIAL_FIXED, false)?,
                unique_prefix: check(&abi::UNIQUE_PREFIX, false)?,
                scratch: check(&abi::SCRATCH, false)?,
            }
        }
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(Error::BadExport {
                name: "memory".into(),
                expected: "a memory".into(),
                found: describe(&other),
            });
        }
        None => return Err(Error::MissingExport { name: "memory", expected: "a memory".into() }),
    }
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        let unknown = || Error::UnknownImport { module: m.into(), name: name.into() };
        match m {
            abi::IMPORT_MODULE => {
                let sig = match exports.abi {
                    Abi::V0 => abi::import_sig(name),
                    Abi::V1 => water_abi::v1::import_sig(name),
                }
                .ok_or_else(unknown)?;
                match import.ty() {
                    ExternType::Func(ty) if same_sig(&ty, sig) => {}
                    other => {
                        return Err(Error::BadImport {
                            module: m.into(),
                            name: name.into(),
                            detail: format!("expected {}, found {}", expected(sig), describe(&other)),
                        });
                    }
                }
            }
            abi::WASI_MODULE => {
                if !wasi::ALL_FUNCTIONS.contains(&name) {
                    return Err(unknown());
                }
                let ExternType::Func(ty) = import.ty() else { return Err(unknown()) };
                // Every preview1 function but proc_exit returns an errno.
                let errno_result =
                    ty.results().len() == 1 && ty.results().all(|t| ValType::eq(&t, &ValType::I32));
                if name != "proc_exit" && !errno_result {
                    return Err(Error::BadImport {
                        module: m.into(),
                        name: name.into(),
                        detail: format!("expected an errno (i32) result, found {}", describe(&import.ty())),
                    });
                }
            }
            _ => return Err(unknown()),
        }
    }
    Ok(exports)
}

/// The custom section in which a transport declares which of its
/// arguments are public (what a client needs: a Tor bridge publishes them
/// in its `SMETHOD ... ARGS:` line): key names separated by commas or
/// whitespace. Other hosts ignore custom sections.
pub const PUBLIC_ARGS_SECTION: &str = "water.public_args";

/// The keys declared in [`PUBLIC_ARGS_SECTION`] sections (at most 32, each
/// at most 64 bytes of `[A-Za-z0-9_.-]`; anything else is ignored).
fn public_args(bytes: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::CustomSection(section)) if section.name() == PUBLIC_ARGS_SECTION => {
                let text = String::from_utf8_lossy(section.data());
                for key in text.split(|c: char| c == ',' || c.is_whitespace()) {
                    let valid = !key.is_empty()
                        && key.len() <= 64
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                    if valid && keys.len() < 32 && !keys.iter().any(|k| k == key) {
                        keys.push(key.to_string());
                    }
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    keys
}

/// The custom section (any content) by which a v1 module declares that it
/// handles short and refused (`again`) writes on non-blocking fds, as our
/// SDK's v1 builds do. Without it a v1 guest's writes are made whole
/// (water-go's TinyGo library drops the rest of a short write), which can
/// stall a single-threaded guest whose peer waits for it to read while it
/// waits to write; with it, v1 writes behave as v0's. Other hosts ignore
/// custom sections.
pub const SHORT_WRITES_SECTION: &str = "water.short_writes";

/// Whether the module has a custom section `name`.
fn has_section(bytes: &[u8], name: &str) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map_while(Result::ok)
        .any(|p| matches!(p, wasmparser::Payload::CustomSection(s) if s.name() == name))
}

/// Refuses, before compiling, a module over the compile budget: more bytes
/// than `Config::max_module_size` or more defined functions than
/// `Config::max_functions`. Counting reads only section headers; a module
/// too malformed to count is left to the compiler's own error.
fn check_compile_budget(bytes: &[u8], config: &Config) -> Result<(), Error> {
    let over = |what, requested: usize, limit: usize| Error::OverLimit {
        what,
        requested: requested as u64,
        limit: limit as u64,
    };
    if bytes.len() > config.max_module_size {
        return Err(over("bytes of module", bytes.len(), config.max_module_size));
    }
    let mut functions = 0;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::CodeSectionStart { count, .. }) => {
                functions = count as usize;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if functions > config.max_functions {
        return Err(over("functions", functions, config.max_functions));
    }
    Ok(())
}

/// Memories and tables one instance may define (what every toolchain emits;
/// the memory limit is per memory, so more would multiply it).
pub(crate) const MAX_MEMORIES: usize = 1;
pub(crate) const MAX_TABLES: usize = 1;

/// Refuses, at load, a module whose every instance would be refused: more
/// memories or tables than [`MAX_MEMORIES`]/[`MAX_TABLES`], or an initial
/// memory or table above the configured limits.
fn check_resources(module: &Module, config: &Config) -> Result<(), Error> {
    let r = module.resources_required();
    let over = |what, requested: u64, limit: usize| {
        if requested > limit as u64 {
            Err(Error::OverLimit { what, requested, limit: limit as u64 })
        } else {
            Ok(())
        }
    };
    over("memories", r.num_memories.into(), MAX_MEMORIES)?;
    over("tables", r.num_tables.into(), MAX_TABLES)?;
    let initial_memory = r.max_initial_memory_size.unwrap_or(0).saturating_mul(64 << 10);
    over("bytes of initial memory", initial_memory, config.memory_limit)?;
    over("initial table elements", r.max_initial_table_size.unwrap_or(0), config.table_elements_limit)
}

/// Turns a link failure (a preview1 import with the wrong signature) into a
/// typed error naming the import.
fn link_error(module: &Module, e: wasmtime::Error) -> Error {
    let text = format!("{e:#}");
    for import in module.imports() {
        if text.contains(&format!("`{}::{}`", import.module(), import.name())) {
            return Error::BadImport {
                module: import.module().into(),
                name: import.name().into(),
                detail: text,
            };
        }
    }
    Error::Invalid(text)
}
