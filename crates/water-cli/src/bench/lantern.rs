//! `water bench --lantern`: the shape of the one published benchmark of a
//! deployed WATER host, Lantern's (getlantern/water, BENCHMARKS.md: client →
//! ss-server → echo on localhost, chacha20-ietf-poly1305), for any
//! transport, with its baselines measured in this run:
//! - a 1 KiB echo per iteration on one connection (write 1 KiB, read it
//!   back): µs per op and MB/s (10⁶ bytes, 1 KiB counted per op, as theirs);
//! - a 4-byte ping-pong on one connection: µs per round trip;
//! - setup: connect (for WATER: instantiate and dial) until the first
//!   echoed byte, µs per connection; the CPU time a setup costs (this
//!   process's `getrusage`, so it includes the benchmark's client, hence the
//!   raw TCP row to subtract; and each outside process's own, from
//!   `/proc/PID/task/*/schedstat`); and the resident memory per connection
//!   held open (RSS delta while `--hold N` connections are open, divided by
//!   N), at once and again after 2 s of quiet (a guest gives its scratch
//!   pages back after a 1 s wait).
//!
//! Three paths each time, sampled in turn (one of each, then again):
//! - generic (`-t T --lantern`): raw TCP to the echo service; native:
//!   [`Via::Native`] (a Rust copy task in the guest's place, behind the
//!   same in-process duplex) → a native TCP forwarder → echo; WATER:
//!   `water::Dialer` → a `water::Forwarder` (the transport's server role,
//!   in this process) → echo. Client and server hops are both in this
//!   process.
//! - `--libev` (`-t ss`): raw TCP to echo; native SS: `ss-tunnel` →
//!   `ss-server` → echo; WATER+SS: `water::Dialer` (in this process) →
//!   `ss-server` → echo: Lantern's own three paths.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Config, Dialer, Forwarder, TransportArgs, Watm};
use water_bench::{Path as Via, Stream, echo_server, median, ping_pong, setup, tcp_forwarder};

use super::{alternate, cores, progress};
use crate::transport;

/// Lantern's method, and ours when no `--config` names one.
const METHOD: &str = "chacha20-ietf-poly1305";
/// Round trips a path makes before the next path takes its turn.
const TURN: usize = 50;
/// Sequential setups a path makes per turn for the CPU figure.
const CPU_BLOCK: usize = 20;
/// How long an outside process gets to start listening.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct Options<'a> {
    pub transport: &'a str,
    pub config: Option<&'a Path>,
    pub seconds: f64,
    pub json: bool,
    /// Connections held open at once for the memory figure.
    pub hold: usize,
    /// Against shadowsocks-libev (`ss-tunnel`, `ss-server`).
    pub libev: bool,
}

/// An outside process: its name, pid, and which routes cross it.
type Pid = (&'static str, u32, [bool; 3]);

/// A value per route for an outside process: NaN (shown as "—") for a
/// route that does not cross it.
fn only_on(on: [bool; 3], values: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| if on[i] { values[i] } else { f64::NAN })
}

/// One way to the echo service.
struct Route {
    name: &'static str,
    /// What a byte crosses, in order.
    hops: String,
    via: Via,
    addr: SocketAddr,
}

impl Route {
    async fn open(&self) -> std::io::Result<Pin<Box<dyn Stream>>> {
        self.via.connect(self.addr).await
    }
}

