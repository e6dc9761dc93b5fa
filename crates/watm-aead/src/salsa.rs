//! XSalsa20 four blocks at a time, HSalsa20, and NaCl's secretbox
//! (XSalsa20-Poly1305), for obfs4's frames.
//!
//! Why by hand: RustCrypto's `salsa20` has no wasm SIMD128 backend, so in a
//! guest it runs one block at a time on plain words, as `chacha20` did
//! (`shared/AEAD-IN-WASM.md`). As in [`crate::chacha`], each of the sixteen
//! state words is a `U32x4` holding that word for four consecutive blocks.

use crate::lanes::U32x4;
use crate::poly::Poly1305;
use crate::{AuthError, TAG};

/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Bytes of keystream one pass makes.
pub const WIDE: usize = 4 * 64;

fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    core::array::from_fn(|i| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

/// Salsa20's quarter round on four blocks at once.
#[inline(always)]
fn quarter(x: &mut [U32x4; 16], a: usize, b: usize, c: usize, d: usize) {
    x[b] = x[b].xor(x[a].add(x[d]).rotl::<7>());
    x[c] = x[c].xor(x[b].add(x[a]).rotl::<9>());
    x[d] = x[d].xor(x[c].add(x[b]).rotl::<13>());
    x[a] = x[a].xor(x[d].add(x[c]).rotl::<18>());
}

/// A column round, then a row round.
#[inline(always)]
fn double_round(x: &mut [U32x4; 16]) {
    quarter(x, 0, 4, 8, 12);
    quarter(x, 5, 9, 13, 1);
    quarter(x, 10, 14, 2, 6);
    quarter(x, 15, 3, 7, 11);
    quarter(x, 0, 1, 2, 3);
    quarter(x, 5, 6, 7, 4);
    quarter(x, 10, 11, 8, 9);
    quarter(x, 15, 12, 13, 14);
}

/// A Salsa20 key and 64-bit nonce: the keystream for any block counter.
#[derive(Clone)]
pub struct Salsa20 {
    key: [u32; 8],
    nonce: [u32; 2],
}

impl core::fmt::Debug for Salsa20 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key in a log.
        f.write_str("Salsa20")
    }
}

impl Salsa20 {
    /// The cipher for a 256-bit key and a 64-bit nonce.
    pub fn new(key: &[u8; 32], nonce: &[u8; 8]) -> Salsa20 {
        Salsa20 { key: words(key), nonce: words(nonce) }
    }

    /// Blocks `counter..counter + 4`, word by word, each lane one block.
    #[inline(always)]
    fn wide(&self, counter: u64) -> [U32x4; 16] {
        let (k, n) = (&self.key, &self.nonce);
        let c: [u64; 4] = core::array::from_fn(|i| counter.wrapping_add(i as u64));
        let lo = U32x4::new(c[0] as u32, c[1] as u32, c[2] as u32, c[3] as u32);
        let hi =
            U32x4::new((c[0] >> 32) as u32, (c[1] >> 32) as u32, (c[2] >> 32) as u32, (c[3] >> 32) as u32);
        let s = U32x4::splat;
        let start = [
            s(SIGMA[0]),
            s(k[0]),
            s(k[1]),
            s(k[2]),
            s(k[3]),
            s(SIGMA[1]),
            s(n[0]),
            s(n[1]),
            lo,
            hi,
            s(SIGMA[2]),
            s(k[4]),
            s(k[5]),
            s(k[6]),
            s(k[7]),
            s(SIGMA[3]),
        ];
        let mut x = start;
        // Ten double rounds, written out (see `chacha`: wasmtime checks its
        // epoch at every loop header).
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        double_round(&mut x);
        for (x, s) in x.iter_mut().zip(start) {
            *x = x.add(s);
        }
        x
    }

    /// Words `4k..4k+4` of the four blocks, transposed: element `b` is
    /// bytes `16k..16k+16` of block `b`.
    #[inline(always)]
    fn rows(x: &[U32x4; 16], k: usize) -> [U32x4; 4] {
        let (a, b, c, d) = (x[4 * k], x[4 * k + 1], x[4 * k + 2], x[4 * k + 3]);
        let (ab_lo, ab_hi, cd_lo, cd_hi) = (a.zip_lo(b), a.zip_hi(b), c.zip_lo(d), c.zip_hi(d));
        [ab_lo.lo_halves(cd_lo), ab_lo.hi_halves(cd_lo), ab_hi.lo_halves(cd_hi), ab_hi.hi_halves(cd_hi)]
    }

    /// Keystream blocks `counter..counter + 4`.
    pub fn keystream_wide(&self, counter: u64) -> [u8; WIDE] {
        let x = self.wide(counter);
        let mut out = [0u8; WIDE];
        for k in 0..4 {
            for (b, row) in Self::rows(&x, k).into_iter().enumerate() {
                out[64 * b + 16 * k..][..16].copy_from_slice(&row.to_le_bytes());
            }
        }
        out
    }

