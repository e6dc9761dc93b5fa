//! With the instance pool turned off (`WATER_POOL_SLOTS=0`), every instance
//! is mapped on demand and every reference guest still round-trips, several
//! connections at once. Its own test binary: the pool is sized once per
//! process, before the first module is loaded.

mod support;

use support::*;
use water::Dialer;

#[test]
fn every_guest_works_without_the_pool() {
    // SAFETY: nothing else runs yet in this process (the only test of its
    // binary, before its runtime starts), so no thread reads the
    // environment concurrently.
    unsafe { std::env::set_var("WATER_POOL_SLOTS", "0") };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(bounded(async {
        let echo = echo_server().await;
        for name in GUESTS {
            let watm = guest(name);
            assert!(!watm.pooled(), "{name}: pooled with WATER_POOL_SLOTS=0");
            let dialer = Dialer::new(&watm).unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..4u64 {
                let conn = dialer.dial(echo.to_string()).await.unwrap();
                let sent = data(200_000, 50 + i);
                tasks.spawn(async move { exchange(conn, &sent).await.unwrap() == sent });
            }
            while let Some(same) = tasks.join_next().await {
                assert!(same.unwrap(), "{name}: data differs");
            }
        }
    }));
}
