//! `ss`: Shadowsocks AEAD (SIP004) over TCP, byte for byte as
//! shadowsocks-libev 3.3.5 speaks it. `README.md` gives the wire format, the
//! config keys and what the transport does and does not protect against.
//!
//! The pieces:
//! - [`Ss`], the transport: the method and master key from the config, and
//!   for the client side the target address it announces.
//! - The handshake ([`SsHandshake`]): the client sends its salt and the
//!   first chunk (the target's address header) at once; the server reads the
//!   client's salt and first chunk, and on any authentication failure turns
//!   into a sink that discards everything, never replies and never closes
//!   until the client does (as libev).
//! - [`Encoder`] and [`Decoder`]: the chunk stream of each direction; the
//!   chunk framing itself is `watm_aead::chunk`, shared with other
//!   transports.
//!
//! The ChaCha AEADs are `watm-aead`'s (SIMD128 ChaCha20 and Poly1305:
//! RustCrypto's have no wasm SIMD backend and run at about half the speed
//! in a guest); AES-GCM, HKDF, SHA-1 and MD5 are RustCrypto's (`aes-gcm`,
//! `hkdf`, `sha1`, `md-5`).

#![cfg_attr(target_arch = "wasm32", no_std)]

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use md5::{Digest, Md5};
use water_guest::args::Text;
use water_guest::{Codec, Config, Errno, Handshake, InitError, Keys, Progress, Role, Step, Transport};
use watm_aead::chunk::{ChunkAead, Chunks, LEN_BLOCK, Opener};
use watm_aead::{AuthError, ChaCha20Poly1305, XChaCha20Poly1305};

pub use watm_aead::TAG;
pub use watm_aead::chunk::MAX_PAYLOAD;
/// Longest key (and salt).
pub const MAX_KEY: usize = 32;
/// Longest SOCKS5 address header: ATYP, length, 255-byte name, port.
pub const MAX_HEADER: usize = 1 + 1 + 255 + 2;
/// Room for one whole chunk on the wire.
const MAX_CHUNK: usize = watm_aead::chunk::OVERHEAD + MAX_PAYLOAD;

/// The errno a failed authentication ends a client-side connection with.
pub const AUTH_FAILED: Errno = Errno::BADMSG;

/// An AEAD method (libev's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `chacha20-ietf-poly1305`: 32-byte key, 12-byte nonce.
    ChaCha20,
    /// `xchacha20-ietf-poly1305`: 32-byte key, 24-byte nonce.
    XChaCha20,
    /// `aes-128-gcm`: 16-byte key.
    Aes128Gcm,
    /// `aes-256-gcm`: 32-byte key.
    Aes256Gcm,
}

