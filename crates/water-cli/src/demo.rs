//! `water demo`: echo service ← `server` (built-in xor) ← `client` (built-in
//! xor) ← a plain TCP connection, all on loopback in this process; pushes
//! a few MiB through, verifies them, and prints a table.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use water::{Dialer, Forwarder};

use crate::loopback::{exchange, pattern};
use crate::{transport, tunnel};
use water_bench::echo_server;

const SIZE: usize = 8 << 20;
const PINGS: usize = 200;

pub async fn run() -> anyhow::Result<()> {
    let watm = transport::load("xor", None)?;
    let stop = CancellationToken::new();
    let echo = echo_server().await?;
    let server_listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = server_listener.local_addr()?;
    let forwarder = Forwarder::new(&watm, echo.to_string())?;
    let server_stop = stop.clone();
    tokio::spawn(async move { forwarder.serve(server_listener, server_stop.cancelled()).await });
    let client_listener = TcpListener::bind("127.0.0.1:0").await?;
    let client_addr = client_listener.local_addr()?;
    tokio::spawn(tunnel::run_client(
        Dialer::new(&watm)?,
        client_listener,
        server_addr.to_string(),
        tunnel::Signals { stop: stop.clone(), now: stop.clone() },
        std::time::Duration::ZERO,
    ));
    eprintln!("demo: echo {echo} <- server {server_addr} (xor) <- client {client_addr} (xor) <- you");

    let sent = pattern(SIZE);
    let started = Instant::now();
    let mut shown = 0;
    let got = exchange(TcpStream::connect(client_addr).await?, &sent, |n| {
        let pct = n * 100 / SIZE;
        if pct >= shown + 10 {
            shown = pct;
            eprint!("\rdemo: {:>5.1} of {:.1} MiB back", n as f64 / 1048576.0, SIZE as f64 / 1048576.0);
            let _ = std::io::stderr().flush();
        }
    })
    .await
    .context("push through the tunnel")?;
    let elapsed = started.elapsed();
    eprintln!();
    if got != sent {
        bail!("{} bytes came back, not the {SIZE} sent (or not the same)", got.len());
    }

    let mut conn = TcpStream::connect(client_addr).await?;
    conn.set_nodelay(true)?;
    let ping = [0x5au8; 64];
    let mut pong = [0u8; 64];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        conn.write_all(&ping).await?;
        conn.read_exact(&mut pong).await?;
        rtts.push(t.elapsed());
        if pong != ping {
            bail!("ping came back changed");
        }
    }
    rtts.sort();
    let median = rtts[PINGS / 2];
    stop.cancel();

    let mib_s = SIZE as f64 * 2.0 / 1048576.0 / elapsed.as_secs_f64();
    println!("{:<10} {:>12} {:>16} {:>22}", "transport", "bytes", "throughput", "round trip (median)");
    println!("{:<10} {:>12} {:>11.1} MiB/s {:>19} µs", "xor", SIZE, mib_s, median.as_micros());
    println!("(bytes sent and verified back; throughput counts both directions; {PINGS} pings of 64 bytes)");
    Ok(())
}
