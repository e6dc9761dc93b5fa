//! Four `u32` lanes: wasm's `v128` where the guest is built with `simd128`
//! (every WATM here is: `.cargo/config.toml`), four plain words elsewhere.
//!
//! The ChaCha20 code is written once against this type, so `cargo test` on
//! the host runs the very algorithm the guest runs (same rounds, same
//! transposition); only these one-line operations differ, and the guest's
//! build of them is checked inside wasm by `test-guests/aead` (see the
//! crate's README).

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use super::{HIBIT, LIMB};
    use core::arch::wasm32::*;

    /// Four `u32` lanes in one `v128`.
    #[derive(Clone, Copy)]
    pub struct U32x4(v128);

    impl U32x4 {
        #[inline(always)]
        pub fn splat(x: u32) -> Self {
            U32x4(u32x4_splat(x))
        }

        #[inline(always)]
        pub fn new(a: u32, b: u32, c: u32, d: u32) -> Self {
            U32x4(u32x4(a, b, c, d))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            U32x4(i32x4_add(self.0, o.0))
        }

        #[inline(always)]
        pub fn xor(self, o: Self) -> Self {
            U32x4(v128_xor(self.0, o.0))
        }

        /// Rotate each lane left by `N`: wasm has no rotate, so two shifts
        /// and an or. For 16 and 8 a byte shuffle would be one instruction,
        /// but Cranelift (48, x86-64) lowers LLVM's one-input shuffle as a
        /// two-input `vpermi2b` with its mask reloaded every time: the
        /// shifts made ChaCha20 15 % faster (`benches/examples/aead_wasm`).
        #[inline(always)]
        pub fn rotl<const N: u32>(self) -> Self {
            U32x4(v128_or(u32x4_shl(self.0, N), u32x4_shr(self.0, 32 - N)))
        }

        /// `[a0, b0, a1, b1]`.
        #[inline(always)]
        pub fn zip_lo(self, b: Self) -> Self {
            U32x4(i32x4_shuffle::<0, 4, 1, 5>(self.0, b.0))
        }

        /// `[a2, b2, a3, b3]`.
        #[inline(always)]
        pub fn zip_hi(self, b: Self) -> Self {
            U32x4(i32x4_shuffle::<2, 6, 3, 7>(self.0, b.0))
        }

        /// `[a0, a1, b0, b1]`: the low halves.
        #[inline(always)]
        pub fn lo_halves(self, b: Self) -> Self {
            U32x4(i64x2_shuffle::<0, 2>(self.0, b.0))
        }

        /// `[a2, a3, b2, b3]`: the high halves.
        #[inline(always)]
        pub fn hi_halves(self, b: Self) -> Self {
            U32x4(i64x2_shuffle::<1, 3>(self.0, b.0))
        }

        /// `data ^= self` (the lanes as little-endian bytes).
        #[inline(always)]
        pub fn xor_in_place(self, data: &mut [u8; 16]) {
            // SAFETY: a 16-byte array; v128 loads and stores need no
            // alignment.
            unsafe {
                let d = v128_load(data.as_ptr().cast());
                v128_store(data.as_mut_ptr().cast(), v128_xor(self.0, d));
            }
        }

        /// The lanes as little-endian bytes.
        #[inline(always)]
        pub fn to_le_bytes(self) -> [u8; 16] {
            let mut out = [0u8; 16];
            // SAFETY: a 16-byte array; v128 stores need no alignment.
            unsafe { v128_store(out.as_mut_ptr().cast(), self.0) };
            out
        }
    }

    /// Two `u32` lanes (0 and 1 of a `v128`): the multiplicands of
    /// Poly1305's two-block path.
    #[derive(Clone, Copy)]
    pub struct Pair32(v128);

    /// Two `u64` lanes: the products.
    #[derive(Clone, Copy)]
    pub struct Pair64(v128);

    impl Pair32 {
        #[inline(always)]
        pub fn new(a: u32, b: u32) -> Self {
            Pair32(u32x4(a, b, 0, 0))
        }

        #[inline(always)]
        pub fn splat(x: u32) -> Self {
            Pair32(u32x4_splat(x))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            Pair32(i32x4_add(self.0, o.0))
        }

        /// Lane-wise 32×32 → 64-bit products.
        #[inline(always)]
        pub fn mul(self, o: Self) -> Pair64 {
            Pair64(u64x2_extmul_low_u32x4(self.0, o.0))
        }

        /// The 26-bit limbs of block `a` (lane 0) and block `b` (lane 1),
        /// with the 2¹²⁸ bit.
        #[inline(always)]
        pub fn limbs(a: &[u8; 16], b: &[u8; 16]) -> [Pair32; 5] {
            // SAFETY: two 16-byte arrays; v128 loads need no alignment.
            let (wa, wb) = unsafe { (v128_load(a.as_ptr().cast()), v128_load(b.as_ptr().cast())) };
            let w0 = i32x4_shuffle::<0, 4, 1, 5>(wa, wb);
            let w2 = i32x4_shuffle::<2, 6, 3, 7>(wa, wb);
            let w1 = i32x4_shuffle::<2, 3, 2, 3>(w0, w0);
            let w3 = i32x4_shuffle::<2, 3, 2, 3>(w2, w2);
            let m = u32x4_splat(LIMB);
            [
                Pair32(v128_and(w0, m)),
                Pair32(v128_and(v128_or(u32x4_shr(w0, 26), i32x4_shl(w1, 6)), m)),
                Pair32(v128_and(v128_or(u32x4_shr(w1, 20), i32x4_shl(w2, 12)), m)),
                Pair32(v128_and(v128_or(u32x4_shr(w2, 14), i32x4_shl(w3, 18)), m)),
                Pair32(v128_or(u32x4_shr(w3, 8), u32x4_splat(HIBIT))),
            ]
        }
    }

    impl Pair64 {
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            Pair64(i64x2_add(self.0, o.0))
        }

        #[inline(always)]
        pub fn shr26(self) -> Self {
            Pair64(u64x2_shr(self.0, 26))
        }

        #[inline(always)]
        pub fn mask26(self) -> Self {
            Pair64(v128_and(self.0, u64x2_splat(LIMB as u64)))
        }

        #[inline(always)]
        pub fn times5(self) -> Self {
            Pair64(i64x2_add(i64x2_shl(self.0, 2), self.0))
        }

        /// The low 32 bits of each lane, as the multiplicands.
        #[inline(always)]
        pub fn narrow(self) -> Pair32 {
            Pair32(i32x4_shuffle::<0, 2, 0, 2>(self.0, self.0))
        }

        #[inline(always)]
        pub fn lanes(self) -> [u64; 2] {
            [u64x2_extract_lane::<0>(self.0), u64x2_extract_lane::<1>(self.0)]
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    use super::LIMB;

    /// Four `u32` lanes as plain words (LLVM vectorises most of it natively).
    #[derive(Clone, Copy)]
    pub struct U32x4([u32; 4]);

    impl U32x4 {
        #[inline(always)]
        pub fn splat(x: u32) -> Self {
            U32x4([x; 4])
        }

        #[inline(always)]
        pub fn new(a: u32, b: u32, c: u32, d: u32) -> Self {
            U32x4([a, b, c, d])
        }

        #[inline(always)]
        fn map2(self, o: Self, f: impl Fn(u32, u32) -> u32) -> Self {
            U32x4(core::array::from_fn(|i| f(self.0[i], o.0[i])))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            self.map2(o, u32::wrapping_add)
        }

        #[inline(always)]
        pub fn xor(self, o: Self) -> Self {
            self.map2(o, |a, b| a ^ b)
        }

        #[inline(always)]
        pub fn rotl<const N: u32>(self) -> Self {
            U32x4(self.0.map(|x| x.rotate_left(N)))
        }

        #[inline(always)]
        pub fn zip_lo(self, b: Self) -> Self {
            U32x4([self.0[0], b.0[0], self.0[1], b.0[1]])
        }

        #[inline(always)]
        pub fn zip_hi(self, b: Self) -> Self {
            U32x4([self.0[2], b.0[2], self.0[3], b.0[3]])
        }

        #[inline(always)]
        pub fn lo_halves(self, b: Self) -> Self {
            U32x4([self.0[0], self.0[1], b.0[0], b.0[1]])
        }

        #[inline(always)]
        pub fn hi_halves(self, b: Self) -> Self {
            U32x4([self.0[2], self.0[3], b.0[2], b.0[3]])
        }

        #[inline(always)]
        pub fn xor_in_place(self, data: &mut [u8; 16]) {
            for (d, k) in data.iter_mut().zip(self.to_le_bytes()) {
                *d ^= k;
            }
        }

        #[inline(always)]
        pub fn to_le_bytes(self) -> [u8; 16] {
            let mut out = [0u8; 16];
            for (chunk, w) in out.chunks_exact_mut(4).zip(self.0) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            out
        }
    }

    /// Two `u32` lanes: the multiplicands of Poly1305's two-block path.
    #[derive(Clone, Copy)]
    pub struct Pair32([u32; 2]);

    /// Two `u64` lanes: the products.
    #[derive(Clone, Copy)]
    pub struct Pair64([u64; 2]);

    impl Pair32 {
        pub fn new(a: u32, b: u32) -> Self {
            Pair32([a, b])
        }

        pub fn splat(x: u32) -> Self {
            Pair32([x; 2])
        }

        pub fn add(self, o: Self) -> Self {
            Pair32([self.0[0].wrapping_add(o.0[0]), self.0[1].wrapping_add(o.0[1])])
        }

        pub fn mul(self, o: Self) -> Pair64 {
            Pair64([u64::from(self.0[0]) * u64::from(o.0[0]), u64::from(self.0[1]) * u64::from(o.0[1])])
        }

        pub fn limbs(a: &[u8; 16], b: &[u8; 16]) -> [Pair32; 5] {
            let (la, lb) = (super::block_limbs(a), super::block_limbs(b));
            core::array::from_fn(|i| Pair32([la[i], lb[i]]))
        }
    }

    impl Pair64 {
        pub fn add(self, o: Self) -> Self {
            Pair64([self.0[0] + o.0[0], self.0[1] + o.0[1]])
        }

        pub fn shr26(self) -> Self {
            Pair64(self.0.map(|x| x >> 26))
        }

        pub fn mask26(self) -> Self {
            Pair64(self.0.map(|x| x & u64::from(LIMB)))
        }

        pub fn times5(self) -> Self {
            Pair64(self.0.map(|x| x * 5))
        }

        pub fn narrow(self) -> Pair32 {
            Pair32(self.0.map(|x| x as u32))
        }

        pub fn lanes(self) -> [u64; 2] {
            self.0
        }
    }
}

pub use imp::{Pair32, Pair64, U32x4};

/// A 26-bit limb mask (Poly1305).
pub const LIMB: u32 = 0x3ff_ffff;
/// The 2¹²⁸ bit of a Poly1305 block, in limb 4.
pub const HIBIT: u32 = 1 << 24;

/// Five 26-bit limbs of a 16-byte little-endian Poly1305 block, with the
/// 2¹²⁸ bit: for the one-block path, and per block for the plain-word lanes.
pub fn block_limbs(block: &[u8; 16]) -> [u32; 5] {
    let w = |i: usize| u32::from_le_bytes(block[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
    [
        w0 & LIMB,
        ((w0 >> 26) | (w1 << 6)) & LIMB,
        ((w1 >> 20) | (w2 << 12)) & LIMB,
        ((w2 >> 14) | (w3 << 18)) & LIMB,
        (w3 >> 8) | HIBIT,
    ]
}