impl Method {
    /// Every method, with its libev name.
    pub const ALL: [(Method, &'static str); 4] = [
        (Method::ChaCha20, "chacha20-ietf-poly1305"),
        (Method::XChaCha20, "xchacha20-ietf-poly1305"),
        (Method::Aes128Gcm, "aes-128-gcm"),
        (Method::Aes256Gcm, "aes-256-gcm"),
    ];

    fn parse(text: Text<'_>) -> Result<Method, &'static str> {
        Method::ALL
            .iter()
            .find(|(_, name)| text.eq_bytes(name.as_bytes()))
            .map(|(m, _)| *m)
            .ok_or("unsupported (chacha20-ietf-poly1305, xchacha20-ietf-poly1305, aes-128-gcm, aes-256-gcm)")
    }

    /// Key length, which is also the salt length.
    pub const fn key_len(self) -> usize {
        match self {
            Method::Aes128Gcm => 16,
            _ => 32,
        }
    }
}

/// libev's master key from a password: OpenSSL's `EVP_BytesToKey` with MD5,
/// one iteration, no salt (`D_1 = MD5(password)`, `D_i = MD5(D_{i-1} ||
/// password)`, concatenated).
pub fn key_from_password(password: impl Iterator<Item = u8> + Clone, key: &mut [u8]) {
    let mut prev: Option<[u8; 16]> = None;
    for block in key.chunks_mut(16) {
        let mut md5 = Md5::new();
        if let Some(prev) = prev {
            md5.update(prev);
        }
        let mut buf = [0u8; 64];
        let mut bytes = password.clone();
        loop {
            let mut n = 0;
            for (slot, b) in buf.iter_mut().zip(&mut bytes) {
                *slot = b;
                n += 1;
            }
            md5.update(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        let digest: [u8; 16] = md5.finalize().into();
        block.copy_from_slice(&digest[..block.len()]);
        prev = Some(digest);
    }
}

/// One direction's AEAD for one salt.
#[derive(Clone)]
pub enum Aead {
    /// `chacha20-ietf-poly1305`.
    ChaCha20(ChaCha20Poly1305),
    /// `xchacha20-ietf-poly1305`.
    XChaCha20(XChaCha20Poly1305),
    /// `aes-128-gcm`.
    Aes128Gcm(Aes128Gcm),
    /// `aes-256-gcm`.
    Aes256Gcm(Aes256Gcm),
}

impl core::fmt::Debug for Aead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The method, never the key.
        f.write_str(match self {
            Aead::ChaCha20(_) => "ChaCha20Poly1305",
            Aead::XChaCha20(_) => "XChaCha20Poly1305",
            Aead::Aes128Gcm(_) => "Aes128Gcm",
            Aead::Aes256Gcm(_) => "Aes256Gcm",
        })
    }
}

impl ChunkAead for Aead {
    fn nonce_len(&self) -> usize {
        match self {
            Aead::XChaCha20(_) => 24,
            _ => 12,
        }
    }

    fn seal(&self, nonce: &[u8], data: &mut [u8]) -> [u8; TAG] {
        const LIMIT: &str = "a chunk is far below the AEAD's limit";
        match self {
            Aead::ChaCha20(a) => ChunkAead::seal(a, nonce, data),
            Aead::XChaCha20(a) => ChunkAead::seal(a, nonce, data),
            Aead::Aes128Gcm(a) => {
                a.encrypt_inout_detached(nonce.try_into().expect("12"), &[], data.into()).expect(LIMIT).into()
            }
            Aead::Aes256Gcm(a) => {
                a.encrypt_inout_detached(nonce.try_into().expect("12"), &[], data.into()).expect(LIMIT).into()
            }
        }
    }

    fn open(&self, nonce: &[u8], data: &mut [u8], tag: &[u8; TAG]) -> Result<(), AuthError> {
        let ok = match self {
            Aead::ChaCha20(a) => return ChunkAead::open(a, nonce, data, tag),
            Aead::XChaCha20(a) => return ChunkAead::open(a, nonce, data, tag),
            Aead::Aes128Gcm(a) => {
                a.decrypt_inout_detached(nonce.try_into().expect("12"), &[], data.into(), tag.into())
            }
            Aead::Aes256Gcm(a) => {
                a.decrypt_inout_detached(nonce.try_into().expect("12"), &[], data.into(), tag.into())
            }
        };
        ok.map_err(|_| AuthError)
    }
}

/// One direction's chunks: the AEAD for one salt and its nonce counter.
#[derive(Clone, Debug)]
pub struct Cipher(Chunks<Aead>);

impl Cipher {
    /// The cipher for one direction: subkey = HKDF-SHA1(master key, salt,
    /// info "ss-subkey"), nonce counter zero.
    pub fn new(method: Method, master: &[u8], salt: &[u8]) -> Cipher {
        let mut subkey = [0u8; MAX_KEY];
        let subkey = &mut subkey[..method.key_len()];
        hkdf::Hkdf::<sha1::Sha1>::new(Some(salt), master)
            .expand(b"ss-subkey", subkey)
            .expect("a key length HKDF-SHA1 can produce");
        let key32 = |k: &[u8]| -> [u8; 32] { k.try_into().expect("32 bytes") };
        let aead = match method {
            Method::ChaCha20 => Aead::ChaCha20(ChaCha20Poly1305::new(&key32(subkey))),
            Method::XChaCha20 => Aead::XChaCha20(XChaCha20Poly1305::new(&key32(subkey))),
            Method::Aes128Gcm => Aead::Aes128Gcm(Aes128Gcm::new_from_slice(subkey).expect("16 bytes")),
            Method::Aes256Gcm => Aead::Aes256Gcm(Aes256Gcm::new_from_slice(subkey).expect("32 bytes")),
        };
        Cipher(Chunks::new(aead))
    }

    /// Encrypts `data` in place with the next nonce; returns the tag.
    pub fn seal(&mut self, data: &mut [u8]) -> [u8; TAG] {
        self.0.seal(data)
    }

    /// Decrypts `data` in place if `tag` authenticates it. On failure `data`
    /// must not be used.
    pub fn open(&mut self, data: &mut [u8], tag: &[u8]) -> Result<(), Errno> {
        self.0.open(data, tag).map_err(|_| AUTH_FAILED)
    }

    /// Seals one chunk of `payload` (1 to [`MAX_PAYLOAD`] bytes) into
    /// `out`, which must hold `payload.len() + 34` bytes; returns that.
    fn seal_chunk(&mut self, payload: &[u8], out: &mut [u8]) -> usize {
        self.0.seal_chunk(payload, out)
    }

    /// Opens a length block (the first [`LEN_BLOCK`] bytes of `block`); the
    /// payload length. Zero is an authentication failure, as in libev.
    pub fn open_len(&mut self, block: &[u8]) -> Result<usize, Errno> {
        let block = block.get(..LEN_BLOCK).and_then(|b| b.try_into().ok()).ok_or(AUTH_FAILED)?;
        self.0.open_len(block).map_err(|_| AUTH_FAILED)
    }

    /// The key (= salt) length.
    fn salt_len(&self) -> usize {
        match self.0.aead() {
            Aead::Aes128Gcm(_) => 16,
            _ => 32,
        }
    }
}

/// The address the client asks the server to connect to, as the SOCKS5
/// address header that starts the client's first chunk.
#[derive(Clone, Copy)]
pub struct Target {
    header: [u8; MAX_HEADER],
    len: usize,
}

impl core::fmt::Debug for Target {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Target({:?})", self.header().escape_ascii())
    }
}

impl Target {
    /// `host:port`, where host is an IPv4 address, an IPv6 address in
    /// brackets, or a domain name of 1 to 255 bytes.
    pub fn parse(text: &[u8]) -> Result<Target, &'static str> {
        const WANT: &str = "must be host:port (IPv6 in brackets)";
        let colon = text.iter().rposition(|&b| b == b':').ok_or(WANT)?;
        let (host, port) = (&text[..colon], &text[colon + 1..]);
        let port: u16 = core::str::from_utf8(port).ok().and_then(|p| p.parse().ok()).ok_or("bad port")?;
        let mut header = [0u8; MAX_HEADER];
        let host_str = core::str::from_utf8(host).ok();
        let len = if let Some(v4) = host_str.and_then(|h| h.parse::<core::net::Ipv4Addr>().ok()) {
            header[0] = 1;
            header[1..5].copy_from_slice(&v4.octets());
            5
        } else if let [b'[', inner @ .., b']'] = host {
            let v6: core::net::Ipv6Addr =
                core::str::from_utf8(inner).ok().and_then(|h| h.parse().ok()).ok_or("bad IPv6 address")?;
            header[0] = 4;
            header[1..17].copy_from_slice(&v6.octets());
            17
        } else {
            if host.is_empty() || host.len() > 255 || host.contains(&b':') {
                return Err(WANT);
            }
            header[0] = 3;
            header[1] = host.len() as u8;
            header[2..2 + host.len()].copy_from_slice(host);
            2 + host.len()
        };
        header[len..len + 2].copy_from_slice(&port.to_be_bytes());
        Ok(Target { header, len: len + 2 })
    }

