//! obfs4's handshake (spec section 4) as obfs4proxy 0.0.14 runs it: keys
//! sent as Elligator2 representatives, the ntor key exchange, the marks and
//! MACs that let each side find the end of the other's padded message.

use curve25519_elligator2::{MapToPointVariant, MontgomeryPoint, Randomized};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use water_guest::{Errno, Handshake, Step};

use crate::framing::{self, FrameKeys, KEY_MATERIAL, LEN_FIELD, PACKET_PRNG_SEED, SEED_LEN, TAG};

/// Node ID length.
pub const NODE_ID: usize = 20;
/// Longest handshake message, padding included.
pub const MAX_HANDSHAKE: usize = 8192;
const REPR: usize = 32;
const AUTH: usize = 32;
const MARK: usize = 16;
const MAC: usize = 16;
/// The server's inline PRNG-seed frame: header and 24-byte seed, no padding.
pub const SEED_FRAME: usize = framing::HEADER + SEED_LEN;
const CLIENT_MIN: usize = REPR + MARK + MAC;
const SERVER_MIN: usize = REPR + AUTH + MARK + MAC;
/// obfs4proxy's client padding bounds: 77 to 8128 bytes (the spec says 85;
/// obfs4proxy's arithmetic, which its server checks, gives 77).
pub const CLIENT_MIN_PAD: usize = SERVER_MIN + SEED_FRAME - CLIENT_MIN;
/// See [`CLIENT_MIN_PAD`].
pub const CLIENT_MAX_PAD: usize = MAX_HANDSHAKE - CLIENT_MIN;
/// The server's padding: 0 to 8051 bytes, the seed frame making up the rest.
pub const SERVER_MAX_PAD: usize = MAX_HANDSHAKE - (SERVER_MIN + SEED_FRAME);

/// The errno a handshake that fails to authenticate ends a client with.
pub const AUTH_FAILED: Errno = Errno::BADMSG;

/// obfs4proxy's server handshake timeout: a server gives a client this
/// long, plus the bridge's close delay ([`crate::dist::close_delay`]), from
/// the connection's start, then closes (reading and dropping everything
/// until then if the handshake failed).
pub const SERVER_HANDSHAKE_TIMEOUT_SECS: u64 = 30;

const PROTO_ID: &[u8] = b"ntor-curve25519-sha256-1";
const T_MAC: &[u8] = b"ntor-curve25519-sha256-1:mac";
const T_KEY: &[u8] = b"ntor-curve25519-sha256-1:key_extract";
const T_VERIFY: &[u8] = b"ntor-curve25519-sha256-1:key_verify";
const M_EXPAND: &[u8] = b"ntor-curve25519-sha256-1:key_expand";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality (also avoids `memcmp`, which a no_std guest does
/// not link).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The bridge as a client knows it: node ID and identity public key (the
/// `cert`).
#[derive(Clone, Copy, Debug)]
pub struct Bridge {
    /// Node ID.
    pub node_id: [u8; NODE_ID],
    /// Identity public key `B`.
    pub public: [u8; 32],
}

impl Bridge {
    /// The key of the marks and MACs: `B | NODEID`.
    fn mac_key(&self) -> [u8; 32 + NODE_ID] {
        let mut key = [0u8; 32 + NODE_ID];
        key[..32].copy_from_slice(&self.public);
        key[32..].copy_from_slice(&self.node_id);
        key
    }
}

/// The bridge's own identity (server side): `obfs4_state.json`'s keys.
#[derive(Clone)]
pub struct Identity {
    /// Node ID and public key, as clients know them.
    pub bridge: Bridge,
    /// Identity private key `b`.
    pub private: [u8; 32],
    /// The length-distribution seed sent to every client.
    pub drbg_seed: [u8; SEED_LEN],
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the private key or the seed.
        f.debug_struct("Identity").field("bridge", &self.bridge).finish_non_exhaustive()
    }
}

impl Identity {
    /// From the private key: the public key is derived (X25519).
    pub fn new(node_id: [u8; NODE_ID], private: [u8; 32], drbg_seed: [u8; SEED_LEN]) -> Identity {
        let public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Identity { bridge: Bridge { node_id, public }, private, drbg_seed }
    }
}

/// A session key pair whose public key has an Elligator2 representative.
#[derive(Clone)]
pub struct Session {
    private: [u8; 32],
    /// `X` or `Y`: the Montgomery u of the key, with obfs4proxy's low-order
    /// component added (so that representatives cover the whole curve).
    public: [u8; 32],
    /// `X'` or `Y'`, its high two bits random.
    repr: [u8; 32],
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Session { .. }")
    }
}