/// One row of the report: a value per route (raw, native, water).
struct Row {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
    values: [f64; 3],
    /// Samples (or connections) per route behind each value.
    samples: [usize; 3],
    /// Lantern's published values for the same row (their M4 Pro), if any.
    lantern: Option<[f64; 3]>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// An outside process on the paths (`ss-server`, `ss-tunnel`).
struct Outside {
    name: &'static str,
    child: tokio::process::Child,
    /// Which routes (raw, native, water) cross it.
    on: [bool; 3],
}

impl Outside {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

pub async fn run(o: Options<'_>) -> anyhow::Result<()> {
    if o.hold == 0 {
        bail!("--hold must be at least 1");
    }
    // The memory figure holds `hold` connections of each path at once: up
    // to 2 + 4 + 4 fds each here (generic: the client's socket, the
    // forwarder's accepted and upstream ones, the echo's), and two in each
    // libev process (which inherit the limit).
    raise_nofile((12 * o.hold + 256) as u64)?;
    let echo = echo_server().await?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let mut outside = Vec::new();

    let routes: [Route; 3] = if o.libev {
        let text = ss_config_text(o.config)?;
        let args = TransportArgs::parse(text.clone())
            .map_err(|e| anyhow::anyhow!("--config is not key=value: {e:?}"))?;
        let get = |k: &str| args.get(k).map(|v: Vec<u8>| String::from_utf8_lossy(&v).into_owned());
        let method = get("method").context("--config names no method=")?;
        let password = get("password")
            .context("--libev needs password= in --config (libev derives its key from the password)")?;
        let watm = load_ss(o.transport, &text, echo)?;
        let (mut server, mut tunnel, server_addr, tunnel_addr) =
            start_libev(&method, &password, echo).await?;
        tunnel.on = [false, true, false];
        server.on = [false, true, true];
        outside.push(tunnel);
        outside.push(server);
        [
            Route { name: "raw TCP", hops: "client → echo".into(), via: Via::Direct, addr: echo },
            Route {
                name: "native SS",
                hops: "client → ss-tunnel → ss-server → echo".into(),
                via: Via::Direct,
                addr: tunnel_addr,
            },
            Route {
                name: "WATER+SS",
                hops: format!("water::Dialer ({}, in this process) → ss-server → echo", o.transport),
                via: Via::Water(Dialer::new(&watm)?),
                addr: server_addr,
            },
        ]
    } else {
        let watm = if o.transport == "ss" {
            load_ss(o.transport, &ss_config_text(o.config)?, echo)?
        } else {
            transport::load(o.transport, o.config)?
        };
        let forwarder = Forwarder::new(&watm, echo.to_string())
            .context("the Lantern shape puts the transport's server role in front of the echo service")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server_addr = listener.local_addr()?;
        let until = stop.clone();
        tokio::spawn(async move { forwarder.serve(listener, until.cancelled_owned()).await });
        let native_fwd = tcp_forwarder(echo).await?;
        [
            Route { name: "raw TCP", hops: "client → echo".into(), via: Via::Direct, addr: echo },
            Route {
                name: "native",
                hops: "client → duplex → Rust copy task → TCP → native forwarder (Rust copy task) → echo"
                    .into(),
                via: Via::Native,
                addr: native_fwd,
            },
            Route {
                name: "WATER",
                hops: format!(
                    "client → duplex → water::Dialer ({t}) → TCP → water::Forwarder ({t}) → echo",
                    t = o.transport
                ),
                via: Via::Water(Dialer::new(&watm)?),
                addr: server_addr,
            },
        ]
    };
    let pids: Vec<Pid> = outside.iter().filter_map(|p| p.pid().map(|pid| (p.name, pid, p.on))).collect();

    progress("lantern: warming up each path");
    for r in &routes {
        for _ in 0..5 {
            setup(&r.via, r.addr).await.with_context(|| format!("setup via {}", r.name))?;
        }
    }

    let mut rows = Vec::new();
    // Memory first, before the other figures have churned the allocator
    // and the instance pool.
    progress(&format!("lantern: memory, {} connections held at once per path", o.hold));
    rows.extend(memory(&routes, &pids, o.hold).await.context("memory per connection")?);

    let part = Duration::from_secs_f64((o.seconds / 4.0).max(0.2));
    progress("lantern: 1 KiB echo per iteration, one connection per path, in turn");
    let echo1k = round_trips(&routes, 1024, part).await.context("1 KiB echo")?;
    let us: Vec<f64> = echo1k.iter().map(|s| median(s.clone()).as_secs_f64() * 1e6).collect();
    let n: Vec<usize> = echo1k.iter().map(Vec::len).collect();
    let lantern = o.libev;
    rows.push(Row {
        name: "1 KiB echo, per op (median)".into(),
        unit: "µs",
        higher_is_better: false,
        values: [us[0], us[1], us[2]],
        samples: [n[0], n[1], n[2]],
        lantern: lantern.then_some([16.287, 66.830, 625.988]),
    });
    rows.push(Row {
        name: "1 KiB echo, throughput".into(),
        unit: "MB/s",
        higher_is_better: true,
        // 1024 bytes per op, 10⁶ bytes a MB: bytes per µs.
        values: [1024.0 / us[0], 1024.0 / us[1], 1024.0 / us[2]],
        samples: [n[0], n[1], n[2]],
        lantern: lantern.then_some([62.87, 15.32, 1.64]),
    });

    progress("lantern: 4-byte ping-pong, one connection per path, in turn");
    let ping = round_trips(&routes, 4, part).await.context("4-byte ping-pong")?;
    let us: Vec<f64> = ping.iter().map(|s| median(s.clone()).as_secs_f64() * 1e6).collect();
    let n: Vec<usize> = ping.iter().map(Vec::len).collect();
    rows.push(Row {
        name: "4 B ping-pong (median)".into(),
        unit: "µs",
        higher_is_better: false,
        values: [us[0], us[1], us[2]],
        samples: [n[0], n[1], n[2]],
        lantern: lantern.then_some([15.6, 53.5, 539.0]),
    });

    progress("lantern: setup to the first echoed byte, in turn");
    let set = alternate(part, 50, routes.len(), |i| {
        let (via, addr) = (routes[i].via.clone(), routes[i].addr);
        async move { Ok(vec![setup(&via, addr).await?]) }
    })
    .await
    .context("setup")?;
    let us: Vec<f64> = set.iter().map(|s| median(s.clone()).as_secs_f64() * 1e6).collect();
    let n: Vec<usize> = set.iter().map(Vec::len).collect();
    rows.push(Row {
        name: "setup to first echoed byte (median)".into(),
        unit: "µs",
        higher_is_better: false,
        values: [us[0], us[1], us[2]],
        samples: [n[0], n[1], n[2]],
        // Theirs: WATER's dial alone (a new dialer each time, no byte
        // echoed); no baseline published.
        lantern: lantern.then_some([f64::NAN, f64::NAN, 4290.0]),
    });

    progress(&format!("lantern: setup CPU, {CPU_BLOCK} sequential setups per path in turn"));
    rows.extend(setup_cpu(&routes, &pids, part).await.context("setup CPU")?);

    let report = Report { o: &o, routes: &routes, rows: &rows, libev: o.libev };
    if o.json {
        report.json()
    } else {
        report.table()
    }
    drop(outside);
    Ok(())
}

/// `count` round trips of `size` bytes per turn on one connection per
/// route, the routes in turn, until `budget` is spent (and each has at
/// least a few turns); every round trip's time, per route.
async fn round_trips(routes: &[Route], size: usize, budget: Duration) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut conns = Vec::with_capacity(routes.len());
    for r in routes {
        let mut c = r.open().await.with_context(|| format!("connect via {}", r.name))?;
        // One untimed exchange: a transport's handshake is not a round trip.
        ping_pong(&mut c, size, 1).await?;
        conns.push(c);
    }
    let mut out = vec![Vec::new(); routes.len()];
    let start = Instant::now();
    while out[0].len() < 4 * TURN || start.elapsed() < budget {
        for (conn, samples) in conns.iter_mut().zip(&mut out) {
            samples.extend(ping_pong(conn, size, TURN).await?);
        }
    }
    Ok(out)
}

/// Raises this process's soft open-file limit to its hard one (the libev
/// children inherit it); fails if `want` is still more.
fn raise_nofile(want: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
    }
    if lim.rlim_max < want {
        bail!(
            "--hold: holding that many connections needs about {want} open files, but the hard limit is {}",
            lim.rlim_max
        );
    }
    Ok(())
}

