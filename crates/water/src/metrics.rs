//! What the host counts of its connections, for an operator's dashboard:
//! read with [`snapshot`], export as you like (the `water` command serves
//! it as Prometheus text on `--metrics ADDR`).
//!
//! **Process-wide, keyed by a transport label** ([`crate::Config::metrics_label`],
//! default `"unnamed"`), not per [`crate::Watm`]: a reload makes a new
//! `Watm`, and a counter must go on counting across it (a Prometheus
//! counter that drops back reads as a restart); the instance pool is the
//! process's; and one process (`water pt`) serves several transports
//! through one endpoint. Modules loaded with the same label add up.
//!
//! **What is never here:** no peer address, no target, no config, no
//! per-connection label. The labels are the transport's (chosen by the
//! embedder), the WATM role (`dialer`, `listener`, `relay`; a
//! [`crate::Forwarder`] is a listener) and the outcome (`ok`, or
//! [`crate::Error::kind_name`]).
//!
//! **Cost:** plain atomics, no locks on the data path: per connection a
//! handful of relaxed additions at its start, at the end of its setup and
//! at its end; nothing per byte. Byte counts are added **when a
//! connection ends** (the preview1 layer counts them per connection
//! anyway, in its `Activity`): a long connection's bytes appear at its
//! end. The library depends on no metrics crate; the registry of
//! labels is a mutex taken when a `Config` names one and when reading.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::wasi::Activity;

/// The label of modules whose `Config` names none.
pub const UNNAMED: &str = "unnamed";

/// The roles a connection is counted under, in [`RoleSnapshot::role`].
pub const ROLES: [&str; 3] = ["dialer", "listener", "relay"];

/// Upper bounds, in seconds, of the setup-latency histogram's buckets
/// (the last bucket, past them, is `+Inf`).
pub const SETUP_BUCKETS: [f64; 12] =
    [0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Every outcome a connection can end with: `ok`, the kinds of
/// [`Error`] (its `kind_name`), `abandoned` (its setup was dropped: the
/// role stopped while it ran) and `other` (a kind this list lacks).
pub const OUTCOMES: [&str; 30] = [
    "ok",
    "NotWasm",
    "NotV0",
    "Invalid",
    "OverLimit",
    "MissingExport",
    "BadExport",
    "UnknownImport",
    "BadImport",
    "RoleNotSupported",
    "Guest",
    "Incomplete",
    "BogusFd",
    "Trap",
    "Timeout",
    "Spinning",
    "Idle",
    "Orphaned",
    "Exit",
    "Stuck",
    "Cut",
    "WorkerLost",
    "TooManyConnections",
    "Unauthenticated",
    "Shed",
    "Exhausted",
    "ConfigNotKeyValue",
    "Io",
    "abandoned",
    "other",
];

const ABANDONED: usize = OUTCOMES.len() - 2;
const OTHER: usize = OUTCOMES.len() - 1;

fn outcome_index(result: Result<(), &Error>) -> usize {
    match result {
        Ok(()) => 0,
        Err(e) => OUTCOMES[..ABANDONED].iter().position(|&k| k == e.kind_name()).unwrap_or(OTHER),
    }
}

/// A WATM role, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Dialer = 0,
    Listener = 1,
    Relay = 2,
}

