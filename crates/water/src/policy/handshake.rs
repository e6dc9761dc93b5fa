//! The handshake deadline: a server's connection that its guest has not
//! taken in (no byte has crossed the plain side) within the deadline is
//! closed as a failed handshake, so that connections that never speak, or
//! speak garbage the guest silently reads, do not hold a socket for ever.
//!
//! The deadline is the limit plus a random part drawn per connection, as
//! shadowsocks-libev does (60 s + 0–59 s): a fixed close time would be a
//! fingerprint a prober can measure.

use std::time::Duration;

use super::admission::Entry;

/// The deadline for one connection: `limit` plus a uniform draw in
/// `[0, jitter)`, whole milliseconds.
pub(crate) fn draw(limit: Duration, jitter: Duration) -> Duration {
    let span = jitter.as_millis().min(u128::from(u64::MAX)) as u64;
    if span == 0 {
        return limit;
    }
    let mut bytes = [0u8; 8];
    // Without randomness the fixed limit is still a bound.
    if getrandom::fill(&mut bytes).is_err() {
        return limit;
    }
    limit + Duration::from_millis(u64::from_le_bytes(bytes) % span)
}

/// Resolves at `deadline` (from now) if `entry` is not authenticated by
/// then; never, once it is.
pub(crate) async fn expired(entry: &Entry, deadline: Duration) {
    tokio::time::sleep(deadline).await;
    if entry.authenticated() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_only_for_a_connection_not_taken_in() {
        let silent = Entry::default();
        let start = tokio::time::Instant::now();
        expired(&silent, Duration::from_secs(60)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));

        let taken_in = Entry::default();
        let check = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            taken_in.authenticate();
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = expired(&taken_in, Duration::from_secs(60)) => panic!("an authenticated connection expired"),
            () = check => unreachable!(),
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }

    #[test]
    fn the_draw_stays_within_limit_and_limit_plus_jitter() {
        let (limit, jitter) = (Duration::from_secs(60), Duration::from_secs(60));
        let draws: Vec<_> = (0..200).map(|_| draw(limit, jitter)).collect();
        assert!(draws.iter().all(|d| *d >= limit && *d < limit + jitter));
        // Not a constant: 200 draws over 60,000 values.
        assert!(draws.iter().any(|d| *d != draws[0]));
        assert_eq!(draw(limit, Duration::ZERO), limit);
    }
}
