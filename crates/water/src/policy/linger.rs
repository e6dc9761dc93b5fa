//! When a running worker has stopped being useful: both its sides hung up,
//! its application went away, or one side sent EOF that the guest holds
//! back while nothing moves (orphaned). And how long it may linger then:
//! while it makes progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::wasi::Activity;
use crate::wasi::table::Stream;

/// Resolves once `count` has not changed for `every` (checked every
/// `every`, so after between one and two of them).
pub(crate) async fn until_still(count: impl Fn() -> u64, every: Duration) {
    let mut last = count();
    loop {
        tokio::time::sleep(every).await;
        let now = count();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Resolves once no byte has moved through the guest's streams, either
/// way, for `limit` (never, without one).
pub(crate) async fn until_silent(activity: &Activity, limit: Option<Duration>) {
    match limit {
        Some(limit) => until_still(|| activity.moved(), limit).await,
        None => std::future::pending().await,
    }
}

/// What [`watch`] saw end a worker's usefulness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every inbound stream has hung up: nothing more can reach the guest.
    BothHungUp,
    /// A read or write of the application side failed (reset, broken
    /// pipe): the application is gone, as if its owner had closed.
    AppGone,
    /// A side sent EOF, the guest did not pass it on, and nothing moved for
    /// the orphan limit.
    Orphaned,
}

/// The worker's streams, as [`watch`] looks at them.
pub(crate) struct Watched {
    pub inbound: Vec<Stream>,
    /// Each side → the fd its EOF is passed on to: the application's side
    /// and the network both ways (a server's guest that ignores its
    /// client's EOF is as stuck as a client's that ignores its
    /// application's).
    pub eof_paths: Vec<(Stream, u32)>,
    pub activity: Arc<Activity>,
    /// Checks that found bytes waiting for a slow reader who is still
    /// given time: progress to come, not a stall.
    waiting: AtomicU64,
    /// The reader's patience: bytes waiting for a reader who has taken
    /// none of them for this long are a stall (a peer that never reads, a
    /// zero window, would otherwise keep a worker for ever).
    patience: Duration,
    /// Bytes queued at the last check, and since when they have not
    /// shrunk.
    queue: std::sync::Mutex<(u64, Option<Instant>)>,
}

impl Watched {
    pub(crate) fn new(
        inbound: Vec<Stream>,
        eof_paths: Vec<(Stream, u32)>,
        activity: Arc<Activity>,
        patience: Duration,
    ) -> Watched {
        Watched {
            inbound,
            eof_paths,
            activity,
            waiting: AtomicU64::new(0),
            patience,
            queue: std::sync::Mutex::new((0, None)),
        }
    }

    /// Bytes moved through the guest, plus one for every check that found
    /// bytes waiting for a reader who has taken some within the patience.
    pub(crate) fn progress(&self) -> u64 {
        let queued: u64 = self.inbound.iter().map(|s| s.unsent() as u64).sum();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (before, stalled) = *queue;
        let now = Instant::now();
        let stalled = if queued == 0 || queued < before { None } else { Some(stalled.unwrap_or(now)) };
        *queue = (queued, stalled);
        if queued > 0 && stalled.is_none_or(|since| now.duration_since(since) < self.patience) {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        }
        self.activity.moved() + self.waiting.load(Ordering::Relaxed)
    }

    /// Whether a side has sent EOF that the guest has not passed on (shut
    /// down or closed the other side).
    fn eof_held(&self) -> bool {
        self.eof_paths.iter().any(|(from, to)| from.hung_up() && !self.activity.write_ended(*to))
    }
}

/// Looks at the worker's streams every `every` (no syscall, except the
/// send-queue check of `progress` while a side holds an EOF back) and
/// resolves with the first [`Ending`] it sees. With `orphan: None`, only
/// `BothHungUp` and `AppGone`.
pub(crate) async fn watch(w: &Watched, orphan: Option<Duration>, every: Duration) -> Ending {
    // Since when an EOF has been held back with no progress, and the
    // progress count then.
    let mut held: Option<(Instant, u64)> = None;
    loop {
        tokio::time::sleep(every).await;
        if !w.inbound.is_empty() && w.inbound.iter().all(Stream::hung_up) {
            return Ending::BothHungUp;
        }
        if w.activity.app_gone() {
            return Ending::AppGone;
        }
        let Some(limit) = orphan else { continue };
        if !w.eof_held() {
            held = None;
            continue;
        }
        let progress = w.progress();
        match held {
            Some((since, seen)) if seen == progress => {
                if since.elapsed() >= limit {
                    return Ending::Orphaned;
                }
            }
            _ => held = Some((Instant::now(), progress)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duplex;

    const SECOND: Duration = Duration::from_secs(1);

    /// Two in-process streams as the guest's "application" and "network"
    /// fds 3 and 4, and the peers' ends.
    fn streams() -> (Watched, duplex::DuplexEnd, duplex::DuplexEnd) {
        let (app_peer, app) = duplex::pair();
        let (net_peer, net) = duplex::pair();
        let (app, net) = (Stream::Duplex(Arc::new(app)), Stream::Duplex(Arc::new(net)));
        let w = Watched::new(
            vec![app.clone(), net.clone()],
            vec![(app, 4), (net, 3)],
            Arc::default(),
            60 * SECOND,
        );
        (w, app_peer, net_peer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_eof_from_either_side_orphans_after_the_limit_of_stillness() {
        for side in 0..2 {
            let (w, app_peer, net_peer) = streams();
            let start = Instant::now();
            [&app_peer, &net_peer][side].shutdown_write();
            assert_eq!(watch(&w, Some(60 * SECOND), SECOND).await, Ending::Orphaned, "side {side}");
            let took = start.elapsed();
            assert!((60 * SECOND..62 * SECOND).contains(&took), "side {side}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_on_eof_or_no_limit_never_orphans() {
        let (w, app_peer, _net_peer) = streams();
        app_peer.shutdown_write();
        w.activity.end_write(4);
        let r = tokio::time::timeout(3600 * SECOND, watch(&w, Some(60 * SECOND), SECOND)).await;
        assert!(r.is_err(), "{r:?}");
        let (w, app_peer, _net_peer) = streams();
        app_peer.shutdown_write();
        assert!(tokio::time::timeout(3600 * SECOND, watch(&w, None, SECOND)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_waiting_for_a_reader_who_never_reads_are_progress_only_for_its_patience() {
        let (w, app_peer, _net_peer) = streams();
        // The guest wrote toward the application, which never reads, and
        // the application has sent EOF.
        let Stream::Duplex(app) = &w.inbound[0] else { unreachable!() };
        app.try_write(&[7; 1000]).unwrap();
        app_peer.shutdown_write();
        let start = Instant::now();
        assert_eq!(watch(&w, Some(60 * SECOND), SECOND).await, Ending::Orphaned);
        // The patience, then the orphan limit.
        let took = start.elapsed();
        assert!((120 * SECOND..125 * SECOND).contains(&took), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_who_keeps_taking_bytes_is_progress() {
        let (w, mut app_peer, _net_peer) = streams();
        let Stream::Duplex(app) = &w.inbound[0] else { unreachable!() };
        app.try_write(&[7; 100_000]).unwrap();
        app_peer.shutdown_write();
        let reader = async {
            use tokio::io::AsyncReadExt;
            // 1,000 bytes every 30 s: slow, but never stalled for the
            // patience.
            let mut buf = [0u8; 1000];
            loop {
                tokio::time::sleep(30 * SECOND).await;
                app_peer.read_exact(&mut buf).await.unwrap();
            }
        };
        tokio::select! {
            e = watch(&w, Some(60 * SECOND), SECOND) => panic!("{e:?} while the reader reads"),
            () = reader => unreachable!(),
            () = tokio::time::sleep(1800 * SECOND) => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_still_waits_for_a_count_to_stop() {
        let count = AtomicU64::new(0);
        let start = Instant::now();
        let bump = async {
            for _ in 0..10 {
                tokio::time::sleep(SECOND / 2).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = until_still(|| count.load(Ordering::Relaxed), SECOND) => {}
            () = bump => unreachable!(),
        }
        let took = start.elapsed();
        assert!((5 * SECOND..=7 * SECOND).contains(&took), "{took:?}");
    }
}
