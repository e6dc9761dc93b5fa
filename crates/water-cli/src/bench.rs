//! `water bench`: the benchmark figures from the command line, each next to
//! its baseline measured in the same run, with the ratio.
//!
//! Paths are those of `water_bench` (direct TCP, a native forwarder in the
//! guest's place, the WATER dialer), plus the tunnel: `water client`'s code
//! (`Dialer::dial_socket`) against a native one-hop TCP forwarder. With
//! `--scale N`, also N connections held at once through a `water server`
//! child process (peak RSS, fds released). With `--lantern`, instead, the
//! shape of Lantern's published benchmark (`lantern.rs`).

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use water::Dialer;
use water_bench::{
    Path as Via, SETUP_ECHOES, concurrent, echo_bulk, echo_server, echo_servers, median, ping_pong, setup,
    tcp_forwarder,
};

use crate::{transport, tunnel};

pub mod lantern;

const BULK: usize = 8 << 20;

#[derive(Debug, Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

#[derive(Debug)]
struct Figure {
    name: &'static str,
    unit: &'static str,
    water: f64,
    baseline_name: &'static str,
    baseline: f64,
    better: Better,
}

impl Figure {
    fn ratio(&self) -> f64 {
        if self.baseline == 0.0 { 0.0 } else { self.water / self.baseline }
    }
}

pub struct Options<'a> {
    pub transport: &'a str,
    pub config: Option<&'a Path>,
    pub connections: usize,
    pub seconds: f64,
    pub json: bool,
    pub scale: Option<usize>,
    /// Spinning guests for the fairness figures (none: no such figures).
    pub fairness: Option<usize>,
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
    let _ = std::io::stderr().flush();
}

/// Samples `paths` measurements in turn — one of each, then again — until
/// `budget` is spent and each has at least `min`; the samples of each.
///
/// Taking them in turn rather than one path after the other means a change
/// in the load of this shared machine during the run hits every path alike,
/// instead of skewing the ratio.
async fn alternate<F, Fut>(
    budget: Duration,
    min: usize,
    paths: usize,
    mut f: F,
) -> anyhow::Result<Vec<Vec<Duration>>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<Duration>>>,
{
    let start = Instant::now();
    let mut out = vec![Vec::new(); paths];
    while out[0].len() < min || start.elapsed() < budget {
        for (i, samples) in out.iter_mut().enumerate() {
            samples.extend(f(i).await?);
        }
    }
    Ok(out)
}

/// Runs `work` here, or as a task on the runtime's workers.
async fn in_place_or_task<T: Send + 'static>(
    in_task: bool,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    if in_task { tokio::spawn(work).await.context("the measuring task")? } else { work.await }
}

/// 64-byte round trips on one connection each, direct TCP and `water`, 100
/// in turn until `2 × slice` is spent: the medians in µs.
async fn round_trips(water: Via, echo: SocketAddr, slice: Duration) -> anyhow::Result<Vec<f64>> {
    let mut conns = [Via::Direct.connect(echo).await?, water.connect(echo).await?];
    let mut rtt = vec![Vec::new(); conns.len()];
    let start = Instant::now();
    while rtt[0].len() < 200 || start.elapsed() < 2 * slice {
        for (conn, samples) in conns.iter_mut().zip(&mut rtt) {
            samples.extend(ping_pong(conn, 64, 100).await?);
        }
    }
    Ok(rtt.into_iter().map(|s| median(s).as_secs_f64() * 1e6).collect())
}

/// Setups to first byte, direct TCP and `water` in turn: the medians in µs.
/// Each round's two setups go to the same echo service, each round to the
/// next one (see `echo_servers`).
async fn setups(water: Via, echoes: Vec<SocketAddr>, slice: Duration) -> anyhow::Result<Vec<f64>> {
    let vias = [Via::Direct, water];
    let mut calls = 0usize;
    let set = alternate(2 * slice, 50, vias.len(), |i| {
        let via = vias[i].clone();
        let to = echoes[calls / vias.len() % echoes.len()];
        calls += 1;
        async move { Ok(vec![setup(&via, to).await?]) }
    })
    .await
    .context("setup")?;
    Ok(set.into_iter().map(|s| median(s).as_secs_f64() * 1e6).collect())
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1048576.0 / d.as_secs_f64()
}