impl Role {
    pub(crate) fn of(role: crate::watm::Role) -> Role {
        match role {
            crate::watm::Role::Dialer | crate::watm::Role::GuestDialer => Role::Dialer,
            crate::watm::Role::Listener => Role::Listener,
            crate::watm::Role::Relay => Role::Relay,
        }
    }
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; SETUP_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = SETUP_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(SETUP_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

#[derive(Debug, Default)]
struct RoleCounters {
    started: AtomicU64,
    ended: [AtomicU64; OUTCOMES.len()],
    refused: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    setup: Histogram,
}

/// One label's counters. Get it with [`transport`]; a `Config` holds it.
#[derive(Debug)]
pub struct Transport {
    label: String,
    roles: [RoleCounters; 3],
    throttled: AtomicU64,
    stopped: AtomicU64,
    pooled: AtomicU64,
    on_demand: AtomicU64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

fn registry() -> &'static Mutex<Vec<Arc<Transport>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<Transport>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// The counters of `label`, made on first use. The label is the
/// embedder's own name for the transport (the `water` command: the
/// built-in's name, a module file's name without its directory, or
/// `water pt`'s transport name); it is shown as it is, so it must not be
/// a secret.
pub fn transport(label: &str) -> Arc<Transport> {
    let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = all.iter().find(|t| t.label == label) {
        return t.clone();
    }
    let t = Arc::new(Transport {
        label: label.to_string(),
        roles: Default::default(),
        throttled: AtomicU64::new(0),
        stopped: AtomicU64::new(0),
        pooled: AtomicU64::new(0),
        on_demand: AtomicU64::new(0),
        reloads: AtomicU64::new(0),
        failed_reloads: AtomicU64::new(0),
    });
    all.push(t.clone());
    t
}

/// The counters of [`UNNAMED`], made when first used (so that a process
/// whose modules all have labels shows none).
pub(crate) fn unnamed() -> &'static Arc<Transport> {
    static UNNAMED_COUNTERS: OnceLock<Arc<Transport>> = OnceLock::new();
    UNNAMED_COUNTERS.get_or_init(|| transport(UNNAMED))
}

static POOL_SLOTS: AtomicU64 = AtomicU64::new(0);

/// Notes the instance pool's size (once, when the engines are made).
pub(crate) fn set_pool_slots(slots: u64) {
    POOL_SLOTS.store(slots, Relaxed);
}

impl Transport {
    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Counts a reload that failed before it reached
    /// [`crate::Reloader::replace`] (the module unreadable, refused by the
    /// operator's rules, or its init failing), which only the embedder
    /// sees. A `replace` counts itself.
    pub fn reload_failed(&self) {
        self.failed_reloads.fetch_add(1, Relaxed);
    }

    pub(crate) fn reloaded(&self, result: &Result<(), Error>) {
        match result {
            Ok(()) => self.reloads.fetch_add(1, Relaxed),
            Err(_) => self.failed_reloads.fetch_add(1, Relaxed),
        };
    }

    /// A connection refused by `Config::max_connections` (never started).
    pub(crate) fn refused(&self, role: Role) {
        self.roles[role as usize].refused.fetch_add(1, Relaxed);
    }

    /// A worker that began to be throttled (the first pause of a busy
    /// streak).
    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// A worker stopped for spinning.
    pub(crate) fn stopped(&self) {
        self.stopped.fetch_add(1, Relaxed);
    }

    /// Counts a connection whose setup starts now; its [`Conn`] counts
    /// the rest.
    pub(crate) fn start(self: &Arc<Self>, role: Role, activity: Arc<Activity>) -> Conn {
        self.roles[role as usize].started.fetch_add(1, Relaxed);
        Conn {
            counters: self.clone(),
            role,
            activity,
            started: Instant::now(),
            set_up: false,
            pooled: None,
            ended: false,
        }
    }
}

/// One connection, counted: from its setup's start to its end. Dropped
/// without [`Conn::end`], it ends as `abandoned` during the setup and as
/// `WorkerLost` after it.
#[derive(Debug)]
pub(crate) struct Conn {
    counters: Arc<Transport>,
    role: Role,
    activity: Arc<Activity>,
    started: Instant,
    set_up: bool,
    /// Whether its instance is in a pool slot, once set up.
    pooled: Option<bool>,
    ended: bool,
}

impl Conn {
    fn role(&self) -> &RoleCounters {
        &self.counters.roles[self.role as usize]
    }

    /// The setup ended (either way): its time goes into the histogram.
    /// `pooled`: where its instance lives, when it succeeded.
    pub(crate) fn set_up(&mut self, pooled: Option<bool>) {
        self.set_up = true;
        self.role().setup.observe(self.started.elapsed());
        self.pooled = pooled;
        match pooled {
            Some(true) => self.counters.pooled.fetch_add(1, Relaxed),
            Some(false) => self.counters.on_demand.fetch_add(1, Relaxed),
            None => 0,
        };
    }

    /// The connection ended with `result`.
    pub(crate) fn end(mut self, result: Result<(), &Error>) {
        self.finish(outcome_index(result));
    }

    fn finish(&mut self, outcome: usize) {
        let pooled = self.pooled.take();
        let counters = &self.counters;
        match pooled {
            Some(true) => counters.pooled.fetch_sub(1, Relaxed),
            Some(false) => counters.on_demand.fetch_sub(1, Relaxed),
            None => 0,
        };
        let role = &counters.roles[self.role as usize];
        role.sent.fetch_add(self.activity.sent(), Relaxed);
        role.received.fetch_add(self.activity.received(), Relaxed);
        role.ended[outcome].fetch_add(1, Relaxed);
        self.ended = true;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let outcome = if self.set_up { outcome_index(Err(&Error::WorkerLost)) } else { ABANDONED };
        self.finish(outcome);
    }
}

/// The counters at one moment: every label's, and the pool's size.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The instance pool's slots in this process (0: no pool, or no
    /// module loaded yet).
    pub pool_slots: u64,
    pub transports: Vec<TransportSnapshot>,
}

/// One label's counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TransportSnapshot {
    pub transport: String,
    /// One per role of [`ROLES`], in that order.
    pub roles: Vec<RoleSnapshot>,
    /// Workers that began to be throttled (each busy streak once).
    pub throttled: u64,
    /// Workers stopped for spinning (`Error::Spinning`).
    pub stopped: u64,
    /// Set-up connections whose instance is in a pool slot, now.
    pub pooled_instances: u64,
    /// Set-up connections whose instance was mapped on demand, now.
    pub on_demand_instances: u64,
    /// Modules replaced through a [`crate::Reloader`].
    pub reloads: u64,
    /// Reloads that changed nothing: refused by `replace`, or counted by
    /// the embedder with [`Transport::reload_failed`].
    pub failed_reloads: u64,
}

