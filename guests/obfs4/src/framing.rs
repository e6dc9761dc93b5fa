//! obfs4's frames and packets (spec sections 5 and 6), as obfs4proxy 0.0.14
//! writes and reads them.
//!
//! A frame is a 2-byte length, obfuscated by XOR with a SipHash-2-4 OFB
//! mask, followed by a NaCl secretbox (XSalsa20-Poly1305: 16-byte tag, then
//! the ciphertext) whose nonce is a 16-byte prefix and a big-endian 64-bit
//! counter starting at 1. Inside the box is a packet: type, 2-byte payload
//! length, payload, zero padding.

use siphasher::sip::SipHasher24;
use watm_aead::salsa::XSalsa20Poly1305;

/// Longest frame on the wire (obfs4proxy's `MaximumSegmentLength`,
/// 1500 - 52): length field and box.
pub const MAX_SEGMENT: usize = 1448;
/// The obfuscated length field.
pub const LEN_FIELD: usize = 2;
/// Poly1305 tag.
pub const TAG: usize = 16;
/// Length field and tag.
pub const FRAME_OVERHEAD: usize = LEN_FIELD + TAG;
/// Longest packet (the box's plain text).
pub const MAX_FRAME_PAYLOAD: usize = MAX_SEGMENT - FRAME_OVERHEAD;
/// Packet type and payload length.
pub const PACKET_OVERHEAD: usize = 3;
/// Longest payload (or padding) in one packet.
pub const MAX_PACKET_PAYLOAD: usize = MAX_FRAME_PAYLOAD - PACKET_OVERHEAD;
/// A frame's length field counts the box: tag and packet.
const MAX_BOX: usize = MAX_SEGMENT - LEN_FIELD;
const MIN_BOX: usize = TAG;
/// Frame and packet overhead: the smallest frame.
pub const HEADER: usize = FRAME_OVERHEAD + PACKET_OVERHEAD;
/// A DRBG seed: SipHash key and OFB IV.
pub const SEED_LEN: usize = 24;
/// One direction's keys: secretbox key, nonce prefix, DRBG seed.
pub const KEY_MATERIAL: usize = 32 + 16 + SEED_LEN;

/// Packet carrying application bytes.
pub const PACKET_PAYLOAD: u8 = 0;
/// Packet carrying the server's length-distribution seed.
pub const PACKET_PRNG_SEED: u8 = 1;

/// obfs4proxy's `HashDrbg`: SipHash-2-4 in OFB mode. As in obfs4proxy (and
/// unlike the spec's `IV[n] = SipHash(K, IV[n-1])`), the hash is never
/// reset: block `n` is SipHash of the IV and every earlier block.
#[derive(Clone, Debug)]
pub struct Drbg {
    sip: SipHasher24,
    ofb: [u8; 8],
}

impl Drbg {
    /// From a seed: key (16 bytes, as two little-endian words) and IV.
    pub fn new(seed: &[u8; SEED_LEN]) -> Drbg {
        let word = |i: usize| u64::from_le_bytes(seed[i..i + 8].try_into().expect("8 bytes"));
        Drbg {
            sip: SipHasher24::new_with_keys(word(0), word(8)),
            ofb: seed[16..].try_into().expect("8 bytes"),
        }
    }

    /// The next 8-byte block.
    pub fn next_block(&mut self) -> [u8; 8] {
        use core::hash::Hasher as _;
        self.sip.write(&self.ofb);
        self.ofb = self.sip.finish().to_le_bytes();
        self.ofb
    }

    /// Go's `rand.Source.Int63` over this DRBG (big-endian block, top bit
    /// cleared).
    pub fn int63(&mut self) -> u64 {
        u64::from_be_bytes(self.next_block()) & (u64::MAX >> 1)
    }
}

/// One direction's secretbox key, nonce counter and length-mask DRBG.
#[derive(Clone)]
pub struct FrameKeys {
    cipher: XSalsa20Poly1305,
    prefix: [u8; 16],
    counter: u64,
    drbg: Drbg,
}

impl core::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key.
        f.debug_struct("FrameKeys").field("counter", &self.counter).finish_non_exhaustive()
    }
}

/// A frame failed to authenticate, or its length was out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadFrame;

impl FrameKeys {
    /// From [`KEY_MATERIAL`] bytes of the KDF's output.
    pub fn new(material: &[u8]) -> FrameKeys {
        let key: &[u8; 32] = material[..32].try_into().expect("32 bytes");
        FrameKeys {
            cipher: XSalsa20Poly1305::new(key),
            prefix: material[32..48].try_into().expect("16 bytes"),
            counter: 1,
            drbg: Drbg::new(material[48..KEY_MATERIAL].try_into().expect("24 bytes")),
        }
    }

