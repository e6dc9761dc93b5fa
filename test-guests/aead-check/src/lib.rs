//! `aead-check`: a test-only WATM that runs `watm-aead`'s checks where they
//! matter, inside wasm with SIMD128 (on the host the crate's lanes are plain
//! words). `_water_init` seals RFC 8439's §2.8.2 vector, then every length
//! from 0 to 1100 and a few chunk sizes up to 16383 bytes, with both
//! `watm-aead` and RustCrypto's `chacha20poly1305` (its portable code,
//! compiled into the same module), and fails with the first mismatch.
//! Config `flip=1` flips one ciphertext bit of ours before comparing: the
//! negative control that shows the check can fail.
//!
//! Once past init it carries bytes unchanged, like `plain`.

#![cfg_attr(target_arch = "wasm32", no_std)]

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use water_guest::{Codec, Config, Errno, InitError, Progress, Role, Transport};

/// The transport: nothing but the check at init.
#[derive(Debug)]
pub struct AeadCheck;

/// Copies input to output.
#[derive(Debug)]
pub struct Copy;

impl Codec for Copy {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let n = input.len().min(output.len());
        output[..n].copy_from_slice(&input[..n]);
        Ok(Progress { consumed: n, produced: n })
    }
}

/// A small deterministic generator (xorshift64): the same inputs on every
/// run, no host randomness needed.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }

    fn fill(&mut self, out: &mut [u8]) {
        out.iter_mut().for_each(|b| *b = self.next());
    }
}

/// Constant-free equality without `memcmp` (not linked in a no_std guest).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

const LONGEST: usize = 16383;

/// Seals `len` bytes with both implementations and both AEADs; the first
/// difference, if any.
fn compare(
    len: usize,
    rng: &mut Bytes,
    flip: bool,
    ours: &mut [u8],
    theirs: &mut [u8],
) -> Result<(), InitError> {
    let (mut key, mut nonce, mut xnonce, mut aad) = ([0u8; 32], [0u8; 12], [0u8; 24], [0u8; 7]);
    rng.fill(&mut key);
    rng.fill(&mut nonce);
    rng.fill(&mut xnonce);
    rng.fill(&mut aad);
    let aad = &aad[..len % 8];
    let (ours, theirs) = (&mut ours[..len], &mut theirs[..len]);
    rng.fill(ours);
    theirs.copy_from_slice(ours);

    let tag = watm_aead::ChaCha20Poly1305::new(&key).seal(&nonce, aad, ours);
    if flip && len > 0 {
        ours[len / 2] ^= 1;
    }
    let oracle = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key).expect("32 bytes");
    let want = oracle.encrypt_inout_detached(&nonce.into(), aad, (&mut *theirs).into()).expect("short");
    if !same(ours, theirs) || !same(&tag, &want) {
        return Err(InitError::invalid("chacha20-poly1305 differs from RustCrypto's"));
    }
    if watm_aead::ChaCha20Poly1305::new(&key).open(&nonce, aad, ours, &tag).is_err() {
        return Err(InitError::invalid("chacha20-poly1305 does not open its own seal"));
    }

    rng.fill(ours);
    theirs.copy_from_slice(ours);
    let tag = watm_aead::XChaCha20Poly1305::new(&key).seal(&xnonce, aad, ours);
    let oracle = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).expect("32 bytes");
    let want = oracle.encrypt_inout_detached(&xnonce.into(), aad, (&mut *theirs).into()).expect("short");
    if !same(ours, theirs) || !same(&tag, &want) {
        return Err(InitError::invalid("xchacha20-poly1305 differs from RustCrypto's"));
    }
    Ok(())
}

/// RFC 8439 §2.8.2, and the comparisons.
pub fn check(flip: bool) -> Result<(), InitError> {
    let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
    let nonce = [0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
    let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
    let mut data = *b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let tag = watm_aead::ChaCha20Poly1305::new(&key).seal(&nonce, &aad, &mut data);
    let want_start = [0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb];
    let want_tag =
        [0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91];
    if !same(&data[..8], &want_start) || !same(&tag, &want_tag) {
        return Err(InitError::invalid("RFC 8439 2.8.2 vector fails"));
    }
    let mut rng = Bytes(0x5741_5445_5221_0001);
    let (mut ours, mut theirs) = ([0u8; LONGEST], [0u8; LONGEST]);
    for len in (0..=1100).chain([4095, 4096, 8191, 16000, LONGEST]) {
        compare(len, &mut rng, flip, &mut ours, &mut theirs)?;
    }
    Ok(())
}

impl Transport for AeadCheck {
    const NAME: &'static str = "aead-check";
    const WANTS_CONFIG: bool = true;
    type Encoder = Copy;
    type Decoder = Copy;
    type Handshake = ();

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        let flip = match config {
            Some(config) => {
                let config = Config::parse(config)?;
                config.only(&["flip"])?;
                config.optional("flip", |v| if v.eq_bytes(b"1") { Ok(()) } else { Err("only 1") })?.is_some()
            }
            None => false,
        };
        check(flip)?;
        Ok(AeadCheck)
    }

    fn handshake(&self, _role: Role) -> Result<(), Errno> {
        Ok(())
    }

    fn encoder(&self, _role: Role, _keys: &()) -> Copy {
        Copy
    }

    fn decoder(&self, _role: Role, _keys: &()) -> Copy {
        Copy
    }
}

water_guest::export_transport!(AeadCheck);
