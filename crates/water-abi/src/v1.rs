//! The v1 import and export tables, as deployed (water-go v0.7, Lantern's
//! fork, the TinyGo guests of refraction-networking/watm).
//!
//! A module is a v1 WATM when it exports [`INIT`] (`watm_init_v1`); it must
//! also export [`CTRLPIPE`] and [`START`], and one export per role it
//! serves. Configuration is not pulled: the host mounts a read-only
//! directory [`CONFIG_DIR`] holding [`CONFIG_FILE`], which the guest opens
//! through the preview1 preopen functions. Cancellation is a control fd
//! given to [`CTRLPIPE`] before [`START`] runs: it becomes readable (data,
//! or EOF) when the host cancels. Results are negated WASI errnos, as in
//! v0.

use crate::{FuncSig, ValType};

pub use crate::v0::{IMPORT_MODULE, WASI_MODULE};

const NONE: &[ValType] = &[];
const I32: &[ValType] = &[ValType::I32];
const I32X4: &[ValType] = &[ValType::I32, ValType::I32, ValType::I32, ValType::I32];

const fn import(name: &'static str, params: &'static [ValType], results: &'static [ValType]) -> FuncSig {
    FuncSig { module: IMPORT_MODULE, name, params, results }
}

const fn export(name: &'static str, params: &'static [ValType], results: &'static [ValType]) -> FuncSig {
    FuncSig { module: "", name, params, results }
}

/// `watm_init_v1() -> errno`: initialise (and read the config). Its
/// presence marks a module as v1.
pub const INIT: FuncSig = export("watm_init_v1", NONE, I32);
/// `watm_ctrlpipe_v1(ctrl_fd) -> errno`: the control fd, before the worker.
pub const CTRLPIPE: FuncSig = export("watm_ctrlpipe_v1", I32, I32);
/// `watm_start_v1() -> errno`: the blocking worker.
pub const START: FuncSig = export("watm_start_v1", NONE, I32);
/// `watm_dial_v1(caller_fd) -> net_fd`: the dialer; the guest calls
/// [`WATER_DIAL_FIXED`] to reach the address the application gave.
pub const DIAL: FuncSig = export("watm_dial_v1", I32, I32);
/// `watm_dial_fixed_v1(caller_fd) -> net_fd`: the dialer whose guest names
/// the address itself, with [`WATER_DIAL`] (water-go's "fixed dialer": the
/// application gives none).
pub const DIAL_FIXED: FuncSig = export("watm_dial_fixed_v1", I32, I32);
/// `watm_accept_v1(caller_fd) -> net_fd`: the listener; the guest calls
/// [`WATER_ACCEPT`].
pub const ACCEPT: FuncSig = export("watm_accept_v1", I32, I32);
/// `watm_associate_v1() -> errno`: the relay; the guest calls
/// [`WATER_ACCEPT`] and [`WATER_DIAL_FIXED`].
pub const ASSOCIATE: FuncSig = export("watm_associate_v1", NONE, I32);

/// Exports every v1 module must have.
pub const REQUIRED_EXPORTS: &[FuncSig] = &[INIT, CTRLPIPE, START];

/// Exports that enable one role each, checked when present.
pub const ROLE_EXPORTS: &[FuncSig] = &[DIAL, DIAL_FIXED, ACCEPT, ASSOCIATE];

/// Every function export v1 defines.
pub const EXPORTS: &[FuncSig] = &[INIT, CTRLPIPE, START, DIAL, DIAL_FIXED, ACCEPT, ASSOCIATE];

/// `env.water_dial(network_iovs, network_iovs_len, address_iovs,
/// address_iovs_len) -> net_fd`: the guest names the network (`tcp`,
/// `tcp4`, `tcp6`) and the address (`host:port`) as ciovec arrays; a host
/// reads at most 256 bytes of each.
pub const WATER_DIAL: FuncSig = import("water_dial", I32X4, I32);
/// `env.water_dial_fixed() -> net_fd`: the host dials the address the
/// application gave.
pub const WATER_DIAL_FIXED: FuncSig = import("water_dial_fixed", NONE, I32);
/// `env.water_accept() -> net_fd`: the host hands over the accepted
/// connection.
pub const WATER_ACCEPT: FuncSig = import("water_accept", NONE, I32);

/// Every `env` function a v1 host provides.
pub const IMPORTS: &[FuncSig] = &[WATER_DIAL, WATER_DIAL_FIXED, WATER_ACCEPT];

/// Most bytes of each of [`WATER_DIAL`]'s strings a host reads.
pub const MAX_DIAL_STRING: usize = 256;

/// The directory a v1 host mounts (read-only) for the configuration.
pub const CONFIG_DIR: &str = "/conf";
/// The configuration file in [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "watm.cfg";

/// Looks up a v1 export by name.
pub fn export_sig(name: &str) -> Option<&'static FuncSig> {
    EXPORTS.iter().find(|sig| sig.name == name)
}

/// Looks up a v1 `env` import by name.
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
        assert_eq!(import_sig("water_dial"), Some(&WATER_DIAL));
        extern crate std;
        use std::string::ToString;
        assert_eq!(WATER_DIAL.to_string(), "env.water_dial: (i32, i32, i32, i32) -> (i32)");
        // No name is shared with v0: a module's exports say which it is.
        for sig in EXPORTS.iter().chain(IMPORTS) {
            assert!(crate::v0::export_sig(sig.name).is_none() && crate::v0::import_sig(sig.name).is_none());
        }
    }
}
