//! obfs4 through WATER against obfs4proxy, on loopback, samples taken in
//! turn (one of each path, then again), medians printed:
//!
//! - **obfs4proxy**: client → obfs4proxy client (SOCKS5, the cert in the
//!   credentials) → obfs4proxy bridge → echo (native Go);
//! - **water client**: client → WATER dialer with the `obfs4` guest, handed
//!   the accepted socket as `water client -t obfs4` does → obfs4proxy
//!   bridge → echo;
//! - **water server**: client → obfs4proxy client → `water::Forwarder` with
//!   the `obfs4` guest and the bridge's identity, forwarding to echo as
//!   `water server -t obfs4` does;
//! - **water both**: water client → water server.
//!
//! Throughput counts bytes both ways; iat-mode 0. The SOCKS5 exchange (and
//! with it obfs4proxy's client handshake) happens before the clock starts;
//! a water client's handshake is inside the measured time. Needs
//! `obfs4proxy` on PATH.
//!
//! `cargo run --release -p water-bench --example obfs4_chain -- [MIB] [ROUNDS]`

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use water_bench::{WRITE_SIZE, echo_server, median, water_forwarder};

/// A managed obfs4proxy, killed on drop; stdin held open, stdout drained.
struct Pt(Child, #[allow(dead_code)] ChildStdin);

impl Drop for Pt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts obfs4proxy with `env` and returns it with the first stdout line
/// `want` accepts.
fn obfs4proxy(
    state: &std::path::Path,
    env: &[(&str, String)],
    want: impl Fn(&str) -> Option<String>,
) -> (Pt, String) {
    let mut cmd = Command::new("obfs4proxy");
    cmd.env_clear()
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", state)
        .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("obfs4proxy (apt-get install obfs4proxy)");
    let stdin = child.stdin.take().expect("piped");
    let mut out = child.stdout.take().expect("piped");
    let start = Instant::now();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let found = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "obfs4proxy is not ready");
        assert_eq!(out.read(&mut b).expect("obfs4proxy stdout"), 1, "obfs4proxy exited");
        if b[0] != b'\n' {
            line.push(b[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        if let Some(v) = want(&text) {
            break v;
        }
    };
    // Go programs die of SIGPIPE writing to a closed stdout.
    std::thread::spawn(move || while matches!(out.read(&mut [0u8; 512]), Ok(1..)) {});
    (Pt(child, stdin), found)
}

/// obfs4proxy's `obfs4_state.json` as `key=value` lines.
fn state_to_config(json: &str) -> String {
    let body = json.trim().trim_start_matches('{').trim_end_matches('}');
    body.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once(':').expect("key: value");
            format!("{}={}\n", k.trim().trim_matches('"'), v.trim().trim_matches('"'))
        })
        .collect()
}

/// A connection to `to` through obfs4proxy's SOCKS5 port, bridge args in
/// the username (and a NUL password).
async fn socks(proxy: SocketAddr, to: SocketAddr, args: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 2]).await?;
    s.read_exact(&mut [0u8; 2]).await?;
    let mut auth = vec![1, args.len() as u8];
    auth.extend_from_slice(args.as_bytes());
    auth.extend_from_slice(&[1, 0]);
    s.write_all(&auth).await?;
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).await?;
    assert_eq!(ok, [1, 0], "SOCKS5 auth");
    let SocketAddr::V4(v4) = to else { panic!("IPv4") };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut resp = [0u8; 10];
    s.read_exact(&mut resp).await?;
    assert_eq!(resp[1], 0, "SOCKS5 connect");
    Ok(s)
}