    /// The SOCKS5 address header.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.len]
    }
}

/// Length of the SOCKS5 address header at the start of `payload`, if it is
/// one (libev's server rejects anything else).
fn header_len(payload: &[u8]) -> Option<usize> {
    let len = match *payload.first()? & 0x0f {
        1 => 1 + 4 + 2,
        4 => 1 + 16 + 2,
        3 => 1 + 1 + *payload.get(1)? as usize + 2,
        _ => return None,
    };
    (payload.len() >= len).then_some(len)
}

/// The transport: method and master key, and the target for client ends.
/// Its `Debug` leaves the key out (as every type here that holds one).
#[derive(Clone)]
pub struct Ss {
    method: Method,
    key: [u8; MAX_KEY],
    target: Option<Target>,
}

/// The config keys.
pub const KEYS: [&str; 4] = ["method", "password", "key", "target"];

impl Ss {
    /// Parses a `key=value` config (see `README.md`).
    pub fn from_config(config: &[u8]) -> Result<Ss, InitError> {
        let config = Config::parse(config)?;
        config.only(&KEYS)?;
        let method = config.required("method", Method::parse)?;
        let mut key = [0u8; MAX_KEY];
        let key_len = method.key_len();
        if config.get("key").is_some() {
            config.required("key", |text| {
                let mut b64 = [0u8; 64];
                let b64 = text.copy_to(&mut b64).map_err(|_| "longer than a key")?;
                let n = decode_base64(b64, &mut key).ok_or("not base64")?;
                if n == key_len { Ok(()) } else { Err("wrong length for this method") }
            })?;
        } else {
            config.required("password", |text| {
                if text.is_empty() {
                    return Err("empty");
                }
                key_from_password(text.bytes(), &mut key[..key_len]);
                Ok(())
            })?;
        }
        let target = config.optional("target", |text| {
            let mut buf = [0u8; 300];
            Target::parse(text.copy_to(&mut buf).map_err(|_| "too long")?)
        })?;
        Ok(Ss { method, key, target })
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The master key.
    pub fn master_key(&self) -> &[u8] {
        &self.key[..self.method.key_len()]
    }

    /// [`Transport::handshake`] with a chosen salt (the guest draws it from
    /// the host's randomness; tests choose it). A client end sends `salt`
    /// with its first chunk; a server end keeps it for its first reply.
    pub fn handshake_for(&self, role: Role, salt: [u8; MAX_KEY]) -> Result<AnyHandshake, Errno> {
        if !role.is_client() {
            let state = SsHandshake::ServerWait { salt };
            return Ok(AnyHandshake::Server(ServerHandshake { method: self.method, key: self.key, state }));
        }
        // The target is required on the client side; without one the
        // connection fails (the config was valid for a server).
        let target = self.target.ok_or(Errno::INVAL)?;
        let cipher = Cipher::new(self.method, self.master_key(), &salt[..self.method.key_len()]);
        Ok(AnyHandshake::Client(SsHandshake::ClientSend { cipher, salt, target }))
    }
}

/// Standard or URL-safe base64, padded or not (libev's `key` is URL-safe;
/// other tools print the standard alphabet).
fn decode_base64(text: &[u8], out: &mut [u8]) -> Option<usize> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode_slice(text, out).ok())
}

