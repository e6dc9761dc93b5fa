//! `water bench --scale N`: N connections held open at once through a
//! `water server` child process, each echoing 16 KiB verified; reports the
//! server's peak resident memory and checks that every fd it opened for the
//! connections is released after they close.
//!
//! The bench process plays the client and speaks the wire format itself
//! (plain, or xor with the reference codec), and runs the echo service the
//! server forwards to.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

use crate::transport::DEMO_XOR_KEY;

const EACH: usize = 16 << 10;
/// Connections being opened at any moment.
const OPENING: usize = 256;

#[derive(Debug)]
pub struct Report {
    pub connections: usize,
    pub verified: usize,
    /// Resident memory of the server before the connections opened (one
    /// connection made and closed first, so that what it sets up once is
    /// in it).
    pub rss_before_kib: u64,
    /// Resident memory of the server with every connection held, once it
    /// stopped falling (quiet guests give their buffers back).
    pub rss_quiet_kib: u64,
    pub peak_rss_kib: u64,
    /// Resident memory of the server once every connection closed (what it
    /// keeps for reuse: the instance pool's slots, allocator caches).
    pub rss_after_kib: u64,
    pub fds_before: usize,
    pub fds_held: usize,
    pub fds_after: usize,
    /// Memory mappings of the server while every connection was open
    /// (Linux caps them per process: vm.max_map_count).
    pub maps_held: usize,
    pub open_all: Duration,
}

impl Report {
    /// Resident memory per held connection once they are all quiet: the
    /// settled RSS while held, less the RSS before they opened, over their
    /// number (KiB).
    pub fn quiet_kib_per_connection(&self) -> f64 {
        self.rss_quiet_kib.saturating_sub(self.rss_before_kib) as f64 / self.connections.max(1) as f64
    }

    pub fn json(&self) -> String {
        format!(
            r#"{{"connections":{},"verified":{},"server_rss_before_kib":{},"server_rss_held_quiet_kib":{},"server_quiet_kib_per_connection":{:.1},"server_peak_rss_kib":{},"server_rss_after_close_kib":{},"server_fds_before":{},"server_fds_held":{},"server_fds_after":{},"server_maps_held":{},"open_all_seconds":{:.3}}}"#,
            self.connections,
            self.verified,
            self.rss_before_kib,
            self.rss_quiet_kib,
            self.quiet_kib_per_connection(),
            self.peak_rss_kib,
            self.rss_after_kib,
            self.fds_before,
            self.fds_held,
            self.fds_after,
            self.maps_held,
            self.open_all.as_secs_f64()
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scale: {} of {} connections held at once through `water server`, 16 KiB each verified; \
             server RSS {:.1} MiB before, {:.1} MiB held once quiet ({:.1} KiB per connection); \
             server peak RSS {:.1} MiB ({:.1} MiB after close); server fds {} before, {} held, {} after close; \
             {} memory maps held; all open in {:.1} s",
            self.verified,
            self.connections,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_quiet_kib as f64 / 1024.0,
            self.quiet_kib_per_connection(),
            self.peak_rss_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.fds_before,
            self.fds_held,
            self.fds_after,
            self.maps_held,
            self.open_all.as_secs_f64()
        )
    }
}

/// Raises this process's open-file limit to at least `want` (children
/// inherit it). Without the privilege to raise the hard limit, fails
/// naming both numbers.
fn raise_nofile(want: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let raised = libc::rlimit { rlim_cur: want.max(lim.rlim_cur), rlim_max: lim.rlim_max.max(want) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(());
        }
        // Not privileged to raise the hard limit: take all of it.
        let capped = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
    }
    if lim.rlim_max >= want {
        return Ok(());
    }
    bail!(
        "the server needs {want} open files for this many connections (two sockets each), \
         but the hard limit here is {} and cannot be raised (no CAP_SYS_RESOURCE): \
         at most {} connections fit",
        lim.rlim_max,
        lim.rlim_max.saturating_sub(SERVER_OWN_FDS) / 2
    )
}

/// Files the server holds besides its connections' sockets (stdio, the
/// listener, tokio's epoll and waker, the signal pipe, the instance pool's
/// /proc/self/pagemap: 13 measured), with a
/// little room.
const SERVER_OWN_FDS: u64 = 16;

/// Raises the open-file limit for `n` connections, or says how many fit:
/// called before the other measurements too, so a count that cannot work
/// fails at once.
pub fn prepare(n: usize) -> anyhow::Result<()> {
    raise_nofile((n as u64) * 2 + SERVER_OWN_FDS)
}

