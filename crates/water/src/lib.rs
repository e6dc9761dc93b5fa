//! WATER host runtime: load a WATM (WebAssembly transport module, spec v0)
//! and open, accept and relay real TCP connections whose bytes the module
//! transforms.
//!
//! ```no_run
//! # async fn demo() -> Result<(), water::Error> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let watm = water::Watm::from_file("xor.wasm", water::Config::default().transport_config("c0ffee"))?;
//! let mut conn = water::Dialer::new(&watm)?.dial("127.0.0.1:8080").await?;
//! conn.write_all(b"hello").await?;
//! conn.shutdown().await?;
//! let mut reply = Vec::new();
//! conn.read_to_end(&mut reply).await?;
//! conn.close().await?;
//! # Ok(()) }
//! ```
//!
//! A module is compiled once ([`Watm`]) and instantiated per connection.
//! Guests are untrusted: every pointer they pass is bounds-checked, a
//! module is refused at load past the size, compile, memory and table
//! budgets, an instance's memory and table are capped, every setup step
//! has a wall-clock limit, a worker that spins is stopped and one that
//! never waits (moving bytes or not) is throttled, and a connection that
//! stalls after its ends hung up, or after its application side did while
//! the guest ignores it, is reclaimed; see [`Config`] for each limit. A failing guest is
//! an error for its own connection only, and never reads as a clean end.
//!
//! Layout:
//! - [`watm`](Watm): loading and validation against the ABI.
//! - `cache`: the on-disk compile cache ([`Config::compile_cache`]).
//! - `abi`: one module per WATM ABI (v0, v1): its `env` imports and the
//!   names of the exports each step calls.
//! - `session`: the life of one instance, the same for every ABI.
//! - `policy`: admission, the handshake deadline, the throttle, linger,
//!   the replay filter.
//! - `wasi`: our WASI preview1 layer (fd table, memory access, poll).
//! - `duplex`: the in-process channel between application and guest.
//! - `conn`, `roles`: [`Connection`], [`Dialer`], [`Listener`], [`Relay`],
//!   [`Forwarder`].
//! - `accept`: [`accept_each`], the one TCP accept loop (the library's and
//!   the `water` command's).
//! - `config`, `error`: [`Config`], [`Error`].
//! - [`metrics`]: process-wide counters of connections, bytes, setup
//!   times, throttled guests, pool slots and reloads, per transport label.
//! - [`logging`]: what a log may say of a connection (addresses scrubbed,
//!   peer text escaped, per-connection warnings rate-limited).

mod abi;
mod accept;
mod cache;
mod config;
mod conn;
mod duplex;
mod error;
pub mod logging;
pub mod metrics;
mod policy;
mod reload;
mod roles;
mod session;
mod wasi;
mod watm;

pub use accept::{accept_each, is_transient_accept_error};
pub use config::{Config, Connector, DEFAULT_HANDSHAKE, DEFAULT_HANDSHAKE_JITTER, DialFilter, TransportArgs};
pub use conn::Connection;
pub use error::Error;
pub use policy::admission::fd_budget;
pub use reload::Reloader;
pub use roles::{Dialer, Drained, Forwarder, Listener, Relay, Tunnel};
pub use water_abi::Errno;
pub use watm::{CodeOrigin, DEFAULT_POOL_SLOTS, PUBLIC_ARGS_SECTION, Role, SHORT_WRITES_SECTION, Watm};

/// Internals exposed for the benchmarks in `benches/` only; not API.
#[doc(hidden)]
pub mod __bench {
    /// A connected in-process duplex, as between application and guest.
    pub fn duplex_pair() -> (
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    ) {
        crate::duplex::pair()
    }
}
