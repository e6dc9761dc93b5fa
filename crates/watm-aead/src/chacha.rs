//! ChaCha20 (RFC 8439 §2.3–2.4) four blocks at a time, and HChaCha20.
//!
//! Why by hand: RustCrypto's `chacha20` has SSE2/AVX2/NEON backends but none
//! for wasm's SIMD128, so in a WATM it runs its portable one-block code
//! (`shared/AEAD-IN-WASM.md`: ~0.2× of libsodium). Here each of the sixteen
//! state words is a `U32x4` (four `u32` lanes: a `v128`) holding that word for four consecutive blocks
//! (counters `c..c+4`), so one pass of the rounds makes 256 bytes of
//! keystream; a 4×4 transposition turns the lanes back into block order.

use crate::lanes::U32x4;

/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Bytes of keystream one pass makes.
pub const WIDE: usize = 4 * 64;

fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    core::array::from_fn(|i| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

/// The quarter round on four blocks at once.
#[inline(always)]
fn quarter(x: &mut [U32x4; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor(x[a]).rotl::<16>();
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor(x[c]).rotl::<12>();
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor(x[a]).rotl::<8>();
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor(x[c]).rotl::<7>();
}

#[inline(always)]
fn double_round(x: &mut [U32x4; 16]) {
    quarter(x, 0, 4, 8, 12);
    quarter(x, 1, 5, 9, 13);
    quarter(x, 2, 6, 10, 14);
    quarter(x, 3, 7, 11, 15);
    quarter(x, 0, 5, 10, 15);
    quarter(x, 1, 6, 11, 12);
    quarter(x, 2, 7, 8, 13);
    quarter(x, 3, 4, 9, 14);
}

/// A ChaCha20 key and nonce: the keystream for any block counter.
#[derive(Clone)]
pub struct ChaCha20 {
    key: [u32; 8],
    nonce: [u32; 3],
}

impl core::fmt::Debug for ChaCha20 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key in a log.
        f.write_str("ChaCha20")
    }
}

impl ChaCha20 {
    /// The cipher for a 256-bit key and a 96-bit nonce.
    pub fn new(key: &[u8; 32], nonce: &[u8; 12]) -> ChaCha20 {
        ChaCha20 { key: words(key), nonce: words(nonce) }
    }

    /// Blocks `counter..counter + 4`, state word by state word, each lane
    /// one block. Lanes past 2³² wrap; [`ChaCha20::apply_keystream`] never
    /// uses them.
    #[inline(always)]
    fn wide(&self, counter: u32) -> [U32x4; 16] {
        let k = &self.key;
        let n = &self.nonce;
        let start = [
            U32x4::splat(SIGMA[0]),
            U32x4::splat(SIGMA[1]),
            U32x4::splat(SIGMA[2]),
            U32x4::splat(SIGMA[3]),
            U32x4::splat(k[0]),
            U32x4::splat(k[1]),
            U32x4::splat(k[2]),
            U32x4::splat(k[3]),
            U32x4::splat(k[4]),
            U32x4::splat(k[5]),
            U32x4::splat(k[6]),
            U32x4::splat(k[7]),
            U32x4::new(counter, counter.wrapping_add(1), counter.wrapping_add(2), counter.wrapping_add(3)),
            U32x4::splat(n[0]),
            U32x4::splat(n[1]),
            U32x4::splat(n[2]),
        ];
        let mut x = start;
        // Ten double rounds, written out: wasmtime checks its epoch at every
        // loop header, and a rolled loop also costs the branch (measured in
        // AEAD-IN-WASM.md: 967 → 1474 MiB/s unrolled).
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
    pub fn keystream_wide(&self, counter: u32) -> [u8; WIDE] {
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
    ///
    /// # Panics
    /// If `data` needs more blocks than the 32-bit counter has left (256
    /// GiB from counter 0; a wasm32 slice can never be that long).
    pub fn apply_keystream(&self, counter: u32, data: &mut [u8]) {
        let blocks = data.len().div_ceil(64) as u64;
        assert!(blocks <= (1u64 << 32) - u64::from(counter), "ChaCha20 block counter overflow");
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

/// HChaCha20 (draft-irtf-cfrg-xchacha §2.2): a subkey from a key and the
/// first 16 bytes of an XChaCha20 nonce. Once per message; one block's
/// rounds on plain words.
pub fn hchacha20(key: &[u8; 32], nonce: &[u8; 16]) -> [u8; 32] {
    let k: [u32; 8] = words(key);
    let n: [u32; 4] = words(nonce);
    let mut x = [
        SIGMA[0], SIGMA[1], SIGMA[2], SIGMA[3], k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], n[0], n[1],
        n[2], n[3],
    ];
    fn q(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    }
    for _ in 0..10 {
        q(&mut x, 0, 4, 8, 12);
        q(&mut x, 1, 5, 9, 13);
        q(&mut x, 2, 6, 10, 14);
        q(&mut x, 3, 7, 11, 15);
        q(&mut x, 0, 5, 10, 15);
        q(&mut x, 1, 6, 11, 12);
        q(&mut x, 2, 7, 8, 13);
        q(&mut x, 3, 4, 9, 14);
    }
    let mut out = [0u8; 32];
    for (chunk, w) in out.chunks_exact_mut(4).zip(x[..4].iter().chain(&x[12..])) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}
