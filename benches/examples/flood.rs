//! The flood benchmark (issue 16): does a real Shadowsocks client keep
//! working through `water server -t ss` while a crowd holds thousands of
//! connections against it, and does the server give everything back after?
//!
//! On 127.0.0.1, every port a free one:
//! - an echo service, in this process;
//! - `water server -t ss` (the release `water` binary: `target/release/water`
//!   beside this example's directory, or `WATER_BIN`) with
//!   chacha20-ietf-poly1305 and a password in a config file, forwarding to
//!   the echo service, with its default limits (it raises its open-file
//!   limit to the hard one and derives its connection cap from it;
//!   `--server-nofile N` starts it under `ulimit -n N` instead, to see it
//!   full and shedding);
//! - shadowsocks-libev's `ss-tunnel` pointing at that server, forwarding to
//!   the echo service: the real client.
//!
//! One sample of setup latency: connect to `ss-tunnel`'s port, send a
//! 64-byte request, time until the first echoed byte (then the whole echo
//! is read and checked, and the connection closed). Samples start 10 ms
//! apart (`--interval-ms`; a client connecting now and then, not a second
//! flood), with blocking sockets on a thread of their own:
//! 1. **alone**, after a warm-up;
//! 2. **ramp**: while the flood is being opened and taken in (at most 256
//!    connection attempts in flight) — 5,000 connections that send nothing
//!    and 1,000 that send random bytes once (random lengths 1 to 4,096),
//!    interleaved;
//! 3. **flood held**: once the server holds every flood connection or its
//!    fd count has stopped growing for 3 s (it takes connections from its
//!    listen queue only as fast as it sets them up; what overflows the
//!    queue the kernel drops, and its `TcpExt` counters are reported), for
//!    `--hold S` (10 s) and at least as many samples as alone;
//! 4. **after**: once the flood connections are closed (this run's second
//!    baseline: a change in the shared machine's load shows as a
//!    difference between "alone" and "after").
//!
//! Every flood connection waits on a read: a read that ends (EOF or a
//! reset) while it is held means the server closed it (shed to make room,
//! or its handshake deadline, at 60 s and more). The server's open fds
//! (`/proc/PID/fd`) and RSS (`VmRSS`, sampled every 100 ms, and `VmHWM`)
//! are followed throughout; after the flood is closed, the run waits (at
//! most 60 s) for the fd count to come back to its idle figure. At the end
//! the server is stopped with SIGTERM and its own account of failed
//! connections (its rate-limited warnings and their summary) is printed.
//!
//! The whole run is bounded (`--limit S`, default 600 s: a watchdog kills
//! the children and exits with status 2); it binds and connects only on
//! 127.0.0.1; the children are killed when it ends, however it ends
//! (dropped, the watchdog, or `PR_SET_PDEATHSIG` if this process dies).
//! It raises its own open-file limit to the hard one (it holds one fd per
//! flood connection). Needs `ss-tunnel` on PATH (shadowsocks-libev).
//!
//! ```text
//! cargo build --release -p water-cli   # the server it runs
//! cargo run --release -p water-bench --example flood -- \
//!     [--silent 5000] [--garbage 1000] [--samples 300] [--hold 10] [--interval-ms 10] [--server-nofile N] [--limit 600]
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use water_bench::echo_server;

const METHOD: &str = "chacha20-ietf-poly1305";
const PASSWORD: &str = "flood benchmark password";
/// The request of one setup-latency sample.
const REQUEST: usize = 64;
/// Flood connection attempts in flight at once.
const OPENING: usize = 256;
/// Any single wait on a peer (connect, the first byte, a child's start).
const STEP: Duration = Duration::from_secs(10);
/// The server's handshake deadline's fixed part (its default): a flood
/// connection closed younger than this was shed, not timed out.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(60);

/// Pids of the children, for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process, killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` as a child that dies with this thread (`PR_SET_PDEATHSIG`:
/// spawn only from the main thread, which lives as long as the run).
fn spawn(mut cmd: Command) -> Kill {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe and touches no memory of
    // ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = format!("{:?}", cmd.get_program());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    CHILDREN.lock().unwrap().push(child.id());
    Kill(child)
}

