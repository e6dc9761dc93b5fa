//! Reading a `key=value` configuration ([`water_abi::args`], the grammar of
//! Tor's per-connection arguments) in `_water_init`, without allocating, with
//! errors that name the key at fault.
//!
//! ```text
//! let config = Config::parse(bytes)?;          // grammar errors name the byte offset
//! config.only(&["method", "password", "target"])?; // "unknown config key `pasword`"
//! let method = config.required("method", Method::parse)?;
//! let target = config.optional("target", Target::parse)?;
//! ```
//!
//! When a key appears more than once the later pair wins: a host appends a
//! connection's own arguments after the transport's config, so they take
//! precedence.

use water_abi::Errno;
pub use water_abi::args::{Arg, Args, ArgsError, Text, escape, escaped_len};

use crate::codec::InitError;

/// A validated `key=value` configuration, borrowing the bytes it was read
/// from.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    raw: &'a [u8],
}

impl<'a> Config<'a> {
    /// Checks the whole input against the grammar.
    ///
    /// Errors: `inval`, naming the byte offset of the first bad pair.
    pub fn parse(raw: &'a [u8]) -> Result<Config<'a>, InitError> {
        match Args::validate(raw) {
            Ok(()) => Ok(Config { raw }),
            Err(e) => Err(InitError::new(Errno::INVAL, format_args!("config: {e}"))),
        }
    }

    /// The bytes as given.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = Arg<'a>> + 'a {
        // Validated in `parse`: no pair is an error.
        Args::new(self.raw).filter_map(Result::ok)
    }

    /// The value of the last pair named `key`.
    pub fn get(&self, key: &str) -> Option<Text<'a>> {
        self.pairs().filter(|a| a.key.eq_bytes(key.as_bytes())).last().map(|a| a.value)
    }

    /// Fails on the first key that is not in `known` (a misspelt key is a
    /// mistake worth reporting, not a key to ignore).
    pub fn only(&self, known: &[&str]) -> Result<(), InitError> {
        match self.pairs().find(|a| !known.iter().any(|k| a.key.eq_bytes(k.as_bytes()))) {
            None => Ok(()),
            Some(a) => Err(InitError::new(Errno::INVAL, format_args!("unknown config key `{}`", a.key))),
        }
    }

    /// The value of `key` through `parse`, or `None` when the key is absent.
    ///
    /// Errors: `inval` naming the key and `parse`'s reason.
    pub fn optional<T>(
        &self,
        key: &str,
        parse: impl FnOnce(Text<'a>) -> Result<T, &'static str>,
    ) -> Result<Option<T>, InitError> {
        match self.get(key) {
            None => Ok(None),
            Some(text) => parse(text).map(Some).map_err(|why| bad_value(key, why)),
        }
    }

    /// Like [`Config::optional`], and a missing key is an error naming it.
    pub fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(Text<'a>) -> Result<T, &'static str>,
    ) -> Result<T, InitError> {
        self.optional(key, parse)?.ok_or_else(|| missing(key))
    }
}

/// `inval`: "config key `key`: why".
pub fn bad_value(key: &str, why: &str) -> InitError {
    InitError::new(Errno::INVAL, format_args!("config key `{key}`: {why}"))
}

/// `inval`: "missing config key `key`".
pub fn missing(key: &str) -> InitError {
    InitError::new(Errno::INVAL, format_args!("missing config key `{key}`"))
}

/// Parses hex text (either case; e.g. [`Text::bytes`]) into `buf`; the
/// filled prefix.
pub fn hex_to(text: impl IntoIterator<Item = u8>, buf: &mut [u8]) -> Result<&mut [u8], &'static str> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut bytes = text.into_iter();
    let mut n = 0;
    while let Some(hi) = bytes.next() {
        let lo = bytes.next().ok_or("odd number of hex digits")?;
        let slot = buf.get_mut(n).ok_or("too long")?;
        *slot = match (digit(hi), digit(lo)) {
            (Some(hi), Some(lo)) => hi << 4 | lo,
            _ => return Err("not hex"),
        };
        n += 1;
    }
    Ok(&mut buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let c = Config::parse(b"method=aes-256-gcm;pasword=x").unwrap();
        assert_eq!(c.only(&["method", "password"]).unwrap_err().message(), "unknown config key `pasword`");
        assert_eq!(
            c.required("password", |_| Ok(())).unwrap_err().message(),
            "missing config key `password`"
        );
        let bad = c.required("method", |_| Err::<(), _>("unsupported method")).unwrap_err();
        assert_eq!(bad.message(), "config key `method`: unsupported method");
        assert_eq!(bad.errno, Errno::INVAL);
        let grammar = Config::parse(b"a=1;oops").unwrap_err();
        assert_eq!(grammar.message(), "config: argument at byte 4 has no `=` (expected key=value)");
    }

    #[test]
    fn later_pairs_win_and_values_unescape() {
        let c = Config::parse(b"key=00ff;target=a\\;b:1\nkey=0A0b\n").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(c.required("key", |t| hex_to(t.bytes(), &mut buf).map(|k| k.len())).unwrap(), 2);
        assert_eq!(buf[..2], [0x0a, 0x0b]);
        assert!(c.get("target").unwrap().eq_bytes(b"a;b:1"));
        assert_eq!(hex_to(c.get("target").unwrap().bytes(), &mut buf), Err("not hex"));
        assert_eq!(hex_to(b"abc".iter().copied(), &mut buf), Err("odd number of hex digits"));
        assert_eq!(hex_to(b"0102030405".iter().copied(), &mut buf), Err("too long"));
    }

    #[test]
    fn long_messages_are_cut_whole() {
        let key = "é".repeat(150);
        let e = missing(&key);
        assert!(e.message().len() <= crate::codec::MAX_MESSAGE);
        assert!(e.message().starts_with("missing config key `éé"));
    }
}