/// Starts `water ARGS` and reads its `listening on` line.
async fn child(args: &[String]) -> anyhow::Result<(tokio::process::Child, std::net::SocketAddr)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .env("WATER_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start water {}", args[0]))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line).await?;
    let addr =
        line.trim().strip_prefix("listening on ").context("child did not announce its address")?.parse()?;
    Ok((child, addr))
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Turns plain bytes into wire bytes in place (and, being XOR or nothing,
/// back).
type WireCodec = Box<dyn Fn(&mut [u8]) + Send + Sync>;

/// The wire bytes the client sends (and, echoed, receives) for `data`.
fn codec(transport: &str, config: Option<&Path>) -> anyhow::Result<WireCodec> {
    match transport {
        "plain" => Ok(Box::new(|_: &mut [u8]| {})),
        "xor" => {
            let key = match config {
                Some(p) => std::fs::read(p).with_context(|| format!("cannot read config {}", p.display()))?,
                None => DEMO_XOR_KEY.as_bytes().to_vec(),
            };
            let xor = watm_xor::Xor::from_config(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
            // Each connection's stream starts at key position 0, and the
            // echoed reply is encoded the same way: one pass each.
            Ok(Box::new(move |buf: &mut [u8]| xor.stream().apply_in_place(buf)))
        }
        other => bail!("--scale speaks the built-in plain and xor wire formats only, not {other}"),
    }
}

pub async fn run(transport: &str, config: Option<&Path>, n: usize) -> anyhow::Result<Report> {
    let codec = Arc::new(codec(transport, config)?);
    // Three processes share the fds: this one (the clients), an echo
    // service, and the server (two sockets per connection).
    prepare(n)?;
    let (_echo, echo) = child(&["echo".into(), "--listen".into(), "127.0.0.1:0".into()]).await?;
    let mut args =
        vec!["server".to_string(), "-t".into(), transport.into(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(["--forward".into(), echo.to_string()]);
    if let Some(c) = config {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    let (mut child, server) = child(&args).await?;
    let pid = child.id().context("server pid")?;
    // One connection first, so that what the server sets up once per module
    // (not per connection) is counted in the baseline.
    {
        let mut s = TcpStream::connect(server).await?;
        let mut wire = vec![0u8; 64];
        codec(&mut wire);
        s.write_all(&wire).await?;
        s.read_exact(&mut wire).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = fd_count(pid);
    let rss_before_kib = proc_status(pid, "VmRSS:").unwrap_or(0);
    eprintln!("bench: scale: opening {n} connections through water server (pid {pid})");

    let opening = Arc::new(Semaphore::new(OPENING));
    let all_open = Arc::new(Barrier::new(n + 1));
    let release = Arc::new(Barrier::new(n + 1));
    let verified = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (opening, all_open, release, verified, codec) =
            (opening.clone(), all_open.clone(), release.clone(), verified.clone(), codec.clone());
        tasks.spawn(async move {
            let conn = async {
                let _permit = opening.acquire().await.expect("open");
                let mut s = TcpStream::connect(server).await?;
                let plain: Vec<u8> = (0..EACH).map(|j| (i * 31 + j * 7) as u8).collect();
                let mut wire = plain.clone();
                codec(&mut wire);
                s.write_all(&wire).await?;
                let mut back = vec![0u8; EACH];
                s.read_exact(&mut back).await?;
                codec(&mut back);
                if back == plain {
                    verified.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, std::io::Error>(s)
            };
            let held = tokio::time::timeout(Duration::from_secs(120), conn).await;
            all_open.wait().await;
            release.wait().await;
            drop(held);
        });
    }
    all_open.wait().await;
    let open_all = start.elapsed();
    let fds_held = fd_count(pid);
    let maps_held =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| m.lines().count()).unwrap_or(0);
    // Held and quiet: the server's RSS once it stops falling (a guest that
    // has waited a second gives its buffers' pages back), read every half
    // second, for at most 20 s, starting past that second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rss_quiet_kib = proc_status(pid, "VmRSS:").unwrap_or(0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = proc_status(pid, "VmRSS:").unwrap_or(0);
        let settled = now + now / 200 >= rss_quiet_kib;
        rss_quiet_kib = rss_quiet_kib.min(now);
        if settled {
            break;
        }
    }
    release.wait().await;
    while tasks.join_next().await.is_some() {}
    // Give the server time to see every close and free the instances.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fds_after = fd_count(pid);
    while fds_after > fds_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fd_count(pid);
    }
    let rss_after_kib = proc_status(pid, "VmRSS:").unwrap_or(0);
    // The high-water mark over the whole run, read last: the kernel takes
    // it as at least the current RSS, so it covers the closing too.
    let peak_rss_kib = proc_status(pid, "VmHWM:").unwrap_or(0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(Report {
        connections: n,
        verified: verified.load(Ordering::Relaxed),
        rss_before_kib,
        rss_quiet_kib,
        peak_rss_kib,
        rss_after_kib,
        fds_before,
        fds_held,
        fds_after,
        maps_held,
        open_all,
    })
}