/// Most `--seconds` (a day) and `--scale` (each connection costs two fds
/// in the server child; more than any open-file limit allows).
const MAX_SECONDS: f64 = 86_400.0;
const MAX_SCALE: usize = 1 << 20;

pub async fn run(o: Options<'_>) -> anyhow::Result<()> {
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.seconds <= MAX_SECONDS) {
        anyhow::bail!("--seconds must be a number above 0 and at most {MAX_SECONDS}, not {}", o.seconds);
    }
    if o.scale.is_some_and(|n| n > MAX_SCALE) || o.connections > MAX_SCALE {
        anyhow::bail!("--scale and --connections must be at most {MAX_SCALE}");
    }
    if let Some(n) = o.scale {
        crate::scale::prepare(n)?;
    }
    let watm = transport::load(o.transport, o.config)?;
    let dialer = Dialer::new(&watm)?;
    let echo = echo_server().await?;
    let water = Via::Water(dialer.clone());
    // Ten measurements share the time.
    let slice = Duration::from_secs_f64((o.seconds / 10.0).max(0.2));
    let mut figures = Vec::new();

    // Throughput through the library, three ways.
    progress("throughput via direct TCP, native forwarder and water, in turn");
    let vias = [Via::Direct, Via::Native, water.clone()];
    let bulk = alternate(3 * slice, 3, vias.len(), |i| {
        let via = vias[i].clone();
        async move { Ok(vec![echo_bulk(via.connect(echo).await?, BULK).await?]) }
    })
    .await
    .context("dialer throughput")?;
    let bulk: Vec<f64> = bulk.into_iter().map(|s| mib_s(2 * BULK, median(s))).collect();
    figures.push(Figure {
        name: "dialer throughput",
        unit: "MiB/s",
        water: bulk[2],
        baseline_name: "direct TCP",
        baseline: bulk[0],
        better: Better::Higher,
    });
    figures.push(Figure {
        name: "dialer throughput",
        unit: "MiB/s",
        water: bulk[2],
        baseline_name: "native forwarder",
        baseline: bulk[1],
        better: Better::Higher,
    });

    // The tunnel: water client's code against a native TCP forwarder.
    let stop = CancellationToken::new();
    let tunnel_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tunnel_addr = tunnel_listener.local_addr()?;
    let signals = tunnel::Signals { stop: stop.clone(), now: stop.clone() };
    tokio::spawn(tunnel::run_client(
        dialer.clone(),
        tunnel_listener,
        echo.to_string(),
        signals,
        Duration::ZERO,
    ));
    let forwarder = tcp_forwarder(echo).await?;
    progress("throughput via a native one-hop forwarder and the water client tunnel, in turn");
    let fronts = [forwarder, tunnel_addr];
    let hops = alternate(2 * slice, 3, fronts.len(), |i| {
        let addr = fronts[i];
        async move { Ok(vec![echo_bulk(Via::Direct.connect(addr).await?, BULK).await?]) }
    })
    .await
    .context("tunnel throughput")?;
    let hops: Vec<f64> = hops.into_iter().map(|s| mib_s(2 * BULK, median(s))).collect();
    figures.push(Figure {
        name: "tunnel throughput",
        unit: "MiB/s",
        water: hops[1],
        baseline_name: "native forwarder",
        baseline: hops[0],
        better: Better::Higher,
    });

    // Round trip and setup, each twice: from the thread that runs the
    // command (`block_on`'s), and from a task on the runtime's workers, as
    // an application's connection handlers run. On a multi-thread runtime
    // the two differ in how many hand-overs between threads each path
    // makes (see BENCHMARKS.md, "Where the measuring loop runs").
    let echoes = echo_servers(SETUP_ECHOES).await?;
    for in_task in [false, true] {
        let (rtt_name, setup_name, from) = if in_task {
            ("round trip, 64 B, task (median)", "setup, first byte, task (median)", "from a task")
        } else {
            ("round trip, 64 B (median)", "setup to first byte (median)", "from block_on")
        };
        progress(&format!("64-byte round trips via direct TCP and water, in turn, {from}"));
        let rtt = in_place_or_task(in_task, round_trips(water.clone(), echo, slice)).await?;
        figures.push(Figure {
            name: rtt_name,
            unit: "µs",
            water: rtt[1],
            baseline_name: "direct TCP",
            baseline: rtt[0],
            better: Better::Lower,
        });
        progress(&format!("connection setup via direct TCP and water, in turn, {from}"));
        let set = in_place_or_task(in_task, setups(water.clone(), echoes.clone(), slice)).await?;
        figures.push(Figure {
            name: setup_name,
            unit: "µs",
            water: set[1],
            baseline_name: "direct TCP",
            baseline: set[0],
            better: Better::Lower,
        });
    }

    // Concurrency, against direct TCP and against the same N connections
    // through native forwarders in the guests' place (the fair baseline:
    // the same duplex and task per connection, no wasm).
    progress(&format!(
        "{} connections at once via direct TCP, native forwarders and water, in turn",
        o.connections
    ));
    let each = 64 << 10;
    let vias = [Via::Direct, water.clone(), Via::Native];
    let conc = alternate(3 * slice, 2, vias.len(), |i| {
        let via = vias[i].clone();
        async move { Ok(vec![concurrent(&via, echo, o.connections, each).await?]) }
    })
    .await
    .context("concurrency")?;
    let conc: Vec<f64> = conc.into_iter().map(|s| mib_s(2 * each * o.connections, median(s))).collect();
    let name = if o.connections == 1 { "1 connection, aggregate" } else { "N connections, aggregate" };
    figures.push(Figure {
        name,
        unit: "MiB/s",
        water: conc[1],
        baseline_name: "direct TCP",
        baseline: conc[0],
        better: Better::Higher,
    });
    figures.push(Figure {
        name,
        unit: "MiB/s",
        water: conc[1],
        baseline_name: "native forwarder",
        baseline: conc[2],
        better: Better::Higher,
    });
    stop.cancel();

    if let Some(n) = o.fairness {
        progress(&format!(
            "throughput and 64-byte round trips alone, then beside {n} spinners, then {n} busy movers"
        ));
        figures.extend(fairness(n, &water, echo, slice).await.context("fairness")?);
    }

    let scale = match o.scale {
        Some(n) => Some(crate::scale::run(o.transport, o.config, n).await?),
        None => None,
    };

    if o.json {
        print_json(&o, &figures, scale.as_ref());
    } else {
        print_table(&o, &figures, scale.as_ref());
    }
    Ok(())
}

