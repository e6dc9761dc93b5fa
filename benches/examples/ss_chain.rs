//! Shadowsocks through WATER against shadowsocks-libev, on loopback, samples
//! taken in turn (one of each path, then again), medians printed:
//!
//! - **libev**: client → `ss-tunnel` → `ss-server` → echo (native C,
//!   libsodium / OpenSSL);
//! - **water client**: client → WATER dialer with the `ss` guest, handed the
//!   accepted socket exactly as `water client -t ss` does → `ss-server` →
//!   echo;
//! - **water server**: client → `ss-tunnel` → `water::Forwarder` with the
//!   `ss` guest, forwarding to echo as `water server -t ss` does;
//! - **listener+copy**: the same with a `water::Listener` whose connections
//!   are copied to echo (`copy_bidirectional`), the general form;
//! - **codec, native**: the guest's encoder and decoder compiled for the
//!   host, through `water_guest::testing::pump`, no sockets (one direction's
//!   seal, then open);
//! - **seal in wasm**: a `water::Dialer` with the `ss` guest writing into a
//!   TCP sink that discards, one direction only, next to the same with the
//!   `plain` guest: when plain is much faster, the ss figure is the guest's
//!   sealing speed in wasm (plus the host's share, which plain shows).
//!
//! Throughput counts bytes both ways. The client keeps its write side open
//! until everything is back (libev tears a connection down on half-close).
//! Needs `ss-server` and `ss-tunnel` on PATH.
//!
//! `cargo run --release -p water-bench --example ss_chain -- [METHOD] [MIB] [ROUNDS]`

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use water_bench::{WRITE_SIZE, echo_server, median, water_forwarder};
use water_guest::testing::{Segmentation, pump};
use water_guest::{Role, Transport};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn libev(program: &str, args: &[&str], port: u16) -> Kill {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install shadowsocks-libev)"));
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "{program} is not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Kill(child)
}

