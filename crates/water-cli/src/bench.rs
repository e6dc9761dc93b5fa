//! `water bench`: the benchmark figures from the command line, each next to
//! its baseline measured in the same run, with the ratio.
//!
//! Paths are those of `water_bench` (direct TCP, a native forwarder in the
//! guest's place, the WATER dialer), plus the tunnel: `water client`'s code
//! (`Dialer::dial_socket`) against a native one-hop TCP forwarder. With
//! `--scale N`, also N connections held at once through a `water server`
//! child process (peak RSS, fds released).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use water::Dialer;
use water_bench::{Path as Via, concurrent, echo_bulk, echo_server, median, ping_pong, setup, tcp_forwarder};

use crate::{transport, tunnel};

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
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
    let _ = std::io::stderr().flush();
}

/// Runs `f` until `budget` is spent (at least `min` times); the samples.
async fn repeat<F, Fut>(budget: Duration, min: usize, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Duration>>,
{
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < min || start.elapsed() < budget {
        out.push(f().await?);
    }
    Ok(out)
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1048576.0 / d.as_secs_f64()
}

pub async fn run(o: Options<'_>) -> anyhow::Result<()> {
    let watm = transport::load(o.transport, o.config)?;
    let dialer = Dialer::new(&watm)?;
    let echo = echo_server().await?;
    let water = Via::Water(dialer.clone());
    // Nine measurements share the time.
    let slice = Duration::from_secs_f64((o.seconds / 9.0).max(0.2));
    let mut figures = Vec::new();

    // Throughput through the library, three ways.
    let mut bulk = Vec::new();
    for (name, via) in [("direct", Via::Direct), ("native", Via::Native), ("water", water.clone())] {
        progress(&format!("throughput via {name}"));
        let samples = repeat(slice, 3, || {
            let via = via.clone();
            async move { echo_bulk(via.connect(echo).await?, BULK).await }
        })
        .await
        .with_context(|| format!("throughput via {name}"))?;
        bulk.push(mib_s(2 * BULK, median(samples)));
    }
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
    tokio::spawn(tunnel::run_client(dialer.clone(), tunnel_listener, echo.to_string(), stop.clone()));
    let forwarder = tcp_forwarder(echo).await?;
    let mut hops = Vec::new();
    for (name, addr) in [("native one-hop forwarder", forwarder), ("water client tunnel", tunnel_addr)] {
        progress(&format!("throughput via {name}"));
        let samples =
            repeat(slice, 3, || async move { echo_bulk(Via::Direct.connect(addr).await?, BULK).await })
                .await?;
        hops.push(mib_s(2 * BULK, median(samples)));
    }
    figures.push(Figure {
        name: "tunnel throughput",
        unit: "MiB/s",
        water: hops[1],
        baseline_name: "native forwarder",
        baseline: hops[0],
        better: Better::Higher,
    });

    // Round trip, 64 bytes.
    let mut rtt = Vec::new();
    for (name, via) in [("direct", Via::Direct), ("water", water.clone())] {
        progress(&format!("64-byte round trips via {name}"));
        let mut s = via.connect(echo).await?;
        let start = Instant::now();
        let mut samples = Vec::new();
        while samples.len() < 200 || start.elapsed() < slice {
            samples.extend(ping_pong(&mut s, 64, 100).await?);
        }
        rtt.push(median(samples).as_secs_f64() * 1e6);
    }
    figures.push(Figure {
        name: "round trip, 64 B (median)",
        unit: "µs",
        water: rtt[1],
        baseline_name: "direct TCP",
        baseline: rtt[0],
        better: Better::Lower,
    });

    // Setup.
    let mut set = Vec::new();
    for (name, via) in [("direct", Via::Direct), ("water", water.clone())] {
        progress(&format!("connection setup via {name}"));
        let samples = repeat(slice, 50, || setup(&via, echo)).await?;
        set.push(median(samples).as_secs_f64() * 1e6);
    }
    figures.push(Figure {
        name: "setup to first byte (median)",
        unit: "µs",
        water: set[1],
        baseline_name: "direct TCP",
        baseline: set[0],
        better: Better::Lower,
    });

    // Concurrency.
    let mut conc = Vec::new();
    for (name, via) in [("direct", Via::Direct), ("water", water.clone())] {
        progress(&format!("{} connections at once via {name}", o.connections));
        let each = 64 << 10;
        let samples = repeat(slice, 2, || concurrent(&via, echo, o.connections, each)).await?;
        conc.push(mib_s(2 * each * o.connections, median(samples)));
    }
    figures.push(Figure {
        name: if o.connections == 1 { "1 connection, aggregate" } else { "N connections, aggregate" },
        unit: "MiB/s",
        water: conc[1],
        baseline_name: "direct TCP",
        baseline: conc[0],
        better: Better::Higher,
    });
    stop.cancel();

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

fn print_table(o: &Options<'_>, figures: &[Figure], scale: Option<&crate::scale::Report>) {
    println!(
        "transport {} · {} connections for the aggregate · loopback · {} cores",
        o.transport,
        o.connections,
        cores()
    );
    println!("{:<30} {:>12} {:>12}  {:<18} {:>7}", "figure", "water", "baseline", "baseline is", "ratio");
    for f in figures {
        let better = match f.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        println!(
            "{:<30} {:>8.1} {:<3} {:>8.1} {:<3}  {:<18} {:>6.2}x  ({better}; difference {:+.1} {})",
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
