//! `water check T`: validate the module, then self-test every role it
//! exports on loopback, one line per check.
//!
//! A transport's wire format is its own, so each role is tested against the
//! transport itself: dial → listener (same transport) → forwarded to an echo
//! service; dial → listener (same transport) whose application echoes;
//! plain client → relay → listener (same transport) → echo. A module that
//! exports no accept has its dialer tested against the echo service
//! directly, which only a transport whose wire format is symmetric (the same
//! codec both ways, like `xor`) passes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use water::{Dialer, Listener, Relay, Role, Watm};

use crate::loopback::{exchange, pattern};
use crate::transport;
use water_bench::echo_server;

const SIZE: usize = 256 << 10;
const LIMIT: Duration = Duration::from_secs(15);

pub async fn run(t: &str, config: Option<&Path>) -> anyhow::Result<()> {
    let watm = match transport::load(t, config) {
        Ok(w) => w,
        Err(e) => {
            println!("FAIL load: {e:#}");
            return Err(e);
        }
    };
    let roles: Vec<_> = [(Role::Dialer, "dial"), (Role::Listener, "accept"), (Role::Relay, "associate")]
        .into_iter()
        .filter(|(r, _)| watm.supports(*r))
        .map(|(_, n)| n)
        .collect();
    println!(
        "PASS load: valid WATM v0 module (roles: {})",
        if roles.is_empty() { "none".into() } else { roles.join(", ") }
    );
    if roles.is_empty() {
        bail!("{t} exports no role function (_water_dial, _water_accept, _water_associate)");
    }
    let stop = CancellationToken::new();
    let echo = echo_server().await?;
    let mut failed = 0;
    for (role, name) in [(Role::Dialer, "dial"), (Role::Listener, "accept"), (Role::Relay, "associate")] {
        if !watm.supports(role) {
            continue;
        }
        let needs_dial = role != Role::Dialer && !watm.supports(Role::Dialer);
        let needs_accept = role == Role::Relay && !watm.supports(Role::Listener);
        if needs_dial || needs_accept {
            println!(
                "SKIP {name}: the self-test pairs it with this transport's {}",
                if needs_dial { "dialer" } else { "listener" }
            );
            continue;
        }
        let outcome = tokio::time::timeout(LIMIT, self_test(&watm, role, echo, stop.clone())).await;
        match outcome {
            Ok(Ok(())) => println!("PASS {name}: {} KiB round trip on loopback, byte for byte", SIZE >> 10),
            Ok(Err(e)) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: no answer within {LIMIT:?}");
            }
        }
    }
    stop.cancel();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(s: S) -> anyhow::Result<()> {
    let sent = pattern(SIZE);
    let got = exchange(s, &sent, |_| {}).await?;
    if got != sent {
        bail!("{} bytes came back, not the {} sent (or not the same)", got.len(), sent.len());
    }
    Ok(())
}

/// A listener of `watm` whose application echoes; returns its address.
async fn echoing_listener(watm: &Watm, stop: CancellationToken) -> anyhow::Result<std::net::SocketAddr> {
    let listener = Listener::bind(watm, "127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            if let Ok((conn, _)) = accepted {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(conn);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                });
            }
        }
    });
    Ok(addr)
}

/// A listener of `watm` whose application forwards each connection to `to`,
/// as `water server` does; returns its address.
async fn forwarding_listener(
    watm: &Watm,
    to: std::net::SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = Listener::bind(watm, "127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            if let Ok((mut conn, _)) = accepted {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                });
            }
        }
    });
    Ok(addr)
}

async fn self_test(
    watm: &Watm,
    role: Role,
    echo: std::net::SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    match role {
        Role::Dialer if watm.supports(Role::Listener) => {
            let addr = forwarding_listener(watm, echo, stop).await?;
            let conn = Dialer::new(watm)?.dial(addr.to_string()).await.context("dial")?;
            round_trip(conn).await
        }
        Role::Dialer => {
            let conn = Dialer::new(watm)?.dial(echo.to_string()).await.context("dial")?;
            round_trip(conn).await
        }
        Role::Listener => {
            let addr = echoing_listener(watm, stop).await?;
            let conn = Dialer::new(watm)?.dial(addr.to_string()).await.context("dial the listener")?;
            round_trip(conn).await
        }
        Role::Relay => {
            let remote = echoing_listener(watm, stop.clone()).await?;
            let relay = Relay::new(watm, remote.to_string())?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move { relay.serve(listener, stop.cancelled_owned()).await });
            round_trip(tokio::net::TcpStream::connect(addr).await?).await
        }
    }
}
