//! Poly1305 (RFC 8439 §2.5), two blocks at a time in SIMD128 lanes.
//!
//! Why by hand: RustCrypto's `poly1305` runs its portable one-block code in
//! wasm (its SIMD backend is AVX2 only), and with the SIMD ChaCha20 beside
//! it, it was the larger half of the AEAD's time in a WATM (measured with
//! `perf`, see BENCHMARKS.md). wasm has no 64×64→128 multiply, so the limbs
//! are 26 bits wide (products of 32×32 bits fit 64): `i64x2.extmul_low_i32x4_u`
//! makes two such products per instruction, one per lane.
//!
//! Two accumulators, one per lane, take alternate blocks, each multiplied by
//! r² per pair; the last pair is multiplied by (r², r), and the lanes are
//! summed: `((h + m1)r² + m3)r² + …` and `(m2 r² + m4)r² + …` add up to the
//! one-block Horner sum `h r^n + m1 r^(n-1) + … + m_n r`.
//!
//! Only whole 16-byte blocks with the 2¹²⁸ bit set are processed: that is
//! all the AEAD construction (RFC 8439 §2.8, zero-padded to 16 bytes) ever
//! gives Poly1305. Not constant-time concerns beyond the usual: no branch or
//! index depends on secret data.

use crate::lanes::{HIBIT, LIMB as M, Pair32, Pair64, block_limbs};

/// `h · r mod p`, partly reduced: limbs below 2²⁶ except limb 1, which may
/// be a little above. `h` limbs below 2²⁸, `r` limbs below 2²⁷.
fn mul(h: [u64; 5], r: &[u32; 5]) -> [u64; 5] {
    let r: [u64; 5] = r.map(u64::from);
    let s = [0, r[1] * 5, r[2] * 5, r[3] * 5, r[4] * 5];
    let d = [
        h[0] * r[0] + h[1] * s[4] + h[2] * s[3] + h[3] * s[2] + h[4] * s[1],
        h[0] * r[1] + h[1] * r[0] + h[2] * s[4] + h[3] * s[3] + h[4] * s[2],
        h[0] * r[2] + h[1] * r[1] + h[2] * r[0] + h[3] * s[4] + h[4] * s[3],
        h[0] * r[3] + h[1] * r[2] + h[2] * r[1] + h[3] * r[0] + h[4] * s[4],
        h[0] * r[4] + h[1] * r[3] + h[2] * r[2] + h[3] * r[1] + h[4] * r[0],
    ];
    carry(d)
}

/// One carry pass over five limbs (2¹³⁰ ≡ 5).
fn carry(mut d: [u64; 5]) -> [u64; 5] {
    let m = u64::from(M);
    for i in 0..4 {
        d[i + 1] += d[i] >> 26;
        d[i] &= m;
    }
    d[0] += (d[4] >> 26) * 5;
    d[4] &= m;
    d[1] += d[0] >> 26;
    d[0] &= m;
    d
}

/// A Poly1305 computation over whole blocks.
#[derive(Clone)]
pub struct Poly1305 {
    r: [u32; 5],
    /// r², once more than a pair of blocks came in one call.
    r2: Option<[u32; 5]>,
    h: [u64; 5],
    pad: [u32; 4],
}

impl core::fmt::Debug for Poly1305 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Poly1305")
    }
}

/// Blocks below which the two-lane path is not worth r².
const WIDE_FROM: usize = 8;

