//! `water bench --soak SECONDS`: holds `--connections N` healthy connections
//! with churn (each makes a few checked round trips, closes, and is
//! replaced) through the transport's dialer and listener, beside a stream of
//! hostile guests (one that spins, one that floods its stderr, one that
//! ignores EOF and the cancel fd, one that traps in its worker, one that
//! sleeps in `_water_init`), and prints the process's RSS and open fds once
//! a second. Memory and fds must stay flat: the last line compares the last
//! quarter of the run with the first.
//!
//! A measurement, not a test: it asserts nothing but the healthy
//! connections' bytes (a wrong byte is an error).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Listener, Watm};

use crate::loopback::pattern;
use crate::transport;

/// Hostile guests, each a WAT module, by name.
const HOSTILE: &[(&str, &str)] = &[
    ("spinner", WORKER_SPINS),
    ("stderr-flood", WORKER_FLOODS),
    ("ignores-eof", WORKER_IGNORES_EVERYTHING),
    ("traps", WORKER_TRAPS),
    ("sleeps-in-init", INIT_SLEEPS),
];

/// The v0 exports every fixture shares, around its `_water_worker` and
/// `_water_init` bodies.
fn fixture(init: &str, worker: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "env" "host_dial" (func $host_dial (result i32)))
  (memory (export "memory") 1)
  (global (export "_water_v0") i32 (i32.const 0))
  (func (export "_water_init") (result i32) {init})
  (func (export "_water_cancel_with") (param i32) (result i32) (i32.const 0))
  (func (export "_water_dial") (param i32) (result i32) (call $host_dial))
  (func (export "_water_worker") (result i32) {worker})
)"#
    )
}

const WORKER_SPINS: &str = "(loop $l (br $l)) (i32.const 0)";
/// 10 Ki lines to stderr, then returns.
const WORKER_FLOODS: &str = r#"(local $i i32)
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 1))
    (i32.store8 (i32.const 100) (i32.const 10))
    (loop $l
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10240))))
    (i32.const 0)"#;
/// Sleeps 1 s at a time in `poll_oneoff` forever, whatever happens.
const WORKER_IGNORES_EVERYTHING: &str = r#"
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 1000000000))
    (loop $l
      (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 2100)))
      (br $l))
    (i32.const 0)"#;
const WORKER_TRAPS: &str = "(unreachable)";
/// `_water_init` sleeps 1 h in `poll_oneoff`.
const INIT_SLEEPS: &str = r#"
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 3600000000000))
    (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 2100)))
    (i32.const 0)"#;

