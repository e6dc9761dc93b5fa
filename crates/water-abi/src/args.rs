//! `key=value` arguments: the one grammar for a transport's configuration
//! and for per-connection arguments.
//!
//! It is the syntax Tor's pluggable transports use for per-bridge arguments
//! (`cert=AAAA;iat-mode=0`, pt-spec section 3.5), so one parser serves a
//! config file, a SOCKS5 username and `TOR_PT_SERVER_TRANSPORT_OPTIONS`:
//!
//! - pairs are separated by `;` or by a line break (`\n`, with an optional
//!   `\r` before it), so a config file may hold one pair per line and end in
//!   a newline;
//! - a key runs to the first unescaped `=`; the value runs to the next
//!   unescaped separator and may contain `=` (base64 padding);
//! - `\` makes the byte after it literal (`\;`, `\=`, `\\`, or a `\` before
//!   a line break);
//! - empty pairs (`;;`, blank lines) are skipped; a pair without `=`, an
//!   empty key, or a `\` at the very end is an error that names its byte
//!   offset;
//! - when a key appears twice the **later** pair wins ([`find`]): a host
//!   appends a connection's arguments after the transport's config, so the
//!   connection's arguments take precedence.
//!
//! Nothing here allocates: [`Args`] yields [`Arg`]s that borrow the input,
//! and a [`Text`] is unescaped on the fly or into a caller's buffer. Keys and
//! values are bytes; whitespace is kept as given (a password may hold
//! spaces).

use core::fmt;

/// Why a run of arguments could not be parsed. Offsets are byte offsets into
/// the whole input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// A pair has no unescaped `=`.
    MissingEquals {
        /// Where the pair starts.
        at: usize,
    },
    /// A pair starts with `=`.
    EmptyKey {
        /// Where the pair starts.
        at: usize,
    },
    /// The input ends with an unpaired `\`.
    TrailingBackslash {
        /// Where the backslash is.
        at: usize,
    },
    /// [`Text::copy_to`] was given a buffer smaller than the unescaped text.
    TooLong {
        /// The unescaped length.
        len: usize,
        /// The buffer's length.
        room: usize,
    },
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArgsError::MissingEquals { at } => {
                write!(f, "argument at byte {at} has no `=` (expected key=value)")
            }
            ArgsError::EmptyKey { at } => write!(f, "argument at byte {at} has an empty key"),
            ArgsError::TrailingBackslash { at } => {
                write!(f, "unpaired `\\` at byte {at}, the end of the arguments")
            }
            ArgsError::TooLong { len, room } => write!(f, "value of {len} bytes does not fit in {room}"),
        }
    }
}

/// Iterator over the pairs of an argument string, in order.
///
/// It validates as it goes: after the first `Err` it yields nothing more.
#[derive(Clone, Debug)]
pub struct Args<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Args<'a> {
    /// Pairs of `input`.
    pub const fn new(input: &'a [u8]) -> Args<'a> {
        Args { input, pos: 0 }
    }

    /// Checks the whole input; the first error, if any.
    pub fn validate(input: &'a [u8]) -> Result<(), ArgsError> {
        Args::new(input).try_for_each(|arg| arg.map(drop))
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = Result<Arg<'a>, ArgsError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = self.pos;
            if start >= self.input.len() {
                return None;
            }
            let (end, eq) = match scan_pair(self.input, start) {
                Ok(found) => found,
                Err(e) => {
                    self.pos = self.input.len();
                    return Some(Err(e));
                }
            };
            // Past the separator (`;` or `\n`).
            self.pos = end + 1;
            let pair = trim_cr(&self.input[start..end.min(self.input.len())]);
            if pair.is_empty() {
                continue;
            }
            let result = match eq {
                None => Err(ArgsError::MissingEquals { at: start }),
                Some(eq) if eq == start => Err(ArgsError::EmptyKey { at: start }),
                Some(eq) => Ok(Arg {
                    key: Text { raw: &self.input[start..eq] },
                    value: Text { raw: &self.input[eq + 1..start + pair.len()] },
                    at: start,
                }),
            };
            if result.is_err() {
                self.pos = self.input.len();
            }
            return Some(result);
        }
    }
}

