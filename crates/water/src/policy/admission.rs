//! Admission: the module's `max_connections` slots, and which connection
//! makes room when they are all taken.
//!
//! A server that simply refuses new connections once full is locked out by
//! anyone who opens enough connections and says nothing: the slots fill
//! with connections that never finish a handshake, and real clients are
//! turned away until those time out. So a full module sheds instead: the
//! oldest connection that has not been taken in by its guest
//! (unauthenticated: no byte has crossed its plain side yet) is closed as a
//! failed handshake, and the new one takes its place. An attacker then only
//! ever holds the newest slots, each for as long as it takes the next
//! attacker's connection to arrive, while authenticated connections are
//! never shed. Only when every slot is authenticated is a new connection
//! refused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::wasi::Activity;

/// One module's slots.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    live: AtomicUsize,
    /// Unauthenticated connections in order of arrival (the oldest first),
    /// kept only when there is a maximum; dead and authenticated entries are
    /// dropped as they are met.
    waiting: Mutex<VecDeque<Weak<Entry>>>,
}

/// What the admission knows of one connection, shared with the connection.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The guest's activity: authenticated once a byte has crossed the
    /// plain side (the guest has taken the client in).
    activity: Arc<Activity>,
    /// Fired to shed the connection.
    shed: CancellationToken,
}

impl Entry {
    pub(crate) fn authenticate(&self) {
        self.activity.take_in();
    }

    pub(crate) fn authenticated(&self) -> bool {
        self.activity.taken_in()
    }

    /// The activity the connection's instance records into.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Fires when the connection is shed to make room.
    pub(crate) fn shed(&self) -> &CancellationToken {
        &self.shed
    }
}

/// Whether a connection must authenticate (a server's accepted connection)
/// or counts as taken in from the start (the application's own dial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Accepted,
    Dialed,
}

/// One of a module's `Config::max_connections`, held from the start of
/// setup until the session is dropped (the worker's end). Taken by the
/// caller of `Session::start` before it gives up anything of the
/// connection, so that a refusal is logged while the refused socket is
/// still open (a peer that sees the close finds the log line written).
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    entry: Arc<Entry>,
}

impl Slot {
    /// Takes a slot of `admission` (at most `max` live), shedding the oldest
    /// unauthenticated connection when full. `Err(TooManyConnections)` when
    /// every live connection is authenticated.
    pub(crate) fn take(admission: &Arc<Admission>, max: Option<usize>, kind: Kind) -> Result<Slot, Error> {
        let entry = Arc::new(Entry::default());
        if kind == Kind::Dialed {
            entry.authenticate();
        }
        let before = admission.live.fetch_add(1, Ordering::AcqRel);
        // The slot exists from here on: its drop gives the count back.
        let slot = Slot { admission: admission.clone(), entry };
        let Some(max) = max else { return Ok(slot) };
        let mut waiting = admission.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if before >= max {
            // Full: the oldest connection still waiting to be taken in
            // makes room. (It is counted until its worker has ended, a
            // close grace at most: the count may pass `max` by the ones
            // being shed.)
            let victim = std::iter::from_fn(|| waiting.pop_front())
                .filter_map(|weak| weak.upgrade())
                .find(|e| !e.authenticated() && !e.shed.is_cancelled());
            match victim {
                Some(victim) => victim.shed.cancel(),
                None => return Err(Error::TooManyConnections(max)),
            }
        }
        if kind == Kind::Accepted {
            // Bounded: entries of connections that ended or authenticated
            // are swept once the list holds twice the maximum.
            if waiting.len() >= max.saturating_mul(2).max(16) {
                waiting.retain(|w| w.upgrade().is_some_and(|e| !e.authenticated()));
            }
            waiting.push_back(Arc::downgrade(&slot.entry));
        }
        Ok(slot)
    }

    pub(crate) fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection cap that keeps a process clear of running out of fds
/// (`EMFILE`, when an accept or a dial fails for every connection alike):
/// raises the soft limit on open files to the hard one, then leaves
/// headroom (64 fds and a sixteenth of the limit, for listeners, logs, the
/// runtime) and divides the rest by the fds one connection holds (a
/// forwarder's client and upstream: 2). Returns the cap and the limit.
pub fn fd_budget(fds_per_connection: usize) -> std::io::Result<(usize, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    // RLIM_INFINITY, or a limit past any table: a large finite budget.
    let limit = lim.rlim_cur.min(1 << 24);
    let headroom = 64 + limit / 16;
    let cap = limit.saturating_sub(headroom) / fds_per_connection.max(1) as u64;
    Ok((cap.max(1) as usize, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sheds_the_oldest_unauthenticated_and_refuses_when_all_are_taken_in() {
        let a = Arc::new(Admission::default());
        let first = Slot::take(&a, Some(3), Kind::Accepted).unwrap();
        let second = Slot::take(&a, Some(3), Kind::Accepted).unwrap();
        let dialed = Slot::take(&a, Some(3), Kind::Dialed).unwrap();
        second.entry().authenticate();
        // Full: the oldest unauthenticated (`first`) is shed, not `second`.
        let fourth = Slot::take(&a, Some(3), Kind::Accepted).unwrap();
        assert!(first.entry().shed().is_cancelled());
        assert!(!second.entry().shed().is_cancelled());
        assert!(!dialed.entry().shed().is_cancelled());
        drop(first);
        // Full again: `fourth` is the one left to shed.
        let fifth = Slot::take(&a, Some(3), Kind::Accepted).unwrap();
        assert!(fourth.entry().shed().is_cancelled());
        drop(fourth);
        fifth.entry().authenticate();
        // Everything live is authenticated: refused, and the count is back.
        assert!(matches!(Slot::take(&a, Some(3), Kind::Accepted), Err(Error::TooManyConnections(3))));
        assert!(matches!(Slot::take(&a, Some(3), Kind::Dialed), Err(Error::TooManyConnections(3))));
        assert_eq!(a.live.load(Ordering::Relaxed), 3);
        drop((second, dialed, fifth));
        assert_eq!(a.live.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_shed_connection_is_not_shed_twice_and_the_list_stays_bounded() {
        let a = Arc::new(Admission::default());
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(Slot::take(&a, Some(4), Kind::Accepted).unwrap());
            // Connections that were shed end.
            held.retain(|s| !s.entry().shed().is_cancelled());
            assert!(held.len() <= 4);
        }
        assert!(a.waiting.lock().unwrap().len() <= 16);
    }

    #[test]
    fn without_a_maximum_nothing_is_kept_or_shed() {
        let a = Arc::new(Admission::default());
        let slots: Vec<_> = (0..100).map(|_| Slot::take(&a, None, Kind::Accepted).unwrap()).collect();
        assert!(slots.iter().all(|s| !s.entry().shed().is_cancelled()));
        assert!(a.waiting.lock().unwrap().is_empty());
    }
}
