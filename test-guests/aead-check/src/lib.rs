//! `aead-check`: a test-only WATM that runs `watm-aead`'s checks where they
//! matter, inside wasm with SIMD128 (on the host the crate's lanes are plain
//! words). `_water_init` seals RFC 8439's §2.8.2 vector, then every length
//! from 0 to 1100 and a few chunk sizes up to 16383 bytes, with both
//! `watm-aead` and RustCrypto's `chacha20poly1305` (its portable code,
//! compiled into the same module), and fails with the first mismatch.
//! Config `flip=1` flips one ciphertext bit of ours before comparing: the
//! negative control that shows the check can fail.
//!
//! For `benches/examples/aead_wasm.rs`, `work=KIND:MIB` then runs MIB MiB
//! of one primitive in 16 KiB messages after the check (KIND: `seal`,
//! `open` (a seal and its open), `chacha`, `poly`, or `rustcrypto` for
//! RustCrypto's seal compiled
//! beside it), so that the time `_water_init` takes measures it.
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
#[inline(never)]
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

/// Runs `mib` MiB of `kind` in 16 KiB messages, in place. (Not inlined,
/// nor is `check`: their buffers share the 64 KiB stack one after the
/// other, not at once.)
#[inline(never)]
fn work(kind: &[u8], mib: u32) -> Result<(), InitError> {
    let key = [7u8; 32];
    let mut nonce = [0u8; 12];
    let mut buf = [0x5au8; 16 * 1024];
    let aead = watm_aead::ChaCha20Poly1305::new(&key);
    let oracle = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key).expect("32 bytes");
    let chacha = watm_aead::chacha::ChaCha20::new(&key, &nonce);
    let mut sink = 0u8;
    for i in 0..mib * 64 {
        nonce[..4].copy_from_slice(&i.to_le_bytes());
        let tag = match kind {
            b"seal" => aead.seal(&nonce, &[], &mut buf),
            b"open" => {
                // A seal, then its open: open alone is this minus `seal`.
                let tag = aead.seal(&nonce, &[], &mut buf);
                aead.open(&nonce, &[], &mut buf, &tag).map_err(|_| InitError::invalid("open failed"))?;
                tag
            }
            b"chacha" => {
                chacha.apply_keystream(1, &mut buf);
                [buf[0]; 16]
            }
            b"poly" => {
                let mut mac = watm_aead::poly::Poly1305::new(&key);
                mac.update_padded(&buf);
                mac.finalize()
            }
            b"rustcrypto" => oracle
                .encrypt_inout_detached(&nonce.into(), &[], (&mut buf[..]).into())
                .expect("short")
                .into(),
            _ => return Err(InitError::invalid("work: seal, open, chacha, poly or rustcrypto")),
        };
        sink ^= tag[0];
    }
    // Keep the work from being optimised away.
    core::hint::black_box(sink);
    Ok(())
}

impl Transport for AeadCheck {
    const NAME: &'static str = "aead-check";
    const WANTS_CONFIG: bool = true;
    type Encoder = Copy;
    type Decoder = Copy;
    type Handshake = ();

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        let (mut flip, mut job) = (false, None);
        if let Some(config) = config {
            let config = Config::parse(config)?;
            config.only(&["flip", "work"])?;
            flip =
                config.optional("flip", |v| if v.eq_bytes(b"1") { Ok(()) } else { Err("only 1") })?.is_some();
            job = config.optional("work", |v| {
                let mut buf = [0u8; 32];
                let v = v.copy_to(&mut buf).map_err(|_| "too long")?;
                let colon = v.iter().position(|&b| b == b':').ok_or("KIND:MIB")?;
                let mut kind = [0u8; 16];
                let name = v.get(..colon).filter(|n| n.len() <= 16).ok_or("KIND:MIB")?;
                kind[..name.len()].copy_from_slice(name);
                let mib =
                    core::str::from_utf8(&v[colon + 1..]).ok().and_then(|m| m.parse().ok()).ok_or("MIB")?;
                Ok((kind, name.len(), mib))
            })?;
        }
        check(flip)?;
        if let Some((kind, len, mib)) = job {
            work(&kind[..len], mib)?;
        }
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
