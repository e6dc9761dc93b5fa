//! The traits a transport author implements: [`Transport`], its two
//! [`Codec`]s and, for transports that exchange something before the data
//! flows, a [`Handshake`].

use core::fmt;

use water_abi::Errno;

/// How far one [`Codec::transform`] call got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes taken from the front of `input`.
    pub consumed: usize,
    /// Bytes written to the front of `output`.
    pub produced: usize,
}

/// What [`Codec::pace`] lets out of a paced codec's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// How many of the pending bytes (from the front, in order) may be
    /// written now. `0`: none yet; the worker then calls
    /// [`Codec::transform`] (with whatever input is buffered, possibly none)
    /// so that the codec can add output first, and asks again.
    pub release: usize,
    /// Nanoseconds to wait, counted from when the last released byte was
    /// written, before anything more leaves this direction: bytes or the
    /// half-close. `0`: no wait.
    pub then_wait: u64,
}

/// A streaming byte transform for one direction of a connection.
///
/// The worker hands the codec whatever bytes have arrived, split wherever TCP
/// split them; a correct codec's output never depends on that split.
///
/// A codec may also shape its output's timing ([`Codec::PACED`],
/// [`Codec::pace`]): it then says how much of what it produced may go now,
/// and how long to wait after it before the next piece. A codec that does
/// not pace costs nothing for it: the worker never reads the clock for it.
pub trait Codec {
    /// The least output space the worker offers before it expects progress.
    const MIN_OUTPUT: usize = 16;

    /// Whether the worker asks [`Codec::pace`] before writing this codec's
    /// output. `false` (the default): everything produced may go at once.
    ///
    /// When `true`, [`Codec::transform`] is called only while everything it
    /// produced earlier has been released, or right after `pace` asked for
    /// more output (released `0`): so what `pace` sees pending is the output
    /// of the latest `transform` (or `finish`) calls.
    const PACED: bool = false;

    /// For a [`Codec::PACED`] codec: `pending` (at least 1) bytes it produced
    /// are not released yet; how many go now, and how long after them the
    /// direction then waits. Called when nothing released earlier is still
    /// unwritten and the last wait is over, so a codec writes its output in
    /// pieces with gaps between them (the worker sleeps in `poll_oneoff`
    /// for a gap, it never spins, and the other direction keeps moving).
    ///
    /// Contract: `release <= pending`; a `release` of `0` must be followed
    /// by output from the next `transform` call, or the worker ends the
    /// connection with [`Errno::IO`] rather than hang.
    ///
    /// The default releases everything, with no wait.
    fn pace(&mut self, pending: usize) -> Pace {
        Pace { release: pending, then_wait: 0 }
    }

    /// Whether this codec turns every byte into one byte, in order, with
    /// nothing to add at the end ([`Codec::finish`] is not called), so
    /// that the worker transforms the input where it lies
    /// ([`Codec::transform_in_place`]) and writes it out from there: one
    /// copy less per byte, and the output buffer is never touched. Not for
    /// a [`Codec::PACED`] codec (the worker then uses `transform`).
    const IN_PLACE: bool = false;

    /// For an [`Codec::IN_PLACE`] codec: transforms `data`, which follows
    /// what it was handed before, where it lies. The default refuses
    /// ([`Errno::NOTSUP`]).
    fn transform_in_place(&mut self, data: &mut [u8]) -> Result<(), Errno> {
        let _ = data;
        Err(Errno::NOTSUP)
    }

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

/// Which v0 role the host called, and so which end of the wire this
/// instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `_water_dial`: the host's application connects out through us.
    Dialer,
    /// `_water_accept`: a peer connected to the host's listener.
    Listener,
    /// `_water_associate`: we carry an accepted plain connection to a dialed
    /// remote, whose end of the wire is a listener's.
    Relay,
}

impl Role {
    /// Whether this end opened the wire connection (dialer and relay): the
    /// client of the transport's protocol, the side that speaks first.
    pub const fn is_client(self) -> bool {
        matches!(self, Role::Dialer | Role::Relay)
    }
}

/// What one [`Handshake::step`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Bytes taken from the front of the peer's input.
    pub consumed: usize,
    /// Bytes written to the front of the output, for the peer.
    pub produced: usize,
    /// The handshake is over: once `produced` bytes (and any earlier ones)
    /// have gone out, the worker calls [`Handshake::keys`] and the codecs
    /// take over. Input not consumed stays for the decoder.
    pub done: bool,
}

/// An optional phase before the codecs take over, on the wire side only: it
/// may write to the peer, wait for and read the peer's reply, and hands what
/// it derived to both codecs ([`Transport::encoder`], [`Transport::decoder`]).
///
/// Like a codec it is a state machine over buffers (no syscalls), so it is
/// tested under any segmentation on the host (`water_guest::testing`, feature
/// `std`). `()` is the handshake of transports that need none: done at once,
/// no keys.
pub trait Handshake {
    /// What both codecs are built from (keys, nonces, counters).
    type Keys;

    /// The least output space the worker offers before it expects progress.
    const MIN_OUTPUT: usize = 64;

    /// Takes a prefix of what the peer sent (`input`, possibly empty) and
    /// writes what to send into `output`. The first call comes with no
    /// input, so a client can speak first.
    ///
    /// `input` is mutable so that a handshake can work in place (decrypt
    /// the peer's first message where it lies); what it does not consume is
    /// handed to the decoder as it left it.
    ///
    /// Contract: a call that neither consumes, produces nor finishes means
    /// "wait for more input". `Err` ends the connection with that errno.
    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<Step, Errno>;

