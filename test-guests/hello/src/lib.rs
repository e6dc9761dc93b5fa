//! `hello`, a test-only transport that shows the SDK's handshake phase: the
//! client sends a magic byte and a 16-byte nonce, the server answers with
//! its own nonce, both derive one key per direction from the two nonces, and
//! the codecs XOR each direction with its own key stream.
//!
//! The key derivation (splitmix64 over the nonces) is a stand-in, not
//! cryptography: the point is the plumbing. Its tests run it under random
//! segmentation (`water_guest::testing::handshake`); the host's tests run
//! the built module over real sockets (`crates/water/tests/handshake.rs`).
//! It lives in `test-guests/`, so it is never a built-in transport.

#![cfg_attr(target_arch = "wasm32", no_std)]

use water_guest::{Codec, Errno, Handshake, InitError, Keys, Progress, Role, Step, Transport};

/// The transport. A connection's nonce comes from the host's randomness;
/// tests may fix it.
#[derive(Debug)]
pub struct Hello {
    /// `Some`: the nonce every connection sends (tests only).
    pub fixed_nonce: Option<[u8; NONCE]>,
}

/// Length of each side's nonce.
pub const NONCE: usize = 16;
/// The client's first byte.
pub const MAGIC: u8 = 0x5a;

/// Per-direction keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirKeys {
    /// Key of the client → server stream.
    pub client_to_server: u64,
    /// Key of the server → client stream.
    pub server_to_client: u64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Both keys from both nonces.
pub fn derive(client: &[u8; NONCE], server: &[u8; NONCE]) -> DirKeys {
    let mut h = 0u64;
    for chunk in client.chunks(8).chain(server.chunks(8)) {
        h = splitmix(h ^ u64::from_le_bytes(chunk.try_into().unwrap()));
    }
    DirKeys { client_to_server: splitmix(h ^ 1), server_to_client: splitmix(h ^ 2) }
}

/// The handshake's states.
#[derive(Debug)]
pub enum HelloHandshake {
    /// Client: send the hello (our nonce).
    ClientSend([u8; NONCE]),
    /// Client: wait for the server's nonce.
    ClientWait([u8; NONCE]),
    /// Server: wait for the hello, then send our nonce.
    ServerWait([u8; NONCE]),
    /// Over.
    Done(DirKeys),
}

impl Handshake for HelloHandshake {
    type Keys = DirKeys;

    fn step(&mut self, input: &mut [u8], output: &mut [u8]) -> Result<Step, Errno> {
        match *self {
            HelloHandshake::ClientSend(nonce) => {
                output[0] = MAGIC;
                output[1..=NONCE].copy_from_slice(&nonce);
                *self = HelloHandshake::ClientWait(nonce);
                Ok(Step { consumed: 0, produced: 1 + NONCE, done: false })
            }
            HelloHandshake::ClientWait(mine) => {
                let Some(theirs) = input.get(..NONCE) else { return Ok(Step::default()) };
                *self = HelloHandshake::Done(derive(&mine, theirs.try_into().unwrap()));
                Ok(Step { consumed: NONCE, produced: 0, done: true })
            }
            HelloHandshake::ServerWait(mine) => {
                if input.first().is_some_and(|&b| b != MAGIC) {
                    return Err(Errno::PROTO);
                }
                let Some(theirs) = input.get(1..=NONCE) else { return Ok(Step::default()) };
                output[..NONCE].copy_from_slice(&mine);
                *self = HelloHandshake::Done(derive(theirs.try_into().unwrap(), &mine));
                Ok(Step { consumed: 1 + NONCE, produced: NONCE, done: true })
            }
            HelloHandshake::Done(_) => Ok(Step { done: true, ..Step::default() }),
        }
    }

    fn keys(self) -> DirKeys {
        match self {
            HelloHandshake::Done(keys) => keys,
            _ => unreachable!("keys before done"),
        }
    }
}

/// XOR with a splitmix64 key stream (either direction).
#[derive(Debug)]
pub struct Stream {
    state: u64,
    block: [u8; 8],
    pos: usize,
}

impl Stream {
    fn new(key: u64) -> Stream {
        Stream { state: key, block: [0; 8], pos: 8 }
    }
}

impl Codec for Stream {
    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let n = input.len().min(output.len());
        for (o, i) in output[..n].iter_mut().zip(input) {
            if self.pos == 8 {
                self.state = splitmix(self.state);
                self.block = self.state.to_le_bytes();
                self.pos = 0;
            }
            *o = i ^ self.block[self.pos];
            self.pos += 1;
        }
        Ok(Progress { consumed: n, produced: n })
    }
}