/// The connection's first step.
// One per connection, on the worker's stack; boxing would need an allocator,
// which guests do not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SsHandshake {
    /// Client: send the salt and the address header as the first chunk.
    ClientSend {
        /// The client's cipher for its salt.
        cipher: Cipher,
        /// The client's salt.
        salt: [u8; MAX_KEY],
        /// What the first chunk announces.
        target: Target,
    },
    /// Server: wait for the client's salt and first chunk; `salt` is ours,
    /// for the first reply.
    ServerWait {
        /// Our salt.
        salt: [u8; MAX_KEY],
    },
    /// Server: the client's length block opened, waiting for the rest of the
    /// first chunk.
    ServerChunk {
        /// Our salt.
        salt: [u8; MAX_KEY],
        /// The client's cipher.
        cipher: Cipher,
        /// The first payload's length.
        len: usize,
    },
    /// Server: authentication failed. Everything is read and dropped; no
    /// byte is sent; the connection ends only when the client closes.
    Failed,
    /// Over; the keys are ready.
    Done(SsKeys),
}

/// What the handshake hands to the codecs.
#[derive(Debug)]
pub enum SsKeys {
    /// Client end: our cipher, past the first chunk, and the salt we sent
    /// (a server "salt" equal to it is our own stream reflected back).
    Client(Cipher, [u8; MAX_KEY]),
    /// Server end: the client's cipher past its first chunk, our salt, and
    /// how many bytes at the front of the decoder's input are already the
    /// first chunk's payload in plain text.
    Server {
        /// Decrypts the client's chunks.
        client: Cipher,
        /// Our salt, sent with our first reply.
        salt: [u8; MAX_KEY],
        /// Plain bytes waiting at the front of the decoder's input.
        plain: usize,
    },
}

