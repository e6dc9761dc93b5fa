//! The one harness of the `water` command's tests: child processes killed
//! on drop whose stdout and stderr are read as streams (a test waits for
//! the line it needs, never for a time), echo services, a Python web
//! server, temporary directories and test data. Every wait is bounded.
//! `common::tor`: tor in a loopback-only network namespace.
#![allow(dead_code)]

pub mod tor;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const WATER: &str = env!("CARGO_BIN_EXE_water");
pub const LIMIT: Duration = Duration::from_secs(60);

/// What a child wrote to stderr so far, line by line, and whether it
/// closed it (exited).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A child process, killed on drop. Its stdout arrives line by line
/// ([`Proc::line`]); its stderr is collected as it comes
/// ([`Proc::wait_stderr`]).
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<(Mutex<Log>, Condvar)>,
}

impl Proc {
    /// Starts `program args` with `env` added (`WATER_LOG=warn` unless
    /// `env` says otherwise), stdin a pipe kept open.
    pub fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args).env("WATER_LOG", "warn").envs(env.iter().copied());
        Proc::spawn(cmd)
    }

    /// Starts `cmd` as it is set up (its environment, cleared or not, is
    /// the caller's), with stdin a pipe kept open and stdout and stderr
    /// read as streams. Stdout is read to its end whatever the child
    /// writes, so a child that writes there never dies of SIGPIPE (Go
    /// programs such as obfs4proxy do).
    pub fn spawn(mut cmd: Command) -> Proc {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {program}: {e} (a missing program: see the build's warning for what to install)"
                )
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(1..)) {
                let _ = tx.send(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
                line.clear();
            }
        });
        let stderr = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let err = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock, ready) = &*log;
                let mut log = lock.lock().unwrap();
                if n == 0 {
                    log.closed = true;
                    ready.notify_all();
                    return;
                }
                log.lines.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
                ready.notify_all();
            }
        });
        let stdin = child.stdin.take();
        Proc { child, stdin, lines, stderr }
    }

    /// Starts `water args`.
    pub fn water(args: &[&str]) -> Proc {
        Proc::start(WATER, args, &[])
    }

    /// Starts `water args` and waits for its `listening on` line.
    pub fn listening(args: &[&str]) -> (Proc, SocketAddr) {
        Proc::listening_with(args, &[])
    }

    /// [`Proc::listening`] with `env` added.
    pub fn listening_with(args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
        let mut p = Proc::start(WATER, args, env);
        let Some(line) = p.line(LIMIT) else {
            panic!("water {args:?}: no `listening on` line; stderr:\n{}", p.stderr_text())
        };
        let Some(addr) = line.strip_prefix("listening on ") else {
            panic!("water {args:?}: first stdout line {line:?}; stderr:\n{}", p.stderr_text())
        };
        (p, addr.parse().unwrap())
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

    /// Waits until a stderr line satisfies `want` (returned), the child
    /// closes stderr, or `limit` passes; else everything it wrote so far.
    pub fn wait_stderr(&self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let (lock, ready) = &*self.stderr;
        let mut log = lock.lock().unwrap();
        let mut checked = 0;
        loop {
            if let Some(line) = log.lines[checked..].iter().find(|l| want(l)) {
                return Ok(line.clone());
            }
            checked = log.lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if log.closed || left.is_zero() {
                return Err(log.lines.join("\n"));
            }
            log = ready.wait_timeout(log, left).unwrap().0;
        }
    }

    /// What it wrote to stderr so far, without stopping it.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.0.lock().unwrap().lines.join("\n")
    }

    /// Waits for the exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for the exit (at most [`LIMIT`]) and for stderr to close.
    pub fn exited(&mut self) -> ExitStatus {
        let status =
            self.wait(LIMIT).unwrap_or_else(|| panic!("did not exit; stderr:\n{}", self.stderr_text()));
        let _ = self.wait_stderr(LIMIT, |_| false);
        status
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill({sig})");
    }

    /// Everything it wrote to stderr: kills it first if it still runs,
    /// then waits for the stream to close.
    pub fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match self.wait_stderr(LIMIT, |_| false) {
            Ok(_) => unreachable!(),
            Err(text) => text,
        }
    }

    /// Its open fds, counted in /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `water args` to its end: status, stdout, stderr.
pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(WATER).args(args).env("WATER_LOG", "warn").stdin(Stdio::null()).output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Polls the file at `path` (a log another process writes) until a line
/// satisfies `want` (returned), or `limit` passes: then the file's text,
/// or that it does not exist.
pub fn wait_file_line(path: &Path, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path);
        if let Ok(text) = &text
            && let Some(line) = text.lines().find(|l| want(l))
        {
            return Ok(line.to_string());
        }
        if Instant::now() >= deadline {
            return Err(text.unwrap_or_else(|e| format!("{}: {e}", path.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("water-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free loopback port, for programs that take a port and not 0: from
/// below the kernel's ephemeral range, where no `bind(:0)` of a test
/// beside this one can take it before the child binds it
/// ([`water_bench::free_ports`]), and never the same port twice in one
/// process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let [port] = water_bench::free_ports().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An address on loopback that refuses connections for as long as the
/// returned socket lives: bound, never listening. (A listener bound and
/// dropped gives its port back, and the next `bind(:0)` of a test beside
/// this one may take it: then it no longer refuses.)
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// A thread-per-connection service on loopback: `each` runs on every
/// accepted connection, in a thread of its own. Its address.
pub fn service(each: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let each = Arc::new(each);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let each = each.clone();
            std::thread::spawn(move || each(s));
        }
    });
    addr
}

/// A thread-per-connection echo service that counts the connections it
/// got and the bytes it read; it half-closes after the client's EOF.
pub struct Echo {
    pub addr: SocketAddr,
    pub bytes: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

pub fn echo() -> Echo {
    echo_on(TcpListener::bind("127.0.0.1:0").unwrap())
}

/// The echo service's address (when nothing is counted).
pub fn echo_server() -> SocketAddr {
    echo().addr
}

/// The echo service on `listener`.
pub fn echo_on(listener: TcpListener) -> Echo {
    let addr = listener.local_addr().unwrap();
    let bytes = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (counter, accepted) = (bytes.clone(), connections.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Err(_) => return,
                        Ok(n) => {
                            counter.fetch_add(n, Ordering::SeqCst);
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Echo { addr, bytes, connections }
}

/// Sends `data`, half-closes, reads to EOF.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&out).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
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
