//! Loopback helpers for `check` and `demo`: a write-while-reading exchange
//! with progress, and test bytes. (The echo service is `water_bench`'s.)

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