/// Finds the end of the pair that starts at `start` (the index of its
/// separator, or `input.len()`) and its first unescaped `=`.
fn scan_pair(input: &[u8], start: usize) -> Result<(usize, Option<usize>), ArgsError> {
    let mut eq = None;
    let mut i = start;
    while i < input.len() {
        match input[i] {
            b'\\' => {
                if i + 1 >= input.len() {
                    return Err(ArgsError::TrailingBackslash { at: i });
                }
                i += 2;
                continue;
            }
            b'=' if eq.is_none() => eq = Some(i),
            b';' | b'\n' => return Ok((i, eq)),
            _ => {}
        }
        i += 1;
    }
    Ok((input.len(), eq))
}

/// A pair's text without the `\r` of a `\r\n` line break (an escaped `\r`
/// stays).
fn trim_cr(pair: &[u8]) -> &[u8] {
    match pair {
        [.., b'\\', b'\r'] => pair,
        [rest @ .., b'\r'] => rest,
        _ => pair,
    }
}

/// One `key=value` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg<'a> {
    /// The key, still escaped.
    pub key: Text<'a>,
    /// The value, still escaped.
    pub value: Text<'a>,
    /// Byte offset of the pair in the input.
    pub at: usize,
}

/// Escaped text: a key or a value as it stands in the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text<'a> {
    raw: &'a [u8],
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Text({:?})", self.raw.escape_ascii())
    }
}

impl<'a> Text<'a> {
    /// The bytes as they stand in the input, escapes included.
    pub const fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The unescaped bytes, one at a time.
    pub fn bytes(&self) -> Unescape<'a> {
        Unescape { raw: self.raw }
    }

    /// Length once unescaped.
    pub fn len(&self) -> usize {
        self.bytes().count()
    }

    /// Whether the unescaped text is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The text itself when it holds no escape, so it can be borrowed as is.
    pub fn as_plain(&self) -> Option<&'a [u8]> {
        (!self.raw.contains(&b'\\')).then_some(self.raw)
    }

    /// Whether the unescaped text equals `other`.
    pub fn eq_bytes(&self, other: &[u8]) -> bool {
        self.bytes().eq(other.iter().copied())
    }

    /// Unescapes into `buf` and returns the filled prefix.
    pub fn copy_to<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], ArgsError> {
        let len = self.len();
        if len > buf.len() {
            return Err(ArgsError::TooLong { len, room: buf.len() });
        }
        for (dst, b) in buf.iter_mut().zip(self.bytes()) {
            *dst = b;
        }
        Ok(&mut buf[..len])
    }
}

impl fmt::Display for Text<'_> {
    /// Writes the unescaped text, with bytes outside printable ASCII escaped
    /// (`\n`, `\x00`), so that a message naming a key can never carry
    /// control characters into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.bytes() {
            write!(f, "{}", core::ascii::escape_default(b))?;
        }
        Ok(())
    }
}

/// Iterator over the unescaped bytes of a [`Text`].
#[derive(Clone, Debug)]
pub struct Unescape<'a> {
    raw: &'a [u8],
}

impl Iterator for Unescape<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.raw.split_first()?;
        if first == b'\\' {
            // The parser never ends a text on an unpaired `\`.
            let (&escaped, rest) = rest.split_first()?;
            self.raw = rest;
            Some(escaped)
        } else {
            self.raw = rest;
            Some(first)
        }
    }
}

/// The value of the last pair whose key is `key`, after checking the whole
/// input. `Ok(None)` when no pair has that key.
pub fn find<'a>(input: &'a [u8], key: &str) -> Result<Option<Text<'a>>, ArgsError> {
    let mut found = None;
    for arg in Args::new(input) {
        let arg = arg?;
        if arg.key.eq_bytes(key.as_bytes()) {
            found = Some(arg.value);
        }
    }
    Ok(found)
}

/// Whether `b` needs a `\` before it in a key or a value.
pub const fn needs_escape(b: u8) -> bool {
    matches!(b, b'\\' | b';' | b'=' | b'\n' | b'\r')
}

/// Escapes `text` so that it reads back as one key or value, handing the
/// bytes to `out`.
pub fn escape(text: &[u8], mut out: impl FnMut(u8)) {
    for &b in text {
        if needs_escape(b) {
            out(b'\\');
        }
        out(b);
    }
}

