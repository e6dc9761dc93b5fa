//! `obfs4`: the obfs4 pluggable transport, byte for byte as obfs4proxy
//! 0.0.14 speaks it. `README.md` gives the wire format, the config keys and
//! what of the spec is and is not implemented.
//!
//! The pieces:
//! - [`Obfs4`], the transport: the bridge a client dials (its `cert`) or the
//!   bridge's own identity (`obfs4_state.json`'s keys), and the `iat-mode`.
//! - [`handshake`]: Elligator2-encoded ntor, the marks and MACs, the
//!   server's inline PRNG-seed frame.
//! - [`framing`]: NaCl secretbox frames with SipHash-OFB length masks, and
//!   the packets inside them.
//! - [`dist`]: the length distribution of protocol polymorphism.
//! - [`Encoder`] and [`Decoder`]: the frame stream of each direction.

#![cfg_attr(target_arch = "wasm32", no_std)]

pub mod dist;
pub mod framing;
pub mod handshake;

use water_guest::config::hex_to;
use water_guest::{Codec, Config, Errno, InitError, Pace, Progress, Role, Transport};

use dist::LenDist;
use framing::{
    Drbg, FrameKeys, LEN_FIELD, MAX_PACKET_PAYLOAD, MAX_PAD_BURST, MAX_SEGMENT, PACKET_PAYLOAD, SEED_LEN, TAG,
};
use handshake::{Bridge, ClientHandshake, Identity, Keys, NODE_ID, ServerHandshake, Session};

/// The errno a frame that fails to authenticate ends a connection with.
pub const AUTH_FAILED: Errno = Errno::BADMSG;

/// Inter-arrival-time obfuscation (`iat-mode`), as obfs4proxy does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IatMode {
    /// 0: every write is padded to a length from the distribution and goes
    /// out at once.
    None,
    /// 1: as 0, then written in pieces of up to 1448 bytes (one frame's
    /// worth, obfs4proxy's `MaximumSegmentLength`), each followed by a
    /// delay drawn from the iat distribution.
    Enabled,
    /// 2: written in pieces of lengths drawn from the length distribution,
    /// padding a tail shorter than its draw up to it, each piece followed
    /// by a delay drawn from the iat distribution.
    Paranoid,
}

impl IatMode {
    /// The mode's number in configs and bridge lines.
    pub const fn number(self) -> u8 {
        match self {
            IatMode::None => 0,
            IatMode::Enabled => 1,
            IatMode::Paranoid => 2,
        }
    }
}

/// The config keys.
pub const KEYS: [&str; 6] = ["cert", "node-id", "public-key", "private-key", "drbg-seed", "iat-mode"];

/// The transport: a client end's bridge, a server end's identity, or both.
#[derive(Clone, Debug)]
pub struct Obfs4 {
    bridge: Option<Bridge>,
    identity: Option<Identity>,
    iat: IatMode,
}

/// Decodes an obfs4 `cert`: base64 (standard alphabet, the `==` padding
/// left off as obfs4proxy prints it, or kept) of the node ID and the public
/// key.
pub fn parse_cert(text: &[u8]) -> Result<Bridge, &'static str> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let mut raw = [0u8; 64];
    let n = [STANDARD_NO_PAD, STANDARD]
        .iter()
        .find_map(|e| e.decode_slice(text, &mut raw).ok())
        .ok_or("not base64")?;
    if n != NODE_ID + 32 {
        return Err("not 52 bytes (node ID and public key)");
    }
    Ok(Bridge {
        node_id: raw[..NODE_ID].try_into().expect("20"),
        public: raw[NODE_ID..n].try_into().expect("32"),
    })
}

/// The `cert` of a bridge, as obfs4proxy prints it (70 characters).
pub fn cert_string(bridge: &Bridge, out: &mut [u8; 70]) {
    use base64::Engine as _;
    let mut raw = [0u8; NODE_ID + 32];
    raw[..NODE_ID].copy_from_slice(&bridge.node_id);
    raw[NODE_ID..].copy_from_slice(&bridge.public);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode_slice(raw, out).expect("70 characters");
}

