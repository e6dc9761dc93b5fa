//! A byte stream as AEAD chunks, the shape of Shadowsocks' AEAD protocol
//! (SIP004) and a sound default for other transports: each chunk is
//!
//! ```text
//! [ payload length, 2 bytes big-endian, sealed ][ tag ][ payload, sealed ][ tag ]
//! ```
//!
//! with a nonce that is a little-endian counter, incremented after every
//! seal and every open, and no associated data. A length is 1 to
//! [`MAX_PAYLOAD`]; the top two bits are ignored on receipt and a zero
//! length is an authentication failure (as shadowsocks-libev).
//!
//! [`Chunks`] seals and opens single chunks; [`Opener`] turns a stream cut
//! anywhere into authenticated plain bytes, without copying a chunk that
//! arrives whole into an output with room for it.

use crate::{AuthError, ChaCha20Poly1305, TAG, XChaCha20Poly1305};

/// Largest payload of one chunk (SIP004; libev's `CHUNK_SIZE_MASK`).
pub const MAX_PAYLOAD: usize = 0x3FFF;
/// A sealed length: two bytes and a tag.
pub const LEN_BLOCK: usize = 2 + TAG;
/// Bytes a chunk adds to its payload.
pub const OVERHEAD: usize = LEN_BLOCK + TAG;
/// Longest nonce of any AEAD here (XChaCha20's).
pub const MAX_NONCE: usize = 24;

/// An AEAD that seals with a nonce of [`ChunkAead::nonce_len`] bytes and no
/// associated data. Implemented here for the ChaCha AEADs; a transport
/// implements it for any other (e.g. AES-GCM from RustCrypto).
pub trait ChunkAead {
    /// Nonce length, at most [`MAX_NONCE`].
    fn nonce_len(&self) -> usize;
    /// Encrypts `data` in place; returns the tag.
    fn seal(&self, nonce: &[u8], data: &mut [u8]) -> [u8; TAG];
    /// Decrypts `data` in place if `tag` authenticates it.
    fn open(&self, nonce: &[u8], data: &mut [u8], tag: &[u8; TAG]) -> Result<(), AuthError>;
}

impl ChunkAead for ChaCha20Poly1305 {
    fn nonce_len(&self) -> usize {
        12
    }

    fn seal(&self, nonce: &[u8], data: &mut [u8]) -> [u8; TAG] {
        ChaCha20Poly1305::seal(self, nonce.try_into().expect("a 12-byte nonce"), &[], data)
    }

    fn open(&self, nonce: &[u8], data: &mut [u8], tag: &[u8; TAG]) -> Result<(), AuthError> {
        ChaCha20Poly1305::open(self, nonce.try_into().expect("a 12-byte nonce"), &[], data, tag)
    }
}

impl ChunkAead for XChaCha20Poly1305 {
    fn nonce_len(&self) -> usize {
        24
    }

    fn seal(&self, nonce: &[u8], data: &mut [u8]) -> [u8; TAG] {
        XChaCha20Poly1305::seal(self, nonce.try_into().expect("a 24-byte nonce"), &[], data)
    }

    fn open(&self, nonce: &[u8], data: &mut [u8], tag: &[u8; TAG]) -> Result<(), AuthError> {
        XChaCha20Poly1305::open(self, nonce.try_into().expect("a 24-byte nonce"), &[], data, tag)
    }
}

/// One direction's AEAD and its nonce counter.
#[derive(Clone)]
pub struct Chunks<A> {
    aead: A,
    nonce: [u8; MAX_NONCE],
}

impl<A> core::fmt::Debug for Chunks<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Neither keys nor nonces in logs.
        f.write_str("Chunks")
    }
}

impl<A: ChunkAead> Chunks<A> {
    /// Chunks sealed or opened with `aead`, nonce counter zero.
    pub fn new(aead: A) -> Chunks<A> {
        assert!(aead.nonce_len() <= MAX_NONCE, "nonce longer than {MAX_NONCE} bytes");
        Chunks { aead, nonce: [0; MAX_NONCE] }
    }

    /// The AEAD.
    pub fn aead(&self) -> &A {
        &self.aead
    }

    /// The nonce as a little-endian counter (libsodium's
    /// `sodium_increment`).
    fn next_nonce(&mut self) {
        let n = self.aead.nonce_len();
        for b in &mut self.nonce[..n] {
            *b = b.wrapping_add(1);
            if *b != 0 {
                break;
            }
        }
    }

    /// Encrypts `data` in place with the next nonce; returns the tag.
    pub fn seal(&mut self, data: &mut [u8]) -> [u8; TAG] {
        let tag = self.aead.seal(&self.nonce[..self.aead.nonce_len()], data);
        self.next_nonce();
        tag
    }

    /// Decrypts `data` in place with the next nonce if `tag` authenticates
    /// it. The nonce advances either way.
    pub fn open(&mut self, data: &mut [u8], tag: &[u8]) -> Result<(), AuthError> {
        let tag: &[u8; TAG] = tag.try_into().map_err(|_| AuthError)?;
        let result = self.aead.open(&self.nonce[..self.aead.nonce_len()], data, tag);
        self.next_nonce();
        result
    }

