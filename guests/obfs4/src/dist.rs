//! The length distribution of protocol polymorphism (spec section 6): a
//! weighted distribution over 1 to 100 values in `0..=1448`, drawn from a
//! 24-byte seed, sampled with Vose's alias method.
//!
//! The table is built the way obfs4proxy's `probdist.WeightedDist` builds
//! its unbiased one: Go's `math/rand` (`Perm`, `Intn`, `Float64`) over
//! obfs4proxy's SipHash DRBG, then uniform weights. Both ends of a
//! connection draw from the bridge's seed (the server sends it in its first
//! frame), so the client's padding looks like the bridge's (the known
//! answers check the table against obfs4proxy's padding). The samples
//! themselves come from a per-connection DRBG seeded by the host's
//! randomness, where obfs4proxy uses the system's CSPRNG.
//!
//! The inter-arrival-time distribution of iat-modes 1 and 2 is built the
//! same way over `0..=100` (obfs4proxy's `maxIATDelay`, in units of
//! 100 µs) from its own seed: the first 24 bytes of SHA-256 of the length
//! distribution's seed ([`iat_dist`]), as obfs4proxy derives it on both
//! ends (the client again once the bridge's seed arrives).

use sha2::{Digest as _, Sha256};

use crate::framing::{Drbg, SEED_LEN};

/// Most values in a table (obfs4proxy's `maxValues`).
const MAX_VALUES: usize = 100;
/// The length values lie in `0..=MAX_VALUE` (`MaximumSegmentLength`).
pub const MAX_VALUE: usize = crate::framing::MAX_SEGMENT;
/// The iat values lie in `0..=MAX_IAT` (obfs4proxy's `maxIATDelay`), in
/// units of [`IAT_UNIT_NS`]: a delay of at most 10 ms.
pub const MAX_IAT: usize = 100;
/// One unit of an iat sample: 100 µs, in nanoseconds.
pub const IAT_UNIT_NS: u64 = 100_000;

/// The iat distribution's seed for a length distribution's `seed`:
/// obfs4proxy's `SeedFromBytes(sha256(seed))`, the hash's first 24 bytes.
pub fn iat_seed(seed: &[u8; SEED_LEN]) -> [u8; SEED_LEN] {
    let hash = Sha256::digest(seed);
    let mut out = [0u8; SEED_LEN];
    out.copy_from_slice(&hash[..SEED_LEN]);
    out
}

/// The iat distribution of a connection whose length distribution's seed
/// is `seed` (values in `0..=`[`MAX_IAT`]).
pub fn iat_dist(seed: &[u8; SEED_LEN]) -> LenDist {
    LenDist::with_max(&iat_seed(seed), MAX_IAT)
}

/// Go's `math/rand.Rand` methods that the table needs, over a [`Drbg`].
struct GoRand(Drbg);

impl GoRand {
    fn int31(&mut self) -> u32 {
        (self.0.int63() >> 32) as u32
    }

    /// `Intn(n)` for `0 < n < 2^31`: `Int31n`'s rejection loop.
    fn intn(&mut self, n: u32) -> u32 {
        if n & (n - 1) == 0 {
            return self.int31() & (n - 1);
        }
        let max = (1u32 << 31) - 1 - (1u32 << 31) % n;
        loop {
            let v = self.int31();
            if v <= max {
                return v % n;
            }
        }
    }

    fn float64(&mut self) -> f64 {
        loop {
            let f = self.0.int63() as f64 / (1u64 << 63) as f64;
            if f != 1.0 {
                return f;
            }
        }
    }
}

/// obfs4proxy's close delay for a bridge, in seconds (0 to 59): the first
/// `Intn(60)` of Go's `math/rand` over the DRBG of the bridge's seed, as
/// obfs4proxy draws it when it loads the identity. It closes a connection
/// whose handshake failed (or did not finish) this long after its 30 s
/// handshake timeout, counted from the connection's start.
pub fn close_delay(seed: &[u8; SEED_LEN]) -> u64 {
    u64::from(GoRand(Drbg::new(seed)).intn(60))
}

