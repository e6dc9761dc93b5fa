//! `obfs4-check`: a test-only WATM for obfs4's primitives inside wasm,
//! where `watm-aead`'s SIMD lanes are real. `_water_init` seals every
//! length from 0 to 1500 and a few longer ones with `watm-aead`'s
//! XSalsa20-Poly1305 (the obfs4 guest's secretbox) and with RustCrypto's
//! `crypto_secretbox` (its portable code, compiled into the same module),
//! opens each, and fails with the first mismatch. Config `flip=1` flips
//! one ciphertext bit of ours before comparing: the negative control.
//!
//! For `benches/examples/obfs4_wasm.rs`, `work=KIND:N` then runs N units
//! of one primitive after the check, so that the time `_water_init` takes
//! measures it (KIND, unit):
//!
//! - `box` (MiB): `watm-aead`'s secretbox seal of full obfs4 frames (a
//!   1430-byte packet, a fresh nonce each, as the guest seals);
//! - `rustcrypto` (MiB): the same with `crypto_secretbox`;
//! - `box-16k` (MiB): `box` in 16 KiB messages (what a frame's size costs);
//! - `box-open` (MiB): a seal and its open (open alone is this less `box`);
//! - `siphash` (thousands of frames): one length mask, obfs4proxy's
//!   SipHash-2-4 OFB block (8 bytes into a never-reset hasher, `finish`);
//! - `hmac` (MiB): HMAC-SHA256 over 8 KiB messages (a padded handshake);
//! - `hmac-short` (thousands): HMAC-SHA256 of 32 bytes under the 52-byte
//!   `B | NODEID` key (a mark);
//! - `keypair` (attempts): a random scalar to an Elligator2 representative
//!   and its public key, `Randomized` as obfs4proxy (about half the
//!   attempts have no representative and are retried);
//! - `decode` (count): a representative to its public key;
//! - `x25519` (count): one Diffie-Hellman.
//!
//! Once past init it carries bytes unchanged, like `plain`.

#![cfg_attr(target_arch = "wasm32", no_std)]

use crypto_secretbox::aead::{AeadInPlace, KeyInit as _};
use curve25519_elligator2::{MapToPointVariant, MontgomeryPoint, Randomized};
use hmac::{Hmac, KeyInit as _, Mac};
use water_guest::{Codec, Config, Errno, InitError, Progress, Role, Transport};

/// The transport: nothing but the check at init.
#[derive(Debug)]
pub struct Obfs4Check;

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

/// Equality without `memcmp` (not linked in a no_std guest).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The longest message compared.
const LONGEST: usize = 16383;
/// An obfs4 frame's packet (type, length, payload): what one seal covers.
const PACKET: usize = 1430;

fn oracle(key: &[u8; 32]) -> crypto_secretbox::XSalsa20Poly1305 {
    crypto_secretbox::XSalsa20Poly1305::new(key.into())
}

/// Seals `len` bytes with both implementations; the first difference, if
/// any, or an open that fails.
fn compare(
    len: usize,
    rng: &mut Bytes,
    flip: bool,
    ours: &mut [u8],
    theirs: &mut [u8],
) -> Result<(), InitError> {
    let (mut key, mut nonce) = ([0u8; 32], [0u8; 24]);
    rng.fill(&mut key);
    rng.fill(&mut nonce);
    let (ours, theirs) = (&mut ours[..len], &mut theirs[..len]);
    rng.fill(ours);
    theirs.copy_from_slice(ours);
    let aead = watm_aead::salsa::XSalsa20Poly1305::new(&key);
    let tag = aead.seal(&nonce, ours);
    if flip && len > 0 {
        ours[len / 2] ^= 1;
    }
    let want = oracle(&key).encrypt_in_place_detached((&nonce).into(), &[], theirs).expect("short");
    if !same(ours, theirs) || !same(&tag, &want) {
        return Err(InitError::invalid("xsalsa20-poly1305 differs from crypto_secretbox's"));
    }
    if aead.open(&nonce, ours, &tag).is_err() {
        return Err(InitError::invalid("xsalsa20-poly1305 does not open its own seal"));
    }
    Ok(())
}

/// The comparisons (not inlined: its buffers and `work`'s share the stack
/// one after the other).
#[inline(never)]
pub fn check(flip: bool) -> Result<(), InitError> {
    let mut rng = Bytes(0x6f62_6673_3421_0001);
    let (mut ours, mut theirs) = ([0u8; LONGEST], [0u8; LONGEST]);
    for len in (0..=1500).chain([4095, 4096, 8191, 16000, LONGEST]) {
        compare(len, &mut rng, flip, &mut ours, &mut theirs)?;
    }
    Ok(())
}

