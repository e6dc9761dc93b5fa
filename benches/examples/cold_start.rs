//! Cold start with and without the compile cache (issue 20): process start
//! to first byte served, for `water client -t ss` → `water server -t ss` →
//! echo, on 127.0.0.1.
//!
//! One run: both processes are spawned at the same instant (the server's
//! port chosen beforehand, so the client need not wait for it), each with
//! `--config` (chacha20-ietf-poly1305); once each has printed its
//! `listening on` line, one connection to the client sends 64 bytes and
//! the time to the first echoed byte is taken (then the whole echo is read
//! and checked). Both processes are then killed. Three ways, in turn, each
//! `--runs` times (default 10), medians printed:
//! - **no cache**: no `--compile-cache` (today's default);
//! - **cold**: `--compile-cache` on an empty directory of its own each run
//!   (both processes miss, compile, and write the same entry at once);
//! - **cached**: `--compile-cache` on a directory an earlier run filled.
//!
//! Each process also loads the module once more for its start-up check of
//! the config (`check_init`), which compilation does not touch. The release
//! `water` binary is `target/release/water` beside this example's
//! directory, or `WATER_BIN`.
//!
//! ```text
//! cargo build --release -p water-cli
//! cargo run --release -p water-bench --example cold_start -- [--runs 10]
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use water_bench::{echo_server, median};

/// Any wait on a child or a peer.
const STEP: Duration = Duration::from_secs(30);
const REQUEST: usize = 64;

/// A child killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `water` binary.
fn water_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WATER_BIN") {
        return p.into();
    }
    // target/release/examples/cold_start → target/release/water
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("water")).expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p water-cli (or set WATER_BIN)",
        bin.display()
    );
    bin
}

/// Spawns `water args`; a thread sends the time its first stdout line
/// (`listening on ADDR`) arrived, with the address.
fn spawn(water: &Path, args: &[String], said: mpsc::Sender<(Instant, SocketAddr)>) -> Kill {
    let mut child = Command::new(water)
        .args(args)
        .env("WATER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn water");
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        if BufReader::new(out).read_line(&mut line).is_ok() {
            let at = Instant::now();
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                let _ = said.send((at, addr.parse().expect("an address")));
            }
        }
    });
    Kill(child)
}

/// One run's figures, from the spawn: server listening, client listening,
/// first byte back through both.
struct Run {
    server: Duration,
    client: Duration,
    first_byte: Duration,
}

fn one_run(water: &Path, dir: &Path, echo: SocketAddr, cache: Option<&Path>) -> Run {
    let [server_port] = water_bench::free_ports().unwrap();
    let mut server_args: Vec<String> = vec![
        "server".into(),
        "-t".into(),
        "ss".into(),
        "--config".into(),
        dir.join("server.conf").to_string_lossy().into(),
        "--listen".into(),
        format!("127.0.0.1:{server_port}"),
        "--forward".into(),
        echo.to_string(),
    ];
    let mut client_args: Vec<String> = vec![
        "client".into(),
        "-t".into(),
        "ss".into(),
        "--config".into(),
        dir.join("client.conf").to_string_lossy().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--remote".into(),
        format!("127.0.0.1:{server_port}"),
    ];
    if let Some(cache) = cache {
        for args in [&mut server_args, &mut client_args] {
            args.extend(["--compile-cache".into(), cache.to_string_lossy().into()]);
        }
    }
    let (server_tx, server_rx) = mpsc::channel();
    let (client_tx, client_rx) = mpsc::channel();
    let start = Instant::now();
    let _server = spawn(water, &server_args, server_tx);
    let _client = spawn(water, &client_args, client_tx);
    let (server_at, _) = server_rx.recv_timeout(STEP).expect("water server printed no `listening on`");
    let (client_at, client_addr) =
        client_rx.recv_timeout(STEP).expect("water client printed no `listening on`");
    let mut s = TcpStream::connect(client_addr).expect("connect to water client");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let request: Vec<u8> = (0..REQUEST as u8).collect();
    s.write_all(&request).unwrap();
    let mut echoed = vec![0u8; REQUEST];
    s.read_exact(&mut echoed[..1]).expect("first echoed byte");
    let first_byte = start.elapsed();
    s.read_exact(&mut echoed[1..]).expect("the rest of the echo");
    assert_eq!(echoed, request, "the echo differs");
    Run { server: server_at - start, client: client_at - start, first_byte }
}

fn main() {
    let mut runs = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            other => panic!("unknown argument {other}; usage: cold_start [--runs N]"),
        }
    }
    let water = water_bin();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let echo = rt.block_on(echo_server()).expect("echo server");
    let dir = std::env::temp_dir().join(format!("water-cold-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ss = "method=chacha20-ietf-poly1305\npassword=cold start benchmark\n";
    std::fs::write(dir.join("server.conf"), ss).unwrap();
    std::fs::write(dir.join("client.conf"), format!("{ss}target={echo}\n")).unwrap();
    let primed = dir.join("cache-primed");
    // Fills `primed` (not counted).
    one_run(&water, &dir, echo, Some(&primed));

    let ways = ["no cache", "cold", "cached"];
    let mut figures: Vec<Vec<Run>> = ways.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (way, got) in ways.iter().zip(&mut figures) {
            let cold = dir.join(format!("cache-cold-{i}"));
            let cache = match *way {
                "no cache" => None,
                "cold" => Some(cold.as_path()),
                _ => Some(primed.as_path()),
            };
            got.push(one_run(&water, &dir, echo, cache));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("# cold start: water client -t ss -> water server -t ss -> echo; {runs} runs each, medians");
    println!("{:<10} {:>16} {:>16} {:>16}", "", "server listening", "client listening", "first byte");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let mut first = Vec::new();
    for (way, got) in ways.iter().zip(figures) {
        let pick = |f: fn(&Run) -> Duration| median(got.iter().map(f).collect());
        let fb = pick(|r| r.first_byte);
        println!("{way:<10} {:>16} {:>16} {:>16}", ms(pick(|r| r.server)), ms(pick(|r| r.client)), ms(fb));
        first.push(fb);
    }
    println!(
        "first byte: cached / cold = {:.2}, cached / no cache = {:.2}",
        first[2].as_secs_f64() / first[1].as_secs_f64(),
        first[2].as_secs_f64() / first[0].as_secs_f64()
    );
}
