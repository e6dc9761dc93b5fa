//! The few syscalls the runtime makes: WASI preview1 through the `wasi`
//! crate, and the WATER `env` imports declared here (no crate declares them).

use water_abi::{Errno, status};

// The host's `env` imports: v0's, or v1's under feature `v1`. Only one set
// is declared, so a v1 module imports nothing a v1 host lacks (a v0 import
// would make water-go's v1 host refuse to instantiate it).
#[cfg(not(feature = "v1"))]
mod host {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn host_dial() -> i32;
        pub fn host_accept() -> i32;
        pub fn pull_config() -> i32;
    }
}

#[cfg(feature = "v1")]
mod host {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn water_dial_fixed() -> i32;
        pub fn water_accept() -> i32;
    }
}

pub type Fd = u32;

fn errno(e: wasi::Errno) -> Errno {
    Errno(e.raw() as u32)
}

fn fd_from(raw: i32) -> Result<Fd, Errno> {
    status::decode(raw)
}

/// The network connection the application's address names (v0
/// `host_dial`, v1 `water_dial_fixed`).
pub fn host_dial() -> Result<Fd, Errno> {
    // SAFETY: a host import with no arguments and a plain i32 result.
    #[cfg(not(feature = "v1"))]
    return fd_from(unsafe { host::host_dial() });
    // SAFETY: as above.
    #[cfg(feature = "v1")]
    fd_from(unsafe { host::water_dial_fixed() })
}

/// The accepted connection (v0 `host_accept`, v1 `water_accept`).
pub fn host_accept() -> Result<Fd, Errno> {
    // SAFETY: as above.
    #[cfg(not(feature = "v1"))]
    return fd_from(unsafe { host::host_accept() });
    // SAFETY: as above.
    #[cfg(feature = "v1")]
    fd_from(unsafe { host::water_accept() })
}

/// An fd to read the configuration from: v0 pulls it from the host; v1
/// opens `watm.cfg` in the preopened `/conf` directory.
///
/// Errors: the host's errno; `noent` when a v1 host mounted no config.
pub fn config_fd() -> Result<Fd, Errno> {
    // SAFETY: as above.
    #[cfg(not(feature = "v1"))]
    return fd_from(unsafe { host::pull_config() });
    #[cfg(feature = "v1")]
    open_v1_config()
}

/// Finds the preopened directory named `/conf` (preopens are the fds from
/// 3 up to the first `badf`) and opens `watm.cfg` in it, read-only.
///
/// By hand: wasi-libc's preopen table would pull `std` (and its allocator)
/// into a guest that is `no_std` and allocation-free.
#[cfg(feature = "v1")]
fn open_v1_config() -> Result<Fd, Errno> {
    use water_abi::v1::{CONFIG_DIR, CONFIG_FILE};
    // A guest has a handful of fds before its first role call; 64 bounds
    // the scan against a host that answers every fd.
    for fd in 3..64 {
        // SAFETY: the result is written into memory the wasi crate owns.
        let stat = match unsafe { wasi::fd_prestat_get(fd) } {
            Ok(stat) => stat,
            Err(wasi::ERRNO_BADF) => break,
            Err(_) => continue,
        };
        if stat.tag != wasi::PREOPENTYPE_DIR.raw() {
            continue;
        }
        // SAFETY: a directory preopen's union member is `dir`.
        let len = unsafe { stat.u.dir.pr_name_len };
        let mut name = [0u8; 64];
        if len > name.len() {
            continue;
        }
        // SAFETY: `name` has room for `len` bytes and outlives the call.
        if unsafe { wasi::fd_prestat_dir_name(fd, name.as_mut_ptr(), len) }.is_err() {
            continue;
        }
        let mut name = &name[..len];
        while let [rest @ .., b'/'] = name
            && !rest.is_empty()
        {
            name = rest;
        }
        if name == CONFIG_DIR.as_bytes() {
            // SAFETY: no memory is passed but the path, borrowed for the call.
            return unsafe { wasi::path_open(fd, 0, CONFIG_FILE, 0, wasi::RIGHTS_FD_READ, 0, 0) }
                .map_err(errno);
        }
    }
    Err(Errno::NOENT)
}

pub fn random(buf: &mut [u8]) -> Result<(), Errno> {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    unsafe { wasi::random_get(buf.as_mut_ptr(), buf.len()) }.map_err(errno)
}

pub fn read(fd: Fd, buf: &mut [u8]) -> Result<usize, Errno> {
    let iov = wasi::Iovec { buf: buf.as_mut_ptr(), buf_len: buf.len() };
    // SAFETY: the iovec points at `buf`, which outlives the call.
    unsafe { wasi::fd_read(fd, &[iov]) }.map_err(errno)
}

pub fn write(fd: Fd, buf: &[u8]) -> Result<usize, Errno> {
    let iov = wasi::Ciovec { buf: buf.as_ptr(), buf_len: buf.len() };
    // SAFETY: the iovec points at `buf`, which outlives the call.
    unsafe { wasi::fd_write(fd, &[iov]) }.map_err(errno)
}

pub fn close(fd: Fd) {
    // SAFETY: closing an fd has no memory effects; an error leaves nothing to do.
    let _ = unsafe { wasi::fd_close(fd) };
}