/// Sends `total` bytes in 64 KiB writes while reading the echo, and closes
/// only once everything is back; the time that took.
async fn bulk(addr: SocketAddr, total: usize) -> std::io::Result<Duration> {
    let s = TcpStream::connect(addr).await?;
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

/// Writes `total` bytes through a dialer of `watm` into the sink at `sink`,
/// half-closes, and waits for the sink to report the end; the time taken.
async fn one_way(
    watm: &water::Watm,
    sink: SocketAddr,
    total: usize,
    done: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> std::io::Result<Duration> {
    let mut conn = water::Dialer::new(watm)
        .map_err(std::io::Error::other)?
        .dial(sink.to_string())
        .await
        .map_err(std::io::Error::other)?;
    let chunk = vec![0x3cu8; WRITE_SIZE];
    let start = Instant::now();
    for _ in 0..total / WRITE_SIZE {
        conn.write_all(&chunk).await?;
    }
    conn.shutdown().await?;
    let got = done.recv().await.unwrap_or(0);
    let t = start.elapsed();
    assert!(got >= total, "sink got {got} of {total}");
    let _ = conn.close().await;
    Ok(t)
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let method = args.first().map_or("chacha20-ietf-poly1305", String::as_str).to_owned();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let total = mib << 20;
    let password = "benchmark password";

    // The codec alone, natively.
    let config = format!("method={method}\npassword={password}\ntarget=127.0.0.1:9\n");
    let ss = watm_ss::Ss::from_config(config.as_bytes()).expect("config");
    let data = vec![0x5au8; total];
    let keys = watm_ss::SsKeys::Client(
        watm_ss::Cipher::new(ss.method(), ss.master_key(), &[1; 32][..ss.method().key_len()]),
        [0xee; 32],
    );
    let mut native = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let wire = pump(ss.encoder(Role::Dialer, &keys), &data, &Segmentation::default()).unwrap();
        let seal = t.elapsed();
        let server_keys = watm_ss::SsKeys::Server {
            client: watm_ss::Cipher::new(ss.method(), ss.master_key(), &[1; 32][..ss.method().key_len()]),
            salt: [2; 32],
            plain: 0,
        };
        let t = Instant::now();
        let back = pump(ss.decoder(Role::Listener, &server_keys), &wire, &Segmentation::default()).unwrap();
        let open = t.elapsed();
        assert_eq!(back.len(), data.len());
        native.push((seal, open));
    }
    let seal = median(native.iter().map(|p| p.0).collect());
    let open = median(native.iter().map(|p| p.1).collect());
    println!(
        "{method}: codec, native: seal {:.0} MiB/s, open {:.0} MiB/s",
        mib_s(total, seal),
        mib_s(total, open)
    );

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let echo = echo_server().await?;
        let [server_port] = water_bench::free_ports().unwrap();
        let sp = server_port.to_string();
        let _server = libev(
            "ss-server",
            &["-s", "127.0.0.1", "-p", &sp, "-k", password, "-m", &method, "-t", "300"],
            server_port,
        );
        let tunnel = |to: u16| {
            let [port] = water_bench::free_ports().unwrap();
            let (l, to, fwd) = (port.to_string(), to.to_string(), echo.to_string());
            let k = libev(
                "ss-tunnel",
                &[
                    "-s",
                    "127.0.0.1",
                    "-p",
                    &to,
                    "-b",
                    "127.0.0.1",
                    "-l",
                    &l,
                    "-k",
                    password,
                    "-m",
                    &method,
                    "-L",
                    &fwd,
                    "-t",
                    "300",
                ],
                port,
            );
            (k, SocketAddr::from(([127, 0, 0, 1], port)))
        };
        let (_t1, libev_chain) = tunnel(server_port);

        // SS_WASM=path runs another build of the guest (an older one, to
        // compare) in place of the built-in.
        let built_in = watm_artifacts::Guest::named("ss").expect("the ss guest").wasm;
        let other = std::env::var_os("SS_WASM").map(std::fs::read).transpose()?;
        let guest = other.as_deref().unwrap_or(built_in);
        let client_cfg = format!("method={method}\npassword={password}\ntarget={echo}\n");
        let watm = water::Watm::new(guest, water::Config::default().transport_config(client_cfg))
            .map_err(std::io::Error::other)?;
        let dialer = water::Dialer::new(&watm).map_err(std::io::Error::other)?;
        let water_client = water_forwarder(dialer, SocketAddr::from(([127, 0, 0, 1], server_port))).await?;

        let server_cfg = format!("method={method}\npassword={password}\n");
        let swatm = water::Watm::new(guest, water::Config::default().transport_config(server_cfg))
            .map_err(std::io::Error::other)?;
        // What `water server` runs: the guest reads and writes the upstream
        // socket itself.
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let water_server_port = front.local_addr()?.port();
        let forwarder = water::Forwarder::new(&swatm, echo.to_string()).map_err(std::io::Error::other)?;
        tokio::spawn(async move { forwarder.serve(front, std::future::pending()).await });
        let (_t2, water_server) = tunnel(water_server_port);

        // The general form for comparison: a `water::Listener` whose
        // connections the application copies to the upstream (what `water
        // server` ran before the forwarder).
        let listener = water::Listener::bind(&swatm, "127.0.0.1:0").await.map_err(std::io::Error::other)?;
        let listener_port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(echo).await {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                    }
                });
            }
        });
        let (_t3, water_listener) = tunnel(listener_port);

        // One direction into a discarding sink: the dialer's encoder alone.
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sink_addr = sink.local_addr()?;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = sink.accept().await {
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n = 0;
                    while let Ok(k @ 1..) = s.read(&mut buf).await {
                        n += k;
                    }
                    let _ = done.send(n);
                });
            }
        });
        let plain = water::Watm::new(
            watm_artifacts::Guest::named("plain").expect("plain").wasm,
            water::Config::default(),
        )
        .map_err(std::io::Error::other)?;
        let (mut ss_seal, mut plain_seal) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ss_seal.push(one_way(&watm, sink_addr, total, &mut done_rx).await?);
            plain_seal.push(one_way(&plain, sink_addr, total, &mut done_rx).await?);
        }
        println!(
            "{method}: one way into a sink: ss guest {:.0} MiB/s, plain guest {:.0} MiB/s",
            mib_s(total, median(ss_seal)),
            mib_s(total, median(plain_seal))
        );

        let paths = [
            ("libev", libev_chain),
            ("water client", water_client),
            ("water server", water_server),
            ("listener+copy", water_listener),
        ];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            for (i, (_, addr)) in paths.iter().enumerate() {
                samples[i].push(bulk(*addr, total).await?);
            }
        }
        let med: Vec<Duration> = samples.into_iter().map(median).collect();
        let base = mib_s(2 * total, med[0]);
        for ((name, _), d) in paths.iter().zip(&med) {
            let v = mib_s(2 * total, *d);
            println!("{method}: {name:>13}: {v:7.0} MiB/s  ({:.2} x libev)", v / base);
        }
        Ok::<_, std::io::Error>(())
    })
}
