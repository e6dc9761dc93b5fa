//! The host through the reference guests, each group with its baselines
//! measured in the same run (see `water_bench` for the paths):
//! - `setup`: connect → first echoed byte;
//! - `throughput`: 8 MiB in 64 KiB writes, echoed back;
//! - `round_trip`: 64-byte ping-pong on an open connection;
//! - `concurrency`: 1, 100 and 1,000 connections echoing 64 KiB each.
//!
//! `cargo bench -p water-bench --bench host`; BENCHMARKS.md has the figures.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use water::Dialer;
use water_bench::{Path, concurrent, echo_bulk, echo_server, ping_pong, reference_guest, setup};

const BULK: usize = 8 << 20;

fn water_path(name: &str) -> Path {
    Path::Water(Dialer::new(&reference_guest(name)).expect("dialer"))
}

fn paths() -> Vec<(&'static str, Path)> {
    vec![
        ("direct_tcp", Path::Direct),
        ("native_forwarder", Path::Native),
        ("water_plain", water_path("plain")),
        ("water_xor", water_path("xor")),
        ("water_reverse", water_path("reverse")),
    ]
}

fn host(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let echo: SocketAddr = rt.block_on(echo_server()).unwrap();

    let mut g = c.benchmark_group("setup");
    g.sample_size(50);
    for (name, path) in paths() {
        g.bench_function(name, |b| b.to_async(&rt).iter(|| async { setup(&path, echo).await.unwrap() }));
    }
    g.finish();

    let mut g = c.benchmark_group("throughput");
    g.throughput(Throughput::Bytes(2 * BULK as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, path) in paths() {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let path = path.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let s = path.connect(echo).await.unwrap();
                        total += echo_bulk(s, BULK).await.unwrap();
                    }
                    total
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("round_trip_64B");
    for (name, path) in paths() {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let path = path.clone();
                async move {
                    let mut s = path.connect(echo).await.unwrap();
                    ping_pong(&mut s, 64, iters as usize).await.unwrap().into_iter().sum()
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("concurrency_64KiB_each");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for conns in [1usize, 100, 1000] {
        g.throughput(Throughput::Bytes(2 * (conns * (64 << 10)) as u64));
        for (name, path) in [("direct_tcp", Path::Direct), ("water_plain", water_path("plain"))] {
            g.bench_with_input(BenchmarkId::new(name, conns), &conns, |b, &conns| {
                b.to_async(&rt).iter_custom(|iters| {
                    let path = path.clone();
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += concurrent(&path, echo, conns, 64 << 10).await.unwrap();
                        }
                        total
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, host);
criterion_main!(benches);