pub fn set_nonblocking(fd: Fd) -> Result<(), Errno> {
    // SAFETY: no memory is passed.
    unsafe { wasi::fd_fdstat_set_flags(fd, wasi::FDFLAGS_NONBLOCK) }.map_err(errno)
}

pub fn shutdown_write(fd: Fd) -> Result<(), Errno> {
    // SAFETY: no memory is passed.
    unsafe { wasi::sock_shutdown(fd, wasi::SDFLAGS_WR) }.map_err(errno)
}

/// Writes all of `msg` to stderr, best effort (used for init failures).
pub fn stderr(msg: &[u8]) {
    let mut rest = msg;
    while !rest.is_empty() {
        match write(2, rest) {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = &rest[n..],
        }
    }
}

/// Interest in one fd, for [`poll`].
#[derive(Clone, Copy)]
pub enum Interest {
    Read(Fd),
    Write(Fd),
    /// A timeout that has already expired: makes [`poll`] return at once.
    Now,
    /// A point on the monotonic clock ([`monotonic_now`], nanoseconds):
    /// fires once it has passed.
    Until(u64),
}

/// The monotonic clock, in nanoseconds.
pub fn monotonic_now() -> Result<u64, Errno> {
    // SAFETY: a WASI call with no pointers.
    unsafe { wasi::clock_time_get(wasi::CLOCKID_MONOTONIC, 1) }.map_err(errno)
}

/// Waits until at least one interest is ready; returns how many events were
/// written to `events` (each event's userdata is the interest's index).
///
/// `dead_stack`, when given, receives (address, length) of the shadow
/// stack below this call (see `stack_below_here`), for the scratch table.
pub fn poll(
    interests: &[Interest],
    events: &mut [wasi::Event],
    dead_stack: Option<&mut [u32]>,
) -> Result<usize, Errno> {
    const MAX: usize = 8;
    let n = interests.len().min(MAX).min(events.len());
    let mut subs = [wasi::Subscription {
        userdata: 0,
        u: wasi::SubscriptionU {
            tag: wasi::EVENTTYPE_FD_READ.raw(),
            u: wasi::SubscriptionUU { fd_read: wasi::SubscriptionFdReadwrite { file_descriptor: 0 } },
        },
    }; MAX];
    for (i, interest) in interests[..n].iter().enumerate() {
        let (tag, u) = match *interest {
            Interest::Read(fd) => (
                wasi::EVENTTYPE_FD_READ,
                wasi::SubscriptionUU { fd_read: wasi::SubscriptionFdReadwrite { file_descriptor: fd } },
            ),
            Interest::Write(fd) => (
                wasi::EVENTTYPE_FD_WRITE,
                wasi::SubscriptionUU { fd_write: wasi::SubscriptionFdReadwrite { file_descriptor: fd } },
            ),
            Interest::Now => (
                wasi::EVENTTYPE_CLOCK,
                wasi::SubscriptionUU {
                    clock: wasi::SubscriptionClock {
                        id: wasi::CLOCKID_MONOTONIC,
                        timeout: 0,
                        precision: 0,
                        flags: 0,
                    },
                },
            ),
            Interest::Until(at) => (
                wasi::EVENTTYPE_CLOCK,
                wasi::SubscriptionUU {
                    clock: wasi::SubscriptionClock {
                        id: wasi::CLOCKID_MONOTONIC,
                        timeout: at,
                        precision: 0,
                        flags: wasi::SUBCLOCKFLAGS_SUBSCRIPTION_CLOCK_ABSTIME,
                    },
                },
            ),
        };
        subs[i] = wasi::Subscription { userdata: i as u64, u: wasi::SubscriptionU { tag: tag.raw(), u } };
    }
    if let Some(slot) = dead_stack {
        let (at, len) = stack_below_here();
        // wasm32 addresses fit in a u32.
        slot[0] = at as u32;
        slot[1] = len as u32;
    }
    // SAFETY: `subs` holds `n` initialised subscriptions and `events` room
    // for at least `n` events; both outlive the call.
    unsafe { wasi::poll_oneoff(subs.as_ptr(), events.as_mut_ptr(), n) }.map_err(errno)
}

unsafe extern "C" {
    /// The lowest address of the shadow stack (wasm-ld defines it; the
    /// stack grows down toward it).
    static __stack_low: u8;
}

/// Room left below the probe for the frames a host call adds under its
/// caller (the `wasi` crate's wrapper keeps its out-parameter there, which
/// the host writes after the wait): they are a few dozen bytes.
const BELOW_CALLER: usize = 1024;

/// An address inside a frame one call below the caller's: every byte of
/// the shadow stack under it is dead while the caller waits in a host call.
#[inline(never)]
fn stack_probe() -> usize {
    let here = 0u8;
    core::hint::black_box(&here) as *const u8 as usize
}

/// The shadow stack's bytes below the calling frame, less
/// [`BELOW_CALLER`]: dead while the caller waits in a host call (the
/// stack grows down; nothing under the live frames is read before it is
/// written again), so the host may give their pages back: what a burst's
/// deeper calls (a transport's crypto) left dirty.
fn stack_below_here() -> (usize, usize) {
    // SAFETY: only the symbol's address is taken, never its contents.
    let low = unsafe { core::ptr::addr_of!(__stack_low) } as usize;
    let end = stack_probe().saturating_sub(BELOW_CALLER);
    if end > low { (low, end - low) } else { (low, 0) }
}