fn hex_exact<const N: usize>(text: water_guest::args::Text<'_>) -> Result<[u8; N], &'static str> {
    let mut buf = [0u8; N];
    let got = hex_to(text.bytes(), &mut buf)?.len();
    if got == N { Ok(buf) } else { Err("too short") }
}

impl Obfs4 {
    /// Parses a `key=value` config (see `README.md`).
    pub fn from_config(config: &[u8]) -> Result<Obfs4, InitError> {
        let config = Config::parse(config)?;
        config.only(&KEYS)?;
        let iat = config
            .optional("iat-mode", |t| match t.as_plain() {
                Some(b"0") => Ok(IatMode::None),
                Some(b"1") => Ok(IatMode::Enabled),
                Some(b"2") => Ok(IatMode::Paranoid),
                _ => Err("must be 0, 1 or 2"),
            })?
            .unwrap_or(IatMode::None);
        let node_id = config.optional("node-id", hex_exact::<NODE_ID>)?;
        let public = config.optional("public-key", hex_exact::<32>)?;
        let identity = match config.optional("private-key", hex_exact::<32>)? {
            None => None,
            Some(private) => {
                let node_id = node_id.ok_or_else(|| water_guest::config::missing("node-id"))?;
                let seed = config.required("drbg-seed", hex_exact::<SEED_LEN>)?;
                // `public-key` is not checked: obfs4proxy derives the key
                // from `private-key` on load, as here, and the one its state
                // file records carries an Elligator2 low-order component
                // (it was made as a session key is), so it never matches.
                Some(Identity::new(node_id, private, seed))
            }
        };
        let bridge = match config.optional("cert", |t| {
            let mut buf = [0u8; 96];
            parse_cert(t.copy_to(&mut buf).map_err(|_| "too long")?)
        })? {
            Some(bridge) => Some(bridge),
            // obfs4proxy's older client arguments, when no server identity
            // claims them.
            None if identity.is_none() => match (node_id, public) {
                (Some(node_id), Some(public)) => Some(Bridge { node_id, public }),
                _ => None,
            },
            None => None,
        };
        if bridge.is_none() && identity.is_none() {
            return Err(InitError::invalid(
                "no `cert` (client) and no `private-key`, `node-id`, `drbg-seed` (server): nothing to do",
            ));
        }
        Ok(Obfs4 { bridge, identity, iat })
    }

    /// The bridge a client end dials, if configured.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    /// The `iat-mode`.
    pub fn iat_mode(&self) -> IatMode {
        self.iat
    }

    /// The server identity, if configured.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
}

/// Either end's handshake.
#[derive(Debug)]
pub enum AnyHandshake {
    /// Dialer or relay.
    Client(ClientHandshake),
    /// Listener.
    Server(ServerHandshake),
}

impl water_guest::Handshake for AnyHandshake {
    type Keys = Keys;
    const MIN_OUTPUT: usize = handshake::MAX_HANDSHAKE;

    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<water_guest::Step, Errno> {
        match self {
            AnyHandshake::Client(h) => h.step(input, output),
            AnyHandshake::Server(h) => h.step(input, output),
        }
    }

    fn peer_closed(&mut self) -> Errno {
        match self {
            AnyHandshake::Client(h) => h.peer_closed(),
            AnyHandshake::Server(h) => h.peer_closed(),
        }
    }

    fn deadline(&self) -> Option<u64> {
        match self {
            AnyHandshake::Client(h) => h.deadline(),
            AnyHandshake::Server(h) => h.deadline(),
        }
    }

    fn timed_out(&mut self) -> Errno {
        match self {
            AnyHandshake::Client(h) => h.timed_out(),
            AnyHandshake::Server(h) => h.timed_out(),
        }
    }

    fn keys(self) -> Keys {
        match self {
            AnyHandshake::Client(h) => h.keys(),
            AnyHandshake::Server(h) => h.keys(),
        }
    }
}

/// A uniform value in `lo..=hi` from the host's randomness.
fn random_in(lo: usize, hi: usize) -> Result<usize, Errno> {
    let mut b = [0u8; 8];
    water_guest::random(&mut b)?;
    Ok(lo + (u64::from_le_bytes(b) % (hi - lo + 1) as u64) as usize)
}

fn random_seed() -> Result<[u8; SEED_LEN], Errno> {
    let mut seed = [0u8; SEED_LEN];
    water_guest::random(&mut seed)?;
    Ok(seed)
}

/// Plain → wire: payload frames of up to 1427 bytes, then padding frames
/// and timing as the `iat-mode` asks.
///
/// Each `transform` call is one burst, as one `Write` of obfs4proxy's (the
/// worker hands a paced codec new input only once its last burst is out
/// and the delay after it is over, as obfs4proxy's blocking `Write`
/// returns only then). In iat-modes 1 and 2, [`Codec::pace`] cuts the
/// burst into the pieces obfs4proxy writes and draws the delay after each.
#[derive(Debug)]
pub struct Encoder {
    keys: FrameKeys,
    dist: LenDist,
    rng: Drbg,
    iat: IatMode,
    /// iat-modes 1 and 2: the delay distribution.
    delays: Option<LenDist>,
    /// Paranoid: a burst's tail of this length is to be padded to the
    /// drawn piece length (tail, target), by the next `transform` call.
    owed_pad: Option<(usize, usize)>,
    /// Paranoid: the next piece's length, drawn before padding made the
    /// tail exactly that long.
    next_piece: Option<usize>,
}

/// How many zero-length draws a paranoid piece skips before it gives up
/// and sends what is left at once (a table of only 0 would never end).
const MAX_ZERO_DRAWS: usize = 64;

impl Encoder {
    /// An encoder over a handshake's keys.
    pub fn new(keys: &Keys, iat: IatMode) -> Encoder {
        Encoder {
            keys: keys.send.clone(),
            dist: LenDist::new(&keys.dist_seed),
            rng: Drbg::new(&keys.sample_seed),
            iat,
            delays: (iat != IatMode::None).then(|| dist::iat_dist(&keys.dist_seed)),
            owed_pad: None,
            next_piece: None,
        }
    }

    /// The delay after a piece: an iat sample in units of 100 µs.
    fn delay(&mut self) -> u64 {
        match &self.delays {
            Some(d) => d.sample(&mut self.rng) as u64 * dist::IAT_UNIT_NS,
            None => 0,
        }
    }

    /// Paranoid mode's next piece of the `pending` bytes left of a burst:
    /// obfs4proxy's loop draws a length; a tail at least that long gives a
    /// piece of it; a shorter one is first padded up to it (when the pad
    /// takes two frames, the tail is longer than the draw, and a new
    /// length is drawn). Returns `None` when padding is owed first.
    fn paranoid_piece(&mut self, pending: usize) -> Option<usize> {
        if let Some(piece) = self.next_piece.take() {
            return Some(piece.min(pending));
        }
        for _ in 0..MAX_ZERO_DRAWS {
            // obfs4proxy 0.0.14 panics on a draw of 0; it is skipped here.
            let target = self.dist.sample(&mut self.rng);
            if target == 0 {
                continue;
            }
            if pending >= target {
                return Some(target);
            }
            self.owed_pad = Some((pending, target));
            return None;
        }
        Some(pending)
    }
}

impl Codec for Encoder {
    /// A full frame and two bursts of padding.
    const MIN_OUTPUT: usize = MAX_SEGMENT + 2 * MAX_PAD_BURST;
    /// iat-modes 1 and 2 pace their bursts; iat-mode 0 releases each at
    /// once.
    const PACED: bool = true;

    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        if let Some((tail, target)) = self.owed_pad {
            // Paranoid padding for the piece being cut: nothing else first.
            if output.len() < MAX_PAD_BURST {
                return Ok(Progress::default());
            }
            self.owed_pad = None;
            let produced = framing::pad_burst(&mut self.keys, tail, target, output);
            if tail + produced == target {
                self.next_piece = Some(target);
            }
            return Ok(Progress { consumed: 0, produced });
        }
        let frames = output.len().saturating_sub(2 * MAX_PAD_BURST) / MAX_SEGMENT;
        let take = input.len().min(frames * MAX_PACKET_PAYLOAD);
        if take == 0 {
            return Ok(Progress::default());
        }
        let mut produced = 0;
        for chunk in input[..take].chunks(MAX_PACKET_PAYLOAD) {
            produced +=
                framing::write_packet(&mut self.keys, PACKET_PAYLOAD, chunk, 0, &mut output[produced..]);
        }
        // Paranoid mode pads piece by piece (`pace`); the others once per
        // burst, as obfs4proxy.
        if self.iat != IatMode::Paranoid {
            let to = self.dist.sample(&mut self.rng);
            produced += framing::pad_burst(&mut self.keys, produced, to, &mut output[produced..]);
        }
        Ok(Progress { consumed: take, produced })
    }

    fn pace(&mut self, pending: usize) -> Pace {
        let release = match self.iat {
            IatMode::None => return Pace { release: pending, then_wait: 0 },
            // ScrambleSuit-style: about an MTU at a time.
            IatMode::Enabled => pending.min(MAX_SEGMENT),
            IatMode::Paranoid => match self.paranoid_piece(pending) {
                Some(piece) => piece,
                None => return Pace { release: 0, then_wait: 0 },
            },
        };
        Pace { release, then_wait: self.delay() }
    }
}

