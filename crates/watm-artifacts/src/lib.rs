//! The reference guests, built for `wasm32-wasip1` by this crate's build
//! script, for tests and benchmarks.
//!
//! Depending on this crate is all a test needs: `cargo test` builds the
//! guests first (into `target/watm-build`), with no manual step. Applications
//! do not use it; the `water` command embeds its own copies.

/// A built guest module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// The directory name under `guests/` (`"xor"`).
    pub name: &'static str,
    /// Absolute path of the `.wasm` file.
    pub path: &'static str,
}

impl Guest {
    /// Reads the module.
    ///
    /// # Panics
    /// If the file is gone (it was built before this crate compiled).
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path).unwrap_or_else(|e| panic!("read {}: {e}", self.path))
    }

    /// Looks a guest up by name.
    pub fn named(name: &str) -> Option<Guest> {
        GUESTS.iter().copied().find(|g| g.name == name)
    }
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
