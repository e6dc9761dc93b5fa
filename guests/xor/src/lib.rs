//! `xor`: XOR every byte with a repeating key taken from the config.
//!
//! The key stream is positional and per direction: byte `i` of a direction's
//! stream is XORed with `key[i % key.len()]`, counting from the first byte of
//! the connection, so the result never depends on how TCP split the stream.
//! Obfuscation only: XOR with a short key is not encryption.

#![cfg_attr(target_arch = "wasm32", no_std)]

use water_guest::config::hex_to;
use water_guest::fast::{xor_in_place, xor_into};
use water_guest::{Codec, Config, Errno, InitError, Progress, Role, Transport};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 64;

/// The transport: the key, parsed once in `_water_init`.
#[derive(Clone, Debug)]
pub struct Xor {
    key: [u8; MAX_KEY],
    len: usize,
}

impl Xor {
    /// Parses a config: `key=<hex>` (the `key=value` syntax, so that a
    /// connection's arguments, e.g. a Tor bridge line's, can carry the key),
    /// or the legacy form, the bare hex key alone. Hex in either case, 1 to
    /// [`MAX_KEY`] bytes; surrounding ASCII whitespace is ignored in the
    /// legacy form.
    pub fn from_config(config: &[u8]) -> Result<Xor, InitError> {
        let mut key = [0u8; MAX_KEY];
        // Hex holds no `=`: a config with one is `key=value` pairs.
        let len = if config.contains(&b'=') {
            let config = Config::parse(config)?;
            config.only(&["key"])?;
            config.required("key", |text| parse_key(text.bytes(), &mut key))?
        } else {
            let text = config.trim_ascii();
            if text.is_empty() {
                return Err(InitError::invalid("config is empty; it must hold the key (key=<hex>)"));
            }
            parse_key(text.iter().copied(), &mut key)
                .map_err(|why| InitError::new(Errno::INVAL, format_args!("config (a bare hex key): {why}")))?
        };
        Ok(Xor { key, len })
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

/// A key's hex text into `key`; its length.
fn parse_key(text: impl IntoIterator<Item = u8>, key: &mut [u8; MAX_KEY]) -> Result<usize, &'static str> {
    match hex_to(text, key) {
        Ok([]) => Err("empty; it must be 1 to 64 bytes of hex"),
        Ok(k) => Ok(k.len()),
        Err("too long") => Err("longer than 64 bytes"),
        Err(e) => Err(e),
    }
}

/// Size of the repeated-key block a stream XORs with. Each direction's
/// block lives in the worker's stack frame: at 1 KiB the two of them cost a
/// quiet connection one more resident page of guest memory (33.6 against
/// 29.6 KiB per held connection, `water bench -t xor --scale 2000`), and
/// halving it left the tunnel's throughput within noise.
const BLOCK: usize = 512;

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

    /// XORs `data` in place, advancing the stream (what the worker does:
    /// the codec is [`Codec::IN_PLACE`]).
    pub fn apply_in_place(&mut self, mut data: &mut [u8]) {
        while !data.is_empty() {
            let n = data.len().min(self.block_len - self.pos);
            let (head, rest) = data.split_at_mut(n);
            xor_in_place(head, &self.block[self.pos..self.pos + n]);
            self.pos = (self.pos + n) % self.block_len;
            data = rest;
        }
    }
}

impl Codec for XorStream {
    const IN_PLACE: bool = true;

    fn transform_in_place(&mut self, data: &mut [u8]) -> Result<(), Errno> {
        self.apply_in_place(data);
        Ok(())
    }

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
    type Handshake = ();

    fn new(config: Option<&[u8]>) -> Result<Self, InitError> {
        match config {
            Some(config) => Xor::from_config(config),
            None => Err(InitError::invalid("xor: no config; it must hold the key as hex")),
        }
    }

    fn handshake(&self, _role: Role) -> Result<(), Errno> {
        Ok(())
    }

    fn encoder(&self, _role: Role, _keys: &()) -> XorStream {
        self.stream()
    }

    fn decoder(&self, _role: Role, _keys: &()) -> XorStream {
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
    fn accepts_key_value_configs_and_names_bad_keys() {
        assert_eq!(Xor::from_config(b"key=0aFF").unwrap().key(), &[0x0a, 0xff]);
        // A connection's arguments come after the module's config and win.
        assert_eq!(Xor::from_config(b"key=01\nkey=c0ffee\n").unwrap().key(), &[0xc0, 0xff, 0xee]);
        assert_eq!(Xor::from_config(b"key=01;key=c0ffee").unwrap().key(), &[0xc0, 0xff, 0xee]);
        let msg = |c: &[u8]| Xor::from_config(c).unwrap_err().message().to_string();
        assert_eq!(msg(b"kye=00"), "unknown config key `kye`");
        assert_eq!(msg(b"key=zz"), "config key `key`: not hex");
        assert_eq!(msg(b"key="), "config key `key`: empty; it must be 1 to 64 bytes of hex");
        assert_eq!(
            msg(&[b"key=".as_slice(), &[b'7'; 130]].concat()),
            "config key `key`: longer than 64 bytes"
        );
        assert_eq!(msg(b"key=00;oops"), "config: argument at byte 7 has no `=` (expected key=value)");
        assert_eq!(msg(b"abc"), "config (a bare hex key): odd number of hex digits");
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
            let wire = pump(t.encoder(Role::Dialer, &()), &data, &enc).unwrap();
            // The wire bytes are the same whatever the segmentation was.
            prop_assert_eq!(&wire, &pump(t.encoder(Role::Dialer, &()), &data, &Segmentation::default()).unwrap());
            let want: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % key.len()]).collect();
            prop_assert_eq!(&wire, &want);
            prop_assert_eq!(pump(t.decoder(Role::Listener, &()), &wire, &dec).unwrap(), data);
        }
    }
}