/// Wire → plain: opens frames, delivering only authenticated payload.
/// Padding and PRNG-seed packets past the handshake are dropped, unknown
/// packet types ignored (spec section 5).
#[derive(Debug)]
pub struct Decoder {
    keys: FrameKeys,
    frame: [u8; MAX_SEGMENT],
    /// Bytes of the current frame in `frame`.
    have: usize,
    /// The current box's length, once its length field is in; whether it
    /// was out of range.
    next: Option<(usize, bool)>,
    /// Opened payload in `frame` not yet delivered.
    deliver: core::ops::Range<usize>,
}

impl Decoder {
    /// A decoder over a handshake's keys.
    pub fn new(keys: &Keys) -> Decoder {
        Decoder { keys: keys.receive.clone(), frame: [0; MAX_SEGMENT], have: 0, next: None, deliver: 0..0 }
    }
}

impl Codec for Decoder {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let mut p = Progress::default();
        loop {
            if !self.deliver.is_empty() {
                let k = self.deliver.len().min(output.len() - p.produced);
                let start = self.deliver.start;
                output[p.produced..p.produced + k].copy_from_slice(&self.frame[start..start + k]);
                p.produced += k;
                self.deliver.start += k;
                if !self.deliver.is_empty() {
                    return Ok(p);
                }
            }
            let rest = &input[p.consumed..];
            if rest.is_empty() {
                return Ok(p);
            }
            let want = match self.next {
                None => LEN_FIELD,
                Some((len, _)) => LEN_FIELD + len,
            };
            let k = (want - self.have).min(rest.len());
            self.frame[self.have..self.have + k].copy_from_slice(&rest[..k]);
            self.have += k;
            p.consumed += k;
            if self.have < want {
                return Ok(p);
            }
            let Some((len, valid)) = self.next else {
                // As obfs4proxy: an out-of-range length is read as some
                // in-range one, and the frame then fails, so that a prober
                // does not learn which lengths are valid.
                self.next = Some(self.keys.open_len([self.frame[0], self.frame[1]]));
                continue;
            };
            if !valid {
                return Err(AUTH_FAILED);
            }
            let boxed = &mut self.frame[LEN_FIELD..LEN_FIELD + len];
            self.keys.open(boxed).map_err(|_| AUTH_FAILED)?;
            let (kind, payload) = framing::parse_packet(&boxed[TAG..]).map_err(|_| Errno::PROTO)?;
            (self.have, self.next) = (0, None);
            if kind == PACKET_PAYLOAD {
                let at = LEN_FIELD + TAG;
                self.deliver = at + payload.start..at + payload.end;
            }
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, Errno> {
        let produced = self.transform(&[], output)?.produced;
        // The stream may end only between frames.
        if produced == 0 && self.have > 0 { Err(Errno::PROTO) } else { Ok(produced) }
    }
}

impl Transport for Obfs4 {
    const NAME: &'static str = "obfs4";
    const WANTS_CONFIG: bool = true;
    type Encoder = Encoder;
    type Decoder = Decoder;
    type Handshake = AnyHandshake;

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        match config {
            Some(config) => Obfs4::from_config(config),
            None => Err(InitError::invalid("no config; a client needs cert= and iat-mode=")),
        }
    }

