//! The WATM v0 ABI, shared by the WATER host and by guests: the names and
//! signatures a module imports and exports, and the negated-errno convention
//! every fallible `i32` result uses.
//!
//! This crate is the single source of truth for those facts. The host
//! validates modules against [`v0::EXPORTS`] and [`v0::IMPORTS`]; the guest
//! SDK exports under the same names. It is `no_std`, has no dependencies and
//! contains no code that runs a module: it describes, it does not execute.
//!
//! Layout:
//! - [`args`]: the `key=value;key=value` grammar of transport configs and
//!   per-connection arguments (Tor's pluggable-transport syntax).
//! - [`errno`]: the WASI preview1 errno set and [`errno::Errno`].
//! - [`status`]: encoding and decoding of `i32` results (`>= 0` value,
//!   `< 0` negated errno).
//! - [`v0`]: the v0 import and export tables.
//! - [`v1`]: the v1 tables (the deployed line), beside v0.

#![no_std]

pub mod args;
pub mod errno;
pub mod status;
pub mod v0;
pub mod v1;

pub use errno::Errno;

/// A WebAssembly value type as it appears in a WATM signature.
///
/// Only the types v0 uses are listed; a host that meets any other type in a
/// signature reports a mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValType {
    /// A 32-bit integer (`i32` / `s32` in the spec).
    I32,
}

impl core::fmt::Display for ValType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ValType::I32 => f.write_str("i32"),
        }
    }
}

/// The signature of a function, as the spec fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncSig {
    /// The module the function is imported from (`env`), or `""` for an
    /// export.
    pub module: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// Parameter types, in order.
    pub params: &'static [ValType],
    /// Result types, in order.
    pub results: &'static [ValType],
}

impl core::fmt::Display for FuncSig {
    /// Formats as `name: (i32) -> (i32)`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if !self.module.is_empty() {
            write!(f, "{}.", self.module)?;
        }
        write!(f, "{}: ", self.name)?;
        write_types(f, self.params)?;
        f.write_str(" -> ")?;
        write_types(f, self.results)
    }
}

fn write_types(f: &mut core::fmt::Formatter<'_>, types: &[ValType]) -> core::fmt::Result {
    f.write_str("(")?;
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{t}")?;
    }
    f.write_str(")")
}
