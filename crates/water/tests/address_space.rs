//! Under an address-space limit (`RLIMIT_AS`, as some sandboxes set), the
//! host gives guests exact-size memories and no instance pool: 4 GiB
//! reserved per instance would fail every connection after the first few.
//! Its own test binary: the limit must be in force before the first module
//! is loaded, and it stays for the whole process.

mod support;

use support::*;
use water::Dialer;

const CONNECTIONS: u64 = 20;

#[test]
fn twenty_connections_at_once_under_an_8_gib_address_space() {
    // 8 GiB: room for this process, not for 20 reservations of 4 GiB.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(8 << 30);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &lim), 0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(bounded(async {
        let echo = echo_server().await;
        let watm = guest("xor");
        assert!(!watm.pooled(), "an instance pool under an address-space limit");
        let dialer = Dialer::new(&watm).unwrap();
        let mut conns = Vec::new();
        for i in 0..CONNECTIONS {
            let conn = dialer.dial(echo.to_string()).await;
            conns.push(conn.unwrap_or_else(|e| panic!("connection {i}: {e}")));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, conn) in conns.into_iter().enumerate() {
            let sent = data(100_000, 70 + i as u64);
            tasks.spawn(async move { exchange(conn, &sent).await.unwrap() == sent });
        }
        while let Some(same) = tasks.join_next().await {
            assert!(same.unwrap(), "data differs");
        }
    }));
}