/// Length of `text` once escaped.
pub fn escaped_len(text: &[u8]) -> usize {
    text.len() + text.iter().filter(|&&b| needs_escape(b)).count()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    type Pair = (Vec<u8>, Vec<u8>);

    fn pairs(input: &str) -> Result<Vec<Pair>, ArgsError> {
        Args::new(input.as_bytes())
            .map(|arg| arg.map(|a| (a.key.bytes().collect(), a.value.bytes().collect())))
            .collect()
    }

    fn kv(k: &str, v: &str) -> Pair {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn tor_bridge_arguments() {
        assert_eq!(pairs("cert=a;iat-mode=0"), Ok(std::vec![kv("cert", "a"), kv("iat-mode", "0")]));
    }

    #[test]
    fn escapes_and_base64_padding() {
        assert_eq!(
            pairs(r"password=a\;b\=c\\d;key=AAAA=="),
            Ok(std::vec![kv("password", r"a;b=c\d"), kv("key", "AAAA==")])
        );
        assert_eq!(pairs(r"we\=ird\;key=1"), Ok(std::vec![kv("we=ird;key", "1")]));
    }

    #[test]
    fn lines_and_empty_pairs() {
        assert_eq!(
            pairs("method=aes-256-gcm\r\npassword=x y\n\n;;target=1.2.3.4:80\n"),
            Ok(std::vec![kv("method", "aes-256-gcm"), kv("password", "x y"), kv("target", "1.2.3.4:80")])
        );
        assert_eq!(pairs(""), Ok(std::vec![]));
        assert_eq!(pairs("k="), Ok(std::vec![kv("k", "")]));
        // An escaped `\r` before a line break is part of the value.
        assert_eq!(pairs("k=a\\\r\n"), Ok(std::vec![kv("k", "a\r")]));
    }

    #[test]
    fn errors_name_the_offset_and_stop_the_iteration() {
        assert_eq!(pairs("a=1;oops;b=2"), Err(ArgsError::MissingEquals { at: 4 }));
        assert_eq!(pairs("a=1\n=2"), Err(ArgsError::EmptyKey { at: 4 }));
        assert_eq!(pairs("a=1\\"), Err(ArgsError::TrailingBackslash { at: 3 }));
        let mut it = Args::new(b"bad;a=1");
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
        // A legacy config (a bare hex key) is not key=value.
        assert_eq!(Args::validate(b"c0ffee42\n"), Err(ArgsError::MissingEquals { at: 0 }));
    }

    #[test]
    fn later_pairs_win_and_find_validates_everything() {
        let input = b"key=module;target=a:1;key=connection";
        assert!(find(input, "key").unwrap().unwrap().eq_bytes(b"connection"));
        assert_eq!(find(input, "missing"), Ok(None));
        assert_eq!(find(b"key=1;broken", "key"), Err(ArgsError::MissingEquals { at: 6 }));
    }

    #[test]
    fn copy_to_checks_room() {
        let text = find(br"k=a\;b", "k").unwrap().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(text.copy_to(&mut buf).unwrap(), b"a;b");
        assert_eq!(text.copy_to(&mut buf[..2]), Err(ArgsError::TooLong { len: 3, room: 2 }));
        assert_eq!(text.as_plain(), None);
        assert_eq!(find(b"k=ab", "k").unwrap().unwrap().as_plain(), Some(&b"ab"[..]));
    }

    #[test]
    fn display_escapes_control_bytes() {
        let text = find(b"k=a\\\nb\x1b", "k").unwrap().unwrap();
        assert_eq!(std::format!("{text}"), "a\\nb\\x1b");
    }

    #[test]
    fn escape_round_trips_every_byte() {
        // Every byte value, in keys and values, survives escape then parse.
        let all: Vec<u8> = (0..=255u8).collect();
        for chunk in all.chunks(7) {
            let mut line = Vec::new();
            escape(chunk, |b| line.push(b));
            assert_eq!(line.len(), escaped_len(chunk));
            line.push(b'=');
            escape(chunk, |b| line.push(b));
            line.extend_from_slice(b";next=1");
            let got: Vec<_> = Args::new(&line).collect::<Result<_, _>>().unwrap();
            assert_eq!(got.len(), 2, "{}", line.escape_ascii());
            assert!(got[0].key.eq_bytes(chunk) && got[0].value.eq_bytes(chunk));
        }
    }
}
