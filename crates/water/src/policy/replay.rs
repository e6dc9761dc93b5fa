//! The replay filter: the unique prefixes (salts, ephemeral keys) of the
//! connections this process has accepted, so that a connection recorded by
//! a censor and sent again byte for byte is refused like a failed
//! handshake (silence, no upstream), as shadowsocks-libev refuses a
//! repeated salt. Which bytes are unique is the transport's to say
//! (`_water_unique_prefix`).
//!
//! Bounded and rotating: two generations of at most [`GENERATION`] entries;
//! when the current one is full, the older is dropped and a new one begun,
//! so the filter remembers the last 262,144 to 524,288 connections (about
//! 10 MiB at most) for as long as that takes. Each prefix is kept as a
//! 64-bit keyed hash (SipHash with this process's random key): a false
//! "seen" needs a collision among those, about one in 10^8 per connection
//! when full, and costs that client one retry. The filter is per process:
//! several processes behind one port each have their own.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, OnceLock};

/// Entries per generation.
pub(crate) const GENERATION: usize = 1 << 18;

/// See the module's docs.
pub(crate) struct Filter {
    key: RandomState,
    generations: Mutex<[HashSet<u64>; 2]>,
    capacity: usize,
}

impl Filter {
    pub(crate) fn new(capacity: usize) -> Filter {
        Filter {
            key: RandomState::new(),
            generations: Mutex::new([HashSet::new(), HashSet::new()]),
            capacity,
        }
    }

    /// The process's filter.
    pub(crate) fn global() -> &'static Filter {
        static FILTER: OnceLock<Filter> = OnceLock::new();
        FILTER.get_or_init(|| Filter::new(GENERATION))
    }

    /// Records `prefix`; `false` if it was seen before (a replay).
    pub(crate) fn fresh(&self, prefix: &[u8]) -> bool {
        let h = self.key.hash_one(prefix);
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if g[0].contains(&h) || g[1].contains(&h) {
            return false;
        }
        if g[0].len() >= self.capacity {
            g.swap(0, 1);
            g[0] = HashSet::new();
        }
        g[0].insert(h);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_caught_while_remembered_and_memory_stays_bounded() {
        let f = Filter::new(100);
        assert!(f.fresh(b"salt-1"));
        assert!(!f.fresh(b"salt-1"));
        // Within two generations, still caught.
        for i in 0..150u32 {
            assert!(f.fresh(&i.to_le_bytes()));
        }
        assert!(!f.fresh(b"salt-1"), "forgotten within two generations");
        // After two more generations, forgotten: the filter is bounded.
        for i in 1000..1300u32 {
            assert!(f.fresh(&i.to_le_bytes()));
        }
        assert!(f.fresh(b"salt-1"));
        let g = f.generations.lock().unwrap();
        assert!(g[0].len() <= 100 && g[1].len() <= 100);
    }
}
