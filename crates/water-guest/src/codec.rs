//! The two traits a transport author implements.

use water_abi::Errno;

/// How far one [`Codec::transform`] call got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes taken from the front of `input`.
    pub consumed: usize,
    /// Bytes written to the front of `output`.
    pub produced: usize,
}

/// A streaming byte transform for one direction of a connection.
///
/// The worker hands the codec whatever bytes have arrived, split wherever TCP
/// split them; a correct codec's output never depends on that split.
pub trait Codec {
    /// The least output space the worker offers before it expects progress.
    const MIN_OUTPUT: usize = 16;

    /// Transforms a prefix of `input` into a prefix of `output`.
    ///
    /// Contract: when `input` is non-empty and `output.len() >= MIN_OUTPUT`,
    /// a call must consume or produce at least one byte; a codec holding
    /// output of its own (a finished frame) must produce it even when `input`
    /// is empty. An `Err` ends the connection with that errno.
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno>;

    /// The input has ended and every byte of it was consumed: write any
    /// trailer into `output` and return its length, `0` when nothing is left.
    /// Called until it returns `0`. The default accepts the end anywhere;
    /// a framed codec returns `Err` (e.g. [`Errno::PROTO`]) mid-frame.
    fn finish(&mut self, output: &mut [u8]) -> Result<usize, Errno> {
        let _ = output;
        Ok(0)
    }
}

/// Why `_water_init` failed: the errno the export returns (negated) and a
/// line the SDK writes to the guest's stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitError {
    /// Returned negated from `_water_init`.
    pub errno: Errno,
    /// Written to stderr, prefixed by the transport's name.
    pub message: &'static str,
}

impl InitError {
    /// An init error with errno `inval`, the usual answer to a bad config.
    pub const fn invalid(message: &'static str) -> InitError {
        InitError { errno: Errno::INVAL, message }
    }
}

/// A WATM v0 transport: construction from config, and a codec per direction.
pub trait Transport: Sized + 'static {
    /// Short name used in messages (`"xor"`).
    const NAME: &'static str;

    /// Whether `_water_init` pulls the configuration from the host.
    const WANTS_CONFIG: bool = false;

    /// Plain → wire.
    type Encoder: Codec;
    /// Wire → plain.
    type Decoder: Codec;

    /// Builds the transport. `config` is `None` when the transport does not
    /// want one, or the host has none to give.
    fn new(config: Option<&[u8]>) -> Result<Self, InitError>;

    /// A fresh encoder for the connection's plain → wire direction.
    fn encoder(&self) -> Self::Encoder;

    /// A fresh decoder for the connection's wire → plain direction.
    fn decoder(&self) -> Self::Decoder;
}
