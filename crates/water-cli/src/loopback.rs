//! Loopback helpers for `check` and `demo`: an echo service and a
//! write-while-reading exchange.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A TCP echo service on 127.0.0.1, until `stop`.
pub async fn echo_server(stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Writes `out` (then half-closes) while reading to EOF; returns what came
/// back. `progress` is called with the bytes read so far.
pub async fn exchange<S: AsyncRead + AsyncWrite>(
    s: S,
    out: &[u8],
    mut progress: impl FnMut(usize),
) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        for chunk in out.chunks(256 << 10) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await
    };
    let read = async {
        let mut got = Vec::with_capacity(out.len());
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
            progress(got.len());
        }
    };
    let ((), got) = tokio::try_join!(write, read)?;
    Ok(got)
}

/// Deterministic test bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
