//! Byte-level fast paths that several transports share, each a plain
//! function over slices: wasm SIMD128 where the target has it, portable code
//! elsewhere (and for the tails). Written by hand because no maintained crate
//! targets wasm SIMD for these; each is checked against the obvious byte loop
//! in the tests below.

/// `out[i] = input[i] ^ key[i]`, in one pass (no copy first). In wasm with
/// SIMD, 64 bytes per loop turn as four 16-byte XORs (the loop's own cost,
/// which includes the host's epoch check, is paid once per 64 bytes), then 16
/// at a time; eight bytes per 64-bit XOR elsewhere; the byte loop for the
/// last few.
#[inline]
pub fn xor_into(out: &mut [u8], input: &[u8], key: &[u8]) {
    assert!(input.len() == out.len() && key.len() == out.len());
    // SAFETY: the three slices are `out.len()` long; `out` is writable and
    // borrowed exclusively, so it overlaps neither of the others.
    unsafe { xor_raw(out.as_mut_ptr(), input.as_ptr(), key.as_ptr(), out.len()) }
}

/// `data[i] ^= key[i]`, as [`xor_into`] does it (for codecs that work in
/// place).
#[inline]
pub fn xor_in_place(data: &mut [u8], key: &[u8]) {
    assert_eq!(key.len(), data.len());
    let p = data.as_mut_ptr();
    // SAFETY: both slices are `data.len()` long; input and output are the
    // same bytes, which `xor_raw` allows.
    unsafe { xor_raw(p, p, key.as_ptr(), data.len()) }
}

/// `o[i] = a[i] ^ k[i]` for `i < len`.
///
/// # Safety
/// `a` and `k` readable and `o` writable for `len` bytes; `o` may be `a`
/// (each step reads its bytes before it writes them), no other overlap.
#[inline(always)]
unsafe fn xor_raw(o: *mut u8, a: *const u8, k: *const u8, len: usize) {
    let mut i = 0;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{v128, v128_load, v128_store, v128_xor};
        /// # Safety
        /// As `xor_raw`'s, for 16 bytes.
        #[inline(always)]
        unsafe fn xor16(o: *mut u8, a: *const u8, k: *const u8) {
            // SAFETY: the caller's promise (wasm's v128 accesses take
            // unaligned addresses).
            unsafe {
                let x = v128_xor(v128_load(a as *const v128), v128_load(k as *const v128));
                v128_store(o as *mut v128, x);
            }
        }
        while i + 64 <= len {
            // SAFETY: `i + 64 <= len`; each access is 16 bytes at offset
            // i, i + 16, i + 32 or i + 48.
            unsafe {
                xor16(o.add(i), a.add(i), k.add(i));
                xor16(o.add(i + 16), a.add(i + 16), k.add(i + 16));
                xor16(o.add(i + 32), a.add(i + 32), k.add(i + 32));
                xor16(o.add(i + 48), a.add(i + 48), k.add(i + 48));
            }
            i += 64;
        }
        while i + 16 <= len {
            // SAFETY: `i + 16 <= len`.
            unsafe { xor16(o.add(i), a.add(i), k.add(i)) };
            i += 16;
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    while i + 8 <= len {
        // SAFETY: `i + 8 <= len`; unaligned reads and writes of 8 bytes.
        unsafe {
            let x = (a.add(i) as *const u64).read_unaligned() ^ (k.add(i) as *const u64).read_unaligned();
            (o.add(i) as *mut u64).write_unaligned(x);
        }
        i += 8;
    }
    while i < len {
        // SAFETY: `i < len`.
        unsafe { *o.add(i) = *a.add(i) ^ *k.add(i) };
        i += 1;
    }
}

/// `dst[i] = src[src.len() - 1 - i]`. In wasm with SIMD, 64 bytes per loop
/// turn (four 16-byte shuffles: the loop's own cost, which includes the
/// host's epoch check, is paid once per 64 bytes), then 16 at a time, then
/// the byte loop for the last few (and everywhere else).
#[inline]
pub fn reverse_into(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (dst, src) = {
        use core::arch::wasm32::{i8x16_shuffle, v128, v128_load, v128_store};
        /// The 16 bytes at `p`, in reverse order.
        ///
        /// # Safety
        /// `p..p + 16` must be readable (wasm's v128 loads take unaligned
        /// addresses).
        #[inline(always)]
        unsafe fn rev16(p: *const u8) -> v128 {
            // SAFETY: the caller's promise.
            let v = unsafe { v128_load(p as *const v128) };
            i8x16_shuffle::<15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0>(v, v)
        }
        let mut d = dst.chunks_exact_mut(64);
        let mut s = src.rchunks_exact(64);
        for (dc, sc) in (&mut d).zip(&mut s) {
            let (q, p) = (dc.as_mut_ptr() as *mut v128, sc.as_ptr());
            // SAFETY: both chunks are exactly 64 bytes long; each access is
            // 16 bytes at offset 0, 16, 32 or 48 of one of them.
            unsafe {
                v128_store(q, rev16(p.add(48)));
                v128_store(q.add(1), rev16(p.add(32)));
                v128_store(q.add(2), rev16(p.add(16)));
                v128_store(q.add(3), rev16(p));
            }
        }
        let (dst, src) = (d.into_remainder(), s.remainder());
        let mut d = dst.chunks_exact_mut(16);
        let mut s = src.rchunks_exact(16);
        for (dc, sc) in (&mut d).zip(&mut s) {
            // SAFETY: both chunks are exactly 16 bytes long.
            unsafe { v128_store(dc.as_mut_ptr() as *mut v128, rev16(sc.as_ptr())) };
        }
        (d.into_remainder(), s.remainder())
    };
    for (o, i) in dst.iter_mut().zip(src.iter().rev()) {
        *o = *i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_the_byte_loops() {
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 200, 1000] {
            let a: std::vec::Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let k: std::vec::Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            let mut out = std::vec![0u8; len];
            xor_into(&mut out, &a, &k);
            assert!(out.iter().zip(&a).zip(&k).all(|((o, a), k)| *o == a ^ k));
            let mut in_place = a.clone();
            xor_in_place(&mut in_place, &k);
            assert_eq!(in_place, out);
            reverse_into(&mut out, &a);
            assert!(out.iter().eq(a.iter().rev()));
        }
    }
}
