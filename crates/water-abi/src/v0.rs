//! The v0 import and export tables.
//!
//! A module is a v0 WATM when it exports anything named [`VERSION_EXPORT`]:
//! TinyGo guests export it as a function `() -> ()`, Rust guests sometimes as
//! an `i32` global, so hosts check the name and not the kind.

use crate::{FuncSig, ValType};

/// The module name of the WATER-specific imports.
pub const IMPORT_MODULE: &str = "env";

/// The module name of the WASI preview1 imports.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The export whose presence marks a module as v0 (of any kind).
pub const VERSION_EXPORT: &str = "_water_v0";

/// The export a TinyGo (or any WASI command) guest uses to initialise its
/// runtime; a host calls it once, before anything else, when present.
pub const START_EXPORT: &str = "_start";

/// The export a WASI reactor module (a library, such as a Rust `cdylib`
/// with std) uses to run its initialisers; a host calls it once, before any
/// other export, when present.
pub const INITIALIZE_EXPORT: &str = "_initialize";

const NONE: &[ValType] = &[];
const I32: &[ValType] = &[ValType::I32];

const fn import(name: &'static str, params: &'static [ValType], results: &'static [ValType]) -> FuncSig {
    FuncSig { module: IMPORT_MODULE, name, params, results }
}

const fn export(name: &'static str, params: &'static [ValType], results: &'static [ValType]) -> FuncSig {
    FuncSig { module: "", name, params, results }
}

/// `env.host_dial() -> net_fd`: the host connects to the address the
/// application asked for and returns the new fd, or a negated errno.
pub const HOST_DIAL: FuncSig = import("host_dial", NONE, I32);
/// `env.host_accept() -> net_fd`: the host accepts the next incoming
/// connection and returns the new fd, or a negated errno.
pub const HOST_ACCEPT: FuncSig = import("host_accept", NONE, I32);
/// `env.pull_config() -> conf_fd`: a read-only fd holding the configuration,
/// or a negated errno (hosts answer `-acces` when there is no config).
pub const PULL_CONFIG: FuncSig = import("pull_config", NONE, I32);
/// `env.host_defer()`: deprecated, a no-op that must still be importable.
pub const HOST_DEFER: FuncSig = import("host_defer", NONE, NONE);

/// Every `env` function a v0 host provides.
pub const IMPORTS: &[FuncSig] = &[HOST_DIAL, HOST_ACCEPT, PULL_CONFIG, HOST_DEFER];

/// `_water_init() -> errno`: initialise the transport (and pull its config).
pub const INIT: FuncSig = export("_water_init", NONE, I32);
/// `_water_cancel_with(cancel_fd) -> errno`: the fd that becomes readable
/// when the host wants the worker to stop.
pub const CANCEL_WITH: FuncSig = export("_water_cancel_with", I32, I32);
/// `_water_dial(internal_fd) -> net_fd`: dialer role.
pub const DIAL: FuncSig = export("_water_dial", I32, I32);
/// `_water_accept(internal_fd) -> net_fd`: listener role.
pub const ACCEPT: FuncSig = export("_water_accept", I32, I32);
/// `_water_associate() -> errno`: relay role (accept, then dial).
pub const ASSOCIATE: FuncSig = export("_water_associate", NONE, I32);
/// `_water_worker() -> errno`: the blocking loop that moves bytes for the
/// life of the connection.
pub const WORKER: FuncSig = export("_water_worker", NONE, I32);

/// `_water_unique_prefix() -> count` (our extension; other hosts ignore
/// it, so a module that exports it stays a portable v0 module): how many
/// leading bytes of an inbound connection, as the client sends them, are
/// unique to that connection (a random salt, an ephemeral key), so that a
/// server host can refuse a connection that repeats them (a replay).
/// Called after `_water_init`; 0 or a negative result: none.
pub const UNIQUE_PREFIX: FuncSig = export("_water_unique_prefix", NONE, I32);

/// `_water_scratch() -> address` (our extension; other hosts ignore it): the
/// address in linear memory of the guest's scratch table,
/// [`SCRATCH_RANGES`] pairs of little-endian `u32` (address, length). While
/// the worker is blocked in `poll_oneoff`, the bytes of each listed range
/// hold nothing the guest will read again: a host may discard them (they
/// may then read as anything, zeros in practice) to give a quiet
/// connection's pages back. The guest writes the table before each
/// `poll_oneoff`; a range of length 0 is none. Called after `_water_init`;
/// 0 or a negative result: no table.
pub const SCRATCH: FuncSig = export("_water_scratch", NONE, I32);

/// Entries of the table [`SCRATCH`] points to.
pub const SCRATCH_RANGES: usize = 8;

/// Exports of our extensions: optional, checked when present.
pub const EXTENSION_EXPORTS: &[FuncSig] = &[UNIQUE_PREFIX, SCRATCH];

/// Exports every v0 module must have (besides [`VERSION_EXPORT`]).
pub const REQUIRED_EXPORTS: &[FuncSig] = &[INIT, CANCEL_WITH, WORKER];

/// Exports that enable one role each; at least one must be present for a
/// module to be useful, and each is checked when present.
pub const ROLE_EXPORTS: &[FuncSig] = &[DIAL, ACCEPT, ASSOCIATE];

/// Every function export v0 defines, required and optional.
pub const EXPORTS: &[FuncSig] = &[INIT, CANCEL_WITH, DIAL, ACCEPT, ASSOCIATE, WORKER];

/// Looks up a v0 export by name.
pub fn export_sig(name: &str) -> Option<&'static FuncSig> {
    EXPORTS.iter().find(|sig| sig.name == name)
}

/// Looks up a v0 `env` import by name.
pub fn import_sig(name: &str) -> Option<&'static FuncSig> {
    IMPORTS.iter().find(|sig| sig.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        for sig in REQUIRED_EXPORTS.iter().chain(ROLE_EXPORTS) {
            assert_eq!(export_sig(sig.name), Some(sig));
        }
        assert_eq!(REQUIRED_EXPORTS.len() + ROLE_EXPORTS.len(), EXPORTS.len());
        assert_eq!(import_sig("host_dial"), Some(&HOST_DIAL));
        assert_eq!(import_sig("_water_init"), None);
        assert_eq!(export_sig("host_dial"), None);
    }

    #[test]
    fn signatures_display_like_the_spec() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(DIAL.to_string(), "_water_dial: (i32) -> (i32)");
        assert_eq!(HOST_DEFER.to_string(), "env.host_defer: () -> ()");
    }
}
