//! Known answers from the RFCs, and the RustCrypto crate as the oracle for
//! every length around the four-block boundaries.

extern crate std;

use std::vec::Vec;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use proptest::prelude::*;

use super::chunk::{self, Chunks, LEN_BLOCK, MAX_PAYLOAD, OVERHEAD, Opener};
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    hex(s).try_into().unwrap()
}

const SUNSCREEN: &[u8] =
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the \
    future, sunscreen would be it.";

/// RFC 8439 §2.3.2: the block function, counter 1.
#[test]
fn rfc8439_block() {
    let key = arr::<32>("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let nonce = arr::<12>("000000090000004a00000000");
    let block = &chacha::ChaCha20::new(&key, &nonce).keystream_wide(1)[..64];
    let want = hex("10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e
         d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e");
    assert_eq!(block, &want[..]);
}

/// RFC 8439 §2.4.2: encryption from counter 1.
#[test]
fn rfc8439_encryption() {
    let key = arr::<32>("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let nonce = arr::<12>("000000000000004a00000000");
    let mut data = SUNSCREEN.to_vec();
    chacha::ChaCha20::new(&key, &nonce).apply_keystream(1, &mut data);
    let want = hex("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
         f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
         07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
         5af90bbf74a35be6b40b8eedf2785e42874d");
    assert_eq!(data, want);
}

/// RFC 8439 §2.8.2: the AEAD.
#[test]
fn rfc8439_aead() {
    let key = arr::<32>("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce = arr::<12>("070000004041424344454647");
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let mut data = SUNSCREEN.to_vec();
    let aead = ChaCha20Poly1305::new(&key);
    let tag = aead.seal(&nonce, &aad, &mut data);
    let want = hex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b6116");
    assert_eq!(data, want);
    assert_eq!(tag, arr::<16>("1ae10b594f09e26a7e902ecbd0600691"));
    aead.open(&nonce, &aad, &mut data, &tag).unwrap();
    assert_eq!(data, SUNSCREEN);
}

/// draft-irtf-cfrg-xchacha §2.2.1: HChaCha20.
#[test]
fn xchacha_draft_hchacha20() {
    let key = arr::<32>("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let nonce = arr::<16>("000000090000004a0000000031415927");
    let want = arr::<32>("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc");
    assert_eq!(chacha::hchacha20(&key, &nonce), want);
}

/// draft-irtf-cfrg-xchacha appendix A.1: the AEAD.
#[test]
fn xchacha_draft_aead() {
    let key = arr::<32>("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce = arr::<24>("404142434445464748494a4b4c4d4e4f5051525354555657");
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let mut data = SUNSCREEN.to_vec();
    let tag = XChaCha20Poly1305::new(&key).seal(&nonce, &aad, &mut data);
    let want = hex("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
         731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
         2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
         21f9664c97637da9768812f615c68b13b52e");
    assert_eq!(data, want);
    assert_eq!(tag, arr::<16>("c0875924c1c7987947deafd8780acf49"));
}

/// Seals with RustCrypto's crate.
fn oracle_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
    let aead = chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).unwrap();
    aead.encrypt_inout_detached(nonce.into(), aad, data.into()).unwrap().into()
}

fn oracle_xseal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
    let aead = chacha20poly1305::XChaCha20Poly1305::new_from_slice(key).unwrap();
    aead.encrypt_inout_detached(nonce.into(), aad, data.into()).unwrap().into()
}

/// Every length from 0 to 1100 (the one-pass head of 192 bytes, the
/// 256-byte passes and the tails), one random key and nonce each.
#[test]
fn every_short_length_matches_the_crate() {
    let mut seed = 0x5741_5445_5200_0001u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    for len in 0..1100 {
        let key: [u8; 32] = core::array::from_fn(|_| next());
        let nonce: [u8; 12] = core::array::from_fn(|_| next());
        let plain: Vec<u8> = (0..len).map(|_| next()).collect();
        let (mut ours, mut theirs) = (plain.clone(), plain.clone());
        let tag = ChaCha20Poly1305::new(&key).seal(&nonce, b"", &mut ours);
        assert_eq!(tag, oracle_seal(&key, &nonce, b"", &mut theirs), "tag, length {len}");
        assert_eq!(ours, theirs, "ciphertext, length {len}");
        ChaCha20Poly1305::new(&key).open(&nonce, b"", &mut ours, &tag).unwrap();
        assert_eq!(ours, plain);
    }
}

proptest! {
    #[test]
    fn matches_the_crate(
        key: [u8; 32],
        nonce: [u8; 12],
        xnonce: [u8; 24],
        aad in proptest::collection::vec(any::<u8>(), 0..40),
        plain in proptest::collection::vec(any::<u8>(), 0..20_000),
    ) {
        let (mut ours, mut theirs) = (plain.clone(), plain.clone());
        let tag = ChaCha20Poly1305::new(&key).seal(&nonce, &aad, &mut ours);
        prop_assert_eq!(tag, oracle_seal(&key, &nonce, &aad, &mut theirs));
        prop_assert_eq!(&ours, &theirs);

        let (mut ours, mut theirs) = (plain.clone(), plain.clone());
        let tag = XChaCha20Poly1305::new(&key).seal(&xnonce, &aad, &mut ours);
        prop_assert_eq!(tag, oracle_xseal(&key, &xnonce, &aad, &mut theirs));
        prop_assert_eq!(&ours, &theirs);
        XChaCha20Poly1305::new(&key).open(&xnonce, &aad, &mut ours, &tag).unwrap();
        prop_assert_eq!(ours, plain);
    }

    /// Any flipped bit in the ciphertext, the tag or the associated data
    /// fails, and leaves the data as it was.
    #[test]
    fn a_flipped_bit_fails(
        key: [u8; 32],
        nonce: [u8; 12],
        plain in proptest::collection::vec(any::<u8>(), 1..600),
        which in 0usize..3,
        at: prop::sample::Index,
        bit in 0u8..8,
    ) {
        let aead = ChaCha20Poly1305::new(&key);
        let mut aad = [7u8; 5];
        let mut data = plain.clone();
        let mut tag = aead.seal(&nonce, &aad, &mut data);
        match which {
            0 => {
                let i = at.index(data.len());
                data[i] ^= 1 << bit;
            }
            1 => tag[at.index(TAG)] ^= 1 << bit,
            _ => aad[at.index(aad.len())] ^= 1 << bit,
        }
        let sealed = data.clone();
        prop_assert_eq!(aead.open(&nonce, &aad, &mut data, &tag), Err(AuthError));
        prop_assert_eq!(data, sealed);
    }

    /// A stream of chunks cut anywhere opens to the same bytes; the
    /// opener hands out nothing of a chunk whose tag fails.
    #[test]
    fn chunks_survive_any_segmentation(
        key: [u8; 32],
        sizes in proptest::collection::vec(1usize..=MAX_PAYLOAD, 1..6),
        cuts in proptest::collection::vec(1usize..5000, 1..40),
        out_room in 1usize..40_000,
        corrupt: Option<prop::sample::Index>,
    ) {
        let mut sealer = Chunks::new(ChaCha20Poly1305::new(&key));
        let mut plain = Vec::new();
        let mut wire = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            let mut out = std::vec![0u8; n + OVERHEAD];
            prop_assert_eq!(sealer.seal_chunk(&payload, &mut out), n + OVERHEAD);
            plain.extend_from_slice(&payload);
            wire.extend_from_slice(&out);
        }
        if let Some(at) = &corrupt {
            let i = at.index(wire.len());
            wire[i] ^= 0x40;
        }
        let mut opener = Opener::new(Chunks::new(ChaCha20Poly1305::new(&key)));
        let mut got = Vec::new();
        let mut out = std::vec![0u8; out_room];
        let (mut at, mut cut) = (0, 0);
        let mut failed = false;
        while at < wire.len() || !opener.at_boundary() {
            let end = (at + cuts[cut % cuts.len()]).min(wire.len());
            cut += 1;
            match opener.open(&wire[at..end], &mut out) {
                Ok((0, 0)) if at == wire.len() => break,
                Ok((consumed, produced)) => {
                    at += consumed;
                    got.extend_from_slice(&out[..produced]);
                }
                Err(chunk::Failed { produced }) => {
                    got.extend_from_slice(&out[..produced]);
                    failed = true;
                    break;
                }
            }
        }
        if corrupt.is_some() {
            // Only whole, authenticated chunks before the damaged one.
            prop_assert!(failed);
            prop_assert!(plain.starts_with(&got));
        } else {
            prop_assert!(!failed);
            prop_assert_eq!(got, plain);
        }
    }
}

proptest! {
    /// The two-lane path (from 8 blocks), the one-block path and the
    /// padding against RustCrypto's `poly1305`, several calls in a row.
    #[test]
    fn poly1305_matches_the_crate(
        key: [u8; 32],
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..4),
    ) {
        use poly1305::universal_hash::{KeyInit as _, UniversalHash as _};
        let mut ours = poly::Poly1305::new(&key);
        let mut theirs = poly1305::Poly1305::new_from_slice(&key).unwrap();
        for part in &parts {
            ours.update_padded(part);
            theirs.update_padded(part);
        }
        let want: [u8; 16] = theirs.finalize().into();
        prop_assert_eq!(ours.finalize(), want);
    }
}

/// Keys and messages at the edges of the arithmetic: all-ones r and s
/// (largest limbs), blocks of 0xff (largest message limbs), so h runs near
/// p and the final reduction and the carry out of s are exercised.
#[test]
fn poly1305_edges_match_the_crate() {
    use poly1305::universal_hash::{KeyInit as _, UniversalHash as _};
    for key in [[0xffu8; 32], [0u8; 32], core::array::from_fn(|i| if i < 16 { 0xff } else { 0 })] {
        for fill in [0xffu8, 0x00, 0xfe] {
            for len in [16usize, 32, 128, 130, 144, 512, 1024, 16383] {
                let data = std::vec![fill; len];
                let mut ours = poly::Poly1305::new(&key);
                ours.update_padded(&data);
                let mut theirs = poly1305::Poly1305::new_from_slice(&key).unwrap();
                theirs.update_padded(&data);
                let want: [u8; 16] = theirs.finalize().into();
                assert_eq!(ours.finalize(), want, "key {:02x}, fill {fill:02x}, len {len}", key[0]);
            }
        }
    }
}

/// A sealed zero length is refused, as libev does.
#[test]
fn a_zero_length_is_an_authentication_failure() {
    let mut sealer = Chunks::new(ChaCha20Poly1305::new(&[9; 32]));
    let mut block = [0u8; LEN_BLOCK];
    let tag = sealer.seal(&mut block[..2]);
    block[2..].copy_from_slice(&tag);
    let mut opener = Chunks::new(ChaCha20Poly1305::new(&[9; 32]));
    assert_eq!(opener.open_len(&block), Err(AuthError));
}

fn oracle_secretbox(key: &[u8; 32], nonce: &[u8; 24], data: &mut [u8]) -> [u8; 16] {
    use crypto_secretbox::aead::{AeadInPlace, KeyInit};
    let c = crypto_secretbox::XSalsa20Poly1305::new(key.into());
    c.encrypt_in_place_detached(nonce.into(), &[], data).unwrap().into()
}

#[test]
fn secretbox_every_short_length_matches_the_crate() {
    let (key, nonce) = ([3u8; 32], [9u8; 24]);
    for len in 0..700 {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        let (mut ours, mut theirs) = (data.clone(), data.clone());
        let tag = crate::salsa::XSalsa20Poly1305::new(&key).seal(&nonce, &mut ours);
        assert_eq!((tag, &ours), (oracle_secretbox(&key, &nonce, &mut theirs), &theirs), "length {len}");
        crate::salsa::XSalsa20Poly1305::new(&key).open(&nonce, &mut ours, &tag).unwrap();
        assert_eq!(ours, data);
    }
}

proptest! {
    #[test]
    fn secretbox_matches_the_crate(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        data in proptest::collection::vec(any::<u8>(), 0..5000),
        flip in any::<usize>(),
    ) {
        let (mut ours, mut theirs) = (data.clone(), data.clone());
        let b = crate::salsa::XSalsa20Poly1305::new(&key);
        let tag = b.seal(&nonce, &mut ours);
        prop_assert_eq!(tag, oracle_secretbox(&key, &nonce, &mut theirs));
        prop_assert_eq!(&ours, &theirs);
        if !ours.is_empty() {
            let mut bad = ours.clone();
            bad[flip % ours.len()] ^= 1;
            prop_assert!(b.open(&nonce, &mut bad, &tag).is_err());
        }
        b.open(&nonce, &mut ours, &tag).unwrap();
        prop_assert_eq!(ours, data);
    }
}

#[test]
fn salsa20_keystream_crosses_the_32_bit_counter() {
    // Blocks 2^32 - 2 .. 2^32 + 2: the high counter word carries per lane.
    let s = crate::salsa::Salsa20::new(&[5; 32], &[6; 8]);
    let wide = s.keystream_wide((1 << 32) - 2);
    for b in 0..4u64 {
        let one = s.keystream_wide((1 << 32) - 2 + b);
        assert_eq!(wide[64 * b as usize..][..64], one[..64], "block {b}");
    }
}
