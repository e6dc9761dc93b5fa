//! The host's policies over one connection's life, each a small state
//! machine of its own, tested alone (under tokio's paused clock where time
//! matters) beside the end-to-end tests:
//!
//! - [`admission`]: the module's connection slots; when full, the oldest
//!   connection not yet taken in by its guest is shed.
//! - [`handshake`]: a server's connection not taken in within its deadline
//!   is closed as a failed handshake.
//! - [`throttle`]: a worker that keeps a thread busy without moving bytes
//!   is throttled, one that spins blind is stopped.
//! - [`linger`]: when a running worker stops being useful (both sides hung
//!   up, the application gone, an EOF held back while nothing moves).
//! - [`replay`]: the process's filter of connections' unique prefixes, so
//!   that a replayed connection is refused like a failed handshake.
//!
//! The session (`v0.rs`) wires them to the store and the worker task; they
//! know nothing of wasm.

pub(crate) mod admission;
pub(crate) mod handshake;
pub(crate) mod linger;
pub(crate) mod replay;
pub(crate) mod throttle;