/// Raises this process's open-file limit to its hard limit; the new soft
/// limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write a plain struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Open fds of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The kernel's counters of connections it dropped at a full listen
/// queue (machine-wide, from `/proc/net/netstat`; on this loopback-only run
/// nearly all are the flood's).
const KERNEL_COUNTERS: [&str; 6] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
];

fn kernel_counters() -> [u64; KERNEL_COUNTERS.len()] {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let mut out = [0; KERNEL_COUNTERS.len()];
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        if let Some(i) = KERNEL_COUNTERS.iter().position(|c| *c == name) {
            out[i] = value.parse().unwrap_or(0);
        }
    }
    out
}

/// CPU time `pid` has used (user and system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's ")": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf reads a constant of the system; no memory involved.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// xorshift64: the garbage's lengths and bytes (no cryptographic need).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// One setup-latency sample through `tunnel`: connect, send [`REQUEST`]
/// bytes, time to the first echoed byte; the echo is then read whole and
/// checked.
fn setup_once(tunnel: SocketAddr, seq: u64) -> Result<Duration, String> {
    let mut request = [0u8; REQUEST];
    for (i, b) in request.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_add(i as u8);
    }
    let start = Instant::now();
    let mut s = StdStream::connect_timeout(&tunnel, STEP).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.write_all(&request).map_err(|e| format!("write: {e}"))?;
    let mut back = [0u8; REQUEST];
    let mut got = match s.read(&mut back) {
        Ok(0) => return Err("closed before the first byte".into()),
        Ok(n) => n,
        Err(e) => return Err(format!("first byte: {e}")),
    };
    let first = start.elapsed();
    while got < REQUEST {
        match s.read(&mut back[got..]) {
            Ok(0) => return Err(format!("closed after {got} of {REQUEST} bytes")),
            Ok(n) => got += n,
            Err(e) => return Err(format!("after {got} of {REQUEST} bytes: {e}")),
        }
    }
    if back != request {
        return Err("the echo differs from the request".into());
    }
    Ok(first)
}

/// Samples of one phase, and the failures among them.
#[derive(Default)]
struct Phase {
    samples: Vec<Duration>,
    /// What went wrong, and when (since `start`).
    failures: Vec<(Duration, String)>,
    start: Option<Instant>,
    /// The server's CPU time over the phase, and the phase's length.
    cpu: f64,
    wall: Duration,
}

impl Phase {
    /// One sample, then a pause so that samples start `every` apart (a
    /// client that connects now and then, not one more flood).
    fn take(&mut self, tunnel: SocketAddr, seq: &mut u64, every: Duration) {
        *seq += 1;
        let start = *self.start.get_or_insert_with(Instant::now);
        let this = Instant::now();
        match setup_once(tunnel, *seq) {
            Ok(d) => self.samples.push(d),
            Err(e) => self.failures.push((start.elapsed(), e)),
        }
        std::thread::sleep(every.saturating_sub(this.elapsed()));
    }

    /// Notes the server's CPU time since `from` (its CPU time then, and when).
    fn cpu_since(&mut self, pid: u32, from: (f64, Instant)) {
        (self.cpu, self.wall) = (cpu_secs(pid) - from.0, from.1.elapsed());
    }

    fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    /// The nearest-rank percentile `p` (0–100) of the samples.
    fn percentile(&self, p: usize) -> Duration {
        let mut s = self.samples.clone();
        if s.is_empty() {
            return Duration::ZERO;
        }
        s.sort();
        let rank = (p * s.len()).div_ceil(100).max(1);
        s[rank - 1]
    }
}