/// Room a handshake needs for its output: a salt and the first chunk.
const HANDSHAKE_OUTPUT: usize = MAX_KEY + LEN_BLOCK + MAX_HEADER + TAG;

impl SsHandshake {
    /// The errno the worker ends with when the peer closes mid-handshake.
    fn peer_closed(&self) -> Errno {
        match self {
            // The client gave up after a failed authentication: now the
            // connection may end (the host closes it: a FIN, as libev).
            SsHandshake::Failed => AUTH_FAILED,
            _ => Errno::CONNRESET,
        }
    }

    fn keys(self) -> SsKeys {
        match self {
            SsHandshake::Done(keys) => keys,
            _ => unreachable!("keys before the handshake was done"),
        }
    }

    /// The client's one step: salt and first chunk, then done.
    fn client_step(&mut self, output: &mut [u8]) -> Step {
        if let SsHandshake::ClientSend { cipher, salt, target } = self {
            let salt_len = cipher.salt_len();
            output[..salt_len].copy_from_slice(&salt[..salt_len]);
            let n = cipher.seal_chunk(target.header(), &mut output[salt_len..]);
            *self = SsHandshake::Done(SsKeys::Client(cipher.clone(), *salt));
            return Step { consumed: 0, produced: salt_len + n, done: true };
        }
        Step { done: true, ..Step::default() }
    }
}

/// The server end's handshake: [`SsHandshake`] plus what it needs from the
/// transport.
pub struct ServerHandshake {
    method: Method,
    key: [u8; MAX_KEY],
    state: SsHandshake,
}

/// Either end's handshake.
#[derive(Debug)]
pub enum AnyHandshake {
    /// Dialer or relay.
    Client(SsHandshake),
    /// Listener.
    Server(ServerHandshake),
}

impl ServerHandshake {
    fn step(&mut self, input: &mut [u8]) -> Step {
        let salt_len = self.method.key_len();
        loop {
            match &mut self.state {
                SsHandshake::ServerWait { salt } => {
                    if input.len() < salt_len + LEN_BLOCK {
                        return Step::default();
                    }
                    let mut cipher = Cipher::new(self.method, &self.key[..salt_len], &input[..salt_len]);
                    self.state = match cipher.open_len(&input[salt_len..salt_len + LEN_BLOCK]) {
                        Ok(len) => SsHandshake::ServerChunk { salt: *salt, cipher, len },
                        Err(_) => SsHandshake::Failed,
                    };
                }
                SsHandshake::ServerChunk { salt, cipher, len } => {
                    let (start, len) = (salt_len + LEN_BLOCK, *len);
                    if input.len() < start + len + TAG {
                        return Step::default();
                    }
                    let (payload, tag) = input[start..start + len + TAG].split_at_mut(len);
                    let header = match cipher.open(payload, tag) {
                        Ok(()) => header_len(payload),
                        Err(_) => None,
                    };
                    let Some(header) = header else {
                        self.state = SsHandshake::Failed;
                        continue;
                    };
                    // The payload past the address header goes to the
                    // decoder as plain text: move it up against the next
                    // chunk, over the tag, and consume everything before it.
                    input.copy_within(start + header..start + len, start + header + TAG);
                    let plain = len - header;
                    let keys = SsKeys::Server { client: cipher.clone(), salt: *salt, plain };
                    self.state = SsHandshake::Done(keys);
                    return Step { consumed: start + header + TAG, produced: 0, done: true };
                }
                SsHandshake::Failed => return Step { consumed: input.len(), produced: 0, done: false },
                SsHandshake::Done(_) | SsHandshake::ClientSend { .. } => {
                    return Step { done: true, ..Step::default() };
                }
            }
        }
    }
}

impl Handshake for AnyHandshake {
    type Keys = SsKeys;
    const MIN_OUTPUT: usize = HANDSHAKE_OUTPUT;

    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<Step, Errno> {
        match self {
            AnyHandshake::Client(hs) => Ok(hs.client_step(output)),
            AnyHandshake::Server(hs) => Ok(hs.step(input)),
        }
    }

