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
//!
//! A shed connection keeps its slot and its sockets until its worker has
//! ended (at its next host call, or after the close grace for a guest that
//! ignores its cancel). A burst of arrivals could shed faster than
//! teardown runs, and the sockets of connections still being shed would
//! then outgrow the fds kept clear by [`fd_budget`]. So at most
//! [`shedding_bound`] connections are being shed at once: past it, the
//! accept loops wait for [`Admission::room`] (new connections stay in the
//! kernel's backlog) and [`Slot::take`] refuses.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
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
    /// Connections shed whose slot is still held.
    shedding: AtomicUsize,
    /// Woken when a shed connection's slot is given back.
    shed_ended: Notify,
}

/// How many connections may be being shed at once under `max`: a
/// sixteenth of it and 8 more. Under [`fd_budget`]'s cap (`max` is 15/32
/// of the fd limit, less 32) their sockets (two each at most) stay within
/// the headroom it keeps (64 fds and a sixteenth of the limit), with some
/// 50 fds to spare for listeners, logs and the runtime.
pub(crate) fn shedding_bound(max: usize) -> usize {
    max / 16 + 8
}

impl Admission {
    /// Waits until fewer than [`shedding_bound`] connections are being
    /// shed (at once when there is no maximum): an accept loop's room, so
    /// that a burst waits in the kernel's backlog while teardown catches up
    /// instead of holding more sockets than the process has fds for.
    pub(crate) async fn room(&self, max: Option<usize>) {
        let Some(max) = max else { return };
        loop {
            let ended = self.shed_ended.notified();
            tokio::pin!(ended);
            // Registered before the check: a slot given back in between
            // still wakes this wait.
            ended.as_mut().enable();
            if self.shedding.load(Ordering::Acquire) < shedding_bound(max) {
                return;
            }
            ended.await;
        }
    }
}

/// [`Entry::state`]: neither shed nor ended.
const LIVE: u8 = 0;
/// [`Entry::state`]: shed, and counted in [`Admission::shedding`].
const SHED: u8 = 1;
/// [`Entry::state`]: its slot was given back.
const ENDED: u8 = 2;

/// What the admission knows of one connection, shared with the connection.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The guest's activity: authenticated once a byte has crossed the
    /// plain side (the guest has taken the client in).
    activity: Arc<Activity>,
    /// Fired to shed the connection.
    shed: CancellationToken,
    /// [`LIVE`], [`SHED`] or [`ENDED`]: which of the slot's end and its
    /// shedding came first decides who counts it (see [`Slot::take`]).
    state: AtomicU8,
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
            // being shed, at most `shedding_bound` of them.)
            // Counted (within the bound, whoever else takes a slot at
            // once) before it is marked, so that a slot given back right
            // after the mark never takes the count below zero.
            let bound = shedding_bound(max);
            let counted = admission
                .shedding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < bound).then_some(n + 1));
            if counted.is_err() {
                return Err(Error::TooManyConnections(max));
            }
            let victim = std::iter::from_fn(|| waiting.pop_front())
                .filter_map(|weak| weak.upgrade())
                .filter(|e| !e.authenticated())
                .find(|e| e.state.compare_exchange(LIVE, SHED, Ordering::AcqRel, Ordering::Acquire).is_ok());
            match victim {
                Some(victim) => victim.shed.cancel(),
                None => {
                    admission.shedding.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::TooManyConnections(max));
                }
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
        if self.entry.state.swap(ENDED, Ordering::AcqRel) == SHED {
            self.admission.shedding.fetch_sub(1, Ordering::AcqRel);
            self.admission.shed_ended.notify_waiters();
        }
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

    #[tokio::test]
    async fn no_more_than_the_bound_are_shed_at_once_and_room_waits_for_one_to_end() {
        let (a, max) = (Arc::new(Admission::default()), 4);
        let bound = shedding_bound(max);
        // Shed connections whose workers have not ended keep their slots.
        let mut held: Vec<_> =
            (0..max + bound).map(|_| Slot::take(&a, Some(max), Kind::Accepted).unwrap()).collect();
        assert_eq!(held.iter().filter(|s| s.entry().shed().is_cancelled()).count(), bound);
        assert_eq!(a.shedding.load(Ordering::Relaxed), bound);
        // At the bound: refused although some are unauthenticated, and an
        // accept loop waits.
        assert!(matches!(Slot::take(&a, Some(max), Kind::Accepted), Err(Error::TooManyConnections(4))));
        let mut room = Box::pin(a.room(Some(max)));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), room.as_mut()).await.is_err());
        a.room(None).await;
        // One shed connection ends: the wait is over and one more is taken.
        let ended = held.iter().position(|s| s.entry().shed().is_cancelled()).unwrap();
        drop(held.remove(ended));
        tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("room after a shed slot ended");
        held.push(Slot::take(&a, Some(max), Kind::Accepted).unwrap());
        assert_eq!(a.shedding.load(Ordering::Relaxed), bound);
        // Ending a live one frees nothing being shed.
        let live = held.iter().position(|s| !s.entry().shed().is_cancelled()).unwrap();
        drop(held.remove(live));
        assert_eq!(a.shedding.load(Ordering::Relaxed), bound);
        drop(held);
        assert_eq!((a.shedding.load(Ordering::Relaxed), a.live.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn a_slot_that_ends_while_it_is_shed_is_counted_once() {
        let a = Arc::new(Admission::default());
        // From many threads at once: taking (and shedding) and giving back
        // race, and the counts still come back to zero.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let mut held = VecDeque::new();
                    for i in 0..5000 {
                        if let Ok(slot) = Slot::take(&a, Some(8), Kind::Accepted) {
                            held.push_back(slot);
                        }
                        if held.len() > 6 || i % 3 == 0 {
                            held.pop_front();
                        }
                        assert!(a.shedding.load(Ordering::Relaxed) <= shedding_bound(8));
                    }
                });
            }
        });
        assert_eq!((a.shedding.load(Ordering::Relaxed), a.live.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn without_a_maximum_nothing_is_kept_or_shed() {
        let a = Arc::new(Admission::default());
        let slots: Vec<_> = (0..100).map(|_| Slot::take(&a, None, Kind::Accepted).unwrap()).collect();
        assert!(slots.iter().all(|s| !s.entry().shed().is_cancelled()));
        assert!(a.waiting.lock().unwrap().is_empty());
    }
}