    /// The peer ended its side before the handshake was done. The returned
    /// errno ends the worker (the host then closes the connection).
    fn peer_closed(&mut self) -> Errno {
        Errno::CONNRESET
    }

    /// When the handshake gives up, on the clock of [`monotonic_now`]
    /// (nanoseconds); `None`, the default: never. The worker asks before
    /// each wait while the handshake is not done, wakes at the deadline,
    /// and then ends with [`Handshake::timed_out`]'s errno (the host then
    /// closes the connection), however much the peer still sends.
    ///
    /// [`monotonic_now`]: crate::monotonic_now
    fn deadline(&self) -> Option<u64> {
        None
    }

    /// The errno the worker ends with once [`Handshake::deadline`] passed.
    fn timed_out(&mut self) -> Errno {
        Errno::TIMEDOUT
    }

    /// The result, once [`Step::done`] was returned.
    fn keys(self) -> Self::Keys;
}

impl Handshake for () {
    type Keys = ();

    fn step(&mut self, _input: &mut [u8], _output: &mut [u8]) -> Result<Step, Errno> {
        Ok(Step { done: true, ..Step::default() })
    }

    fn keys(self) {}
}

/// The keys a transport's handshake hands to its codecs.
pub type Keys<T> = <<T as Transport>::Handshake as Handshake>::Keys;

/// A WATM v0 transport: construction from config, an optional handshake,
/// and a codec per direction.
pub trait Transport: Sized + 'static {
    /// Short name used in messages (`"xor"`).
    const NAME: &'static str;

    /// Whether `_water_init` pulls the configuration from the host.
    const WANTS_CONFIG: bool = false;

    /// Plain → wire.
    type Encoder: Codec;
    /// Wire → plain.
    type Decoder: Codec;
    /// What happens on the wire before the codecs; `()` for nothing.
    type Handshake: Handshake;

    /// Builds the transport in `_water_init`, before any role is known.
    /// `config` is `None` when the transport does not want one, or the host
    /// has none to give; [`crate::Config`] reads `key=value` configs.
    fn new(config: Option<&[u8]>) -> Result<Self, InitError>;

    /// The connection's handshake, made once the role is known. For `()`:
    /// `Ok(())`.
    fn handshake(&self, role: Role) -> Result<Self::Handshake, Errno>;

    /// The encoder for the connection's plain → wire direction.
    fn encoder(&self, role: Role, keys: &Keys<Self>) -> Self::Encoder;

    /// The decoder for the connection's wire → plain direction.
    fn decoder(&self, role: Role, keys: &Keys<Self>) -> Self::Decoder;

    /// How many leading bytes of what a client sends are unique to its
    /// connection (a random salt, an ephemeral key), at most 64: a host
    /// with a replay filter (ours) refuses a connection that repeats them,
    /// as a failed handshake, before the server's guest sees a byte of it.
    /// 0 (the default): no such bytes. Exported as `_water_unique_prefix`,
    /// which other hosts ignore.
    fn unique_prefix(&self) -> usize {
        0
    }
}

/// Longest [`InitError`] message; longer ones are cut. Small enough that an
/// `InitError` stays under 128 bytes, cheap to return by value.
pub const MAX_MESSAGE: usize = 118;

/// Why `_water_init` failed: the errno the export returns (negated) and a
/// line the SDK writes to the guest's stderr. The message lives in a fixed
/// buffer, so it can name the offending key without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InitError {
    /// Returned negated from `_water_init`.
    pub errno: Errno,
    message: [u8; MAX_MESSAGE],
    len: u8,
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitError").field("errno", &self.errno).field("message", &self.message()).finish()
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl InitError {
    /// An init error with errno `inval`, the usual answer to a bad config.
    pub const fn invalid(message: &'static str) -> InitError {
        InitError::fixed(Errno::INVAL, message)
    }

    /// An init error with a fixed message.
    pub const fn fixed(errno: Errno, message: &'static str) -> InitError {
        let mut buf = [0u8; MAX_MESSAGE];
        let bytes = message.as_bytes();
        let mut len = 0;
        while len < bytes.len() && len < MAX_MESSAGE {
            buf[len] = bytes[len];
            len += 1;
        }
        // Cut at a character boundary.
        while len < bytes.len() && len > 0 && bytes[len] & 0xc0 == 0x80 {
            len -= 1;
        }
        InitError { errno, message: buf, len: len as u8 }
    }

    /// An init error with a formatted message (`format_args!`), cut at
    /// [`MAX_MESSAGE`] bytes.
    pub fn new(errno: Errno, message: fmt::Arguments<'_>) -> InitError {
        let mut e = InitError { errno, message: [0; MAX_MESSAGE], len: 0 };
        let _ = fmt::write(&mut e, message);
        e
    }

    /// The message.
    pub fn message(&self) -> &str {
        // Only whole characters are ever stored.
        core::str::from_utf8(&self.message[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Write for InitError {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0u8; 4];
            let c = c.encode_utf8(&mut utf8).as_bytes();
            let len = self.len as usize;
            if len + c.len() > MAX_MESSAGE {
                return Err(fmt::Error);
            }
            self.message[len..len + c.len()].copy_from_slice(c);
            self.len = (len + c.len()) as u8;
        }
        Ok(())
    }
}