impl Transport for Hello {
    const NAME: &'static str = "hello";
    type Encoder = Stream;
    type Decoder = Stream;
    type Handshake = HelloHandshake;

    fn new(_config: Option<&[u8]>) -> Result<Self, InitError> {
        Ok(Hello { fixed_nonce: None })
    }

    /// The client's hello (the magic byte and its random nonce): a host's
    /// replay filter refuses a connection that repeats one.
    fn unique_prefix(&self) -> usize {
        1 + NONCE
    }

    fn handshake(&self, role: Role) -> Result<HelloHandshake, Errno> {
        let nonce = match self.fixed_nonce {
            Some(nonce) => nonce,
            None => {
                let mut nonce = [0u8; NONCE];
                water_guest::random(&mut nonce)?;
                nonce
            }
        };
        Ok(if role.is_client() {
            HelloHandshake::ClientSend(nonce)
        } else {
            HelloHandshake::ServerWait(nonce)
        })
    }

    fn encoder(&self, role: Role, keys: &Keys<Self>) -> Stream {
        Stream::new(if role.is_client() { keys.client_to_server } else { keys.server_to_client })
    }

    fn decoder(&self, role: Role, keys: &Keys<Self>) -> Stream {
        Stream::new(if role.is_client() { keys.server_to_client } else { keys.client_to_server })
    }
}

water_guest::export_transport!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use water_guest::testing::{Segmentation, handshake, pump};

    fn seg(s: (Vec<usize>, Vec<usize>, usize)) -> Segmentation {
        Segmentation { reads: s.0, writes: s.1, buffer: s.2 }
    }

    #[test]
    fn a_wrong_hello_is_a_protocol_error() {
        let server = Hello { fixed_nonce: Some([2; NONCE]) }.handshake(Role::Listener).unwrap();
        let mut bad = HelloHandshake::ClientSend([1; NONCE]);
        let mut out = [0u8; 64];
        bad.step(&mut [], &mut out).unwrap();
        out[0] ^= 1;
        let mut server = server;
        assert_eq!(server.step(&mut out[..1 + NONCE], &mut [0u8; 64]), Err(Errno::PROTO));
    }

    proptest! {
        #[test]
        fn both_sides_derive_the_same_keys_and_data_follows_however_split(
            client_nonce in any::<[u8; NONCE]>(),
            server_nonce in any::<[u8; NONCE]>(),
            up in proptest::collection::vec(any::<u8>(), 0..5000),
            down in proptest::collection::vec(any::<u8>(), 0..5000),
            hs_seg in (proptest::collection::vec(1usize..40, 1..8), proptest::collection::vec(1usize..40, 1..8), 64usize..200),
            codec_seg in (proptest::collection::vec(1usize..3000, 1..8), proptest::collection::vec(1usize..3000, 1..8), 16usize..4096),
        ) {
            let client = Hello { fixed_nonce: Some(client_nonce) };
            let server = Hello { fixed_nonce: Some(server_nonce) };
            let (dialer, listener) = (Role::Dialer, Role::Listener);
            let keys = derive(&client_nonce, &server_nonce);
            // Each side's first data, encoded as its encoder will after the
            // handshake, travels right behind the handshake's last message.
            let up_wire = pump(client.encoder(dialer, &keys), &up, &seg(codec_seg.clone())).unwrap();
            let down_wire = pump(server.encoder(listener, &keys), &down, &seg(codec_seg.clone())).unwrap();
            let (c, s) = handshake(
                client.handshake(dialer).unwrap(),
                server.handshake(listener).unwrap(),
                &seg(hs_seg),
                &up_wire,
                &down_wire,
            ).unwrap();
            prop_assert_eq!(c.keys, s.keys);
            prop_assert_ne!(c.keys.client_to_server, c.keys.server_to_client);
            prop_assert_eq!(&s.leftover, &up_wire);
            prop_assert_eq!(&c.leftover, &down_wire);
            prop_assert_eq!(pump(server.decoder(listener, &s.keys), &s.leftover, &seg(codec_seg.clone())).unwrap(), up);
            prop_assert_eq!(pump(client.decoder(dialer, &c.keys), &c.leftover, &seg(codec_seg)).unwrap(), down);
            // The relay end of the wire is a client too.
            prop_assert!(Role::Relay.is_client() && !Role::Listener.is_client());
        }
    }
}