/// This process's CPU time so far (user + system, every thread).
fn own_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeros is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Another process's CPU time so far: the sum of its threads' run time
/// from `/proc/PID/task/*/schedstat` (nanoseconds), or from
/// `/proc/PID/stat` in clock ticks when schedstat is missing.
fn cpu_of(pid: u32) -> Duration {
    let mut ns = 0u64;
    let mut any = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(n) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()))
            {
                ns += n;
                any = true;
            }
        }
    }
    if any && ns > 0 {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// Resident memory of a process (`VmRSS`), KiB.
fn rss_kib(pid: Option<u32>) -> u64 {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Setup CPU per connection: the routes in turn, each [`CPU_BLOCK`]
/// sequential setups, this process's CPU time (and each outside
/// process's) across the block, with a pause after it so that the last
/// connection's teardown is counted in its own block.
async fn setup_cpu(routes: &[Route], pids: &[Pid], budget: Duration) -> anyhow::Result<Vec<Row>> {
    let pause = Duration::from_millis(20);
    // What this process burns doing nothing (timers, the engine's epoch
    // ticker), per pause: taken off each block.
    let t = own_cpu();
    tokio::time::sleep(10 * pause).await;
    let idle = own_cpu().saturating_sub(t) / 10;
    // [route][0 = this process, 1.. = outside processes]
    let mut cpu = vec![vec![Duration::ZERO; 1 + pids.len()]; routes.len()];
    let mut count = vec![0usize; routes.len()];
    let start = Instant::now();
    while count[0] < 5 * CPU_BLOCK || start.elapsed() < budget {
        for (i, r) in routes.iter().enumerate() {
            let before: Vec<Duration> =
                std::iter::once(own_cpu()).chain(pids.iter().map(|&(_, p, _)| cpu_of(p))).collect();
            for _ in 0..CPU_BLOCK {
                setup(&r.via, r.addr).await.with_context(|| format!("setup via {}", r.name))?;
            }
            tokio::time::sleep(pause).await;
            let after: Vec<Duration> =
                std::iter::once(own_cpu()).chain(pids.iter().map(|&(_, p, _)| cpu_of(p))).collect();
            for (k, (a, b)) in after.iter().zip(&before).enumerate() {
                let spent = a.saturating_sub(*b);
                cpu[i][k] += if k == 0 { spent.saturating_sub(idle) } else { spent };
            }
            count[i] += CPU_BLOCK;
        }
    }
    progress(&format!(
        "lantern: this process idle: {:.1} µs CPU per {pause:?} pause",
        idle.as_secs_f64() * 1e6
    ));
    let per = |i: usize, k: usize| cpu[i][k].as_secs_f64() * 1e6 / count[i] as f64;
    let mut rows = vec![Row {
        name: "setup CPU per connection, this process".into(),
        unit: "µs",
        higher_is_better: false,
        values: [per(0, 0), per(1, 0), per(2, 0)],
        samples: [count[0], count[1], count[2]],
        lantern: None,
    }];
    for (k, &(name, _, on)) in pids.iter().enumerate() {
        rows.push(Row {
            name: format!("setup CPU per connection, {name}"),
            unit: "µs",
            higher_is_better: false,
            values: only_on(on, [per(0, k + 1), per(1, k + 1), per(2, k + 1)]),
            samples: [count[0], count[1], count[2]],
            lantern: None,
        });
    }
    if !pids.is_empty() {
        // Each process's time counted only on the routes that cross it.
        let all = |i: usize| {
            per(i, 0) + (0..pids.len()).filter(|&k| pids[k].2[i]).map(|k| per(i, k + 1)).sum::<f64>()
        };
        rows.push(Row {
            name: "setup CPU per connection, all processes".into(),
            unit: "µs",
            higher_is_better: false,
            values: [all(0), all(1), all(2)],
            samples: [count[0], count[1], count[2]],
            lantern: None,
        });
    }
    Ok(rows)
}

/// How long held connections stay quiet before the second memory reading:
/// past the 1 s after which a waiting guest gives its scratch pages back.
const QUIET: Duration = Duration::from_secs(2);

/// Resident memory per connection held open: for each route in turn (raw
/// TCP, the native path, WATER), the RSS of this process (and of each
/// outside process) before and after opening `hold` more connections that
/// have each echoed one byte, the difference divided by `hold`. Every
/// route's connections stay open until all are measured, so no route
/// reuses memory another freed (which made later routes look free).
async fn memory(routes: &[Route], pids: &[Pid], hold: usize) -> anyhow::Result<Vec<Row>> {
    let mut kib = vec![vec![0.0f64; 1 + pids.len()]; routes.len()];
    // This process's, once the connections have been quiet past the
    // guests' scratch wait (`SCRATCH_IDLE`, 1 s): what a held connection
    // costs for as long as it stays quiet.
    let mut quiet = vec![0.0f64; routes.len()];
    let rss = || -> Vec<u64> {
        std::iter::once(rss_kib(None)).chain(pids.iter().map(|&(_, p, _)| rss_kib(Some(p)))).collect()
    };
    let mut held = Vec::with_capacity(routes.len() * hold);
    for (i, r) in routes.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = rss();
        for _ in 0..hold {
            let mut c = r.open().await.with_context(|| format!("connect via {}", r.name))?;
            c.write_all(b"x").await?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await?;
            held.push(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = rss();
        for (k, (a, b)) in after.iter().zip(&before).enumerate() {
            kib[i][k] = (*a as f64 - *b as f64) / hold as f64;
        }
        tokio::time::sleep(QUIET).await;
        quiet[i] = (rss_kib(None) as f64 - before[0] as f64) / hold as f64;
    }
    drop(held);
    // Give the connections a moment to go before the next figures.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rows = vec![Row {
        name: "memory per held connection, this process (RSS)".into(),
        unit: "KiB",
        higher_is_better: false,
        values: [kib[0][0], kib[1][0], kib[2][0]],
        samples: [hold; 3],
        // Theirs is not resident memory: Go's bytes allocated per setup
        // (-benchmem), 1.7 MB.
        lantern: None,
    }];
    rows.push(Row {
        name: format!("memory per held connection once quiet ({} s), this process (RSS)", QUIET.as_secs()),
        unit: "KiB",
        higher_is_better: false,
        values: [quiet[0], quiet[1], quiet[2]],
        samples: [hold; 3],
        lantern: None,
    });
    for (k, &(name, _, on)) in pids.iter().enumerate() {
        rows.push(Row {
            name: format!("memory per held connection, {name} (RSS)"),
            unit: "KiB",
            higher_is_better: false,
            values: only_on(on, [kib[0][k + 1], kib[1][k + 1], kib[2][k + 1]]),
            samples: [hold; 3],
            lantern: None,
        });
    }
    if !pids.is_empty() {
        let all = |i: usize| {
            kib[i][0] + (0..pids.len()).filter(|&k| pids[k].2[i]).map(|k| kib[i][k + 1]).sum::<f64>()
        };
        rows.push(Row {
            name: "memory per held connection, all processes".into(),
            unit: "KiB",
            higher_is_better: false,
            values: [all(0), all(1), all(2)],
            samples: [hold; 3],
            lantern: None,
        });
    }
    Ok(rows)
}

/// The ss config: `--config`'s text, or chacha20-ietf-poly1305 with a
/// fresh random password.
fn ss_config_text(config: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = config {
        return transport::read_capped(path, transport::MAX_CONFIG_FILE)
            .with_context(|| format!("cannot read config {}", path.display()));
    }
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("random password: {e}"))?;
    let password: String = key.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("method={METHOD}\npassword={password}\n").into_bytes())
}