    /// The client's ephemeral key, as its 32-byte Elligator2
    /// representative, opens every client handshake: a host with a replay
    /// filter refuses a connection that repeats one before this guest sees
    /// it (the spec asks the server to refuse replayed handshakes); the
    /// guest's own deadline then closes it as a failed handshake.
    fn unique_prefix(&self) -> usize {
        32
    }

    fn handshake(&self, role: Role) -> Result<AnyHandshake, Errno> {
        let session = Session::random()?;
        let hour = handshake::epoch_hour()?;
        let sample_seed = random_seed()?;
        if role.is_client() {
            // A server-only config cannot dial.
            let bridge = self.bridge.ok_or(Errno::INVAL)?;
            let pad = random_in(handshake::CLIENT_MIN_PAD, handshake::CLIENT_MAX_PAD)?;
            Ok(AnyHandshake::Client(ClientHandshake::new(bridge, session, pad, hour, sample_seed)))
        } else {
            let identity = self.identity.clone().ok_or(Errno::INVAL)?;
            let pad = random_in(0, handshake::SERVER_MAX_PAD)?;
            // As obfs4proxy: a connection whose handshake fails or does not
            // come is closed 30 s plus the bridge's close delay after it
            // started (here: when the worker starts, just after accept).
            let deadline = ServerHandshake::deadline_from(&identity, water_guest::monotonic_now()?);
            let hs = ServerHandshake::new(identity, session, pad, hour, sample_seed).with_deadline(deadline);
            Ok(AnyHandshake::Server(hs))
        }
    }

    fn encoder(&self, _role: Role, keys: &Keys) -> Encoder {
        Encoder::new(keys, self.iat)
    }

    fn decoder(&self, _role: Role, keys: &Keys) -> Decoder {
        Decoder::new(keys)
    }
}

water_guest::export_transport!(Obfs4, public_args = "cert,iat-mode");

#[cfg(test)]
mod kat;
#[cfg(test)]
mod tests;
