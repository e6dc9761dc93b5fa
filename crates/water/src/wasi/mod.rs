//! The guest's WASI preview1 world, implemented by us on wasmtime's `Linker`.
//!
//! wasmtime-wasi's preview1 layer cannot put a host socket into a guest's fd
//! table, so this module owns the table ([`table`]) and implements the
//! preview1 functions real WATMs import (TinyGo and Rust/tokio guests; see
//! `V0-HOST-NOTES.md`). Every other preview1 function a module imports is
//! linked to a stub answering `nosys`. No call can panic or trap the host:
//! guest memory is reached only through [`memory::GuestMem`], whose every
//! access is bounds-checked, and host errors become errnos in [`errno`].
//!
//! - [`table`]: fd numbers → descriptors (stdio, streams, cancel, config).
//! - [`memory`]: checked guest memory access.
//! - [`errno`]: `io::Error` ↔ errno.
//! - [`output`]: guest stdout/stderr to `tracing`, capped.
//! - `p1`: the functions, and `add_to_linker`.
//! - `poll`: `poll_oneoff`.
//!

pub mod errno;
pub mod gate;
pub mod lazy;
pub mod memory;
pub mod output;
pub mod p1;
pub mod poll;
pub mod sock;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::Memory;

/// The module name of preview1 imports.
pub const MODULE: &str = water_abi::v0::WASI_MODULE;

/// Per-instance WASI state.
#[derive(Debug)]
pub struct WasiCtx {
    pub table: table::FdTable,
    /// The instance's exported memory, set once after instantiation.
    pub memory: Option<Memory>,
    pub output: output::OutputLog,
    /// Zero of the guest's monotonic clock.
    pub clock_base: Instant,
    /// Report every fd subscription of a `poll_oneoff` ready when any one
    /// is, as wasi-common-based hosts do (a test switch, see
    /// `Config::coarse_poll`).
    pub coarse_poll: bool,
    /// A write to a stream waits for room and writes the whole buffer,
    /// even on a non-blocking fd (never `again`, never short): for guests
    /// whose library drops bytes on either (water-go's v1 TinyGo library,
    /// written for sockets with megabytes of buffer).
    pub whole_writes: bool,
    /// Which fds' use [`Activity`] records beyond the counts: set by the
    /// embedder, which alone knows what they are to it.
    pub watch: Watch,
    /// What the guest has done, readable while it runs.
    pub activity: Arc<Activity>,
    /// Time the guest's host calls spent waiting (for I/O, a timer, a
    /// cancel): the rest of a worker's time it had a thread.
    pub waited: std::time::Duration,
    /// `poll_oneoff` calls: a worker that polls, even one that finds
    /// something ready every time (tokio guests do), is not spinning blind.
    pub polls: u64,
    /// The guest's scratch table (`_water_scratch`), if it has one: what
    /// `poll_oneoff` may discard once a wait has lasted [`SCRATCH_IDLE`].
    pub scratch: Option<u32>,
    /// The timer of a wait that may give the scratch pages back: one per
    /// instance, moved later at each wait (see `poll_oneoff`).
    pub quiet: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// How long a `poll_oneoff` waits before it gives the guest's scratch
/// pages back (`water_abi::v0::SCRATCH`): long enough that a busy
/// connection never pays the page faults of touching them again, short
/// enough that a quiet one (a keep-alive, a held tunnel) soon costs only
/// the pages that hold its state.
pub const SCRATCH_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives back the pages of every range in the guest's scratch table at
/// `table` (see `water_abi::v0::SCRATCH`); a table or range out of bounds
/// is skipped (a lying guest only keeps its own pages). Returns the bytes
/// given back.
pub fn discard_scratch(mem: &mut memory::GuestMem<'_>, table: u32) -> usize {
    let mut given = 0;
    for i in 0..water_abi::v0::SCRATCH_RANGES as u32 {
        let at = table.wrapping_add(8 * i);
        let (Ok(ptr), Ok(len)) = (mem.read_u32(at), mem.read_u32(at.wrapping_add(4))) else { return given };
        if len > 0 {
            given += mem.discard(ptr, len);
        }
    }
    given
}

/// Awaits `f`; also says how long it waited: from the first time it was
/// pending to its end (zero if it was ready at once).
pub async fn watched<F: std::future::Future>(f: F) -> (F::Output, std::time::Duration) {
    let mut f = std::pin::pin!(f);
    let mut since = None;
    let out = std::future::poll_fn(|cx| {
        let p = f.as_mut().poll(cx);
        if p.is_pending() {
            since.get_or_insert_with(Instant::now);
        }
        p
    })
    .await;
    (out, since.map(|t| t.elapsed()).unwrap_or_default())
}

/// The fds whose use [`Activity`] records beyond byte counts. The preview1
/// layer knows nothing of what they are (WATM's application end, network
/// fd, a relay's sockets): the embedder sets them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watch {
    /// Bytes read or written here set [`Activity::taken_in`]; bytes
    /// written or read here are not counted in [`Activity::sent`] or
    /// [`Activity::received`].
    pub plain: Option<u32>,
    /// Ending writes here (a shutdown, a close) sets
    /// [`Activity::delivered`].
    pub outlet: Option<u32>,
    /// A reset or broken pipe on one of these fds (a bit each; the table
    /// holds at most 64) sets [`Activity::app_gone`].
    peers: u64,
}

