//! The reference guests, built for `wasm32-wasip1` by this crate's build
//! script, for tests and benchmarks.
//!
//! Depending on this crate is all a test needs: `cargo test` builds the
//! guests first (into `target/watm-build`), with no manual step. The `water`
//! command embeds the modules from here ([`Guest::wasm`]) as its built-in
//! transports.

/// A built guest module.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// The directory name under `guests/` (`"xor"`).
    pub name: &'static str,
    /// Absolute path of the `.wasm` file (as built; may be gone later).
    pub path: &'static str,
    /// The module, embedded at compile time.
    pub wasm: &'static [u8],
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("bytes", &self.wasm.len())
            .finish()
    }
}

impl Guest {
    /// The module's bytes, as an owned copy.
    pub fn bytes(&self) -> Vec<u8> {
        self.wasm.to_vec()
    }

    /// Looks a guest up by name.
    pub fn named(name: &str) -> Option<Guest> {
        GUESTS.iter().copied().find(|g| g.name == name)
    }
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
