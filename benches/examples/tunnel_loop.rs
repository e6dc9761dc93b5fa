//! A profiling driver, not a benchmark: runs only the tunnel measurement of
//! `water bench` (a one-hop forwarder in front of an echo service: the
//! native one, and a WATER dialer handed the accepted socket, samples in
//! turn) for a while, and prints each path's median throughput, the
//! process's CPU time per GiB moved on it, and the ratio. Meant for
//! `perf record` / `perf stat`, where the full bench mixes phases.
//!
//! `cargo run --release -p water-bench --example tunnel_loop -- xor 8`
//!
//! Environment: `SOLO=1` runs the WATER path alone (for a profile of it);
//! `NATIVE_ONLY=1` the native forwarder alone;
//! `CONC=N` measures instead N connections at once through the dialer
//! (64 KiB each way each), against direct TCP and a native forwarder in
//! the guest's place, as `water bench` does;
//! `TUNNELS=N` measures N tunnels at once (4 MiB each way each) through
//! each forwarder;
//! `DIALER=1` measures the library's dialer (bulk, one connection)
//! against the native forwarder in the guest's place;
//! `SETUP=1` measures connection setup instead (connect, one byte echoed,
//! close), one at a time, direct TCP and WATER in turn: median time and
//! the process's CPU time per setup;
//! setups go to 64 echo services in turn (`ONE_ECHO=1`: all to one, where
//! the TIME_WAIT sockets earlier setups left slow every connect);
//! `GAP_US=N` pauses N µs between setups (the threads go idle: cold
//! setups), `IN_TASK=1` runs the measuring loop as a runtime task instead
//! of on the thread in `block_on`;
//! `THREADS=N` sets tokio's worker threads (`1`: a current-thread runtime,
//! where the ratio is one of CPU cost alone); `WATER_PROFILE=perfmap` lets
//! `perf report` name wasm functions.

use std::time::{Duration, Instant};

use water_bench::{Path, echo_bulk, echo_server, median, reference_guest, tcp_forwarder, water_forwarder};

const BULK: usize = 8 << 20;

fn cpu() -> Duration {
    let t = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (utime, stime), in clock ticks, after the ")".
    let rest = t.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

fn main() -> std::io::Result<()> {
    let threads: usize = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()?
    };
    if std::env::var_os("IN_TASK").is_some() {
        // The measuring loop as a task on the runtime's workers, as an
        // application's connection handlers run, rather than on the thread
        // in `block_on` (from which every wake-up crosses threads).
        return rt.block_on(async { tokio::spawn(run()).await.map_err(std::io::Error::other)? });
    }
    rt.block_on(run())
}

async fn run() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().cloned().unwrap_or_else(|| "plain".into());
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let echo = echo_server().await?;
    if std::env::var_os("DIALER").is_some() {
        // The library's dialer (the application's side an in-process
        // duplex) against the native forwarder in the guest's place.
        let dialer = water::Dialer::new(&reference_guest(&what)).expect("dialer");
        let paths = [("native", Path::Native), ("water", Path::Water(dialer))];
        let mut samples = vec![Vec::new(); paths.len()];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for (i, (_, p)) in paths.iter().enumerate() {
                samples[i].push(echo_bulk(p.connect(echo).await?, BULK).await?);
            }
        }
        let rates: Vec<f64> =
            samples.into_iter().map(|s| (2 * BULK) as f64 / 1048576.0 / median(s).as_secs_f64()).collect();
        println!(
            "dialer {what}: native {:.0} MiB/s, water {:.0} MiB/s, ratio {:.3}",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
        return Ok(());
    }
    if std::env::var_os("SETUP").is_some() {
        return setups(&what, secs, echo).await;
    }
    if let Some(n) = std::env::var("CONC").ok().and_then(|c| c.parse::<usize>().ok()) {
        let dialer = water::Dialer::new(&reference_guest(&what)).expect("dialer");
        // Direct TCP, a native forwarder in the guest's place, WATER.
        let paths = [Path::Direct, Path::Native, Path::Water(dialer)];
        let solo = std::env::var_os("SOLO").is_some();
        let mut samples = vec![Vec::new(); paths.len()];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for (i, p) in paths.iter().enumerate() {
                if solo && i + 1 < paths.len() {
                    continue;
                }
                samples[i].push(water_bench::concurrent(p, echo, n, 64 << 10).await?);
            }
        }
        for (i, s) in samples.into_iter().enumerate() {
            if s.is_empty() {
                continue;
            }
            let rate = (2 * n * (64 << 10)) as f64 / 1048576.0 / median(s).as_secs_f64();
            println!("conc {n} {}: {rate:.0} MiB/s", ["direct", "native", "water"][i]);
        }
        return Ok(());
    }
    let native = tcp_forwarder(echo).await?;
    let mut fronts = vec![("native", native)];
    if what != "native" {
        let dialer = water::Dialer::new(&reference_guest(&what)).expect("dialer");
        let addr = water_forwarder(dialer, echo).await?;
        fronts.push(("water", addr));
        if std::env::var_os("SOLO").is_some() {
            // For a profile of the WATER path alone.
            fronts.remove(0);
        } else if std::env::var_os("NATIVE_ONLY").is_some() {
            // The baseline alone, for syscall counts beside SOLO's.
            fronts.pop();
        }
    }
    if let Some(n) = std::env::var("TUNNELS").ok().and_then(|c| c.parse::<usize>().ok()) {
        // N connections at once through each one-hop forwarder, 4 MiB
        // each way each: the aggregate.
        const EACH: usize = 4 << 20;
        let mut samples = vec![Vec::new(); fronts.len()];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for (i, (_, front)) in fronts.iter().enumerate() {
                let mut streams = Vec::with_capacity(n);
                for _ in 0..n {
                    streams.push(Path::Direct.connect(*front).await?);
                }
                let t = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for s in streams {
                    tasks.spawn(echo_bulk(s, EACH));
                }
                while let Some(r) = tasks.join_next().await {
                    r.map_err(std::io::Error::other)??;
                }
                samples[i].push(t.elapsed());
            }
        }
        let mut rates = Vec::new();
        for ((name, _), s) in fronts.iter().zip(samples) {
            let rate = (2 * EACH * n) as f64 / 1048576.0 / median(s).as_secs_f64();
            println!("{what} {n} tunnels {name}: {rate:.0} MiB/s");
            rates.push(rate);
        }
        if let [native, water] = rates[..] {
            println!("{what} {n} tunnels ratio: {:.3}", water / native);
        }
        return Ok(());
    }
    // Paths in turn, so that load changes on the machine hit both alike.
    let mut samples = vec![Vec::new(); fronts.len()];
    let mut cpus = vec![Duration::ZERO; fronts.len()];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for (i, (_, front)) in fronts.iter().enumerate() {
            let c = cpu();
            let took = echo_bulk(Path::Direct.connect(*front).await?, BULK).await?;
            cpus[i] += cpu() - c;
            samples[i].push(took);
        }
    }
    let mut rates = Vec::new();
    for ((name, _), (s, c)) in fronts.iter().zip(samples.into_iter().zip(cpus)) {
        let gib = (2 * BULK * s.len()) as f64 / (1u64 << 30) as f64;
        let total: Duration = s.iter().sum();
        let rate = (2 * BULK) as f64 / 1048576.0 / median(s).as_secs_f64();
        println!(
            "{what} {name}: median {rate:.0} MiB/s, {:.2} CPU-s per GiB ({:.0}% of one core)",
            c.as_secs_f64() / gib,
            100.0 * c.as_secs_f64() / total.as_secs_f64()
        );
        rates.push(rate);
    }
    if let [native, water] = rates[..] {
        println!("{what} ratio: {:.3}", water / native);
    }
    Ok(())
}