    /// Seals `payload` (1 to [`MAX_PAYLOAD`] bytes) as one chunk into the
    /// front of `out`, which must hold `payload.len() + OVERHEAD` bytes;
    /// returns that length.
    pub fn seal_chunk(&mut self, payload: &[u8], out: &mut [u8]) -> usize {
        let n = payload.len();
        assert!((1..=MAX_PAYLOAD).contains(&n), "a chunk holds 1 to {MAX_PAYLOAD} bytes");
        out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        let tag = self.seal(&mut out[..2]);
        out[2..LEN_BLOCK].copy_from_slice(&tag);
        let body = &mut out[LEN_BLOCK..LEN_BLOCK + n];
        body.copy_from_slice(payload);
        let tag = self.seal(body);
        out[LEN_BLOCK + n..LEN_BLOCK + n + TAG].copy_from_slice(&tag);
        n + OVERHEAD
    }

    /// Opens a sealed length; the payload length, top two bits masked off.
    /// Zero is an authentication failure.
    pub fn open_len(&mut self, block: &[u8; LEN_BLOCK]) -> Result<usize, AuthError> {
        let mut len = [block[0], block[1]];
        self.open(&mut len, &block[2..])?;
        match u16::from_be_bytes(len) as usize & MAX_PAYLOAD {
            0 => Err(AuthError),
            n => Ok(n),
        }
    }
}

/// A chunk failed to authenticate; the stream ends there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// Bytes at the front of the output, from the chunks before the bad
    /// one, that are authenticated and may be delivered.
    pub produced: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Collecting a sealed length.
    Len { have: usize },
    /// Collecting a payload of `len` and its tag.
    Payload { len: usize, have: usize },
    /// Handing out an opened payload.
    Drain { len: usize, sent: usize },
    /// An authentication failed: nothing more comes out.
    Failed,
}

/// Wire → plain for one direction: opens chunks from input cut anywhere,
/// and hands out only authenticated bytes.
pub struct Opener<A> {
    chunks: Chunks<A>,
    state: State,
    len_block: [u8; LEN_BLOCK],
    chunk: [u8; MAX_PAYLOAD + TAG],
}

impl<A> core::fmt::Debug for Opener<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opener").field("state", &self.state).finish_non_exhaustive()
    }
}

impl<A: ChunkAead> Opener<A> {
    /// Opens the chunks that `chunks` (its nonce counter where the stream
    /// is) sealed.
    pub fn new(chunks: Chunks<A>) -> Opener<A> {
        Opener {
            chunks,
            state: State::Len { have: 0 },
            len_block: [0; LEN_BLOCK],
            chunk: [0; MAX_PAYLOAD + TAG],
        }
    }

    /// Whether the stream may end here: between two chunks, nothing
    /// opened still waiting to be handed out.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Len { have: 0 }
    }

    /// Opens what it can of `input` into `output`; returns the bytes
    /// consumed and produced. A chunk that fails to authenticate ends the
    /// stream: the error says how many bytes of `output`, from chunks
    /// before it, are authenticated, and every later call fails.
    pub fn open(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize), Failed> {
        let (mut consumed, mut produced) = (0, 0);
        loop {
            let rest = &input[consumed..];
            let out = &mut output[produced..];
            match self.state {
                State::Failed => return Err(Failed { produced }),
                State::Drain { len, sent } => {
                    let k = (len - sent).min(out.len());
                    if k == 0 {
                        return Ok((consumed, produced));
                    }
                    out[..k].copy_from_slice(&self.chunk[sent..sent + k]);
                    produced += k;
                    self.state = if sent + k == len {
                        State::Len { have: 0 }
                    } else {
                        State::Drain { len, sent: sent + k }
                    };
                }
                _ if rest.is_empty() => return Ok((consumed, produced)),
                // A whole sealed length in the input: open it there, and
                // if the whole payload is there too and fits the output,
                // open it where it will be read.
                State::Len { have: 0 } if rest.len() >= LEN_BLOCK => {
                    let block = rest[..LEN_BLOCK].try_into().expect("a length block");
                    let Ok(len) = self.chunks.open_len(block) else { return self.fail(produced) };
                    consumed += LEN_BLOCK;
                    let rest = &rest[LEN_BLOCK..];
                    if rest.len() >= len + TAG && out.len() >= len {
                        out[..len].copy_from_slice(&rest[..len]);
                        if self.chunks.open(&mut out[..len], &rest[len..len + TAG]).is_err() {
                            return self.fail(produced);
                        }
                        consumed += len + TAG;
                        produced += len;
                    } else {
                        self.state = State::Payload { len, have: 0 };
                    }
                }
                State::Len { have } => {
                    let k = (LEN_BLOCK - have).min(rest.len());
                    self.len_block[have..have + k].copy_from_slice(&rest[..k]);
                    consumed += k;
                    if have + k < LEN_BLOCK {
                        self.state = State::Len { have: have + k };
                        continue;
                    }
                    let block = self.len_block;
                    let Ok(len) = self.chunks.open_len(&block) else { return self.fail(produced) };
                    self.state = State::Payload { len, have: 0 };
                }
                State::Payload { len, have } => {
                    let k = (len + TAG - have).min(rest.len());
                    self.chunk[have..have + k].copy_from_slice(&rest[..k]);
                    consumed += k;
                    if have + k < len + TAG {
                        self.state = State::Payload { len, have: have + k };
                        continue;
                    }
                    let (payload, tag) = self.chunk[..len + TAG].split_at_mut(len);
                    if self.chunks.open(payload, tag).is_err() {
                        return self.fail(produced);
                    }
                    self.state = State::Drain { len, sent: 0 };
                }
            }
        }
    }

    fn fail<T>(&mut self, produced: usize) -> Result<T, Failed> {
        self.state = State::Failed;
        Err(Failed { produced })
    }
}