impl Session {
    /// The key pair of `private` with the representative's tweak `tweak`,
    /// if its public key is representable (about half are).
    pub fn from_private(private: [u8; 32], tweak: u8) -> Option<Session> {
        let repr: [u8; 32] = Randomized::to_representative(&private, tweak).into_option()?;
        let public = Randomized::mul_base_clamped(private).to_montgomery().to_bytes();
        Some(Session { private, public, repr })
    }

    /// A fresh key pair from the host's randomness.
    pub fn random() -> Result<Session, Errno> {
        loop {
            let mut bytes = [0u8; 33];
            water_guest::random(&mut bytes)?;
            let private: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
            if let Some(session) = Session::from_private(private, bytes[32]) {
                return Ok(session);
            }
        }
    }

    /// The representative.
    pub fn representative(&self) -> &[u8; 32] {
        &self.repr
    }

    /// The public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }
}

/// The public key a representative stands for (its top two bits ignored).
pub fn public_from_representative(repr: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::from_representative::<Randomized>(repr).expect("every representative maps").to_bytes()
}

fn x25519(private: &[u8; 32], public: &[u8; 32]) -> Option<[u8; 32]> {
    let shared = MontgomeryPoint(*public).mul_clamped(*private).to_bytes();
    (!ct_eq(&shared, &[0; 32])).then_some(shared)
}

/// obfs4proxy's ntor: `KEY_SEED` and `AUTH` from the two shared secrets.
/// Its common suffix is `B | B | X | Y | PROTOID | NODEID` (obfs4proxy's
/// order, with `B` twice; the ntor proposal has `ID | B | X | Y | PROTOID`).
fn ntor(
    exp1: &[u8; 32],
    exp2: &[u8; 32],
    bridge: &Bridge,
    x: &[u8; 32],
    y: &[u8; 32],
) -> ([u8; 32], [u8; 32]) {
    let suffix: [&[u8]; 6] = [&bridge.public, &bridge.public, x, y, PROTO_ID, &bridge.node_id];
    let secret = |key: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(key).expect("any key");
        mac.update(exp1);
        mac.update(exp2);
        for part in suffix {
            mac.update(part);
        }
        <[u8; 32]>::from(mac.finalize().into_bytes())
    };
    let (seed, verify) = (secret(T_KEY), secret(T_VERIFY));
    let mut mac = HmacSha256::new_from_slice(T_MAC).expect("any key");
    mac.update(&verify);
    for part in suffix {
        mac.update(part);
    }
    mac.update(b"Server");
    (seed, mac.finalize().into_bytes().into())
}

/// Both directions' frame keys from `KEY_SEED`: HKDF-SHA256 (salt
/// `t_key`, info `m_expand`), 144 bytes; the first 72 are the client's
/// (client to server), the rest the server's.
fn session_keys(seed: &[u8; 32]) -> (FrameKeys, FrameKeys) {
    let mut okm = [0u8; 2 * KEY_MATERIAL];
    hkdf::Hkdf::<Sha256>::new(Some(T_KEY), seed).expand(M_EXPAND, &mut okm).expect("144 bytes");
    (FrameKeys::new(&okm[..KEY_MATERIAL]), FrameKeys::new(&okm[KEY_MATERIAL..]))
}

/// The current hour since the Unix epoch (the `E` of the MACs).
pub fn epoch_hour() -> Result<u64, Errno> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: a WASI call with no pointers.
        let nanos =
            unsafe { wasi::clock_time_get(wasi::CLOCKID_REALTIME, 1_000_000_000) }.map_err(|_| Errno::IO)?;
        Ok(nanos / 1_000_000_000 / 3600)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|_| Errno::IO)?;
        Ok(now.as_secs() / 3600)
    }
}

/// `E` as obfs4proxy writes it: decimal digits.
fn epoch_text(hour: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut h = hour;
    loop {
        i -= 1;
        buf[i] = b'0' + (h % 10) as u8;
        h /= 10;
        if h == 0 {
            return &buf[i..];
        }
    }
}

/// MAC over `message | E`, cut to 16 bytes.
fn mac_with_epoch(key: &[u8], message: &[u8], hour: u64) -> [u8; MAC] {
    let mut e = [0u8; 20];
    let full = hmac(key, &[message, epoch_text(hour, &mut e)]);
    full[..MAC].try_into().expect("16 bytes")
}

