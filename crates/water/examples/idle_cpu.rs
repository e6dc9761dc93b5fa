//! Idle CPU of one connection per guest: dials a remote that accepts and
//! stays silent, then measures this process's CPU time over a quiet
//! interval. Compares the reference `xor` guest with the test-only tokio
//! guest (`test-guests/tokio`), whose mio selector subscribes always-writable
//! sockets for write interest.
//!
//! `cargo run -p water --example idle_cpu [SECONDS]`

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use water::{Config, Dialer, Watm};

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage struct through the pointer.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn idle_share(watm: &Watm, seconds: f64) -> f64 {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move { silent.accept().await.map(|(s, _)| s) });
    let conn = Dialer::new(watm).unwrap().dial(addr.to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let share = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    conn.abort().await.unwrap();
    drop(held.await.unwrap().unwrap());
    share
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).map_or(3.0, |s| s.parse().expect("SECONDS"));
    let key = Config::default().transport_config("9f3c51a7e0");
    let xor = Watm::new(&watm_artifacts::XOR.bytes(), key.clone()).unwrap();
    let tokio_guest = Watm::new(&watm_artifacts::TOKIO.bytes(), key).unwrap();
    for (name, watm) in [("xor (reference SDK)", &xor), ("tokio (test guest)", &tokio_guest)] {
        let share = idle_share(watm, seconds).await;
        println!("{name:<22} idle connection: {:>6.1} % of one core", share * 100.0);
    }
}