    fn peer_closed(&mut self) -> Errno {
        match self {
            AnyHandshake::Client(hs) => hs.peer_closed(),
            AnyHandshake::Server(hs) => hs.state.peer_closed(),
        }
    }

    fn keys(self) -> SsKeys {
        match self {
            AnyHandshake::Client(hs) => hs.keys(),
            AnyHandshake::Server(hs) => hs.state.keys(),
        }
    }
}

/// Plain → wire: cuts the input into chunks of up to [`MAX_PAYLOAD`] bytes;
/// a server end puts its salt before its first chunk.
#[derive(Debug)]
pub struct Encoder {
    cipher: Cipher,
    /// Salt still to send (server end, before the first chunk).
    salt: Option<([u8; MAX_KEY], usize)>,
}

impl Codec for Encoder {
    /// Room for the salt and one whole chunk.
    const MIN_OUTPUT: usize = MAX_KEY + MAX_CHUNK;

    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let mut p = Progress::default();
        loop {
            let rest = &input[p.consumed..];
            let salt_len = self.salt.map_or(0, |(_, n)| n);
            let n = rest.len().min(MAX_PAYLOAD);
            // Never an empty chunk; never a chunk cut to fit the room left
            // (that would send a sliver as a chunk of its own).
            if n == 0 || output.len() - p.produced < salt_len + LEN_BLOCK + n + TAG {
                return Ok(p);
            }
            let out = &mut output[p.produced..];
            if let Some((salt, len)) = self.salt.take() {
                out[..len].copy_from_slice(&salt[..len]);
            }
            let written = self.cipher.seal_chunk(&rest[..n], &mut out[salt_len..]);
            p.consumed += n;
            p.produced += salt_len + written;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Client end: collecting the server's salt.
    Salt { have: usize },
    /// Server end: plain bytes the handshake left at the front of the input.
    Plain { left: usize },
    /// The chunk stream, opened by [`Decoder::opener`].
    Chunks,
    /// Server end after a failed authentication: read and drop everything.
    Discard,
}

/// Wire → plain: opens chunks, delivering only authenticated bytes.
pub struct Decoder {
    method: Method,
    key: [u8; MAX_KEY],
    /// Set once the salt is in (client end) or by the handshake (server).
    opener: Option<Opener<Aead>>,
    state: State,
    /// Whether this is a server end (failures then discard silently).
    server: bool,
    /// Client end: the salt we sent, which the server's must not equal.
    own_salt: Option<[u8; MAX_KEY]>,
    salt: [u8; MAX_KEY],
}

impl Codec for Decoder {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let mut p = Progress::default();
        loop {
            let rest = &input[p.consumed..];
            let out = &mut output[p.produced..];
            match self.state {
                State::Discard => {
                    p.consumed = input.len();
                    return Ok(p);
                }
                State::Plain { left } => {
                    let k = left.min(rest.len()).min(out.len());
                    if k == 0 {
                        return Ok(p);
                    }
                    out[..k].copy_from_slice(&rest[..k]);
                    (p.consumed, p.produced) = (p.consumed + k, p.produced + k);
                    self.state = if k == left { State::Chunks } else { State::Plain { left: left - k } };
                }
                State::Chunks => {
                    let opener = self.opener.as_mut().expect("an opener once the salt is in");
                    match opener.open(rest, out) {
                        Ok((consumed, produced)) => {
                            p.consumed += consumed;
                            p.produced += produced;
                            return Ok(p);
                        }
                        // A server end hands on what was authenticated,
                        // then discards silently, as libev; a client end
                        // fails the connection.
                        Err(failed) if self.server => {
                            p.produced += failed.produced;
                            self.state = State::Discard;
                        }
                        Err(_) => return Err(AUTH_FAILED),
                    }
                }
                _ if rest.is_empty() => return Ok(p),
                State::Salt { have } => {
                    let salt_len = self.method.key_len();
                    let k = (salt_len - have).min(rest.len());
                    self.salt[have..have + k].copy_from_slice(&rest[..k]);
                    p.consumed += k;
                    if have + k < salt_len {
                        self.state = State::Salt { have: have + k };
                        continue;
                    }
                    // Our own salt coming back is our own stream reflected:
                    // every tag would check out, and must not be believed.
                    // (A fold, not `==`: slice equality becomes a call to
                    // `memcmp`, which a no_std guest does not link.)
                    let reflected = self.own_salt.is_some_and(|own| {
                        own[..salt_len].iter().zip(&self.salt[..salt_len]).fold(0u8, |d, (a, b)| d | (a ^ b))
                            == 0
                    });
                    if reflected {
                        return Err(AUTH_FAILED);
                    }
                    let cipher = Cipher::new(self.method, &self.key[..salt_len], &self.salt[..salt_len]);
                    self.opener = Some(Opener::new(cipher.0));
                    self.state = State::Chunks;
                }
            }
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, Errno> {
        match self.state {
            // A server that never replied.
            State::Salt { have: 0 } => Ok(0),
            State::Plain { .. } => Ok(self.transform(&[], output)?.produced),
            // The end between two chunks, once everything opened is out.
            State::Chunks => {
                let produced = self.transform(&[], output)?.produced;
                let opener = self.opener.as_ref().expect("an opener once the salt is in");
                if produced > 0 || opener.at_boundary() { Ok(produced) } else { Err(Errno::PROTO) }
            }
            // The client gave up on a server end that stopped listening.
            State::Discard => Err(AUTH_FAILED),
            // The stream stopped inside the salt.
            State::Salt { .. } => Err(Errno::PROTO),
        }
    }
}

/// The master key is the password's equal: no `Debug` of a type that holds
/// it shows it (a guest's panic message or a log line would carry it off).
const REDACTED: &str = "[redacted]";

impl core::fmt::Debug for Ss {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ss")
            .field("method", &self.method)
            .field("key", &REDACTED)
            .field("target", &self.target)
            .finish()
    }
}

impl core::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("method", &self.method)
            .field("key", &REDACTED)
            .field("state", &self.state)
            .finish()
    }
}

