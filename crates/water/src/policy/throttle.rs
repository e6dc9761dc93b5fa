//! The worker's CPU policy, judged at each epoch tick (10 ms) while the
//! guest runs wasm: a worker that keeps a thread busy without moving bytes
//! at a codec's pace is throttled, and one that does not even poll or move
//! a byte for `Config::spin_limit` is stopped.
//!
//! "Busy" is measured, not guessed: the share of the time since the worker
//! last resumed that it did not spend waiting in a host call (for I/O, a
//! timer, a cancel). A guest that runs 8 ms and sleeps 2 ms of every tick
//! is busy four fifths of the time and is throttled like one that never
//! sleeps; a guest that waited once in a tick is no longer idle for that.
//! Time the task spent queued behind other tasks after a yield is not the
//! guest's: the clock restarts when the worker resumes.

use std::time::{Duration, Instant};

/// Ticks a worker may be busy in a row before it is throttled.
pub(crate) const THROTTLE_AFTER: u32 = 5;

/// Longest pause, in ticks, of a throttled worker between two ticks of
/// running: a worker that never waits gets about a twentieth of a thread.
/// The pauses double from one tick, so a `Pause(1)` starts a busy streak
/// (what the metrics count as a throttled worker).
pub(crate) const MAX_PAUSE: u32 = 19;

/// Bytes a worker must move in a tick it spends busy for that tick not to
/// count as hogging: a healthy connection under load may never have to
/// wait, but then it moves a lot. The floor is far below any real codec's
/// pace (the `ss` guest moves ~1 MiB a tick; a codec a hundred times
/// slower still moves ~10 KiB), and far above what a guest that spins and
/// trickles a byte now and then, to look busy, moves.
pub(crate) const MOVER_FLOOR: u64 = 4 << 10;

/// What the host counted of the worker, read at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Total time spent waiting in host calls.
    pub waited: Duration,
    /// `poll_oneoff` calls.
    pub polls: u64,
    /// Bytes moved on any stream.
    pub moved: u64,
}

/// What to do with the worker at this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run on until the next tick.
    Run,
    /// Sleep this many ticks first, then run one.
    Pause(u32),
    /// It spun past the limit: stop it.
    Stop,
}

/// The policy's state for one worker.
#[derive(Debug)]
pub(crate) struct Throttle {
    spin_limit: Duration,
    /// Busy ticks in a row.
    busy_ticks: u32,
    /// Since when it has neither polled nor moved a byte.
    blind_since: Option<Instant>,
    /// The counters at the last tick.
    seen: Counters,
}

impl Throttle {
    pub(crate) fn new(spin_limit: Duration) -> Throttle {
        Throttle { spin_limit, busy_ticks: 0, blind_since: None, seen: Counters::default() }
    }

    /// Judges a tick at `now`; `resumed` is when the worker last started
    /// running after a yield or a pause, `now_counters` the host's counts.
    pub(crate) fn tick(&mut self, now: Instant, resumed: Instant, counters: Counters) -> Verdict {
        let seen = std::mem::replace(&mut self.seen, counters);
        let waited = counters.waited.saturating_sub(seen.waited);
        let moved = counters.moved.wrapping_sub(seen.moved);
        let span = now.saturating_duration_since(resumed);
        // Busy: waited less than half of the time it had the thread.
        let busy = waited * 2 < span;
        if !busy || moved >= MOVER_FLOOR {
            self.busy_ticks = 0;
            self.blind_since = None;
            return Verdict::Run;
        }
        self.busy_ticks = self.busy_ticks.saturating_add(1);
        // A worker that polls, or moves a few bytes, is throttled, not
        // stopped: tokio guests ask for write readiness on sockets that are
        // always writable, and so find something ready on every poll even
        // when idle.
        if counters.polls != seen.polls || moved > 0 {
            self.blind_since = None;
        } else if now.saturating_duration_since(*self.blind_since.get_or_insert(now)) > self.spin_limit {
            return Verdict::Stop;
        }
        if self.busy_ticks <= THROTTLE_AFTER {
            return Verdict::Run;
        }
        // Doubling: a worker that keeps busy is at the longest pause within
        // a few of them.
        let pause = 1u32.checked_shl(self.busy_ticks - THROTTLE_AFTER - 1).unwrap_or(u32::MAX).min(MAX_PAUSE);
        Verdict::Pause(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// Runs `ticks` ticks of a worker that waits `wait` and moves `moved`
    /// bytes per tick, polling each time when `polls`; the verdicts.
    fn run(ticks: u32, wait: Duration, moved: u64, polls: bool) -> Vec<Verdict> {
        let mut t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut c = Counters::default();
        let mut resumed = start;
        let mut now = start;
        (0..ticks)
            .map(|_| {
                now += TICK;
                c.waited += wait;
                c.moved += moved;
                c.polls += u64::from(polls);
                let v = t.tick(now, resumed, c);
                if let Verdict::Pause(p) = v {
                    // Paused time is not the guest's.
                    now += TICK * p;
                }
                resumed = now;
                v
            })
            .collect()
    }

    #[test]
    fn a_worker_that_runs_eight_ms_of_ten_is_throttled() {
        let v = run(20, Duration::from_millis(2), 0, true);
        assert_eq!(v[..THROTTLE_AFTER as usize], [Verdict::Run; THROTTLE_AFTER as usize]);
        assert_eq!(v[THROTTLE_AFTER as usize], Verdict::Pause(1));
        assert_eq!(v[19], Verdict::Pause(MAX_PAUSE));
    }

    #[test]
    fn a_busy_streak_starts_with_one_pause_of_one_tick() {
        // `session::worker_tick` counts a throttled worker at `Pause(1)`.
        let v = run(60, Duration::ZERO, 0, true);
        assert_eq!(v.iter().filter(|v| **v == Verdict::Pause(1)).count(), 1);
    }

    #[test]
    fn a_worker_that_mostly_waits_or_moves_at_a_codecs_pace_runs() {
        assert!(run(100, Duration::from_millis(6), 0, true).iter().all(|v| *v == Verdict::Run));
        assert!(run(100, Duration::ZERO, MOVER_FLOOR, false).iter().all(|v| *v == Verdict::Run));
    }

    #[test]
    fn a_worker_that_neither_polls_nor_moves_is_stopped_after_the_spin_limit() {
        let v = run(400, Duration::ZERO, 0, false);
        let stop = v.iter().position(|v| *v == Verdict::Stop).expect("stopped");
        // One second of its own running, pauses not counted... but the
        // clock is wall time: it is stopped once a second has passed.
        assert!(stop > 10, "stopped too early, at tick {stop}");
        // Polling or trickling bytes is throttled, never stopped.
        assert!(!run(400, Duration::ZERO, 1, false).contains(&Verdict::Stop));
        assert!(!run(400, Duration::ZERO, 0, true).contains(&Verdict::Stop));
    }

    #[test]
    fn time_queued_behind_other_tasks_is_not_counted_as_busy() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut c = Counters::default();
        for i in 1..50u32 {
            // Each tick: 8 ms queued after the yield, then 1 ms of running
            // and 1 ms of waiting.
            let now = start + TICK * i;
            c.waited += Duration::from_millis(1);
            c.polls += 1;
            assert_eq!(t.tick(now, now - Duration::from_millis(2), c), Verdict::Run);
        }
    }
}