/// A guest whose worker never waits and never ends: it loops on
/// `clock_time_get`, one host call a turn. Loaded with the spin limit out
/// of the way, it is the worst neighbour a healthy connection can have for
/// as long as it lasts.
const SPINNER: &str = r#"(module
  (import "env" "host_dial" (func $dial (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_water_v0"))
  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_dial") (param i32) (result i32) call $dial)
  (func (export "_water_worker") (result i32)
    (loop (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0))) (br 0))
    i32.const 0))"#;

/// A guest whose worker never waits either, but moves bytes: it spins
/// about a millisecond, writes one byte to the network, and again, for
/// ever. Moving a byte now and then must not buy it a thread: it is
/// throttled as a spinner is (`v0::MOVER_FLOOR`).
const BUSY_MOVER: &str = r#"(module
  (import "env" "host_dial" (func $dial (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $net (mut i32) (i32.const -1))
  (func (export "_water_v0"))
  (func (export "_water_init") (result i32) i32.const 0)
  (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
  (func (export "_water_dial") (param i32) (result i32) (global.set $net (call $dial)) (global.get $net))
  (func (export "_water_worker") (result i32) (local $i i32)
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1))
    (loop $turn
      (local.set $i (i32.const 0))
      (loop $spin
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $i) (i32.const 1000000))))
      (drop (call $write (global.get $net) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $turn))
    i32.const 0))"#;