/// What the handshake hands to the codecs.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Our direction's frames.
    pub send: FrameKeys,
    /// The peer's direction's frames.
    pub receive: FrameKeys,
    /// The seed of the length distribution our encoder pads with: the
    /// bridge's (a server's own; a client's, from the server's first frame).
    pub dist_seed: [u8; SEED_LEN],
    /// Seeds the encoder's samples of that distribution.
    pub sample_seed: [u8; SEED_LEN],
}

/// A client's handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    bridge: Bridge,
    session: Session,
    pad: usize,
    hour: u64,
    state: ClientState,
    sample_seed: [u8; SEED_LEN],
}

#[derive(Debug)]
enum ClientState {
    Send,
    /// Waiting for the server's reply.
    Wait,
    /// The reply authenticated (`len` bytes); waiting for the frame behind
    /// it, which from obfs4proxy is always the PRNG seed.
    Seed {
        len: usize,
        keys: Keys,
    },
    Done(Keys),
}

impl ClientHandshake {
    /// A handshake with the given session key, padding length (clamped to
    /// the spec's bounds), epoch hour and sampling seed.
    pub fn new(bridge: Bridge, session: Session, pad: usize, hour: u64, sample_seed: [u8; SEED_LEN]) -> Self {
        let pad = pad.clamp(CLIENT_MIN_PAD, CLIENT_MAX_PAD);
        ClientHandshake { bridge, session, pad, hour, state: ClientState::Send, sample_seed }
    }

    /// Writes `X' | P_C | M_C | MAC_C`.
    fn request(&self, out: &mut [u8]) -> Result<usize, Errno> {
        let key = self.bridge.mac_key();
        let len = REPR + self.pad + MARK + MAC;
        out[..REPR].copy_from_slice(&self.session.repr);
        water_guest::random(&mut out[REPR..REPR + self.pad])?;
        let mark = hmac(&key, &[&self.session.repr]);
        out[REPR + self.pad..len - MAC].copy_from_slice(&mark[..MARK]);
        let mac = mac_with_epoch(&key, &out[..len - MAC], self.hour);
        out[len - MAC..len].copy_from_slice(&mac);
        Ok(len)
    }

    /// Checks the server's reply at the front of `input`: the keys and the
    /// reply's length, or `None` when more is needed.
    fn reply(&self, input: &[u8]) -> Result<Option<(Keys, usize)>, Errno> {
        if input.len() < SERVER_MIN {
            return Ok(None);
        }
        let key = self.bridge.mac_key();
        let y_repr: [u8; 32] = input[..REPR].try_into().expect("32 bytes");
        let mark = hmac(&key, &[&y_repr]);
        let end = input.len().min(MAX_HANDSHAKE);
        let start = REPR + AUTH;
        let found = input[start..end].windows(MARK).position(|w| ct_eq(w, &mark[..MARK]));
        let pos = match found {
            Some(p) if start + p + MARK + MAC <= end => start + p,
            _ if input.len() >= MAX_HANDSHAKE => return Err(AUTH_FAILED),
            _ => return Ok(None),
        };
        let mac = mac_with_epoch(&key, &input[..pos + MARK], self.hour);
        if !ct_eq(&mac, &input[pos + MARK..pos + MARK + MAC]) {
            return Err(AUTH_FAILED);
        }
        let y = public_from_representative(&y_repr);
        let exp1 = x25519(&self.session.private, &y).ok_or(AUTH_FAILED)?;
        let exp2 = x25519(&self.session.private, &self.bridge.public).ok_or(AUTH_FAILED)?;
        let (seed, auth) = ntor(&exp1, &exp2, &self.bridge, &self.session.public, &y);
        if !ct_eq(&auth, &input[REPR..REPR + AUTH]) {
            return Err(AUTH_FAILED);
        }
        let (send, receive) = session_keys(&seed);
        // Until the server's seed frame says otherwise, pad from our own
        // random seed.
        let keys = Keys { send, receive, dist_seed: self.sample_seed, sample_seed: self.sample_seed };
        Ok(Some((keys, pos + MARK + MAC)))
    }
}