    fn nonce(&self) -> Result<[u8; 24], BadFrame> {
        // The counter must never wrap (spec section 5).
        if self.counter == 0 {
            return Err(BadFrame);
        }
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&self.counter.to_be_bytes());
        Ok(nonce)
    }

    /// Seals the packet of `len` bytes at `frame[FRAME_OVERHEAD..]` into a
    /// whole frame at the front of `frame`; returns the frame's length.
    pub fn seal(&mut self, frame: &mut [u8], len: usize) -> usize {
        debug_assert!(len <= MAX_FRAME_PAYLOAD);
        // 2^64 frames of at least 21 bytes will not be sent.
        let nonce = self.nonce().expect("the nonce counter does not wrap");
        self.counter = self.counter.wrapping_add(1);
        let (head, packet) = frame[..FRAME_OVERHEAD + len].split_at_mut(FRAME_OVERHEAD);
        let tag = self.cipher.seal(&nonce, packet);
        head[LEN_FIELD..].copy_from_slice(&tag);
        let mask = self.drbg.next_block();
        let obfuscated = ((TAG + len) as u16) ^ u16::from_be_bytes([mask[0], mask[1]]);
        head[..LEN_FIELD].copy_from_slice(&obfuscated.to_be_bytes());
        FRAME_OVERHEAD + len
    }

    /// The box length a frame's obfuscated length field announces, and
    /// whether it is in range (16 to 1446). An out-of-range length is
    /// replaced by a pseudo-random in-range one (obfs4proxy's defence
    /// against length probing: the connection then fails after that many
    /// bytes, whatever the length said). Advances the mask DRBG: call once
    /// per frame.
    pub fn open_len(&mut self, field: [u8; 2]) -> (usize, bool) {
        let mask = self.drbg.next_block();
        let len = (u16::from_be_bytes(field) ^ u16::from_be_bytes([mask[0], mask[1]])) as usize;
        if (MIN_BOX..=MAX_BOX).contains(&len) {
            return (len, true);
        }
        let r = u64::from_le_bytes(self.drbg.next_block());
        (MIN_BOX + (r % (MAX_BOX - MIN_BOX + 1) as u64) as usize, false)
    }

    /// Opens a box (tag, then ciphertext) in place; the packet is then at
    /// `boxed[TAG..]`.
    pub fn open(&mut self, boxed: &mut [u8]) -> Result<(), BadFrame> {
        let nonce = self.nonce()?;
        let (tag, packet) = boxed.split_at_mut(TAG);
        let tag: &[u8; TAG] = (&*tag).try_into().expect("16 bytes");
        self.cipher.open(&nonce, packet, tag).map_err(|_| BadFrame)?;
        self.counter = self.counter.wrapping_add(1);
        Ok(())
    }
}

/// Writes one packet as a frame at the front of `out`: `kind`, `data`, and
/// `pad` zero bytes. `out` must hold `HEADER + data.len() + pad` bytes and
/// `data.len() + pad` must be at most [`MAX_PACKET_PAYLOAD`]. Returns the
/// frame's length.
pub fn write_packet(keys: &mut FrameKeys, kind: u8, data: &[u8], pad: usize, out: &mut [u8]) -> usize {
    debug_assert!(data.len() + pad <= MAX_PACKET_PAYLOAD);
    let packet = &mut out[FRAME_OVERHEAD..HEADER + data.len() + pad];
    packet[0] = kind;
    packet[1..3].copy_from_slice(&(data.len() as u16).to_be_bytes());
    packet[3..3 + data.len()].copy_from_slice(data);
    packet[3 + data.len()..].fill(0);
    keys.seal(out, PACKET_OVERHEAD + data.len() + pad)
}

/// A decoded packet's type and where its payload lies in the opened box.
/// Errors: the packet is shorter than its header, or announces more payload
/// than it holds.
pub fn parse_packet(packet: &[u8]) -> Result<(u8, core::ops::Range<usize>), BadFrame> {
    if packet.len() < PACKET_OVERHEAD {
        return Err(BadFrame);
    }
    let len = u16::from_be_bytes([packet[1], packet[2]]) as usize;
    if len > packet.len() - PACKET_OVERHEAD {
        return Err(BadFrame);
    }
    Ok((packet[0], PACKET_OVERHEAD..PACKET_OVERHEAD + len))
}

/// Longest padding one burst gets: a full padding frame and a short one
/// (see [`pad_burst`]).
pub const MAX_PAD_BURST: usize = MAX_SEGMENT + HEADER + HEADER;

/// obfs4proxy's `padBurst`: padding frames after a burst of `burst` bytes
/// so that its last segment is `to` bytes long (modulo [`MAX_SEGMENT`]).
/// Writes them at the front of `out` (at least [`MAX_PAD_BURST`] bytes);
/// returns their length.
pub fn pad_burst(keys: &mut FrameKeys, burst: usize, to: usize, out: &mut [u8]) -> usize {
    let tail = burst % MAX_SEGMENT;
    let pad = if to >= tail { to - tail } else { MAX_SEGMENT - tail + to };
    if pad > HEADER {
        write_packet(keys, PACKET_PAYLOAD, &[], pad - HEADER, out)
    } else if pad > 0 {
        // As obfs4proxy: a full frame, then one with `pad` bytes of padding.
        let n = write_packet(keys, PACKET_PAYLOAD, &[], MAX_PACKET_PAYLOAD, out);
        n + write_packet(keys, PACKET_PAYLOAD, &[], pad, &mut out[n..])
    } else {
        0
    }
}