/// Limits that make hostile guests end quickly, so the soak sees many.
fn hostile_config() -> Config {
    Config::default()
        .setup_timeout(Duration::from_millis(300))
        .spin_limit(Duration::from_millis(300))
        .idle_timeout(Duration::from_secs(1))
        .close_grace(Duration::from_millis(200))
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

pub async fn run(
    t: &str,
    config: Option<&std::path::Path>,
    seconds: f64,
    connections: usize,
) -> anyhow::Result<()> {
    if !(seconds.is_finite() && (1.0..=86_400.0).contains(&seconds)) {
        bail!("--soak takes 1 to 86400 seconds, not {seconds}");
    }
    if !(1..=10_000).contains(&connections) {
        bail!("--soak holds 1 to 10000 connections, not {connections}");
    }
    let good = transport::load(t, config)?;
    let hostile: Vec<(&str, Watm)> = HOSTILE
        .iter()
        .map(|(name, worker_or_init)| {
            let wat = if *name == "sleeps-in-init" {
                fixture(worker_or_init, "(i32.const 0)")
            } else {
                fixture("(i32.const 0)", worker_or_init)
            };
            let wasm = wat::parse_str(&wat).context("hostile fixture")?;
            Ok((*name, Watm::new(&wasm, hostile_config())?))
        })
        .collect::<anyhow::Result<_>>()?;
    let echo = water_bench::echo_server().await?;
    // The transport's own listener, its application echoing.
    let listener = Listener::bind(&good, "127.0.0.1:0").await?;
    let server = listener.local_addr()?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                if let Ok((conn, _)) = accepted {
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(conn);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            }
        });
    }
    let dialer = Dialer::new(&good)?;
    let rounds = Arc::new(AtomicU64::new(0));
    let ended: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let wrong = CancellationToken::new();

    // N healthy connections, each replaced when it has made its rounds.
    for i in 0..connections {
        let (dialer, rounds, stop, wrong, ended) =
            (dialer.clone(), rounds.clone(), stop.clone(), wrong.clone(), ended.clone());
        tokio::spawn(async move {
            let mut generation = 0u32;
            while !stop.is_cancelled() {
                generation += 1;
                let result = healthy(&dialer, server, i as u32 * 7919 + generation, &rounds).await;
                if stop.is_cancelled() {
                    // Cut by the end of the soak itself: not an outcome.
                    return;
                }
                let key = match &result {
                    Ok(()) => "healthy: closed cleanly".to_owned(),
                    Err(e) => {
                        if e.to_string().contains("came back different") {
                            wrong.cancel();
                        }
                        format!("healthy: {e}")
                    }
                };
                *ended.lock().await.entry(key).or_default() += 1;
            }
        });
    }
    // A hostile connection every 50 ms, in turn.
    {
        let (stop, ended) = (stop.clone(), ended.clone());
        tokio::spawn(async move {
            for turn in 0usize.. {
                if stop.is_cancelled() {
                    return;
                }
                let (name, watm) = &hostile[turn % hostile.len()];
                let (name, watm, ended) = (name.to_string(), watm.clone(), ended.clone());
                tokio::spawn(async move {
                    let outcome = match Dialer::new(&watm) {
                        Ok(d) => match d.dial(echo.to_string()).await {
                            Ok(mut conn) => {
                                let _ = conn.write_all(b"hostile").await;
                                let mut buf = [0u8; 64];
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
                                match conn.close().await {
                                    Ok(()) => "ok".to_owned(),
                                    Err(e) => error_kind(&e),
                                }
                            }
                            Err(e) => error_kind(&e),
                        },
                        Err(e) => error_kind(&e),
                    };
                    *ended.lock().await.entry(format!("{name}: {outcome}")).or_default() += 1;
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    println!("soak: {t}, {connections} healthy connections with churn, a hostile guest every 50 ms");
    println!("{:>6} {:>9} {:>6} {:>12} {:>7}", "s", "RSS MiB", "fds", "round trips", "tasks");
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed().as_secs_f64() < seconds && !wrong.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, open) = (rss_mib(), fds());
        samples.push((rss, open));
        // Live tokio tasks: connections that never end would show here.
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        println!(
            "{:>6.0} {:>9.1} {:>6} {:>12} {:>7}",
            start.elapsed().as_secs_f64(),
            rss,
            open,
            rounds.load(Ordering::Relaxed),
            tasks
        );
    }
    stop.cancel();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("ended connections, by outcome:");
    for (what, n) in ended.lock().await.iter() {
        println!("  {n:>7}  {what}");
    }
    let after = (rss_mib(), fds());
    let quarter = (samples.len() / 4).max(1);
    let mean = |s: &[(f64, usize)]| {
        let n = s.len().max(1) as f64;
        (s.iter().map(|x| x.0).sum::<f64>() / n, s.iter().map(|x| x.1 as f64).sum::<f64>() / n)
    };
    let (first, last) = (mean(&samples[..quarter]), mean(&samples[samples.len() - quarter..]));
    println!(
        "first quarter: RSS {:.1} MiB, {:.0} fds; last quarter: RSS {:.1} MiB, {:.0} fds; \
         2 s after stopping: RSS {:.1} MiB, {} fds",
        first.0, first.1, last.0, last.1, after.0, after.1
    );
    if wrong.is_cancelled() {
        bail!("a healthy connection got wrong bytes");
    }
    Ok(())
}

/// One healthy connection: 20 checked round trips of 16 KiB, then close.
async fn healthy(
    dialer: &Dialer,
    server: std::net::SocketAddr,
    seed: u32,
    rounds: &AtomicU64,
) -> anyhow::Result<()> {
    let mut conn = dialer.dial(server.to_string()).await?;
    let mut buf = vec![0u8; 16 << 10];
    for round in 0..20u32 {
        let sent = pattern(16 << 10);
        let mut rotated = sent.clone();
        rotated.rotate_left(((seed + round) % 1024) as usize);
        conn.write_all(&rotated).await?;
        conn.read_exact(&mut buf).await?;
        if buf != rotated {
            bail!("round {round} came back different");
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    conn.close().await?;
    Ok(())
}

/// The error's variant name (`Spinning`, `Timeout`, ...), for the tally.
fn error_kind(e: &water::Error) -> String {
    let text = format!("{e:?}");
    text.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("?").to_owned()
}
