//! ChaCha20-Poly1305 and XChaCha20-Poly1305 for WATMs, at SIMD speed inside
//! wasm.
//!
//! RustCrypto's `chacha20poly1305` is correct everywhere but has no backend
//! for wasm's SIMD128: in a guest it runs the portable one-block ChaCha20,
//! and the AEAD stays near 0.2× of native libsodium
//! (`shared/AEAD-IN-WASM.md`). This crate writes only that missing piece by
//! hand: [`chacha::ChaCha20`] makes four blocks per pass in `v128` lanes,
//! and [`poly::Poly1305`] two blocks per step (RustCrypto's `poly1305` has a
//! SIMD backend for AVX2 only). The AEAD construction is RFC 8439 §2.8 (the
//! Poly1305 key from block 0, the message from block 1, the MAC over padded
//! associated data, padded ciphertext and both lengths).
//!
//! Checked against RFC 8439's and draft-irtf-cfrg-xchacha's test vectors and
//! differentially against the `chacha20poly1305` and `poly1305` crates
//! (same key, nonce and data → same ciphertext and tag) in `cargo test` on
//! the host, and inside wasm, where the SIMD lanes are real, by
//! `test-guests/aead-check`.
//!
//! [`chunk`] frames a byte stream as AEAD chunks (a sealed length, then the
//! sealed payload, with a counter nonce), the shape Shadowsocks' AEAD
//! protocol uses and that other transports can reuse.

#![no_std]

pub mod chacha;
pub mod chunk;
mod lanes;
pub mod poly;
pub mod salsa;

use chacha::ChaCha20;
use poly::Poly1305;

/// Length of a Poly1305 tag.
pub const TAG: usize = 16;

/// The tag did not authenticate the message (or the message was too long
/// to be one); nothing of it may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthError;

impl core::fmt::Display for AuthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("authentication failed")
    }
}

/// ChaCha20-Poly1305 with a 96-bit nonce (RFC 8439, libsodium's
/// `chacha20poly1305_ietf`).
#[derive(Clone)]
pub struct ChaCha20Poly1305 {
    key: [u8; 32],
}

impl core::fmt::Debug for ChaCha20Poly1305 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ChaCha20Poly1305")
    }
}

/// The MAC for one message: keyed by the first 32 bytes of block 0.
fn mac(first: &[u8; chacha::WIDE]) -> Poly1305 {
    Poly1305::new(first[..32].try_into().expect("a 32-byte Poly1305 key"))
}

/// Finishes the MAC over the associated data and the ciphertext.
fn mac_tag(mut mac: Poly1305, aad: &[u8], ciphertext: &[u8]) -> [u8; TAG] {
    mac.update_padded(aad);
    mac.update_padded(ciphertext);
    let mut lengths = [0u8; 16];
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    mac.update_padded(&lengths);
    mac.finalize()
}

/// XORs the message keystream (from block 1) into `data`: blocks 1 to 3
/// come from the pass that made block 0, the rest from block 4 on.
fn crypt(cipher: &ChaCha20, first: &[u8; chacha::WIDE], data: &mut [u8]) {
    let (head, rest) = data.split_at_mut(data.len().min(chacha::WIDE - 64));
    for (d, k) in head.iter_mut().zip(&first[64..]) {
        *d ^= k;
    }
    if !rest.is_empty() {
        cipher.apply_keystream(4, rest);
    }
}

/// Largest message: the 32-bit block counter from block 1 (RFC 8439 §2.8).
const MAX_MESSAGE: u64 = ((1 << 32) - 1) * 64;

impl ChaCha20Poly1305 {
    /// The AEAD for a 256-bit key.
    pub fn new(key: &[u8; 32]) -> ChaCha20Poly1305 {
        ChaCha20Poly1305 { key: *key }
    }

    /// Encrypts `data` in place; returns the tag.
    ///
    /// # Panics
    /// If `data` is longer than 256 GiB − 64 bytes (RFC 8439's limit; a
    /// wasm32 slice cannot be).
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; TAG] {
        assert!(data.len() as u64 <= MAX_MESSAGE, "ChaCha20-Poly1305 message too long");
        let cipher = ChaCha20::new(&self.key, nonce);
        let first = cipher.keystream_wide(0);
        crypt(&cipher, &first, data);
        mac_tag(mac(&first), aad, data)
    }

    /// Decrypts `data` in place if `tag` authenticates it and `aad`; on
    /// failure `data` is left as it was (encrypted).
    pub fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG],
    ) -> Result<(), AuthError> {
        if data.len() as u64 > MAX_MESSAGE {
            return Err(AuthError);
        }
        let cipher = ChaCha20::new(&self.key, nonce);
        let first = cipher.keystream_wide(0);
        let expected = mac_tag(mac(&first), aad, data);
        // Constant time: no early exit on the first differing byte (and no
        // `memcmp`, which a no_std guest does not link).
        let diff = expected.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if core::hint::black_box(diff) != 0 {
            return Err(AuthError);
        }
        crypt(&cipher, &first, data);
        Ok(())
    }
}

/// XChaCha20-Poly1305 with a 192-bit nonce (draft-irtf-cfrg-xchacha,
/// libsodium's `xchacha20poly1305_ietf`): HChaCha20 makes a subkey from the
/// first 16 nonce bytes, then ChaCha20-Poly1305 runs with the last 8.
#[derive(Clone)]
pub struct XChaCha20Poly1305 {
    key: [u8; 32],
}

impl core::fmt::Debug for XChaCha20Poly1305 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("XChaCha20Poly1305")
    }
}

impl XChaCha20Poly1305 {
    /// The AEAD for a 256-bit key.
    pub fn new(key: &[u8; 32]) -> XChaCha20Poly1305 {
        XChaCha20Poly1305 { key: *key }
    }

    fn inner(&self, nonce: &[u8; 24]) -> (ChaCha20Poly1305, [u8; 12]) {
        let subkey = chacha::hchacha20(&self.key, nonce[..16].try_into().expect("16 bytes"));
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(&nonce[16..]);
        (ChaCha20Poly1305::new(&subkey), short)
    }

    /// Encrypts `data` in place; returns the tag. Panics as
    /// [`ChaCha20Poly1305::seal`].
    pub fn seal(&self, nonce: &[u8; 24], aad: &[u8], data: &mut [u8]) -> [u8; TAG] {
        let (aead, nonce) = self.inner(nonce);
        aead.seal(&nonce, aad, data)
    }

    /// Decrypts `data` in place if `tag` authenticates it.
    pub fn open(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG],
    ) -> Result<(), AuthError> {
        let (aead, nonce) = self.inner(nonce);
        aead.open(&nonce, aad, data, tag)
    }
}

#[cfg(test)]
mod tests;