type HmacSha256 = Hmac<sha2::Sha256>;

/// Runs `n` units of `kind` (see the crate's documentation).
#[inline(never)]
fn work(kind: &[u8], n: u32) -> Result<(), InitError> {
    let key = [7u8; 32];
    let mut nonce = [0u8; 24];
    let mut frame = [0x5au8; PACKET];
    let frames_per_mib = (1 << 20) / PACKET as u32;
    let mut sink = 0u8;
    match kind {
        b"box" | b"box-open" | b"rustcrypto" => {
            let aead = watm_aead::salsa::XSalsa20Poly1305::new(&key);
            let theirs = oracle(&key);
            for i in 0..n * frames_per_mib {
                nonce[16..].copy_from_slice(&u64::from(i).to_be_bytes());
                let tag: [u8; 16] = if kind == b"rustcrypto" {
                    theirs.encrypt_in_place_detached((&nonce).into(), &[], &mut frame).expect("short").into()
                } else {
                    aead.seal(&nonce, &mut frame)
                };
                if kind == b"box-open" {
                    aead.open(&nonce, &mut frame, &tag).map_err(|_| InitError::invalid("open failed"))?;
                }
                sink ^= tag[0];
            }
        }
        b"box-16k" => {
            let aead = watm_aead::salsa::XSalsa20Poly1305::new(&key);
            let mut big = [0x5au8; 16 * 1024];
            for i in 0..n * 64 {
                nonce[16..].copy_from_slice(&u64::from(i).to_be_bytes());
                sink ^= aead.seal(&nonce, &mut big)[0];
            }
        }
        b"siphash" => {
            use core::hash::Hasher as _;
            let mut sip = siphasher::sip::SipHasher24::new_with_keys(1, 2);
            let mut ofb = [3u8; 8];
            for _ in 0..n * 1000 {
                sip.write(&ofb);
                ofb = sip.finish().to_le_bytes();
            }
            sink ^= ofb[0];
        }
        b"hmac" => {
            let message = [0x33u8; 8192];
            for _ in 0..n * 128 {
                let mut mac = HmacSha256::new_from_slice(&key).expect("any key");
                mac.update(&message);
                sink ^= mac.finalize().into_bytes()[0];
            }
        }
        b"hmac-short" => {
            let mac_key = [0x44u8; 52];
            for _ in 0..n * 1000 {
                let mut mac = HmacSha256::new_from_slice(&mac_key).expect("any key");
                mac.update(&key);
                let out = mac.finalize().into_bytes();
                sink ^= out[0];
                frame[0] ^= out[1];
            }
        }
        b"keypair" => {
            let mut private = [9u8; 32];
            for i in 0..n {
                private[..4].copy_from_slice(&i.to_le_bytes());
                let repr: Option<[u8; 32]> = Randomized::to_representative(&private, i as u8).into_option();
                if let Some(repr) = repr {
                    let public = Randomized::mul_base_clamped(private).to_montgomery().to_bytes();
                    sink ^= repr[0] ^ public[0];
                }
            }
        }
        b"decode" => {
            let mut repr = [0x21u8; 32];
            for i in 0..n {
                repr[..4].copy_from_slice(&i.to_le_bytes());
                let public = MontgomeryPoint::from_representative::<Randomized>(&repr)
                    .ok_or(InitError::invalid("a representative did not map"))?;
                sink ^= public.to_bytes()[0];
            }
        }
        b"x25519" => {
            let mut public = MontgomeryPoint::mul_base_clamped(key);
            for _ in 0..n {
                public = public.mul_clamped(key);
            }
            sink ^= public.to_bytes()[0];
        }
        _ => {
            return Err(InitError::invalid(
                "work: box, box-open, box-16k, rustcrypto, siphash, hmac, hmac-short, keypair, decode or x25519",
            ));
        }
    }
    // Keep the work from being optimised away.
    core::hint::black_box((sink, frame[0]));
    Ok(())
}

impl Transport for Obfs4Check {
    const NAME: &'static str = "obfs4-check";
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
                let colon = v.iter().position(|&b| b == b':').ok_or("KIND:N")?;
                let mut kind = [0u8; 16];
                let name = v.get(..colon).filter(|n| n.len() <= 16).ok_or("KIND:N")?;
                kind[..name.len()].copy_from_slice(name);
                let n = core::str::from_utf8(&v[colon + 1..]).ok().and_then(|m| m.parse().ok()).ok_or("N")?;
                Ok((kind, name.len(), n))
            })?;
        }
        check(flip)?;
        if let Some((kind, len, n)) = job {
            work(&kind[..len], n)?;
        }
        Ok(Obfs4Check)
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

water_guest::export_transport!(Obfs4Check);
