//! The negated-errno convention of every fallible `i32` in WATM v0.
//!
//! `>= 0` is success and carries a value (an fd, or 0); `< 0` is a failure
//! whose magnitude is the WASI preview1 errno. Host imports and guest exports
//! use the same rule.

use crate::Errno;

/// Decodes an `i32` result: `Ok(value)` when non-negative, `Err(errno)` when
/// negative. Unknown codes are kept as their raw number, and `i32::MIN`
/// decodes to `Errno(2^31)` rather than overflowing.
pub const fn decode(raw: i32) -> Result<u32, Errno> {
    if raw >= 0 { Ok(raw as u32) } else { Err(Errno(raw.unsigned_abs())) }
}

/// Encodes a failure as the negated errno. [`decode`] undoes it for every
/// code it can produce (`1..=2^31`).
pub const fn encode_err(errno: Errno) -> i32 {
    (errno.0 as i32).wrapping_neg()
}

/// Encodes a success value. Values above `i32::MAX` cannot be represented and
/// are reported as `-overflow`.
pub const fn encode_ok(value: u32) -> i32 {
    if value <= i32::MAX as u32 { value as i32 } else { encode_err(Errno::OVERFLOW) }
}

/// Encodes a `Result`, as a host import or guest export returns it.
pub const fn encode(result: Result<u32, Errno>) -> i32 {
    match result {
        Ok(v) => encode_ok(v),
        Err(e) => encode_err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_round_trip() {
        for code in 1..77 {
            let e = Errno(code);
            assert_eq!(encode_err(e), -(code as i32));
            assert_eq!(decode(encode_err(e)), Err(e));
        }
    }

    #[test]
    fn unknown_and_extreme_codes_are_kept_raw() {
        // The old private codes of one Rust guest library.
        for raw in -8..=-1 {
            assert_eq!(decode(raw), Err(Errno(raw.unsigned_abs())));
        }
        assert_eq!(decode(-1000), Err(Errno(1000)));
        assert_eq!(decode(-1000).unwrap_err().name(), None);
        assert_eq!(decode(i32::MIN), Err(Errno(1 << 31)));
        assert_eq!(encode_err(Errno(1 << 31)), i32::MIN);
    }

    #[test]
    fn values_round_trip() {
        for v in [0, 1, 3, 1 << 20, i32::MAX as u32] {
            assert_eq!(decode(encode_ok(v)), Ok(v));
            assert_eq!(decode(encode(Ok(v))), Ok(v));
        }
        assert_eq!(encode_ok(u32::MAX), -(Errno::OVERFLOW.code() as i32));
        assert_eq!(encode(Err(Errno::CONNREFUSED)), -14);
    }

    #[test]
    fn every_i32_round_trips() {
        // Exhaustive over a stride of the whole range, plus both ends.
        let mut raw = i32::MIN;
        loop {
            assert_eq!(encode(decode(raw)), raw, "raw {raw}");
            match raw.checked_add(65_537) {
                Some(next) => raw = next,
                None => break,
            }
        }
        assert_eq!(encode(decode(i32::MAX)), i32::MAX);
        assert_eq!(encode(decode(-1)), -1);
    }
}