impl Handshake for ClientHandshake {
    type Keys = Keys;
    const MIN_OUTPUT: usize = MAX_HANDSHAKE;

    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<Step, Errno> {
        loop {
            match &mut self.state {
                ClientState::Send => {
                    let produced = self.request(output)?;
                    self.state = ClientState::Wait;
                    return Ok(Step { consumed: 0, produced, done: false });
                }
                ClientState::Wait => match self.reply(input)? {
                    None => return Ok(Step::default()),
                    Some((keys, len)) => self.state = ClientState::Seed { len, keys },
                },
                ClientState::Seed { len, keys } => {
                    let len = *len;
                    let consumed = match seed_frame(&keys.receive, &input[len..]) {
                        Ok(None) => return Ok(Step::default()),
                        Ok(Some((seed, frame, receive))) => {
                            keys.dist_seed = seed;
                            keys.receive = receive;
                            len + frame
                        }
                        // Not a seed frame: the decoder reads it.
                        Err(()) => len,
                    };
                    let keys = keys.clone();
                    self.state = ClientState::Done(keys);
                    return Ok(Step { consumed, produced: 0, done: true });
                }
                ClientState::Done(_) => return Ok(Step { done: true, ..Step::default() }),
            }
        }
    }

    fn keys(self) -> Keys {
        match self.state {
            ClientState::Done(keys) => keys,
            _ => unreachable!("keys before the handshake was done"),
        }
    }
}

/// Reads the frame at the front of `input` with a copy of `keys`; when it
/// is whole and a PRNG-seed packet, the seed and the frame's length.
/// `Ok(None)`: not whole yet. `Err(())`: some other frame (left for the
/// decoder, which will judge it).
fn seed_frame(keys: &FrameKeys, input: &[u8]) -> Result<Option<([u8; SEED_LEN], usize, FrameKeys)>, ()> {
    if input.len() < LEN_FIELD {
        return Ok(None);
    }
    let mut keys = keys.clone();
    let (len, valid) = keys.open_len([input[0], input[1]]);
    if !valid {
        return Err(());
    }
    if input.len() < LEN_FIELD + len {
        return Ok(None);
    }
    let mut boxed = [0u8; framing::MAX_SEGMENT];
    boxed[..len].copy_from_slice(&input[LEN_FIELD..LEN_FIELD + len]);
    keys.open(&mut boxed[..len]).map_err(|_| ())?;
    let (kind, payload) = framing::parse_packet(&boxed[TAG..len]).map_err(|_| ())?;
    if kind != PACKET_PRNG_SEED || payload.len() != SEED_LEN {
        return Err(());
    }
    let seed = boxed[TAG + payload.start..TAG + payload.end].try_into().expect("24 bytes");
    Ok(Some((seed, LEN_FIELD + len, keys)))
}

/// A server's handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    identity: Identity,
    session: Session,
    pad: usize,
    hour: u64,
    state: ServerState,
    sample_seed: [u8; SEED_LEN],
    /// When the connection is closed unless the handshake is done
    /// ([`water_guest::monotonic_now`], nanoseconds).
    deadline: Option<u64>,
}

// One per connection, on the worker's stack; boxing would need an allocator.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum ServerState {
    Wait,
    /// The client failed to authenticate: read and drop everything, never
    /// reply.
    Failed,
    Done(Keys),
}

impl ServerHandshake {
    /// A handshake with the given session key, padding length (clamped to
    /// the spec's bounds), epoch hour and sampling seed.
    pub fn new(
        identity: Identity,
        session: Session,
        pad: usize,
        hour: u64,
        sample_seed: [u8; SEED_LEN],
    ) -> Self {
        let pad = pad.min(SERVER_MAX_PAD);
        ServerHandshake {
            identity,
            session,
            pad,
            hour,
            state: ServerState::Wait,
            sample_seed,
            deadline: None,
        }
    }

    /// The same, closed at `at` ([`water_guest::monotonic_now`]'s clock)
    /// unless the handshake is done by then.
    pub fn with_deadline(mut self, at: u64) -> Self {
        self.deadline = Some(at);
        self
    }

    /// obfs4proxy's deadline for a connection that started at `start`
    /// (nanoseconds): its handshake timeout and the bridge's close delay.
    pub fn deadline_from(identity: &Identity, start: u64) -> u64 {
        let secs = SERVER_HANDSHAKE_TIMEOUT_SECS + crate::dist::close_delay(&identity.drbg_seed);
        start.saturating_add(secs * 1_000_000_000)
    }

    /// Whether the handshake has failed (and the server now only listens).
    pub fn failed(&self) -> bool {
        matches!(self.state, ServerState::Failed)
    }