/// One role's counters under one label.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RoleSnapshot {
    pub role: &'static str,
    /// Connections whose setup started.
    pub started: u64,
    /// Connections started and not yet ended (setups under way included).
    pub open: u64,
    /// Ended connections per outcome, the nonzero ones of [`OUTCOMES`].
    pub ended: Vec<(&'static str, u64)>,
    /// Connections refused at once by `Config::max_connections` (never
    /// started).
    pub refused: u64,
    /// Bytes the guests wrote to the network (for a relay: to either of
    /// its sockets), added as each connection ends.
    pub sent_bytes: u64,
    /// Bytes the guests read from the network, likewise.
    pub received_bytes: u64,
    /// Setup times ([`SETUP_BUCKETS`]; one count per bucket, not
    /// cumulative, the last past every bound), each setup that ended
    /// counted once whatever its outcome.
    pub setup_buckets: Vec<u64>,
    /// Sum of the setup times, in seconds.
    pub setup_seconds: f64,
}

impl RoleSnapshot {
    /// Setups counted in the histogram.
    pub fn setups(&self) -> u64 {
        self.setup_buckets.iter().sum()
    }

    /// Ended connections, every outcome.
    pub fn ended_total(&self) -> u64 {
        self.ended.iter().map(|(_, n)| n).sum()
    }
}

/// Reads every counter (relaxed: each is exact, and they are read one
/// after another, so a connection ending meanwhile may show in one and not
/// yet in another). Labels in the order they were first used.
pub fn snapshot() -> Snapshot {
    let all = registry().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let transports = all
        .iter()
        .map(|t| TransportSnapshot {
            transport: t.label.clone(),
            roles: ROLES.iter().zip(&t.roles).map(|(&name, r)| role_snapshot(name, r)).collect(),
            throttled: t.throttled.load(Relaxed),
            stopped: t.stopped.load(Relaxed),
            pooled_instances: t.pooled.load(Relaxed),
            on_demand_instances: t.on_demand.load(Relaxed),
            reloads: t.reloads.load(Relaxed),
            failed_reloads: t.failed_reloads.load(Relaxed),
        })
        .collect();
    Snapshot { pool_slots: POOL_SLOTS.load(Relaxed), transports }
}