    /// XORs the keystream from block `counter` on into `data`.
    pub fn apply_keystream(&self, counter: u64, data: &mut [u8]) {
        let mut counter = counter;
        let mut wide = data.chunks_exact_mut(WIDE);
        for chunk in &mut wide {
            let x = self.wide(counter);
            for k in 0..4 {
                for (b, row) in Self::rows(&x, k).into_iter().enumerate() {
                    let at: &mut [u8; 16] =
                        (&mut chunk[64 * b + 16 * k..][..16]).try_into().expect("16 bytes");
                    row.xor_in_place(at);
                }
            }
            counter = counter.wrapping_add(4);
        }
        let tail = wide.into_remainder();
        if !tail.is_empty() {
            for (d, k) in tail.iter_mut().zip(self.keystream_wide(counter)) {
                *d ^= k;
            }
        }
    }
}

/// HSalsa20: a subkey from a key and the first 16 bytes of an XSalsa20
/// nonce. Once per message; one block's rounds on plain words.
pub fn hsalsa20(key: &[u8; 32], nonce: &[u8; 16]) -> [u8; 32] {
    let k: [u32; 8] = words(key);
    let n: [u32; 4] = words(nonce);
    let mut x = [
        SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], n[0], n[1], n[2], n[3], SIGMA[2], k[4], k[5], k[6], k[7],
        SIGMA[3],
    ];
    fn q(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
        x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
        x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
        x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
    }
    for _ in 0..10 {
        q(&mut x, 0, 4, 8, 12);
        q(&mut x, 5, 9, 13, 1);
        q(&mut x, 10, 14, 2, 6);
        q(&mut x, 15, 3, 7, 11);
        q(&mut x, 0, 1, 2, 3);
        q(&mut x, 5, 6, 7, 4);
        q(&mut x, 10, 11, 8, 9);
        q(&mut x, 15, 12, 13, 14);
    }
    let mut out = [0u8; 32];
    for (chunk, i) in out.chunks_exact_mut(4).zip([0, 5, 10, 15, 6, 7, 8, 9]) {
        chunk.copy_from_slice(&x[i].to_le_bytes());
    }
    out
}

/// NaCl's `crypto_secretbox_xsalsa20poly1305` with a detached tag (on the
/// wire NaCl puts the tag first): XSalsa20 with the 24-byte nonce, the
/// Poly1305 key from the first 32 bytes of keystream, the message from byte
/// 32, the tag over the ciphertext alone.
#[derive(Clone)]
pub struct XSalsa20Poly1305 {
    key: [u8; 32],
}

impl core::fmt::Debug for XSalsa20Poly1305 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("XSalsa20Poly1305")
    }
}

impl XSalsa20Poly1305 {
    /// The secretbox for a 256-bit key.
    pub fn new(key: &[u8; 32]) -> XSalsa20Poly1305 {
        XSalsa20Poly1305 { key: *key }
    }

    fn cipher(&self, nonce: &[u8; 24]) -> (Salsa20, [u8; WIDE]) {
        let subkey = hsalsa20(&self.key, nonce[..16].try_into().expect("16 bytes"));
        let cipher = Salsa20::new(&subkey, nonce[16..].try_into().expect("8 bytes"));
        let first = cipher.keystream_wide(0);
        (cipher, first)
    }

    /// XORs the message keystream (from byte 32) into `data`.
    fn crypt(cipher: &Salsa20, first: &[u8; WIDE], data: &mut [u8]) {
        let (head, rest) = data.split_at_mut(data.len().min(WIDE - 32));
        for (d, k) in head.iter_mut().zip(&first[32..]) {
            *d ^= k;
        }
        if !rest.is_empty() {
            cipher.apply_keystream(4, rest);
        }
    }

    fn mac(first: &[u8; WIDE], ciphertext: &[u8]) -> [u8; TAG] {
        let mut mac = Poly1305::new(first[..32].try_into().expect("32 bytes"));
        mac.update_final(ciphertext);
        mac.finalize()
    }

    /// Encrypts `data` in place; returns the tag.
    pub fn seal(&self, nonce: &[u8; 24], data: &mut [u8]) -> [u8; TAG] {
        let (cipher, first) = self.cipher(nonce);
        Self::crypt(&cipher, &first, data);
        Self::mac(&first, data)
    }

    /// Decrypts `data` in place if `tag` authenticates it; on failure
    /// `data` is left as it was.
    pub fn open(&self, nonce: &[u8; 24], data: &mut [u8], tag: &[u8; TAG]) -> Result<(), AuthError> {
        let (cipher, first) = self.cipher(nonce);
        let expected = Self::mac(&first, data);
        // Constant time, and no `memcmp`.
        let diff = expected.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if core::hint::black_box(diff) != 0 {
            return Err(AuthError);
        }
        Self::crypt(&cipher, &first, data);
        Ok(())
    }
}