    /// Checks the client's request (all of `input`): the keys, the epoch
    /// hour it was made in, and `AUTH`. `Ok(None)`: more is needed.
    /// `Err(())`: the client failed.
    #[allow(clippy::result_unit_err)]
    fn request(&self, input: &[u8]) -> Result<Option<(Keys, u64, [u8; AUTH])>, ()> {
        if input.len() < CLIENT_MIN {
            return Ok(None);
        }
        let key = self.identity.bridge.mac_key();
        let mark = hmac(&key, &[&input[..REPR]]);
        // As obfs4proxy: the mark must sit right before the MAC at the end
        // of what arrived (the client sends nothing more until the reply).
        let end = input.len().min(MAX_HANDSHAKE);
        let start = REPR + CLIENT_MIN_PAD;
        let wait = if input.len() >= MAX_HANDSHAKE { Err(()) } else { Ok(None) };
        if start > end || end - start < MARK + MAC {
            return wait;
        }
        let pos = end - MARK - MAC;
        if !ct_eq(&input[pos..pos + MARK], &mark[..MARK]) {
            return wait;
        }
        let mac = &input[pos + MARK..end];
        let hour = [self.hour, self.hour.wrapping_sub(1), self.hour + 1]
            .into_iter()
            .find(|&h| ct_eq(&mac_with_epoch(&key, &input[..pos + MARK], h), mac))
            .ok_or(())?;
        if input.len() != end {
            return Err(());
        }
        let x = public_from_representative(input[..REPR].try_into().expect("32 bytes"));
        let exp1 = x25519(&self.session.private, &x).ok_or(())?;
        let exp2 = x25519(&self.identity.private, &x).ok_or(())?;
        let (seed, auth) = ntor(&exp1, &exp2, &self.identity.bridge, &x, &self.session.public);
        let (client, server) = session_keys(&seed);
        let keys = Keys {
            send: server,
            receive: client,
            dist_seed: self.identity.drbg_seed,
            sample_seed: self.sample_seed,
        };
        Ok(Some((keys, hour, auth)))
    }

    /// Writes `Y' | AUTH | P_S | M_S | MAC_S` and the PRNG-seed frame.
    fn reply(&self, keys: &mut Keys, hour: u64, auth: &[u8; AUTH], out: &mut [u8]) -> Result<usize, Errno> {
        let key = self.identity.bridge.mac_key();
        let len = REPR + AUTH + self.pad + MARK + MAC;
        out[..REPR].copy_from_slice(&self.session.repr);
        out[REPR..REPR + AUTH].copy_from_slice(auth);
        water_guest::random(&mut out[REPR + AUTH..REPR + AUTH + self.pad])?;
        let mark = hmac(&key, &[&self.session.repr]);
        out[len - MAC - MARK..len - MAC].copy_from_slice(&mark[..MARK]);
        let mac = mac_with_epoch(&key, &out[..len - MAC], hour);
        out[len - MAC..len].copy_from_slice(&mac);
        let seed = framing::write_packet(
            &mut keys.send,
            PACKET_PRNG_SEED,
            &self.identity.drbg_seed,
            0,
            &mut out[len..],
        );
        Ok(len + seed)
    }
}

impl Handshake for ServerHandshake {
    type Keys = Keys;
    const MIN_OUTPUT: usize = MAX_HANDSHAKE;

    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<Step, Errno> {
        match &self.state {
            ServerState::Wait => match self.request(input) {
                Ok(None) => Ok(Step::default()),
                Ok(Some((mut keys, hour, auth))) => {
                    let produced = self.reply(&mut keys, hour, &auth, output)?;
                    self.state = ServerState::Done(keys);
                    Ok(Step { consumed: input.len(), produced, done: true })
                }
                Err(()) => {
                    self.state = ServerState::Failed;
                    Ok(Step { consumed: input.len(), produced: 0, done: false })
                }
            },
            ServerState::Failed => Ok(Step { consumed: input.len(), produced: 0, done: false }),
            ServerState::Done(_) => Ok(Step { done: true, ..Step::default() }),
        }
    }

    fn peer_closed(&mut self) -> Errno {
        match self.state {
            ServerState::Failed => AUTH_FAILED,
            _ => Errno::CONNRESET,
        }
    }

    fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn timed_out(&mut self) -> Errno {
        match self.state {
            ServerState::Failed => AUTH_FAILED,
            _ => Errno::TIMEDOUT,
        }
    }

    fn keys(self) -> Keys {
        match self.state {
            ServerState::Done(keys) => keys,
            _ => unreachable!("keys before the handshake was done"),
        }
    }
}