fn role_snapshot(role: &'static str, r: &RoleCounters) -> RoleSnapshot {
    // Ended before started: `open` never reads a connection that ended
    // before it was seen to start.
    let ended: Vec<(&'static str, u64)> =
        OUTCOMES.iter().zip(&r.ended).map(|(&k, n)| (k, n.load(Relaxed))).filter(|&(_, n)| n > 0).collect();
    let started = r.started.load(Relaxed);
    let done: u64 = ended.iter().map(|(_, n)| n).sum();
    RoleSnapshot {
        role,
        started,
        open: started.saturating_sub(done),
        ended,
        refused: r.refused.load(Relaxed),
        sent_bytes: r.sent.load(Relaxed),
        received_bytes: r.received.load(Relaxed),
        setup_buckets: r.setup.buckets.iter().map(|b| b.load(Relaxed)).collect(),
        setup_seconds: r.setup.sum_nanos.load(Relaxed) as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role_of(label: &str, role: Role) -> RoleSnapshot {
        let s = snapshot();
        let t = s.transports.into_iter().find(|t| t.transport == label).expect("label");
        t.roles[role as usize].clone()
    }

    #[test]
    fn a_connection_is_counted_from_its_start_to_its_end() {
        let t = transport("test-lifecycle");
        let activity = Arc::new(Activity::default());
        let mut conn = t.start(Role::Listener, activity.clone());
        let r = role_of("test-lifecycle", Role::Listener);
        assert_eq!((r.started, r.open, r.setups()), (1, 1, 0));
        conn.set_up(Some(false));
        assert_eq!(
            snapshot()
                .transports
                .iter()
                .find(|x| x.transport == "test-lifecycle")
                .unwrap()
                .on_demand_instances,
            1
        );
        activity.count_for_test(10, 20);
        conn.end(Err(&Error::Shed(3)));
        let r = role_of("test-lifecycle", Role::Listener);
        assert_eq!((r.started, r.open, r.setups(), r.ended_total()), (1, 0, 1, 1));
        assert_eq!(r.ended, [("Shed", 1)]);
        assert_eq!((r.sent_bytes, r.received_bytes), (10, 20));
        let s = snapshot();
        let x = s.transports.iter().find(|x| x.transport == "test-lifecycle").unwrap();
        assert_eq!(x.on_demand_instances, 0);
        // The other roles saw nothing.
        assert_eq!(role_of("test-lifecycle", Role::Dialer).started, 0);
    }

    #[test]
    fn a_dropped_setup_is_abandoned_and_a_dropped_worker_lost() {
        let t = transport("test-drops");
        drop(t.start(Role::Dialer, Arc::default()));
        let mut conn = t.start(Role::Dialer, Arc::default());
        conn.set_up(Some(true));
        drop(conn);
        let r = role_of("test-drops", Role::Dialer);
        assert_eq!(r.ended, [("WorkerLost", 1), ("abandoned", 1)]);
        assert_eq!(r.open, 0);
        assert_eq!(r.setups(), 1, "only the setup that ended is timed");
        let s = snapshot();
        assert_eq!(s.transports.iter().find(|x| x.transport == "test-drops").unwrap().pooled_instances, 0);
    }

    #[test]
    fn every_error_kind_has_its_outcome() {
        let errors = [
            Error::NotWasm,
            Error::NotV0,
            Error::WorkerLost,
            Error::Idle(Duration::ZERO),
            Error::Orphaned(Duration::ZERO),
            Error::Stuck(Duration::ZERO),
            Error::TooManyConnections(1),
            Error::Unauthenticated(Duration::ZERO),
            Error::Shed(1),
            Error::Exhausted(String::new()),
            Error::Io(std::io::Error::other("x")),
            Error::Invalid(String::new()),
        ];
        for e in errors {
            let kind = e.kind_name();
            assert_eq!(OUTCOMES[outcome_index(Err(&e))], kind);
        }
        assert_eq!(OUTCOMES[outcome_index(Ok(()))], "ok");
    }

    #[test]
    fn setup_times_fall_in_their_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(60));
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(counts[1], 1);
        assert_eq!(counts[SETUP_BUCKETS.len()], 1);
        assert_eq!(counts.iter().sum::<u64>(), 2);
    }

    #[test]
    fn labels_add_up_across_modules() {
        assert!(Arc::ptr_eq(&transport("test-same"), &transport("test-same")));
    }
}