impl Watch {
    pub fn new(plain: Option<u32>, outlet: Option<u32>, peers: &[u32]) -> Watch {
        let peers = peers.iter().filter(|&&fd| fd < 64).fold(0, |bits, &fd| bits | 1 << fd);
        Watch { plain, outlet, peers }
    }

    fn is_peer(&self, fd: u32) -> bool {
        fd < 64 && self.peers & (1 << fd) != 0
    }
}

/// What a running guest has done, shared with the task that owns it, which
/// cannot look inside the store while the worker runs: after the
/// application closed, the worker is left to finish while it makes progress
/// (see `session::spawn_worker`).
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes the guest wrote to streams other than [`Watch::plain`].
    sent: AtomicU64,
    /// Bytes the guest read from streams other than [`Watch::plain`].
    received: AtomicU64,
    /// Bytes the guest read or wrote on any stream.
    moved: AtomicU64,
    /// The guest half-closed (or closed) [`Watch::outlet`]: everything it
    /// had to deliver is out.
    delivered: AtomicBool,
    /// Fds the guest shut down for writing or closed, one bit per fd (the
    /// table holds at most 64).
    write_ended: AtomicU64,
    /// A read or write of a [`Watch`] peer fd failed with a reset or a
    /// broken pipe: that peer is gone, not just half-closed.
    app_gone: AtomicBool,
    /// A byte crossed [`Watch::plain`] (the guest read or wrote it): for
    /// WATM, the guest has taken its peer in (a server's handshake is
    /// done).
    taken_in: AtomicBool,
}

impl Activity {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Adds to [`sent`](Self::sent) and [`received`](Self::received), as
    /// a guest's writes and reads would.
    #[cfg(test)]
    pub fn count_for_test(&self, sent: u64, received: u64) {
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }

    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    pub fn delivered(&self) -> bool {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Whether the guest shut down `fd` for writing, or closed it.
    pub fn write_ended(&self, fd: u32) -> bool {
        fd < 64 && self.write_ended.load(Ordering::Relaxed) & (1 << fd) != 0
    }

    pub fn app_gone(&self) -> bool {
        self.app_gone.load(Ordering::Relaxed)
    }

    /// Whether a byte has crossed the application side.
    pub fn taken_in(&self) -> bool {
        self.taken_in.load(Ordering::Relaxed)
    }

    /// Counts the peer as taken in without a byte (the application's own
    /// connections).
    pub fn take_in(&self) {
        self.taken_in.store(true, Ordering::Relaxed);
    }

    /// Notes that the guest shut down `fd` for writing, or closed it.
    pub fn end_write(&self, fd: u32) {
        if fd < 64 {
            self.write_ended.fetch_or(1 << fd, Ordering::Relaxed);
        }
    }
}

impl WasiCtx {
    /// Sets [`WasiCtx::coarse_poll`].
    pub fn coarse_poll(mut self, on: bool) -> Self {
        self.coarse_poll = on;
        self
    }

