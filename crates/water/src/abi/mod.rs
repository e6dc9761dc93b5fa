//! The WATM ABIs, one module each: which `env` functions a module of that
//! ABI imports, and which exports the session calls for each step. The
//! session (`session.rs`: instantiate, the setup steps under their limits,
//! the worker and its policies) and the preview1 layer (`wasi/`) are the
//! same for every ABI.
//!
//! - [`v0`]: `_water_*` exports; `host_dial`, `host_accept`, `pull_config`.
//! - [`v1`]: `watm_*_v1` exports; `water_dial`, `water_dial_fixed`,
//!   `water_accept`; the config as a read-only `/conf/watm.cfg`.

pub mod v0;
pub mod v1;

use wasmtime::Linker;

use crate::session::Ctx;

/// Which ABI a module speaks, as its exports say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    V0,
    V1,
}

/// The exports the session calls, by step.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub init: &'static str,
    /// Takes the cancel (v0) or control (v1) fd, before the worker.
    pub cancel: &'static str,
    pub worker: &'static str,
    pub dial: &'static str,
    pub accept: &'static str,
    pub associate: &'static str,
    /// The dialer whose guest names the address (v1 only).
    pub dial_by_guest: Option<&'static str>,
}

impl Abi {
    pub fn names(self) -> Names {
        match self {
            Abi::V0 => {
                use water_abi::v0 as a;
                Names {
                    init: a::INIT.name,
                    cancel: a::CANCEL_WITH.name,
                    worker: a::WORKER.name,
                    dial: a::DIAL.name,
                    accept: a::ACCEPT.name,
                    associate: a::ASSOCIATE.name,
                    dial_by_guest: None,
                }
            }
            Abi::V1 => {
                use water_abi::v1 as a;
                Names {
                    init: a::INIT.name,
                    cancel: a::CTRLPIPE.name,
                    worker: a::START.name,
                    dial: a::DIAL.name,
                    accept: a::ACCEPT.name,
                    associate: a::ASSOCIATE.name,
                    dial_by_guest: Some(a::DIAL_FIXED.name),
                }
            }
        }
    }

    /// How much each direction of the application's in-process channel
    /// holds. v1 guests (water-go's TinyGo library) were written against a
    /// loopback TCP socket pair, megabytes of buffer, and their one-thread
    /// worker blocks writing to the application while it cannot read from
    /// it: with less, an echoing application and such a guest can each wait
    /// for the other.
    pub fn app_buffer(self) -> usize {
        match self {
            Abi::V0 => crate::duplex::CAPACITY,
            Abi::V1 => 4 << 20,
        }
    }

    /// "v0" or "v1".
    pub fn label(self) -> &'static str {
        match self {
            Abi::V0 => "v0",
            Abi::V1 => "v1",
        }
    }
}

/// Links every ABI's `env` functions (their names differ, so one linker
/// serves both; a module only imports its own).
pub fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    v0::add_to_linker(linker)?;
    v1::add_to_linker(linker)
}
