//! Shared by the SOCKS, PT and tor tests: child processes killed on drop
//! (stdout lines and stderr collected by threads), a Python web server, and
//! temporary directories. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const WATER: &str = env!("CARGO_BIN_EXE_water");
pub const LIMIT: Duration = Duration::from_secs(60);

/// A child process, killed on drop; its stdout arrives line by line.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `program args` with `env` added, stdin a pipe kept open.
    pub fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("WATER_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let stdin = child.stdin.take();
        Proc { child, stdin, lines, stderr }
    }

    /// Starts `water args` and waits for its `listening on` line.
    pub fn listening(args: &[&str]) -> (Proc, SocketAddr) {
        let mut p = Proc::start(WATER, args, &[]);
        let line = p.line(LIMIT).expect("no `listening on` line");
        let addr = line.strip_prefix("listening on ").expect("listening line").parse().unwrap();
        (p, addr)
    }

    /// The next stdout line, waiting at most `limit`.
    pub fn line(&mut self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Stdout lines up to and including the first for which `last` holds.
    pub fn lines_until(&mut self, limit: Duration, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while let Some(line) = self.line(deadline.saturating_duration_since(Instant::now())) {
            let done = last(&line);
            got.push(line);
            if done {
                return got;
            }
        }
        panic!("no final line within {limit:?}; got {got:?}");
    }

    /// Reads stdout lines until one satisfies `want` (returned), or
    /// `limit` passes (every line read, as the error).
    pub fn wait_for(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(line) = self.line(deadline.saturating_duration_since(Instant::now())) {
            if want(&line) {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen)
    }

    /// Waits for the exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything it wrote to stderr (kills it first if it still runs).
    pub fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        self.stderr.recv_timeout(LIMIT).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("water-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Python's web server serving `dir` on 127.0.0.1, and its address.
pub fn web_server(dir: &Path) -> (Proc, SocketAddr) {
    let mut web = Proc::start(
        "python3",
        &["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir.to_str().unwrap()],
        &[],
    );
    let banner = web.line(LIMIT).expect("http.server banner");
    let port: u16 =
        banner.split(" port ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    (web, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Fetches `url` with curl through the SOCKS5 proxy `socks` (names resolved
/// by the proxy); the body, or curl's exit code and stderr.
pub fn curl_socks(socks: &str, url: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname", socks])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// A deterministic pseudo-random file body.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