/// Sequential setups (connect, one byte there and back, close), direct TCP
/// and WATER in turn (WATER alone with `SOLO`, direct alone with
/// `NATIVE_ONLY`): the median time and the
/// process's CPU time per setup on each path.
async fn setups(what: &str, secs: f64, echo: std::net::SocketAddr) -> std::io::Result<()> {
    let dialer = water::Dialer::new(&reference_guest(what)).expect("dialer");
    let mut paths = vec![("direct", Path::Direct), ("water", Path::Water(dialer))];
    if std::env::var_os("SOLO").is_some() {
        paths.remove(0);
    } else if std::env::var_os("NATIVE_ONLY").is_some() {
        // Direct TCP alone, for syscall counts beside `SOLO`'s.
        paths.truncate(1);
    }
    let mut samples = vec![Vec::new(); paths.len()];
    let mut cpus = vec![Duration::ZERO; paths.len()];
    // Setups spread over several echo services (`ONE_ECHO=1`: all to one,
    // where the TIME_WAIT sockets they leave slow every connect).
    let echoes = if std::env::var_os("ONE_ECHO").is_some() {
        vec![echo]
    } else {
        water_bench::echo_servers(water_bench::SETUP_ECHOES).await?
    };
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed().as_secs_f64() < secs {
        let to = echoes[round % echoes.len()];
        round += 1;
        for (i, (_, path)) in paths.iter().enumerate() {
            let c = cpu();
            for _ in 0..100 {
                samples[i].push(water_bench::setup(path, to).await?);
            }
            cpus[i] += cpu() - c;
        }
    }
    // `GAP_US=N`: a pause between setups (outside the timed part), so
    // that the last connection's teardown is over before the next starts.
    let gap = std::env::var("GAP_US").ok().and_then(|g| g.parse().ok()).map(Duration::from_micros);
    if std::env::var_os("SPLIT").is_some() {
        // Where a setup's time goes: the connect (for WATER, the dial:
        // instantiation, setup calls, the guest's TCP connect) and the
        // first byte's round trip after it.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (name, path) in &paths {
            let (mut c, mut f, mut second) = (Vec::new(), Vec::new(), Vec::new());
            for k in 0..2000 {
                if let Some(gap) = gap {
                    tokio::time::sleep(gap).await;
                }
                let echo = echoes[k / 100 % echoes.len()];
                let t = Instant::now();
                let mut s = path.connect(echo).await?;
                c.push(t.elapsed());
                let t = Instant::now();
                s.write_all(b"x").await?;
                s.read_exact(&mut [0u8; 1]).await?;
                f.push(t.elapsed());
                let t = Instant::now();
                s.write_all(b"x").await?;
                s.read_exact(&mut [0u8; 1]).await?;
                second.push(t.elapsed());
            }
            println!(
                "setup {what} {name}: connect median {:.1} us, first byte median {:.1} us, second byte median {:.1} us",
                median(c).as_secs_f64() * 1e6,
                median(f).as_secs_f64() * 1e6,
                median(second).as_secs_f64() * 1e6
            );
        }
    }
    for ((name, _), (s, c)) in paths.iter().zip(samples.into_iter().zip(cpus)) {
        let n = s.len();
        println!(
            "setup {what} {name}: median {:.1} us, {:.1} us CPU per setup ({n} setups)",
            median(s).as_secs_f64() * 1e6,
            c.as_secs_f64() * 1e6 / n as f64
        );
    }
    Ok(())
}