/// What the flood connections saw.
#[derive(Default)]
struct FloodStats {
    opened: AtomicUsize,
    connect_failed: AtomicUsize,
    /// Closed by the server while held: a FIN.
    closed_eof: AtomicUsize,
    /// Closed by the server while held: a reset (or another read error).
    closed_reset: AtomicUsize,
    /// Of those closed, how many younger than [`HANDSHAKE_DEADLINE`] (so
    /// shed, not timed out).
    closed_young: AtomicUsize,
    /// Bytes the server sent on a flood connection (none is expected).
    data: AtomicUsize,
    garbage_bytes: AtomicUsize,
}

impl FloodStats {
    fn closed(&self) -> usize {
        self.closed_eof.load(Ordering::SeqCst) + self.closed_reset.load(Ordering::SeqCst)
    }
    fn settled(&self, total: usize) -> bool {
        self.opened.load(Ordering::SeqCst) + self.connect_failed.load(Ordering::SeqCst) >= total
    }
}

/// Opens `silent + garbage` connections to `target` (interleaved, at most
/// [`OPENING`] attempts in flight) and holds each until `stop`, watching
/// for the server closing it.
async fn flood(
    target: SocketAddr,
    silent: usize,
    garbage: usize,
    stats: Arc<FloodStats>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let total = silent + garbage;
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut rng = XorShift(0x5eed_f100d_u64);
    let mut held = tokio::task::JoinSet::new();
    for i in 0..total {
        // Exactly `garbage` of them, spread evenly.
        let sends = (i + 1) * garbage / total != i * garbage / total;
        let len = 1 + (rng.next() % 4096) as usize;
        let payload = if sends { rng.bytes(len) } else { Vec::new() };
        let permit = opening.clone().acquire_owned().await.expect("never closed");
        let (stats, mut stop) = (stats.clone(), stop.clone());
        held.spawn(async move {
            let mut s = match tokio::time::timeout(STEP, TcpStream::connect(target)).await {
                Ok(Ok(s)) => s,
                _ => {
                    stats.connect_failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            if !payload.is_empty() && s.write_all(&payload).await.is_ok() {
                stats.garbage_bytes.fetch_add(payload.len(), Ordering::SeqCst);
            }
            let born = Instant::now();
            stats.opened.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        let closed = match r {
                            Ok(0) => &stats.closed_eof,
                            Ok(n) => {
                                stats.data.fetch_add(n, Ordering::SeqCst);
                                continue;
                            }
                            Err(_) => &stats.closed_reset,
                        };
                        closed.fetch_add(1, Ordering::SeqCst);
                        if born.elapsed() < HANDSHAKE_DEADLINE {
                            stats.closed_young.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }
    while held.join_next().await.is_some() {}
}

/// Where the run is, for the fd/RSS sampler.
const IDLE: u8 = 0;
const FLOODING: u8 = 1;
const AFTER: u8 = 2;

/// Peak figures of the server while the flood is on.
#[derive(Default, Clone, Copy)]
struct Peaks {
    fds: usize,
    rss_kib: u64,
    samples: usize,
}

/// The server's fd count since the flood began, once a second.
type Timeline = Arc<Mutex<Vec<usize>>>;

struct Args {
    silent: usize,
    garbage: usize,
    samples: usize,
    hold: Duration,
    interval: Duration,
    server_nofile: Option<u64>,
    limit: Duration,
}

fn args() -> Args {
    let mut a = Args {
        silent: 5000,
        garbage: 1000,
        samples: 300,
        hold: Duration::from_secs(10),
        interval: Duration::from_millis(10),
        server_nofile: None,
        limit: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> u64 {
            let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            v.parse().unwrap_or_else(|_| panic!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--silent" => a.silent = value() as usize,
            "--garbage" => a.garbage = value() as usize,
            "--samples" => a.samples = (value() as usize).max(1),
            "--hold" => a.hold = Duration::from_secs(value()),
            "--interval-ms" => a.interval = Duration::from_millis(value()),
            "--server-nofile" => a.server_nofile = Some(value()),
            "--limit" => a.limit = Duration::from_secs(value()),
            other => panic!(
                "unknown argument {other}; usage: flood [--silent N] [--garbage N] [--samples N] [--hold S] [--interval-ms MS] [--server-nofile N] [--limit S]"
            ),
        }
    }
    a
}

/// The release `water` binary.
fn water_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WATER_BIN") {
        return p.into();
    }
    // target/release/examples/flood → target/release/water
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("water")).expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p water-cli (or set WATER_BIN)",
        bin.display()
    );
    bin
}

fn main() {
    let a = args();
    assert!(a.silent + a.garbage > 0, "no flood: --silent and --garbage are both 0");
    let deadline = Instant::now() + a.limit;
    let own_nofile = raise_nofile();
    let need = a.silent + a.garbage + 256;
    assert!(
        own_nofile as usize >= need,
        "this process may open {own_nofile} files and needs about {need}: raise the hard limit (ulimit -Hn)"
    );

    // The watchdog: the run never outlives its limit, nor do its children.
    {
        let limit = a.limit;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!("flood: the run did not end within {limit:?}: killing its children");
            for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                // SAFETY: kill(2) and waitpid(2) on our own child's pid
                // (reaped here, so that it leaves no zombie); no memory of
                // ours but a local status.
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                    let mut status = 0;
                    libc::waitpid(*pid as i32, &mut status, 0);
                }
            }
            std::process::exit(2);
        });
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let echo = rt.block_on(echo_server()).expect("echo service");

    let dir = std::env::temp_dir().join(format!("water-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("server.conf");
    std::fs::write(&cfg, format!("method={METHOD}\npassword={PASSWORD}\n")).expect("config");

    // The server, with its default limits (or under `ulimit -n N`).
    let water = water_bin();
    let fwd = echo.to_string();
    let server_args: Vec<String> = ["server", "-t", "ss", "--config", cfg.to_str().unwrap()]
        .into_iter()
        .chain(["--listen", "127.0.0.1:0", "--forward", &fwd])
        .map(String::from)
        .collect();
    let mut cmd = match a.server_nofile {
        None => {
            let mut c = Command::new(&water);
            c.args(&server_args);
            c
        }
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(&water).args(&server_args);
            c
        }
    };
    cmd.env("WATER_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = spawn(cmd);
    let server_pid = server.0.id();
    let stdout = server.0.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (stderr, log) = (server.0.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let line = line_rx.recv_timeout(STEP).expect("water server printed no `listening on` line");
    let server_addr: SocketAddr =
        line.strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().expect("address");
    let start = Instant::now();
    let cap_line = loop {
        if let Some(l) = log.lock().unwrap().iter().find(|l| l.contains("connections at once")) {
            break l.clone();
        }
        assert!(start.elapsed() < STEP, "water server did not say its connection cap");
        std::thread::sleep(Duration::from_millis(20));
    };
    let cap_said = cap_line.find("at most ").map_or(cap_line.as_str(), |i| &cap_line[i..]).to_string();

    // The real client.
    let [tunnel_port] = water_bench::free_ports().unwrap();
    let mut cmd = Command::new("ss-tunnel");
    cmd.args(["-s", "127.0.0.1", "-p", &server_addr.port().to_string(), "-b", "127.0.0.1"])
        .args(["-l", &tunnel_port.to_string(), "-k", PASSWORD, "-m", METHOD, "-L", &fwd, "-t", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut tunnel_proc = spawn(cmd);
    // Its errors say why a sample failed (libev logs " ERROR: ...").
    let tunnel_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (stderr, errors) = (tunnel_proc.0.stderr.take().unwrap(), tunnel_errors.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ERROR") {
                    errors.lock().unwrap().push(line);
                }
            }
        });
    }
    let tunnel = SocketAddr::from(([127, 0, 0, 1], tunnel_port));
    let start = Instant::now();
    while StdStream::connect(tunnel).is_err() {
        assert!(start.elapsed() < STEP, "ss-tunnel is not listening (apt-get install shadowsocks-libev)");
        std::thread::sleep(Duration::from_millis(20));
    }

    let fds_at_start = fds(server_pid);
    let (rss_at_start, _) = rss_kib(server_pid);

    // The sampler: the server's fds and RSS every 100 ms.
    let stage = Arc::new(AtomicU8::new(IDLE));
    let peaks = Arc::new(Mutex::new(Peaks::default()));
    let sampling = Arc::new(AtomicBool::new(true));
    // The latest fd count, for the ramp's end: reading /proc/PID/fd with
    // thousands of entries costs the machine, so only this thread does.
    let latest_fds = Arc::new(AtomicUsize::new(0));
    let timeline: Timeline = Arc::default();
    let sampler = {
        let (stage, peaks, sampling, latest, timeline) =
            (stage.clone(), peaks.clone(), sampling.clone(), latest_fds.clone(), timeline.clone());
        std::thread::spawn(move || {
            let mut readings = 0usize;
            while sampling.load(Ordering::SeqCst) {
                if stage.load(Ordering::SeqCst) == FLOODING {
                    let (n, (rss, _)) = (fds(server_pid), rss_kib(server_pid));
                    latest.store(n, Ordering::SeqCst);
                    if readings.is_multiple_of(10) {
                        timeline.lock().unwrap().push(n);
                    }
                    readings += 1;
                    let mut p = peaks.lock().unwrap();
                    p.fds = p.fds.max(n);
                    p.rss_kib = p.rss_kib.max(rss);
                    p.samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let mut seq = 0;
    eprintln!(
        "flood: water server {server_addr} (pid {server_pid}; {cap_said}), ss-tunnel {tunnel}, echo {echo}; warming up"
    );
    let mut warm = Phase::default();
    for _ in 0..20 {
        warm.take(tunnel, &mut seq, a.interval);
    }
    assert!(warm.failures.len() < 20, "no sample got through: {:?}", warm.failures);
    std::thread::sleep(Duration::from_millis(500));
    let fds_idle = fds(server_pid);
    let (rss_idle, _) = rss_kib(server_pid);

    eprintln!("flood: {} samples alone", a.samples);
    let mut alone = Phase::default();
    let from = (cpu_secs(server_pid), Instant::now());
    for _ in 0..a.samples {
        alone.take(tunnel, &mut seq, a.interval);
    }
    alone.cpu_since(server_pid, from);

    // The flood.
    let total = a.silent + a.garbage;
    eprintln!("flood: opening {} silent and {} garbage connections", a.silent, a.garbage);
    let stats = Arc::new(FloodStats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let kernel_before = kernel_counters();
    stage.store(FLOODING, Ordering::SeqCst);
    let flood_start = Instant::now();
    let from = (cpu_secs(server_pid), flood_start);
    let flooding = rt.spawn(flood(server_addr, a.silent, a.garbage, stats.clone(), stop_rx));
    let mut ramp = Phase::default();
    while !stats.settled(total) {
        assert!(Instant::now() < deadline, "the flood did not open in time");
        ramp.take(tunnel, &mut seq, a.interval);
    }
    let ramp_time = flood_start.elapsed();
    // Connected is not accepted: the server takes connections from its
    // backlog at the pace of its setups, and what the kernel could not
    // queue it dropped (the counters below). The ramp goes on until the
    // server holds every flood connection still open (one fd each; a few
    // more are the real client's), or its fd count has not grown for 3 s,
    // or 60 s.
    let server_holds = |s: &FloodStats| {
        latest_fds.load(Ordering::SeqCst) + 8 >= fds_idle + s.opened.load(Ordering::SeqCst) - s.closed()
    };
    let (mut most, mut grew) = (0, Instant::now());
    while !server_holds(&stats)
        && grew.elapsed() < Duration::from_secs(3)
        && flood_start.elapsed() < ramp_time + Duration::from_secs(60)
    {
        assert!(Instant::now() < deadline, "the server did not take the flood in in time");
        ramp.take(tunnel, &mut seq, a.interval);
        let now = latest_fds.load(Ordering::SeqCst);
        if now > most {
            (most, grew) = (now, Instant::now());
        }
    }
    let taken_in = flood_start.elapsed();
    ramp.cpu_since(server_pid, from);
    let closed_in_ramp = stats.closed();
    eprintln!(
        "flood: {} connected ({} failed to connect) in {:.1} s, server's fds settled at {:.1} s; samples under flood for {:?}",
        stats.opened.load(Ordering::SeqCst),
        stats.connect_failed.load(Ordering::SeqCst),
        ramp_time.as_secs_f64(),
        taken_in.as_secs_f64(),
        a.hold
    );
    let mut held = Phase::default();
    let held_start = Instant::now();
    let from = (cpu_secs(server_pid), held_start);
    while held.samples.len() + held.failures.len() < a.samples || held_start.elapsed() < a.hold {
        held.take(tunnel, &mut seq, a.interval);
    }
    held.cpu_since(server_pid, from);
    let held_time = held_start.elapsed();
    // One more reading of the peak, with everything still held.
    let (fds_full, (rss_full, hwm)) = (fds(server_pid), rss_kib(server_pid));
    let peak = {
        let mut p = peaks.lock().unwrap();
        p.fds = p.fds.max(fds_full);
        p.rss_kib = p.rss_kib.max(rss_full);
        *p
    };
    let kernel = {
        let mut d = kernel_counters();
        for (now, before) in d.iter_mut().zip(kernel_before) {
            *now = now.saturating_sub(before);
        }
        d
    };
    let closed_by_server = stats.closed();
    let (eof, reset, young) = (
        stats.closed_eof.load(Ordering::SeqCst),
        stats.closed_reset.load(Ordering::SeqCst),
        stats.closed_young.load(Ordering::SeqCst),
    );
    let still_held = stats.opened.load(Ordering::SeqCst) - closed_by_server;

    // Close the flood; wait for the server to let go.
    stage.store(AFTER, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    rt.block_on(flooding).expect("flood task");
    let closed_at = Instant::now();
    let settle_limit = Duration::from_secs(60);
    let mut fds_after = fds(server_pid);
    while fds_after > fds_idle && closed_at.elapsed() < settle_limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fds(server_pid);
    }
    let settled_in = closed_at.elapsed();
    let (rss_after, _) = rss_kib(server_pid);

    eprintln!("flood: {} samples after the flood", a.samples);
    let mut after = Phase::default();
    let from = (cpu_secs(server_pid), Instant::now());
    for _ in 0..a.samples {
        after.take(tunnel, &mut seq, a.interval);
    }
    after.cpu_since(server_pid, from);
    let (fds_end, (rss_end, hwm_end)) = (fds(server_pid), rss_kib(server_pid));
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.join();

    // Stop the server: its summary of the connections it failed or shed.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(server_pid as i32, libc::SIGTERM) };
    let stop_start = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().expect("wait") {
            break Some(s);
        }
        if stop_start.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(200));
    let server_log = log.lock().unwrap().clone();
    let _ = std::fs::remove_dir_all(&dir);

    // The report.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("# flood: water server -t ss ({METHOD}), client ss-tunnel, echo; 127.0.0.1");
    println!(
        "server: {cap_said}; this process's open-file limit {own_nofile}{}",
        a.server_nofile.map_or(String::new(), |n| format!("; server started under ulimit -n {n}"))
    );
    println!(
        "flood: {} silent + {} garbage ({} bytes in all, 1..=4096 each) = {total}; {} connected, {} failed to connect; connected in {:.1} s, the server's fds stopped growing at {:.1} s, then held {:.1} s more",
        a.silent,
        a.garbage,
        stats.garbage_bytes.load(Ordering::SeqCst),
        stats.opened.load(Ordering::SeqCst),
        stats.connect_failed.load(Ordering::SeqCst),
        ramp_time.as_secs_f64(),
        taken_in.as_secs_f64(),
        held_time.as_secs_f64()
    );
    println!(
        "closed by the server while held: {closed_by_server} ({eof} FIN, {reset} reset; {young} younger than {} s; {closed_in_ramp} during the ramp); {still_held} still open at the end; {} bytes sent to flood connections",
        HANDSHAKE_DEADLINE.as_secs(),
        stats.data.load(Ordering::SeqCst)
    );
    let kernel_said: Vec<String> =
        KERNEL_COUNTERS.iter().zip(kernel).map(|(n, v)| format!("{n} {v}")).collect();
    println!("kernel, over the flood (machine-wide TcpExt): {}", kernel_said.join(", "));
    let line: Vec<String> = timeline.lock().unwrap().iter().map(|n| n.to_string()).collect();
    println!("server's open fds once a second from the flood's start: {}", line.join(" "));
    println!();
    println!("setup latency (connect to ss-tunnel, {REQUEST}-byte request, first echoed byte):");
    println!(
        "| phase | samples | failed | median | p90 | max | median / alone | p90 / alone | server CPU (of one core) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (m0, p0) = (alone.percentile(50), alone.percentile(90));
    for (name, ph) in
        [("alone", &alone), ("ramp (flood opening)", &ramp), ("flood held", &held), ("after", &after)]
    {
        let (m, p) = (ph.percentile(50), ph.percentile(90));
        println!(
            "| {name} | {} | {} | {:.3} ms | {:.3} ms | {:.1} ms | {:.2} x | {:.2} x | {:.0} % ({:.1} s in {:.1} s) |",
            ph.samples.len(),
            ph.failures.len(),
            ms(m),
            ms(p),
            ms(ph.max()),
            m.as_secs_f64() / m0.as_secs_f64(),
            p.as_secs_f64() / p0.as_secs_f64(),
            100.0 * ph.cpu / ph.wall.as_secs_f64().max(1e-9),
            ph.cpu,
            ph.wall.as_secs_f64()
        );
    }
    for (name, ph) in [("alone", &alone), ("ramp", &ramp), ("held", &held), ("after", &after)] {
        for (at, what) in ph.failures.iter().take(5) {
            println!("{name}: a sample failed {:.2} s into the phase: {what}", at.as_secs_f64());
        }
    }
    let errors = tunnel_errors.lock().unwrap().clone();
    if !errors.is_empty() {
        println!("ss-tunnel logged {} errors; the first:", errors.len());
        for l in errors.iter().take(5) {
            println!("  {l}");
        }
    }
    println!();
    println!("server (pid {server_pid}):");
    println!("| when | open fds | RSS |");
    println!("|---|---|---|");
    println!("| at start | {fds_at_start} | {:.1} MiB |", mib(rss_at_start));
    println!("| idle, after the warm-up | {fds_idle} | {:.1} MiB |", mib(rss_idle));
    println!(
        "| flood, peak ({} readings every 100 ms) | {} | {:.1} MiB (VmHWM {:.1} MiB) |",
        peak.samples,
        peak.fds,
        mib(peak.rss_kib),
        mib(hwm)
    );
    println!(
        "| flood closed, {:.1} s later | {fds_after} | {:.1} MiB |",
        settled_in.as_secs_f64(),
        mib(rss_after)
    );
    println!(
        "| after the last samples | {fds_end} | {:.1} MiB (VmHWM {:.1} MiB) |",
        mib(rss_end),
        mib(hwm_end)
    );
    if still_held > 0 {
        println!(
            "per flood connection held at the end: {:.2} fds, {:.0} KiB of RSS over idle (peak figures)",
            peak.fds.saturating_sub(fds_idle) as f64 / still_held as f64,
            peak.rss_kib.saturating_sub(rss_idle) as f64 / still_held as f64
        );
    }
    if fds_after > fds_idle {
        println!(
            "NOT RELEASED: {} fds over the idle figure {settle_limit:?} after the flood closed",
            fds_after - fds_idle
        );
    }
    println!();
    println!(
        "server's own account (SIGTERM; {}):",
        match status {
            Some(s) => format!("exited, {s}"),
            None => "still running after 30 s, killed".into(),
        }
    );
    for l in server_log.iter().filter(|l| !l.contains("connections at once") && !l.contains("listening")) {
        println!("  {l}");
    }
}
