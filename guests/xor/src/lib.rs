//! `xor`: XOR every byte with a repeating key taken from the config.
//!
//! The key stream is positional and per direction: byte `i` of a direction's
//! stream is XORed with `key[i % key.len()]`, counting from the first byte of
//! the connection, so the result never depends on how TCP split the stream.
//! Obfuscation only: XOR with a short key is not encryption.

#![cfg_attr(target_arch = "wasm32", no_std)]

use water_guest::{Codec, Errno, InitError, Progress, Transport};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 64;

/// The transport: the key, parsed once in `_water_init`.
#[derive(Clone, Debug)]
pub struct Xor {
    key: [u8; MAX_KEY],
    len: usize,
}

impl Xor {
    /// Parses a config: the key as hex text (upper or lower case),
    /// surrounding ASCII whitespace ignored, 1 to [`MAX_KEY`] bytes.
    pub fn from_config(config: &[u8]) -> Result<Xor, InitError> {
        let text = config.trim_ascii();
        if text.is_empty() {
            return Err(InitError::invalid("xor: config is empty; it must hold the key as hex"));
        }
        if !text.len().is_multiple_of(2) {
            return Err(InitError::invalid("xor: key must be an even number of hex digits"));
        }
        if text.len() / 2 > MAX_KEY {
            return Err(InitError::invalid("xor: key is longer than 64 bytes"));
        }
        let mut key = [0u8; MAX_KEY];
        for (slot, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            match (hex(pair[0]), hex(pair[1])) {
                (Some(hi), Some(lo)) => *slot = hi << 4 | lo,
                _ => return Err(InitError::invalid("xor: key is not valid hex")),
            }
        }
        Ok(Xor { key, len: text.len() / 2 })
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.len]
    }

    /// A fresh key stream, as each direction of a connection starts with.
    pub fn stream(&self) -> XorStream {
        // The key repeated over a block whose length is a multiple of the
        // key's, so the hot loop XORs two contiguous slices (which the
        // compiler vectorises) instead of wrapping a key index per byte.
        let block_len = self.len * (BLOCK / self.len);
        let mut block = [0u8; BLOCK];
        for (i, b) in block[..block_len].iter_mut().enumerate() {
            *b = self.key[i % self.len];
        }
        XorStream { block, block_len, pos: 0 }
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `out[i] = input[i] ^ key[i]`, in one pass (no copy first). In wasm with
/// SIMD, 64 bytes per loop turn as four 16-byte XORs (the loop's own cost,
/// which includes the host's epoch check, is paid once per 64 bytes), then 16
/// at a time; eight bytes per 64-bit XOR elsewhere; the byte loop for the
/// last few.
fn xor_into(out: &mut [u8], input: &[u8], key: &[u8]) {
    debug_assert!(input.len() == out.len() && key.len() == out.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (out, input, key) = {
        use core::arch::wasm32::{v128, v128_load, v128_store, v128_xor};
        /// # Safety
        /// `a..a + 16` and `k..k + 16` must be readable, `o..o + 16`
        /// writable (wasm's v128 accesses take unaligned addresses).
        #[inline(always)]
        unsafe fn xor16(o: *mut u8, a: *const u8, k: *const u8) {
            // SAFETY: the caller's promise.
            unsafe {
                let x = v128_xor(v128_load(a as *const v128), v128_load(k as *const v128));
                v128_store(o as *mut v128, x);
            }
        }
        let mut o = out.chunks_exact_mut(64);
        let mut i = input.chunks_exact(64);
        let mut k = key.chunks_exact(64);
        for ((oc, ic), kc) in (&mut o).zip(&mut i).zip(&mut k) {
            let (op, ip, kp) = (oc.as_mut_ptr(), ic.as_ptr(), kc.as_ptr());
            // SAFETY: the three chunks are exactly 64 bytes long; each access
            // is 16 bytes at offset 0, 16, 32 or 48.
            unsafe {
                xor16(op, ip, kp);
                xor16(op.add(16), ip.add(16), kp.add(16));
                xor16(op.add(32), ip.add(32), kp.add(32));
                xor16(op.add(48), ip.add(48), kp.add(48));
            }
        }
        let (out, input, key) = (o.into_remainder(), i.remainder(), k.remainder());
        let mut o = out.chunks_exact_mut(16);
        let mut i = input.chunks_exact(16);
        let mut k = key.chunks_exact(16);
        for ((oc, ic), kc) in (&mut o).zip(&mut i).zip(&mut k) {
            // SAFETY: the three chunks are exactly 16 bytes long.
            unsafe { xor16(oc.as_mut_ptr(), ic.as_ptr(), kc.as_ptr()) };
        }
        (o.into_remainder(), i.remainder(), k.remainder())
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let (out, input, key) = {
        let mut o = out.chunks_exact_mut(8);
        let mut i = input.chunks_exact(8);
        let mut k = key.chunks_exact(8);
        for ((oc, ic), kc) in (&mut o).zip(&mut i).zip(&mut k) {
            let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
            oc.copy_from_slice(&(word(ic) ^ word(kc)).to_ne_bytes());
        }
        (o.into_remainder(), i.remainder(), k.remainder())
    };
    for ((o, i), k) in out.iter_mut().zip(input).zip(key) {
        *o = i ^ k;
    }
}

/// Size of the repeated-key block a stream XORs with.
const BLOCK: usize = 1024;

/// One direction's key stream (XOR is its own inverse, so it both encodes
/// and decodes).
#[derive(Clone, Debug)]
pub struct XorStream {
    /// The key repeated `block_len / key.len()` times.
    block: [u8; BLOCK],
    block_len: usize,
    /// Position in the block of the next byte.
    pos: usize,
}

impl XorStream {
    /// `out = input ^ stream`, advancing the stream; `out` and `input` have
    /// the same length.
    pub fn apply(&mut self, mut out: &mut [u8], mut input: &[u8]) {
        debug_assert_eq!(out.len(), input.len());
        while !out.is_empty() {
            let n = out.len().min(self.block_len - self.pos);
            let (head, rest) = out.split_at_mut(n);
            xor_into(head, &input[..n], &self.block[self.pos..self.pos + n]);
            self.pos = (self.pos + n) % self.block_len;
            (out, input) = (rest, &input[n..]);
        }
    }

    /// XORs `data` in place, advancing the stream (for callers outside the
    /// worker, which has separate input and output buffers).
    pub fn apply_in_place(&mut self, data: &mut [u8]) {
        let mut copy = [0u8; 256];
        for chunk in data.chunks_mut(copy.len()) {
            let copy = &mut copy[..chunk.len()];
            copy.copy_from_slice(chunk);
            self.apply(chunk, copy);
        }
    }
}

impl Codec for XorStream {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let n = input.len().min(output.len());
        self.apply(&mut output[..n], &input[..n]);
        Ok(Progress { consumed: n, produced: n })
    }
}

impl Transport for Xor {
    const NAME: &'static str = "xor";
    const WANTS_CONFIG: bool = true;
    type Encoder = XorStream;
    type Decoder = XorStream;

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        match config {
            Some(config) => Xor::from_config(config),
            None => Err(InitError::invalid("xor: no config; it must hold the key as hex")),
        }
    }

    fn encoder(&self) -> XorStream {
        self.stream()
    }

    fn decoder(&self) -> XorStream {
        self.stream()
    }
}

water_guest::export_transport!(Xor);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use water_guest::testing::{Segmentation, pump};

    #[test]
    fn parses_keys_and_rejects_bad_ones() {
        assert_eq!(Xor::from_config(b"  0aFF\n").unwrap().key(), &[0x0a, 0xff]);
        assert_eq!(Xor::from_config(&[b'7'; 128]).unwrap().key().len(), 64);
        for bad in [&b""[..], b"  \n", b"abc", b"zz", b"0x0a", &[b'7'; 130]] {
            let err = Xor::from_config(bad).unwrap_err();
            assert_eq!(err.errno, Errno::INVAL, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(Xor::new(None).is_err());
    }

    #[test]
    fn key_stream_is_positional() {
        let t = Xor::from_config(b"010203").unwrap();
        let mut s = t.stream();
        let mut a = [0u8; 4];
        s.apply(&mut a[..1], &[0]);
        s.apply(&mut a[1..], &[0; 3]);
        assert_eq!(a, [1, 2, 3, 1]);
        let mut b = [0u8; 700];
        t.stream().apply_in_place(&mut b);
        assert!(b.iter().enumerate().all(|(i, x)| *x == [1, 2, 3][i % 3]));
    }

    proptest! {
        #[test]
        fn round_trips_however_split(
            key in proptest::collection::vec(any::<u8>(), 1..=64),
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            enc in (proptest::collection::vec(1usize..5000, 1..8), proptest::collection::vec(1usize..5000, 1..8), 16usize..4096),
            dec in (proptest::collection::vec(1usize..5000, 1..8), proptest::collection::vec(1usize..5000, 1..8), 16usize..4096),
        ) {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let t = Xor::from_config(hex.as_bytes()).unwrap();
            let enc = Segmentation { reads: enc.0, writes: enc.1, buffer: enc.2 };
            let dec = Segmentation { reads: dec.0, writes: dec.1, buffer: dec.2 };
            let wire = pump(t.encoder(), &data, &enc).unwrap();
            // The wire bytes are the same whatever the segmentation was.
            prop_assert_eq!(&wire, &pump(t.encoder(), &data, &Segmentation::default()).unwrap());
            let want: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % key.len()]).collect();
            prop_assert_eq!(&wire, &want);
            prop_assert_eq!(pump(t.decoder(), &wire, &dec).unwrap(), data);
        }
    }
}
