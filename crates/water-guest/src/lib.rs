//! Guest SDK for WATM transports, v0 (the default) and v1 (feature `v1`).
//!
//! A transport author writes a [`Transport`]: how to build it from its
//! configuration, and two [`Codec`]s, one per direction. One line,
//! [`export_transport!`], then gives the module every v0 export (`_water_v0`,
//! `_water_init`, `_water_cancel_with`, `_water_dial`, `_water_accept`,
//! `_water_associate`, `_water_worker`) and a worker loop that is correct for
//! any codec: it waits with `poll_oneoff` (never spins), uses non-blocking fds
//! with bounded buffers (backpressure instead of unbounded queues), never
//! drops or reorders bytes, propagates half-closes, and answers cancellation.
//!
//! With feature `v1` the same transport is built as a WATM v1 module, the
//! ABI water-go's v1 host and Lantern load: `watm_init_v1`,
//! `watm_ctrlpipe_v1`, `watm_dial_v1`, `watm_accept_v1`,
//! `watm_associate_v1`, `watm_start_v1`, the `env.water_dial_fixed` and
//! `env.water_accept` imports, and the config read from `/conf/watm.cfg`.
//! The worker and the bytes on the wire are the same: a v1 build talks to
//! its v0 build.
//!
//! What this crate is not: a general WASI library, or a host. It is `no_std`
//! and allocation-free so that a guest stays within a few pages of memory and
//! tens of KiB of code.
//!
//! Layout:
//! - [`codec`]: the [`Transport`], [`Codec`] and [`Handshake`] traits, and
//!   the [`Role`] a connection's instance plays.
//! - [`config`]: `key=value` configs (the grammar of [`water_abi::args`]),
//!   read without allocating, with errors that name the key.
//! - [`fast`]: byte-level fast paths (SIMD XOR, byte reversal).
//! - [`random`]: the host's randomness (`random_get`).
//! - [`pipe`]: one direction of the worker (buffers, codec, half-close state),
//!   pure logic, testable on the host.
//! - `rt` and `sys` (wasm32 only): the exports' bodies and the syscalls.
//! - `testing` (feature `std`): helpers that drive codecs under arbitrary
//!   segmentation in host-side tests.
//!
//! Directions: the *plain* side carries the application's bytes, the *wire*
//! side the transformed ones. In the dial and accept roles the plain side is
//! the host's internal fd and the wire side the network fd; in the relay role
//! the accepted connection is the plain side and the dialed remote the wire
//! side. The [`Transport::Encoder`] runs plain → wire, the
//! [`Transport::Decoder`] wire → plain.

#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod codec;
pub mod config;
pub mod fast;
pub mod pipe;
#[cfg(any(test, feature = "std"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod rt;
#[cfg(target_arch = "wasm32")]
mod sys;

pub use codec::{Codec, Handshake, InitError, Keys, Pace, Progress, Role, Step, Transport};
pub use config::Config;
pub use water_abi::{Errno, args};

/// Size of each of the worker's two input buffers (one per direction): a
/// read moves at most this much at a time.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// How much larger each output buffer is than an input buffer. A codec that
/// adds a little framing (headers, tags: up to 1 KiB per 32 KiB) can then
/// write all of a full input buffer at once; with equal sizes a 32 KiB read
/// through `reverse` went out as two writes, three frames and then one.
pub const OUTPUT_SLACK: usize = 1024;

/// Largest configuration a guest accepts from `pull_config`; a larger one
/// fails `_water_init` with `-fbig`.
///
/// 16 KiB: a real config is a handful of `key=value` pairs (a Shadowsocks
/// one is under 200 bytes) plus, for transports that pin keys, a few
/// certificates or public keys (a PEM certificate is about 2 KiB), and a
/// host appends the connection's own arguments. It is read onto the stack
/// in `_water_init` only, so it costs no memory once the worker runs (the
/// guests' stack is 64 KiB).
pub const MAX_CONFIG: usize = 16 * 1024;

/// Fills `buf` with random bytes from the host (`random_get` in wasm; the
/// operating system's generator in host-side builds with feature `std`).
///
/// Errors: the host's errno; `nosys` in a host-side build without `std`.
pub fn random(buf: &mut [u8]) -> Result<(), Errno> {
    #[cfg(target_arch = "wasm32")]
    return sys::random(buf);
    #[cfg(all(not(target_arch = "wasm32"), feature = "std"))]
    return getrandom::fill(buf).map_err(|_| Errno::IO);
    #[cfg(all(not(target_arch = "wasm32"), not(feature = "std")))]
    {
        let _ = buf;
        Err(Errno::NOSYS)
    }
}