    /// Shares `activity` (made before the instance, see
    /// `policy::admission`).
    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = activity;
        self
    }

    pub fn new(label: String) -> Self {
        WasiCtx {
            table: table::FdTable::default(),
            memory: None,
            output: output::OutputLog::new(label),
            clock_base: Instant::now(),
            coarse_poll: false,
            whole_writes: false,
            watch: Watch::default(),
            activity: Arc::default(),
            waited: std::time::Duration::ZERO,
            polls: 0,
            scratch: None,
            quiet: None,
        }
    }

    /// Counts time a host call of the guest spent waiting.
    pub fn note_wait(&mut self, waited: std::time::Duration) {
        self.waited += waited;
    }

    /// Counts `n` bytes the guest read from stream `fd`.
    pub fn note_read(&self, fd: u32, n: usize) {
        self.activity.moved.fetch_add(n as u64, Ordering::Relaxed);
        if Some(fd) != self.watch.plain {
            self.activity.received.fetch_add(n as u64, Ordering::Relaxed);
        } else if n > 0 {
            self.activity.taken_in.store(true, Ordering::Relaxed);
        }
    }

    /// Counts `n` bytes the guest wrote to `fd`.
    pub fn note_write(&self, fd: u32, n: usize) {
        self.activity.moved.fetch_add(n as u64, Ordering::Relaxed);
        if Some(fd) != self.watch.plain {
            self.activity.sent.fetch_add(n as u64, Ordering::Relaxed);
        } else if n > 0 {
            self.activity.taken_in.store(true, Ordering::Relaxed);
        }
    }

    /// Notes that the guest ended its writing to `fd` (shutdown or close).
    pub fn note_write_end(&self, fd: u32) {
        if Some(fd) == self.watch.outlet {
            self.activity.delivered.store(true, Ordering::Relaxed);
        }
        self.activity.end_write(fd);
    }

    /// Notes a failed read or write of stream `fd`: on the application
    /// side, a reset or a broken pipe means the application is gone (a TCP
    /// close and a half-close look alike until then).
    pub fn note_failure(&self, fd: u32, e: &std::io::Error) {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted) && self.watch.is_peer(fd) {
            self.activity.app_gone.store(true, Ordering::Relaxed);
        }
    }
}

/// The guest's clocks. CPU-time clocks are answered with the monotonic one:
/// a guest only uses them to measure intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Realtime,
    Monotonic,
}

impl Clock {
    /// Resolves a preview1 clock id; `inval` for an unknown one.
    pub fn from_id(id: u32) -> Result<Clock, water_abi::Errno> {
        match id {
            0 => Ok(Clock::Realtime),
            1..=3 => Ok(Clock::Monotonic),
            _ => Err(water_abi::Errno::INVAL),
        }
    }
}

impl WasiCtx {
    /// The clock's reading: time since the Unix epoch, or since this
    /// instance's monotonic zero.
    pub fn now(&self, clock: Clock) -> std::time::Duration {
        match clock {
            Clock::Realtime => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
            }
            Clock::Monotonic => self.clock_base.elapsed(),
        }
    }
}

/// Store data that holds a [`WasiCtx`].
pub trait WasiView: Send + 'static {
    fn wasi(&mut self) -> &mut WasiCtx;
}

/// Every function of `wasi_snapshot_preview1`, for telling a real (but not
/// implemented) preview1 import from an unknown one.
pub const ALL_FUNCTIONS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];