/// The healthy connection's throughput and 64-byte round trip (median and
/// p99), alone and then beside `n` hostile guests in the same process —
/// spinners, then busy movers — : what such a neighbour costs it.
async fn fairness(
    n: usize,
    water: &Via,
    echo: std::net::SocketAddr,
    slice: Duration,
) -> anyhow::Result<Vec<Figure>> {
    // (throughput MiB/s, round trip median µs, p99 µs)
    let measure = async || -> anyhow::Result<(f64, f64, f64)> {
        let start = Instant::now();
        let mut bulk = Vec::new();
        while bulk.len() < 3 || start.elapsed() < slice {
            bulk.push(echo_bulk(water.connect(echo).await?, BULK).await?);
        }
        let mut conn = water.connect(echo).await?;
        let rtt = ping_pong(&mut conn, 64, 1000).await?;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Ok((mib_s(2 * BULK, median(bulk)), us(median(rtt.clone())), us(p99(rtt))))
    };
    let alone = measure().await?;
    let mut figures = Vec::new();
    let kinds = [
        (
            SPINNER,
            [
                "throughput beside spinners",
                "round trip 64 B median, spinners",
                "round trip 64 B p99, spinners",
            ],
        ),
        (
            BUSY_MOVER,
            [
                "throughput beside busy movers",
                "round trip 64 B median, movers",
                "round trip 64 B p99, movers",
            ],
        ),
    ];
    for (wat, names) in kinds {
        let hostile = water::Watm::new(
            &wat::parse_str(wat)?,
            // Throttled, not stopped: what they cost while they last.
            water::Config::default()
                .close_grace(Duration::from_millis(100))
                .spin_limit(Duration::from_secs(3600)),
        )?;
        let dialer = Dialer::new(&hostile)?;
        let mut running = Vec::with_capacity(n);
        for _ in 0..n {
            running.push(dialer.dial(echo.to_string()).await?);
        }
        let beside = measure().await;
        for c in running {
            let _ = c.abort().await;
        }
        let beside = beside?;
        figures.extend([
            Figure {
                name: names[0],
                unit: "MiB/s",
                water: beside.0,
                baseline_name: "alone",
                baseline: alone.0,
                better: Better::Higher,
            },
            Figure {
                name: names[1],
                unit: "µs",
                water: beside.1,
                baseline_name: "alone",
                baseline: alone.1,
                better: Better::Lower,
            },
            Figure {
                name: names[2],
                unit: "µs",
                water: beside.2,
                baseline_name: "alone",
                baseline: alone.2,
                better: Better::Lower,
            },
        ]);
    }
    Ok(figures)
}

/// The 99th percentile of some durations (`ZERO` for none).
fn p99(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d.get((d.len() * 99 / 100).min(d.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn print_table(o: &Options<'_>, figures: &[Figure], scale: Option<&crate::scale::Report>) {
    println!(
        "transport {} · {} connections for the aggregate · loopback · {} cores",
        o.transport,
        o.connections,
        cores()
    );
    println!("{:<33} {:>12} {:>12}  {:<18} {:>7}", "figure", "water", "baseline", "baseline is", "ratio");
    for f in figures {
        let better = match f.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        println!(
            "{:<33} {:>8.1} {:<3} {:>8.1} {:<3}  {:<18} {:>6.2}x  ({better}; difference {:+.1} {})",
            f.name,
            f.water,
            f.unit,
            f.baseline,
            f.unit,
            f.baseline_name,
            f.ratio(),
            f.water - f.baseline,
            f.unit
        );
    }
    if let Some(s) = scale {
        println!("{s}");
    }
}

fn print_json(o: &Options<'_>, figures: &[Figure], scale: Option<&crate::scale::Report>) {
    let items: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                r#"{{"name":{:?},"unit":{:?},"water":{:.3},"baseline":{:.3},"baseline_name":{:?},"ratio":{:.4},"higher_is_better":{}}}"#,
                f.name,
                f.unit,
                f.water,
                f.baseline,
                f.baseline_name,
                f.ratio(),
                matches!(f.better, Better::Higher)
            )
        })
        .collect();
    let scale = scale.map(|s| s.json()).unwrap_or_else(|| "null".into());
    println!(
        r#"{{"transport":{:?},"connections":{},"cores":{},"figures":[{}],"scale":{}}}"#,
        o.transport,
        o.connections,
        cores(),
        items.join(","),
        scale
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
