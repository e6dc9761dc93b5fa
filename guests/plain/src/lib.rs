//! `plain`: the identity transport. Bytes cross unchanged; use it as the
//! smallest template, and as the baseline that shows what WATER itself costs.

#![cfg_attr(target_arch = "wasm32", no_std)]

use water_guest::{Codec, Errno, InitError, Progress, Role, Transport};

/// The transport: no state, no config.
#[derive(Debug)]
pub struct Plain;

/// Copies input to output.
#[derive(Debug)]
pub struct Copy;

impl Codec for Copy {
    // The bytes go out as they came in, from where they were read: no copy.
    const IN_PLACE: bool = true;

    fn transform_in_place(&mut self, _data: &mut [u8]) -> Result<(), Errno> {
        Ok(())
    }

    fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
        let n = input.len().min(output.len());
        output[..n].copy_from_slice(&input[..n]);
        Ok(Progress { consumed: n, produced: n })
    }
}

impl Transport for Plain {
    const NAME: &'static str = "plain";
    type Encoder = Copy;
    type Decoder = Copy;
    type Handshake = ();

    fn new(_config: Option<&[u8]>) -> Result<Self, InitError> {
        Ok(Plain)
    }

    fn handshake(&self, _role: Role) -> Result<(), Errno> {
        Ok(())
    }

    fn encoder(&self, _role: Role, _keys: &()) -> Copy {
        Copy
    }

    fn decoder(&self, _role: Role, _keys: &()) -> Copy {
        Copy
    }
}

water_guest::export_transport!(Plain);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use water_guest::testing::{Segmentation, pump};

    proptest! {
        #[test]
        fn bytes_cross_unchanged_however_split(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            reads in proptest::collection::vec(1usize..5000, 1..8),
            writes in proptest::collection::vec(1usize..5000, 1..8),
            buffer in 16usize..4096,
        ) {
            let seg = Segmentation { reads, writes, buffer };
            let t = Plain::new(None).unwrap();
            prop_assert_eq!(pump(t.encoder(Role::Dialer, &()), &data, &seg).unwrap(), data.clone());
            prop_assert_eq!(pump(t.decoder(Role::Listener, &()), &data, &seg).unwrap(), data);
        }
    }
}