impl core::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("method", &self.method)
            .field("key", &REDACTED)
            .field("opener", &self.opener)
            .field("state", &self.state)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Transport for Ss {
    const NAME: &'static str = "ss";
    const WANTS_CONFIG: bool = true;
    type Encoder = Encoder;
    type Decoder = Decoder;
    type Handshake = AnyHandshake;

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        match config {
            Some(config) => Ss::from_config(config),
            None => Err(InitError::invalid("no config; it needs at least method= and password= (or key=)")),
        }
    }

    /// The client's salt: shadowsocks-libev refuses a repeated one, and so
    /// does a host with a replay filter, before this guest sees it.
    fn unique_prefix(&self) -> usize {
        self.method.key_len()
    }

    fn handshake(&self, role: Role) -> Result<AnyHandshake, Errno> {
        let mut salt = [0u8; MAX_KEY];
        water_guest::random(&mut salt[..self.method.key_len()])?;
        self.handshake_for(role, salt)
    }

    fn encoder(&self, _role: Role, keys: &Keys<Self>) -> Encoder {
        match keys {
            SsKeys::Client(cipher, _) => Encoder { cipher: cipher.clone(), salt: None },
            SsKeys::Server { salt, .. } => {
                let salt_len = self.method.key_len();
                Encoder {
                    cipher: Cipher::new(self.method, self.master_key(), &salt[..salt_len]),
                    salt: Some((*salt, salt_len)),
                }
            }
        }
    }

    fn decoder(&self, _role: Role, keys: &Keys<Self>) -> Decoder {
        let (opener, state, server, own_salt) = match keys {
            SsKeys::Client(_, salt) => (None, State::Salt { have: 0 }, false, Some(*salt)),
            SsKeys::Server { client, plain, .. } => (
                Some(Opener::new(client.0.clone())),
                if *plain > 0 { State::Plain { left: *plain } } else { State::Chunks },
                true,
                None,
            ),
        };
        Decoder { method: self.method, key: self.key, opener, state, server, own_salt, salt: [0; MAX_KEY] }
    }
}

water_guest::export_transport!(Ss);

#[cfg(test)]
mod tests;