/// The ss transport with `text` and the echo service as the target its
/// client announces (a `target=` after the config's own, so it wins).
fn load_ss(name: &str, text: &[u8], echo: SocketAddr) -> anyhow::Result<Watm> {
    let mut text = text.to_vec();
    text.extend_from_slice(format!("\ntarget={echo}\n").as_bytes());
    transport::load_with(name, None, Config::default().transport_config(text))
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts `ss-server` on 127.0.0.1 and `ss-tunnel` in front of it
/// forwarding to `echo`, each on a free port, killed when dropped (and if
/// this process dies: `PR_SET_PDEATHSIG`). The password goes through a
/// config file readable only by us, removed once both listen, so that it
/// is not on a command line.
async fn start_libev(
    method: &str,
    password: &str,
    echo: SocketAddr,
) -> anyhow::Result<(Outside, Outside, SocketAddr, SocketAddr)> {
    let missing: Vec<&str> = ["ss-server", "ss-tunnel"].into_iter().filter(|p| !on_path(p)).collect();
    if !missing.is_empty() {
        bail!(
            "--libev needs shadowsocks-libev's ss-server and ss-tunnel on PATH ({} not found): \
             apt-get install shadowsocks-libev",
            missing.join(", ")
        );
    }
    let dir = private_dir()?;
    let _remove = RemoveOnDrop(dir.clone());
    let [server_port, tunnel_port] = water_bench::free_ports()?;
    let common = format!(
        r#""server":"127.0.0.1","server_port":{server_port},"password":{},"method":{},"timeout":60"#,
        json_str(password),
        json_str(method)
    );
    let server_cfg = write_private(&dir, "server.json", &format!("{{{common}}}"))?;
    let tunnel_cfg = write_private(
        &dir,
        "tunnel.json",
        &format!(r#"{{{common},"local_address":"127.0.0.1","local_port":{tunnel_port}}}"#),
    )?;
    let server_addr = SocketAddr::from(([127, 0, 0, 1], server_port));
    let tunnel_addr = SocketAddr::from(([127, 0, 0, 1], tunnel_port));
    let mut server = spawn("ss-server", &["-c", path_str(&server_cfg)?])?;
    wait_listening(&mut server, server_addr).await?;
    let fwd = echo.to_string();
    let mut tunnel = spawn("ss-tunnel", &["-c", path_str(&tunnel_cfg)?, "-L", &fwd])?;
    wait_listening(&mut tunnel, tunnel_addr).await?;
    Ok((server, tunnel, server_addr, tunnel_addr))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("temporary directory path is not UTF-8")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new directory only we can read, under the temporary directory.
fn private_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("water-bench-libev-{}-{}", std::process::id(), nanos.as_nanos()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn write_private(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(path)
}

fn spawn(program: &'static str, args: &[&str]) -> anyhow::Result<Outside> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {program}"))?;
    Ok(Outside { name: program, child, on: [false; 3] })
}

/// Waits (at most [`START_LIMIT`]) until `p` accepts connections on `addr`.
async fn wait_listening(p: &mut Outside, addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let answered = TcpStream::connect(addr).await.is_ok();
        // Checked after the connect: a child that failed to bind has
        // exited, and what answered there is someone else.
        if let Some(status) = p.child.try_wait()? {
            bail!("{} exited before listening on {addr}: {status}", p.name);
        }
        if answered {
            return Ok(());
        }
        if start.elapsed() > START_LIMIT {
            bail!("{} is not listening on {addr} after {START_LIMIT:?}", p.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Report<'a> {
    o: &'a Options<'a>,
    routes: &'a [Route],
    rows: &'a [Row],
    libev: bool,
}

impl Report<'_> {
    fn table(&self) {
        let [raw, native, water] = [self.routes[0].name, self.routes[1].name, self.routes[2].name];
        println!(
            "Lantern shape · transport {} · {} · loopback · {} cores · median of samples taken in turn",
            self.o.transport,
            if self.libev { "against shadowsocks-libev" } else { "in-process server" },
            cores()
        );
        for r in self.routes {
            println!("  {:<10} {}", r.name, r.hops);
        }
        println!(
            "{:<48} {:>10} {:>10} {:>10}  {:>10} {:>12} {:>12} {:>12}",
            "figure",
            raw,
            native,
            water,
            format!("{water}/raw"),
            format!("{water}/nat."),
            format!("nat./raw"),
            format!("{water}−raw"),
        );
        let show = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "—".to_string() };
        let times = |x: f64| if x.is_finite() { format!("{x:.2}x") } else { "—".to_string() };
        for row in self.rows {
            let [a, b, c] = row.values;
            println!(
                "{:<48} {:>10} {:>10} {:>10}  {:>10} {:>12} {:>12} {:>12}  {} ({}; n = {})",
                row.name,
                show(a),
                show(b),
                show(c),
                times(ratio(c, a)),
                times(ratio(c, b)),
                times(ratio(b, a)),
                if (c - a).is_finite() { format!("{:+.2}", c - a) } else { "—".into() },
                row.unit,
                if row.higher_is_better { "higher is better" } else { "lower is better" },
                row.samples.map(|n| n.to_string()).join("/"),
            );
            if let Some([la, lb, lc]) = row.lantern {
                println!(
                    "{:<48} {:>10} {:>10} {:>10}  {:>10} {:>12} {:>12}",
                    "  Lantern's, Apple M4 Pro (published)",
                    show(la),
                    show(lb),
                    show(lc),
                    times(ratio(lc, la)),
                    times(ratio(lc, lb)),
                    times(ratio(lb, la)),
                );
            }
        }
        println!(
            "setup CPU is this process's user+system time (getrusage) over sequential setups, so it \
             includes the benchmark's own client and echo service: the raw TCP column is that part; \
             memory is VmRSS before and after opening {} more connections of a path (raw TCP's, then \
             the native path's, then WATER's, all held until the last is measured), divided by their count; \
             each outside process's CPU (schedstat) and RSS are counted only on the paths that cross it (— elsewhere)",
            self.o.hold
        );
    }

    fn json(&self) {
        let num = |x: f64| if x.is_finite() { format!("{x:.4}") } else { "null".into() };
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!(r#"{{"name":{},"hops":{}}}"#, json_str(r.name), json_str(&r.hops)))
            .collect();
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|row| {
                let [a, b, c] = row.values;
                let lantern = row.lantern.map_or("null".to_string(), |[la, lb, lc]| {
                    format!(
                        r#"{{"values":[{},{},{}],"water_to_raw":{},"water_to_native":{},"native_to_raw":{}}}"#,
                        num(la),
                        num(lb),
                        num(lc),
                        num(ratio(lc, la)),
                        num(ratio(lc, lb)),
                        num(ratio(lb, la))
                    )
                });
                format!(
                    r#"{{"name":{},"unit":{},"higher_is_better":{},"values":[{},{},{}],"samples":[{},{},{}],"water_to_raw":{},"water_to_native":{},"native_to_raw":{},"water_minus_raw":{},"lantern":{}}}"#,
                    json_str(&row.name),
                    json_str(row.unit),
                    row.higher_is_better,
                    num(a),
                    num(b),
                    num(c),
                    row.samples[0],
                    row.samples[1],
                    row.samples[2],
                    num(ratio(c, a)),
                    num(ratio(c, b)),
                    num(ratio(b, a)),
                    num(c - a),
                    lantern
                )
            })
            .collect();
        println!(
            r#"{{"mode":"lantern","transport":{},"libev":{},"cores":{},"hold":{},"paths":[{}],"figures":[{}]}}"#,
            json_str(self.o.transport),
            self.libev,
            cores(),
            self.o.hold,
            routes.join(","),
            rows.join(",")
        );
    }
}