/// Sends `total` bytes in 64 KiB writes while reading the echo; the time
/// until everything is back.
async fn bulk(s: TcpStream, total: usize) -> std::io::Result<Duration> {
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let start = Instant::now();
    let write = async move {
        let chunk = vec![0xa5u8; WRITE_SIZE];
        let mut left = total;
        while left > 0 {
            let n = left.min(WRITE_SIZE);
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<_, std::io::Error>(w)
    };
    let read = async move {
        let mut buf = vec![0u8; WRITE_SIZE];
        let mut got = 0;
        while got < total {
            match r.read(&mut buf).await? {
                0 => return Err(std::io::Error::other(format!("ended at {got} of {total}"))),
                n => got += n,
            }
        }
        Ok(r)
    };
    let (_w, _r) = tokio::try_join!(write, read)?;
    Ok(start.elapsed())
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

enum Path {
    Direct(SocketAddr),
    Socks(SocketAddr, SocketAddr),
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let total = mib << 20;
    let dir = std::env::temp_dir().join(format!("obfs4-chain-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("client"))?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let echo = echo_server().await?;
        let [port] = water_bench::free_ports().unwrap();
        let (_bridge, cert) = obfs4proxy(
            &dir,
            &[
                ("TOR_PT_SERVER_TRANSPORTS", "obfs4".into()),
                ("TOR_PT_SERVER_BINDADDR", format!("obfs4-127.0.0.1:{port}")),
                ("TOR_PT_ORPORT", echo.to_string()),
            ],
            |l| {
                let args = l.strip_prefix("SMETHOD obfs4 ")?.split_once("ARGS:")?.1;
                args.split(',').find_map(|a| a.strip_prefix("cert=")).map(str::to_string)
            },
        );
        let bridge = SocketAddr::from(([127, 0, 0, 1], port));
        let (_client, socks_addr) =
            obfs4proxy(&dir.join("client"), &[("TOR_PT_CLIENT_TRANSPORTS", "obfs4".into())], |l| {
                l.strip_prefix("CMETHOD obfs4 socks5 ").map(|a| a.trim().to_string())
            });
        let socks_addr: SocketAddr = socks_addr.parse().expect("address");
        let bridge_args = format!("cert={cert};iat-mode=0");

        let guest = watm_artifacts::Guest::named("obfs4").expect("the obfs4 guest").wasm;
        let client_cfg = format!("cert={cert}\niat-mode=0\n");
        let cwatm = water::Watm::new(guest, water::Config::default().transport_config(client_cfg))
            .map_err(std::io::Error::other)?;
        let dialer = water::Dialer::new(&cwatm).map_err(std::io::Error::other)?;
        let water_client = water_forwarder(dialer.clone(), bridge).await?;

        let state = std::fs::read_to_string(dir.join("obfs4_state.json"))?;
        let swatm =
            water::Watm::new(guest, water::Config::default().transport_config(state_to_config(&state)))
                .map_err(std::io::Error::other)?;
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let water_server = front.local_addr()?;
        let forwarder = water::Forwarder::new(&swatm, echo.to_string()).map_err(std::io::Error::other)?;
        tokio::spawn(async move { forwarder.serve(front, std::future::pending()).await });
        let water_both = water_forwarder(dialer, water_server).await?;

        let paths = [
            ("obfs4proxy", Path::Socks(socks_addr, bridge)),
            ("water client", Path::Direct(water_client)),
            ("water server", Path::Socks(socks_addr, water_server)),
            ("water both", Path::Direct(water_both)),
        ];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            for (i, (_, path)) in paths.iter().enumerate() {
                let s = match path {
                    Path::Direct(a) => TcpStream::connect(a).await?,
                    Path::Socks(p, to) => socks(*p, *to, &bridge_args).await?,
                };
                samples[i].push(bulk(s, total).await?);
            }
        }
        let med: Vec<Duration> = samples.into_iter().map(median).collect();
        let base = mib_s(2 * total, med[0]);
        for ((name, _), d) in paths.iter().zip(&med) {
            let v = mib_s(2 * total, *d);
            println!("obfs4: {name:>12}: {v:7.0} MiB/s  ({:.2} x obfs4proxy)", v / base);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::io::stdout().flush();
        Ok::<_, std::io::Error>(())
    })
}