/// The monotonic clock in nanoseconds (`clock_time_get` in wasm; time since
/// the first call in host-side builds with feature `std`): what
/// [`Handshake::deadline`] is measured on.
///
/// Errors: the host's errno; `nosys` in a host-side build without `std`.
pub fn monotonic_now() -> Result<u64, Errno> {
    #[cfg(target_arch = "wasm32")]
    return sys::monotonic_now();
    #[cfg(all(not(target_arch = "wasm32"), feature = "std"))]
    return Ok(nanos_since_first_call());
    #[cfg(all(not(target_arch = "wasm32"), not(feature = "std")))]
    Err(Errno::NOSYS)
}

/// The host-side stand-in for the monotonic clock.
#[cfg(all(not(target_arch = "wasm32"), feature = "std"))]
fn nanos_since_first_call() -> u64 {
    static ZERO: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(ZERO.get_or_init(std::time::Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Exports the v0 ABI (or, with this crate's feature `v1`, the v1 ABI) for
/// a [`Transport`] type.
///
/// On wasm32 this defines the `_water_*` functions (v1: `watm_*_v1`); on other targets it
/// expands to nothing, so the guest crate still builds (and its codecs can be
/// tested) on the host.
///
/// ```text
/// water_guest::export_transport!(MyTransport);
/// // Declaring which arguments a client needs (what a Tor bridge may
/// // publish in its bridge line; the rest stay private):
/// water_guest::export_transport!(MyTransport, public_args = "cert,iat-mode");
/// ```
///
/// `public_args` goes into the module's `water.public_args` custom section,
/// which our host reads and other hosts ignore.
#[macro_export]
macro_rules! export_transport {
    ($transport:ty, public_args = $keys:literal) => {
        $crate::export_transport!($transport);
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            const KEYS: &[u8] = $keys.as_bytes();
            #[unsafe(link_section = "water.public_args")]
            #[used]
            static PUBLIC_ARGS: [u8; KEYS.len()] = {
                let mut out = [0u8; KEYS.len()];
                let mut i = 0;
                while i < KEYS.len() {
                    out[i] = KEYS[i];
                    i += 1;
                }
                out
            };
        };
    };
    ($transport:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static BUFFERS: $crate::rt::Buffers = $crate::rt::Buffers::new();
            static RUNTIME: $crate::rt::Runtime<$transport> = $crate::rt::Runtime::new(&BUFFERS);
            $crate::__abi_exports!(RUNTIME);
        };
    };
}

/// The v0 exports over a runtime (the default build of this crate).
///
/// A separate macro, defined by this crate's feature: a `#[cfg(feature)]`
/// inside [`export_transport!`] would be decided by the guest crate's
/// features, not this crate's.
#[cfg(not(feature = "v1"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_exports {
    ($rt:ident) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn _water_v0() {}

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_init() -> i32 {
            $rt.init()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_cancel_with(cancel_fd: i32) -> i32 {
            $rt.cancel_with(cancel_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_dial(internal_fd: i32) -> i32 {
            $rt.dial(internal_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_accept(internal_fd: i32) -> i32 {
            $rt.accept(internal_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_associate() -> i32 {
            $rt.associate()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_worker() -> i32 {
            $rt.worker()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_unique_prefix() -> i32 {
            $rt.unique_prefix()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_scratch() -> i32 {
            $rt.scratch()
        }
    };
}

/// The v1 exports over a runtime (feature `v1`), as water-go's v1 host
/// and Lantern's call them: the same runtime, other names; the config
/// comes from `/conf/watm.cfg` and the control pipe plays v0's cancel fd.
/// No `watm_dial_fixed_v1`: an SDK transport transforms bytes and never
/// names an address of its own.
#[cfg(feature = "v1")]
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_exports {
    ($rt:ident) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn watm_init_v1() -> i32 {
            $rt.init()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn watm_ctrlpipe_v1(ctrl_fd: i32) -> i32 {
            $rt.cancel_with(ctrl_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn watm_dial_v1(caller_fd: i32) -> i32 {
            $rt.dial(caller_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn watm_accept_v1(caller_fd: i32) -> i32 {
            $rt.accept(caller_fd)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn watm_associate_v1() -> i32 {
            $rt.associate()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn watm_start_v1() -> i32 {
            $rt.worker()
        }

        // Our host's replay-filter and scratch extensions; other v1 hosts
        // ignore them.
        #[unsafe(no_mangle)]
        pub extern "C" fn _water_unique_prefix() -> i32 {
            $rt.unique_prefix()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _water_scratch() -> i32 {
            $rt.scratch()
        }

        // Tells our host that this worker handles short and refused
        // writes (it keeps what did not go out and waits with
        // `poll_oneoff`), so the host need not make v1 writes whole as it
        // does for water-go's TinyGo library (`water.short_writes`; other
        // hosts ignore custom sections).
        #[unsafe(link_section = "water.short_writes")]
        #[used]
        static SHORT_WRITES: [u8; 1] = [1];
    };
}

/// A guest is `no_std` on wasm32: a panic (a bug in a codec) traps, and the
/// host reports the trap as that connection's error.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
