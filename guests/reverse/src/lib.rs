//! `reverse`: a framed transport whose frames carry their payload reversed.
//!
//! Wire format, per direction: a sequence of frames, each a 2-byte big-endian
//! length `N` (1 to [`MAX_FRAME`]) followed by `N` payload bytes in reverse
//! order. The encoder cuts frames from whatever input is at hand; the decoder
//! reassembles frames split anywhere, so any stream round-trips exactly. A
//! zero or oversized length, or a stream that ends inside a frame, is a
//! protocol error (`proto`).

#![cfg_attr(target_arch = "wasm32", no_std)]

use water_guest::fast::reverse_into;
use water_guest::{Codec, Errno, InitError, Progress, Role, Transport};

/// Largest payload of one frame.
pub const MAX_FRAME: usize = 8192;

/// Length of a frame header.
pub const HEADER: usize = 2;

/// The transport: no config.
#[derive(Debug)]
pub struct Reverse;

/// Cuts input into frames and reverses each payload.
#[derive(Debug, Default)]
pub struct Encoder;

impl Codec for Encoder {
    /// Room for a whole frame: the worker offers at least this much before it
    /// expects progress, so the encoder can always wait for it.
    const MIN_OUTPUT: usize = HEADER + MAX_FRAME;

    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let n = input.len().min(MAX_FRAME);
        // No room for the frame this input makes: wait for the output to
        // drain rather than cut the frame to fit. Cutting it would leave a
        // sliver of the input to go out later as a tiny frame of its own
        // (and as a tiny write: a 32 KiB read became a full 32 KiB write and
        // then a 10-byte one).
        if n == 0 || output.len() < HEADER + n {
            return Ok(Progress::default());
        }
        output[..HEADER].copy_from_slice(&(n as u16).to_be_bytes());
        reverse_into(&mut output[HEADER..HEADER + n], &input[..n]);
        Ok(Progress { consumed: n, produced: HEADER + n })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `have` header bytes collected so far.
    Header { have: usize },
    /// Collecting a payload of `len`, `got` bytes so far.
    Payload { len: usize, got: usize },
    /// Emitting a complete frame of `len`, `sent` bytes out so far.
    Drain { len: usize, sent: usize },
}

/// Reassembles frames and restores each payload's order.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    header: [u8; HEADER],
    frame: [u8; MAX_FRAME],
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Header { have: 0 }, header: [0; HEADER], frame: [0; MAX_FRAME] }
    }
}

impl Decoder {
    fn drain(&mut self, len: usize, sent: usize, output: &mut [u8]) -> usize {
        let k = (len - sent).min(output.len());
        // Payload byte `len - 1 - j` is original byte `j`.
        reverse_into(&mut output[..k], &self.frame[len - sent - k..len - sent]);
        self.state =
            if sent + k == len { State::Header { have: 0 } } else { State::Drain { len, sent: sent + k } };
        k
    }
}

impl Codec for Decoder {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let mut p = Progress::default();
        loop {
            match self.state {
                State::Drain { len, sent } => {
                    let k = self.drain(len, sent, &mut output[p.produced..]);
                    if k == 0 {
                        return Ok(p);
                    }
                    p.produced += k;
                }
                State::Header { have } => {
                    let rest = &input[p.consumed..];
                    if rest.is_empty() {
                        return Ok(p);
                    }
                    // Fast path: a whole frame in the input and room for it
                    // in the output goes straight across, without the frame
                    // buffer.
                    if have == 0 && rest.len() > HEADER {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        let out = &mut output[p.produced..];
                        if len != 0 && len <= MAX_FRAME && rest.len() >= HEADER + len && out.len() >= len {
                            reverse_into(&mut out[..len], &rest[HEADER..HEADER + len]);
                            p.consumed += HEADER + len;
                            p.produced += len;
                            continue;
                        }
                    }
                    let k = (HEADER - have).min(rest.len());
                    self.header[have..have + k].copy_from_slice(&rest[..k]);
                    p.consumed += k;
                    if have + k < HEADER {
                        self.state = State::Header { have: have + k };
                        continue;
                    }
                    let len = u16::from_be_bytes(self.header) as usize;
                    if len == 0 || len > MAX_FRAME {
                        return Err(Errno::PROTO);
                    }
                    self.state = State::Payload { len, got: 0 };
                }
                State::Payload { len, got } => {
                    let rest = &input[p.consumed..];
                    if rest.is_empty() {
                        return Ok(p);
                    }
                    let k = (len - got).min(rest.len());
                    self.frame[got..got + k].copy_from_slice(&rest[..k]);
                    p.consumed += k;
                    self.state = if got + k == len {
                        State::Drain { len, sent: 0 }
                    } else {
                        State::Payload { len, got: got + k }
                    };
                }
            }
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, Errno> {
        match self.state {
            State::Header { have: 0 } => Ok(0),
            State::Drain { len, sent } => Ok(self.drain(len, sent, output)),
            _ => Err(Errno::PROTO),
        }
    }
}

impl Transport for Reverse {
    const NAME: &'static str = "reverse";
    type Encoder = Encoder;
    type Decoder = Decoder;
    type Handshake = ();

    fn new(_config: Option<&[u8]>) -> Result<Self, InitError> {
        Ok(Reverse)
    }

    fn handshake(&self, _role: Role) -> Result<(), Errno> {
        Ok(())
    }

    fn encoder(&self, _role: Role, _keys: &()) -> Encoder {
        Encoder
    }

    fn decoder(&self, _role: Role, _keys: &()) -> Decoder {
        Decoder::default()
    }
}

water_guest::export_transport!(Reverse);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use water_guest::testing::{Segmentation, pump};

    #[test]
    fn frames_look_as_documented() {
        let wire = pump(Encoder, b"hello", &Segmentation::default()).unwrap();
        assert_eq!(wire, b"\x00\x05olleh");
        let plain = pump(Decoder::default(), b"\x00\x02ba\x00\x01c", &Segmentation::default()).unwrap();
        assert_eq!(plain, b"abc");
    }

    #[test]
    fn bad_streams_are_protocol_errors() {
        let seg = Segmentation::default();
        assert_eq!(pump(Decoder::default(), b"\x00\x00", &seg), Err(Errno::PROTO));
        assert_eq!(pump(Decoder::default(), b"\x20\x01", &seg), Err(Errno::PROTO));
        assert_eq!(pump(Decoder::default(), b"\x00\x05abc", &seg), Err(Errno::PROTO));
        assert_eq!(pump(Decoder::default(), b"\x00", &seg), Err(Errno::PROTO));
    }

    proptest! {
        #[test]
        fn round_trips_however_split(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            enc in (proptest::collection::vec(1usize..10_000, 1..8), proptest::collection::vec(1usize..10_000, 1..8), 16usize..20_000),
            dec in (proptest::collection::vec(1usize..10_000, 1..8), proptest::collection::vec(1usize..10_000, 1..8), 16usize..20_000),
        ) {
            let enc = Segmentation { reads: enc.0, writes: enc.1, buffer: enc.2 };
            let dec = Segmentation { reads: dec.0, writes: dec.1, buffer: dec.2 };
            let wire = pump(Reverse.encoder(Role::Dialer, &()), &data, &enc).unwrap();
            prop_assert!(wire.len() >= data.len() + HEADER * data.len().div_ceil(MAX_FRAME));
            prop_assert_eq!(pump(Reverse.decoder(Role::Listener, &()), &wire, &dec).unwrap(), data);
        }
    }
}