/// A weighted distribution over packet lengths (or, [`iat_dist`], delays).
#[derive(Clone, Debug)]
pub struct LenDist {
    values: [u16; MAX_VALUES],
    prob: [f64; MAX_VALUES],
    alias: [u8; MAX_VALUES],
    n: usize,
}

/// A FIFO of table indexes (Go's `container/list` as the alias method uses
/// it): each index is pushed at most twice.
struct Queue {
    items: [u8; 2 * MAX_VALUES],
    head: usize,
    tail: usize,
}

impl Queue {
    fn new() -> Queue {
        Queue { items: [0; 2 * MAX_VALUES], head: 0, tail: 0 }
    }
    fn push(&mut self, i: usize) {
        self.items[self.tail] = i as u8;
        self.tail += 1;
    }
    fn pop(&mut self) -> Option<usize> {
        (self.head < self.tail).then(|| {
            self.head += 1;
            self.items[self.head - 1] as usize
        })
    }
    fn is_empty(&self) -> bool {
        self.head == self.tail
    }
}

impl LenDist {
    /// The length table for `seed` (values in `0..=`[`MAX_VALUE`]).
    pub fn new(seed: &[u8; SEED_LEN]) -> LenDist {
        LenDist::with_max(seed, MAX_VALUE)
    }

    /// The table for `seed` over `0..=max` (`max` at most [`MAX_VALUE`]):
    /// obfs4proxy's `probdist.New(seed, 0, max, false)`.
    pub fn with_max(seed: &[u8; SEED_LEN], max: usize) -> LenDist {
        assert!(max <= MAX_VALUE);
        let mut rng = GoRand(Drbg::new(seed));
        // genValues: a permutation of every value, cut to 1..=100 of them.
        let all = max + 1;
        let mut perm = [0u16; MAX_VALUE + 1];
        for i in 0..all {
            let j = rng.intn(i as u32 + 1) as usize;
            perm[i] = perm[j];
            perm[j] = i as u16;
        }
        let n = rng.intn(all.min(MAX_VALUES) as u32) as usize + 1;
        let mut values = [0u16; MAX_VALUES];
        values[..n].copy_from_slice(&perm[..n]);
        // genUniformWeights.
        let mut weights = [0f64; MAX_VALUES];
        for w in &mut weights[..n] {
            *w = rng.float64();
        }
        // genTables: Vose's alias method, in obfs4proxy's order.
        let sum: f64 = weights[..n].iter().sum();
        let mut scaled = [0f64; MAX_VALUES];
        let (mut small, mut large) = (Queue::new(), Queue::new());
        for i in 0..n {
            scaled[i] = weights[i] * n as f64 / sum;
            if scaled[i] < 1.0 { small.push(i) } else { large.push(i) }
        }
        let (mut prob, mut alias) = ([0f64; MAX_VALUES], [0u8; MAX_VALUES]);
        while !small.is_empty() && !large.is_empty() {
            let (l, g) = (small.pop().expect("not empty"), large.pop().expect("not empty"));
            prob[l] = scaled[l];
            alias[l] = g as u8;
            scaled[g] = (scaled[g] + scaled[l]) - 1.0;
            if scaled[g] < 1.0 { small.push(g) } else { large.push(g) }
        }
        while let Some(g) = large.pop() {
            prob[g] = 1.0;
        }
        while let Some(l) = small.pop() {
            prob[l] = 1.0;
        }
        LenDist { values, prob, alias, n }
    }

    /// The values with their weights in the table, for tests.
    pub fn values(&self) -> &[u16] {
        &self.values[..self.n]
    }

    /// One sample, with `rng`'s randomness.
    pub fn sample(&self, rng: &mut Drbg) -> usize {
        // A uniform index (the bias of a 64-bit modulo is negligible) and a
        // uniform float in [0, 1) from 53 bits of the next block.
        let i = (u64::from_le_bytes(rng.next_block()) % self.n as u64) as usize;
        let f = (u64::from_le_bytes(rng.next_block()) >> 11) as f64 / (1u64 << 53) as f64;
        let idx = if f <= self.prob[i] { i } else { self.alias[i] as usize };
        self.values[idx] as usize
    }
}