impl Poly1305 {
    /// A one-time key: r (clamped) and s.
    pub fn new(key: &[u8; 32]) -> Poly1305 {
        let w = |i: usize| u32::from_le_bytes(key[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        // The clamp, on the words: r &= 0x0ffffffc0ffffffc0ffffffc0fffffff.
        let t = [w(0) & 0x0fff_ffff, w(1) & 0x0fff_fffc, w(2) & 0x0fff_fffc, w(3) & 0x0fff_fffc];
        let r = [
            t[0] & M,
            ((t[0] >> 26) | (t[1] << 6)) & M,
            ((t[1] >> 20) | (t[2] << 12)) & M,
            ((t[2] >> 14) | (t[3] << 18)) & M,
            t[3] >> 8,
        ];
        Poly1305 { r, r2: None, h: [0; 5], pad: [w(4), w(5), w(6), w(7)] }
    }

    fn block(&mut self, block: &[u8; 16]) {
        let m = block_limbs(block);
        let h: [u64; 5] = core::array::from_fn(|i| self.h[i] + u64::from(m[i]));
        self.h = mul(h, &self.r);
    }

    /// Whole blocks (`data.len()` a multiple of 16).
    fn blocks(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut blocks = data.chunks_exact(16);
        let n = blocks.len();
        if n >= WIDE_FROM {
            let pairs = n / 2;
            let (wide, rest) = data.split_at(pairs * 32);
            self.pairs(wide);
            blocks = rest.chunks_exact(16);
        }
        for b in blocks {
            self.block(b.try_into().expect("16 bytes"));
        }
    }

    /// An even number (at least two) of blocks, two lanes at a time.
    fn pairs(&mut self, data: &[u8]) {
        let r = self.r;
        let r2 = *self.r2.get_or_insert_with(|| {
            let r2 = mul(r.map(u64::from), &r);
            // Limbs below 2²⁷ after `mul`: fits the lanes' 32 bits.
            r2.map(|l| l as u32)
        });
        let mut pairs = data.chunks_exact(32);
        let last = pairs.next_back().expect("at least one pair");
        // Lane a starts from h; lane b from zero.
        let mut h: [Pair32; 5] = core::array::from_fn(|i| Pair32::new(self.h[i] as u32, 0));
        // The h limbs come in below 2²⁷ (after `carry`, or `mul`), and
        // lanes hold 32 bits: say so where it is assumed.
        debug_assert!(self.h.iter().all(|&l| l < 1 << 27));
        let rr: [Pair32; 5] = core::array::from_fn(|i| Pair32::splat(r2[i]));
        let ss: [Pair32; 5] = core::array::from_fn(|i| Pair32::splat(r2[i] * 5));
        for pair in pairs {
            h = narrow(mul_lanes(add_message(h, pair), &rr, &ss));
        }
        // The last pair: lane a times r², lane b times r.
        let rr: [Pair32; 5] = core::array::from_fn(|i| Pair32::new(r2[i], r[i]));
        let ss: [Pair32; 5] = core::array::from_fn(|i| Pair32::new(r2[i] * 5, r[i] * 5));
        let d = mul_lanes(add_message(h, last), &rr, &ss);
        let sum: [u64; 5] = core::array::from_fn(|i| {
            let [a, b] = d[i].lanes();
            a + b
        });
        self.h = carry(sum);
    }

    /// `data`, then zeros up to a multiple of 16 (the AEAD's padding).
    pub fn update_padded(&mut self, data: &[u8]) {
        let whole = data.len() / 16 * 16;
        self.blocks(&data[..whole]);
        if whole < data.len() {
            let mut last = [0u8; 16];
            last[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.block(&last);
        }
    }

    /// `data` as the whole message: whole blocks, then a last partial block
    /// closed by a `1` byte and without the 2¹²⁸ bit (RFC 8439 §2.5's plain
    /// Poly1305, as NaCl's secretbox uses it).
    pub fn update_final(&mut self, data: &[u8]) {
        let whole = data.len() / 16 * 16;
        self.blocks(&data[..whole]);
        if whole < data.len() {
            let mut last = [0u8; 16];
            let n = data.len() - whole;
            last[..n].copy_from_slice(&data[whole..]);
            last[n] = 1;
            let mut m = block_limbs(&last);
            m[4] -= HIBIT;
            let h: [u64; 5] = core::array::from_fn(|i| self.h[i] + u64::from(m[i]));
            self.h = mul(h, &self.r);
        }
    }

    /// The tag: h mod p, plus s, mod 2¹²⁸.
    pub fn finalize(self) -> [u8; 16] {
        let m = u64::from(M);
        let mut h = carry(self.h);
        // Limb 1 may still be at 2²⁶: once more, all the way round.
        h = carry(h);
        // g = h + 5 − 2¹³⁰; if that does not borrow, h ≥ p and g is h mod p.
        let mut g = [0u64; 5];
        let mut c = 5;
        for i in 0..5 {
            let t = h[i] + c;
            g[i] = t & m;
            c = t >> 26;
        }
        // c is 1 exactly when h + 5 ≥ 2¹³⁰, i.e. h ≥ p.
        let use_g = 0u64.wrapping_sub(c & 1);
        let h: [u64; 5] = core::array::from_fn(|i| (g[i] & use_g) | (h[i] & !use_g));
        // Pack to 128 bits by addition (limbs may overlap by a carry) and
        // add s.
        let mut out = [0u8; 16];
        let mut acc = h[0] + (h[1] << 26);
        let parts = [h[2] << 20, h[3] << 14, h[4] << 8];
        let mut word_acc: u64 = 0;
        for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
            let word = (acc & 0xffff_ffff) + u64::from(self.pad[i]) + word_acc;
            chunk.copy_from_slice(&(word as u32).to_le_bytes());
            word_acc = word >> 32;
            acc >>= 32;
            if i < 3 {
                acc += parts[i];
            }
        }
        out
    }
}

/// `h + m` for the two blocks of `pair`, one per lane.
#[inline(always)]
fn add_message(h: [Pair32; 5], pair: &[u8]) -> [Pair32; 5] {
    let m = Pair32::limbs(pair[..16].try_into().expect("16 bytes"), pair[16..].try_into().expect("16 bytes"));
    core::array::from_fn(|i| h[i].add(m[i]))
}

/// Lane-wise `h · r` (with `s = 5r`), one carry pass.
#[inline(always)]
fn mul_lanes(h: [Pair32; 5], r: &[Pair32; 5], s: &[Pair32; 5]) -> [Pair64; 5] {
    let d0 = h[0].mul(r[0]).add(h[1].mul(s[4])).add(h[2].mul(s[3])).add(h[3].mul(s[2])).add(h[4].mul(s[1]));
    let d1 = h[0].mul(r[1]).add(h[1].mul(r[0])).add(h[2].mul(s[4])).add(h[3].mul(s[3])).add(h[4].mul(s[2]));
    let d2 = h[0].mul(r[2]).add(h[1].mul(r[1])).add(h[2].mul(r[0])).add(h[3].mul(s[4])).add(h[4].mul(s[3]));
    let d3 = h[0].mul(r[3]).add(h[1].mul(r[2])).add(h[2].mul(r[1])).add(h[3].mul(r[0])).add(h[4].mul(s[4]));
    let d4 = h[0].mul(r[4]).add(h[1].mul(r[3])).add(h[2].mul(r[2])).add(h[3].mul(r[1])).add(h[4].mul(r[0]));
    let d1 = d1.add(d0.shr26());
    let d0 = d0.mask26();
    let d2 = d2.add(d1.shr26());
    let d1 = d1.mask26();
    let d3 = d3.add(d2.shr26());
    let d2 = d2.mask26();
    let d4 = d4.add(d3.shr26());
    let d3 = d3.mask26();
    let d0 = d0.add(d4.shr26().times5());
    let d4 = d4.mask26();
    let d1 = d1.add(d0.shr26());
    let d0 = d0.mask26();
    [d0, d1, d2, d3, d4]
}

/// Back to 32-bit lanes for the next multiplication (every limb is below
/// 2²⁷ after the carry pass).
#[inline(always)]
fn narrow(d: [Pair64; 5]) -> [Pair32; 5] {
    d.map(Pair64::narrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `finalize` from a chosen accumulator, with s = `pad`.
    fn tag(h: [u64; 5], pad: [u32; 4]) -> [u8; 16] {
        Poly1305 { r: [0; 5], r2: None, h, pad }.finalize()
    }

    fn le(x: u128) -> [u8; 16] {
        x.to_le_bytes()
    }

    const P_LIMBS: [u64; 5] = [0x3ff_fffb, 0x3ff_ffff, 0x3ff_ffff, 0x3ff_ffff, 0x3ff_ffff];

    /// The final reduction: h in [p, 2¹³⁰) is rare for random input, so
    /// the accumulators that need it are built here.
    #[test]
    fn finalize_reduces_mod_p_and_adds_s() {
        let mut p_plus_4 = P_LIMBS;
        p_plus_4[0] += 4;
        assert_eq!(tag(P_LIMBS, [0; 4]), le(0), "h = p");
        assert_eq!(tag(p_plus_4, [0; 4]), le(4), "h = p + 4 = 2^130 - 1");
        let mut p_minus_1 = P_LIMBS;
        p_minus_1[0] -= 1;
        // p − 1 mod 2¹²⁸ = 2¹²⁸ − 6.
        assert_eq!(tag(p_minus_1, [0; 4]), le(u128::MAX - 5), "h = p - 1");
        // A limb one carry above 2²⁶ (limb 1 = 2²⁶ is 2⁵²).
        assert_eq!(tag([0, 1 << 26, 0, 0, 0], [0; 4]), le(1 << 52));
        // Above 2¹³⁰: 2¹³⁰ + 3 ≡ 8.
        assert_eq!(tag([3, 0, 0, 0, 1 << 26], [0; 4]), le(8));
        // s wraps at 2¹²⁸.
        assert_eq!(tag([1, 0, 0, 0, 0], [u32::MAX; 4]), le(0));
        assert_eq!(
            tag([0x3ff_ffff, 0x3ff_ffff, 0, 0, 0], [u32::MAX, 0, 0, 0]),
            le((1u128 << 52) - 1 + 0xffff_ffff)
        );
    }
}
