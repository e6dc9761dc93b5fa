//! The one error type of the host library.

use std::io;
use std::time::Duration;

use water_abi::Errno;

/// Everything that can go wrong loading a WATM or running a connection.
///
/// Load-time variants name the export or import at fault and what was
/// expected; run-time variants name the guest export that failed. Converts
/// into `io::Error` (for `AsyncRead`/`AsyncWrite` users) with the closest
/// `io::ErrorKind`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a WebAssembly module at all.
    #[error("not a WebAssembly module (no `\\0asm` header)")]
    NotWasm,
    /// WebAssembly, but invalid or not compilable.
    #[error("invalid WebAssembly module: {0}")]
    Invalid(String),
    /// A valid module that is not a WATM: it exports neither `_water_v0`
    /// (v0) nor `watm_init_v1` (v1). (Named for v0, the first ABI.)
    #[error("not a WATM: it exports neither `_water_v0` (v0) nor `watm_init_v1` (v1)")]
    NotV0,
    /// The module needs more of a resource than the host allows one
    /// instance (memories, tables, initial memory or table size, module
    /// size, compile resources); see [`crate::Config`].
    #[error("module needs {requested} {what}, over the host's limit of {limit}")]
    OverLimit { what: &'static str, requested: u64, limit: u64 },
    /// A required export is missing.
    #[error("module has no export `{name}` (expected {expected})")]
    MissingExport { name: &'static str, expected: String },
    /// An export has the wrong kind or signature.
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    BadExport { name: String, expected: String, found: String },
    /// An import the host does not provide.
    #[error("module imports `{module}.{name}`, which the host does not provide")]
    UnknownImport { module: String, name: String },
    /// An import the host provides, with another type.
    #[error("import `{module}.{name}` has the wrong type: {detail}")]
    BadImport { module: String, name: String, detail: String },
    /// The module does not export the role's function.
    #[error("module does not support the {role} role (no `{export}` export)")]
    RoleNotSupported { role: &'static str, export: &'static str },
    /// A guest export returned a negated errno. `message` is the last line
    /// the guest wrote to stderr, if any. The codes -1..-8 are shown as
    /// what they may also be, a private code (one older guest library used
    /// them), with the errno of the same number.
    #[error("`{export}` failed: {}{}", status(*errno), message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Guest { export: &'static str, errno: Errno, message: Option<String> },
    /// A role export returned success without doing what the role needs
    /// (a relay that neither accepted nor dialed).
    #[error("`{export}` returned success without {missing}")]
    Incomplete { export: &'static str, missing: &'static str },
    /// A role export returned something that is not an fd it holds.
    #[error("`{export}` returned {fd}, which is not a connection fd of the guest")]
    BogusFd { export: &'static str, fd: i32 },
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access...).
    #[error("guest trapped in `{export}`: {message}")]
    Trap { export: &'static str, message: String },
    /// The guest ran past its time limit in a setup call.
    #[error("guest ran past its {limit:?} limit in `{export}`")]
    Timeout { export: &'static str, limit: Duration },
    /// The worker ran for `limit` without waiting for anything, moving a
    /// byte or polling (a spin, other host calls or not); it was stopped so
    /// that it holds no thread and no sockets.
    #[error("`{export}` ran {limit:?} without waiting, polling or moving a byte; stopped as spinning")]
    Spinning { export: &'static str, limit: Duration },
    /// No byte moved through the connection for `Config::idle_timeout`; it
    /// was cancelled.
    #[error("no byte moved for {0:?}; the idle connection was closed")]
    Idle(Duration),
    /// The application side had sent EOF (or gone), the guest had not
    /// passed it on, and no byte moved for `Config::orphan_timeout`: the
    /// worker was cancelled so that it holds no sockets.
    #[error("the application side had ended and no byte moved for {0:?}; the orphaned worker was cancelled")]
    Orphaned(Duration),
    /// The guest called `proc_exit`.
    #[error("guest exited with code {code} in `{export}`")]
    Exit { export: &'static str, code: i32 },
    /// The worker did not stop within the grace period after cancellation;
    /// it was dropped.
    #[error("worker did not stop within {0:?} of being cancelled; it was dropped")]
    Stuck(Duration),
    /// The connection was ending (the application closed it, or both sides
    /// had hung up), but the guest stopped making progress before it had
    /// delivered everything (for `idle`, it neither moved bytes nor, after a
    /// close, half-closed the network): it was cancelled, and the peer or
    /// the application may miss bytes.
    #[error(
        "delivery cut: the worker made no progress for {idle:?} while the connection was ending, and was cancelled before it finished sending"
    )]
    Cut { idle: Duration },
    /// The connection's worker task ended without a result: it panicked, or
    /// was dropped with the runtime it ran on.
    #[error("the connection's worker task vanished (panicked, or its runtime shut down)")]
    WorkerLost,
    /// The guest had not taken the peer in (no byte crossed the plain
    /// side) within the handshake deadline (`Config::handshake_timeout`
    /// plus its random part): closed as a failed handshake.
    #[error("no handshake within {0:?}; closed as a failed handshake")]
    Unauthenticated(Duration),
    /// The module carried `Config::max_connections` connections when a new
    /// one came, and this one, the oldest not yet taken in by its guest,
    /// was closed to make room.
    #[error("closed before its handshake ended, to make room for a new connection (max_connections {0})")]
    Shed(usize),
    /// The module already carries `Config::max_connections` connections,
    /// every one taken in by its guest; this one was refused before
    /// anything was set up.
    #[error("refused: already {0} live connections (max_connections)")]
    TooManyConnections(usize),
    /// The host ran out of a resource (memory, mappings) for this
    /// connection; others go on.
    #[error("host resources exhausted: {0}")]
    Exhausted(String),
    /// Per-connection arguments were given, but the transport's config is
    /// not in the `key=value` syntax they are appended to (see
    /// [`TransportArgs`](crate::TransportArgs)); no instance was created.
    #[error("the transport's config is not key=value, so connection arguments cannot be added to it: {0}")]
    ConfigNotKeyValue(String),
    /// A host-side I/O error (connecting, accepting, reading a file).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// The variant's name, a fixed word (`"Timeout"`, `"Io"`), for counting
    /// errors by kind without their text (which may name an address).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::NotWasm => "NotWasm",
            Error::NotV0 => "NotV0",
            Error::Invalid(_) => "Invalid",
            Error::OverLimit { .. } => "OverLimit",
            Error::MissingExport { .. } => "MissingExport",
            Error::BadExport { .. } => "BadExport",
            Error::UnknownImport { .. } => "UnknownImport",
            Error::BadImport { .. } => "BadImport",
            Error::RoleNotSupported { .. } => "RoleNotSupported",
            Error::Guest { .. } => "Guest",
            Error::Incomplete { .. } => "Incomplete",
            Error::BogusFd { .. } => "BogusFd",
            Error::Trap { .. } => "Trap",
            Error::Timeout { .. } => "Timeout",
            Error::Spinning { .. } => "Spinning",
            Error::Idle(_) => "Idle",
            Error::Orphaned(_) => "Orphaned",
            Error::Exit { .. } => "Exit",
            Error::Stuck(_) => "Stuck",
            Error::Cut { .. } => "Cut",
            Error::WorkerLost => "WorkerLost",
            Error::TooManyConnections(_) => "TooManyConnections",
            Error::Unauthenticated(_) => "Unauthenticated",
            Error::Shed(_) => "Shed",
            Error::Exhausted(_) => "Exhausted",
            Error::ConfigNotKeyValue(_) => "ConfigNotKeyValue",
            Error::Io(_) => "Io",
        }
    }
}

/// How a guest's negative result reads: the errno, and for the small codes
/// an older guest library used privately, that reading too.
fn status(errno: Errno) -> String {
    match errno.0 {
        1..=8 => format!("-{} (a private code of the guest, or {errno})", errno.0),
        _ => errno.to_string(),
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(inner) => inner.kind(),
            Error::Guest { errno, .. } => crate::wasi::errno::to_io_kind(*errno),
            Error::Timeout { .. }
            | Error::Stuck(_)
            | Error::Cut { .. }
            | Error::Idle(_)
            | Error::Orphaned(_)
            | Error::Unauthenticated(_) => io::ErrorKind::TimedOut,
            Error::Shed(_) => io::ErrorKind::ConnectionAborted,
            Error::WorkerLost => io::ErrorKind::ConnectionAborted,
            Error::NotWasm | Error::Invalid(_) | Error::NotV0 | Error::OverLimit { .. } => {
                io::ErrorKind::InvalidData
            }
            Error::RoleNotSupported { .. } => io::ErrorKind::Unsupported,
            Error::ConfigNotKeyValue(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        match e {
            Error::Io(inner) => inner,
            other => io::Error::new(kind, other),
        }
    }
}
