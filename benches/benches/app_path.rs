//! The application ↔ guest path: the in-process duplex the host uses,
//! against the Unix socket pair it replaces (same bytes, same chunking, same
//! tokio runtime), to show what the kernel round trips would cost.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const TOTAL: usize = 16 << 20;
const CHUNK: usize = 16 << 10;

async fn push<W, R>(mut w: W, mut r: R)
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin,
{
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, TOTAL);
    writer.await.unwrap();
}

fn app_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("app_path_16MiB");
    g.throughput(Throughput::Bytes(TOTAL as u64)).sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("duplex", |b| {
        b.to_async(&rt).iter(|| async {
            let (a, b) = water::__bench::duplex_pair();
            push(a, b).await
        })
    });
    g.bench_function("unix_socketpair", |b| {
        b.to_async(&rt).iter(|| async {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            push(a, b).await
        })
    });
    g.finish();
}

criterion_group!(benches, app_path);
criterion_main!(benches);
