//! `--metrics ADDR`: the library's counters (`water::metrics`) as
//! Prometheus text (format 0.0.4, encoded by `prometheus-client`) on
//! `GET /metrics`.
//!
//! The HTTP side is written by hand (~50 lines): one `GET` answered and
//! the connection closed, which a scraper needs and nothing more. A web
//! framework (hyper and its stack) would be the largest dependency of the
//! command for that one request, and this endpoint must not face the
//! internet anyway (README, "Operating a server"). What it bounds: a
//! request of at most 8 KiB, read within 5 s, at most 16 scrapes at once;
//! anything but `GET /metrics` is a 404.
//!
//! No label here names a user or a secret: the transport (its built-in or
//! file name, never the path), the role and the outcome only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request read.
const MAX_REQUEST: usize = 8 << 10;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait in the listen queue.
const MAX_SCRAPES: usize = 16;

/// The `transport` label of `T`: a built-in's name, or a module file's
/// name without its directories (a path can tell more than an operator
/// means to publish).
pub fn label(transport: &str) -> String {
    match Path::new(transport).file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => transport.to_string(),
    }
}

/// Binds `addr`, logs `metrics on http://ADDR/metrics`, and serves the
/// endpoint on a task of its own for as long as the runtime runs.
pub async fn serve(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--metrics)"))?;
    let local = listener.local_addr()?;
    tracing::info!("metrics on http://{local}/metrics");
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let room = move || scrapes.clone().acquire_owned();
    tokio::spawn(async move {
        let accepted = water::accept_each(&listener, std::future::pending(), room, |stream, _, permit| {
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = answer(stream).await {
                    tracing::debug!("metrics request: {e}");
                }
            });
        })
        .await;
        if let Err(e) = accepted {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(local)
}

/// Reads one request and answers it; the connection is closed after.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            ("200 OK", prometheus_client::encoding::prometheus_text::CONTENT_TYPE, render())
        }
        _ => {
            ("404 Not Found", "text/plain; charset=utf-8", "not found; the metrics are at /metrics\n".into())
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The Prometheus text of every counter now.
pub fn render() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(water::metrics::snapshot())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

/// What one scrape encodes: the library's counters read once.
#[derive(Debug)]
struct Snapshot(water::metrics::Snapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Snapshot {
    /// One metric family: `rows` are its label sets and values.
    fn family<'a, V: EncodeMetric>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        kind: MetricType,
        rows: impl IntoIterator<Item = (Labels<'a>, V)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in rows {
            value.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        let transports = &self.0.transports;
        let per_role = || {
            transports.iter().flat_map(|t| {
                t.roles.iter().map(move |r| (vec![("transport", t.transport.as_str()), ("role", r.role)], r))
            })
        };
        let per_transport = || transports.iter().map(|t| (vec![("transport", t.transport.as_str())], t));
        let e = &mut encoder;
        Self::family(
            e,
            "water_connections_started",
            "Connections whose setup started.",
            counter,
            per_role().map(|(l, r)| (l, ConstCounter::new(r.started))),
        )?;
        Self::family(
            e,
            "water_connections_open",
            "Connections started and not yet ended (setups under way included).",
            gauge,
            per_role().map(|(l, r)| (l, ConstGauge::new(r.open as i64))),
        )?;
        let ended = per_role().flat_map(|(l, r)| {
            // `ok` always, the error kinds once they happened.
            let ok = r.ended.iter().all(|&(k, _)| k != "ok").then_some(("ok", 0));
            ok.into_iter().chain(r.ended.iter().copied()).map(move |(outcome, n)| {
                let mut labels = l.clone();
                labels.push(("outcome", outcome));
                (labels, ConstCounter::new(n))
            })
        });
        Self::family(
            e,
            "water_connections_ended",
            "Connections ended, by outcome: ok, or the error kind (water::Error::kind_name).",
            counter,
            ended,
        )?;
        Self::family(
            e,
            "water_connections_refused",
            "Connections closed at once because the connection cap was reached (never started).",
            counter,
            per_role().map(|(l, r)| (l, ConstCounter::new(r.refused))),
        )?;
        Self::family(
            e,
            "water_network_sent_bytes",
            "Bytes the guests wrote to the network, added when each connection ends.",
            counter,
            per_role().map(|(l, r)| (l, ConstCounter::new(r.sent_bytes))),
        )?;
        Self::family(
            e,
            "water_network_received_bytes",
            "Bytes the guests read from the network, added when each connection ends.",
            counter,
            per_role().map(|(l, r)| (l, ConstCounter::new(r.received_bytes))),
        )?;
        {
            let mut family = e.encode_descriptor(
                "water_setup_seconds",
                "Time from a connection's start to its guest's worker running (or the setup's failure).",
                None,
                MetricType::Histogram,
            )?;
            for (labels, r) in per_role() {
                let bounds = water::metrics::SETUP_BUCKETS.iter().copied().chain([f64::INFINITY]);
                let buckets: Vec<(f64, u64)> = bounds.zip(r.setup_buckets.iter().copied()).collect();
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    r.setup_seconds,
                    r.setups(),
                    &buckets,
                    None,
                )?;
            }
        }
        Self::family(
            e,
            "water_guests_throttled",
            "Workers that began to be throttled for keeping a thread busy without moving bytes.",
            counter,
            per_transport().map(|(l, t)| (l, ConstCounter::new(t.throttled))),
        )?;
        Self::family(
            e,
            "water_guests_stopped",
            "Workers stopped for spinning (no wait, no byte moved for the spin limit).",
            counter,
            per_transport().map(|(l, t)| (l, ConstCounter::new(t.stopped))),
        )?;
        Self::family(
            e,
            "water_instances_pooled",
            "Open connections whose instance is in a slot of the instance pool.",
            gauge,
            per_transport().map(|(l, t)| (l, ConstGauge::new(t.pooled_instances as i64))),
        )?;
        Self::family(
            e,
            "water_instances_on_demand",
            "Open connections whose instance was mapped on demand (the pool full, or off).",
            gauge,
            per_transport().map(|(l, t)| (l, ConstGauge::new(t.on_demand_instances as i64))),
        )?;
        Self::family(
            e,
            "water_pool_slots",
            "Slots of the process's instance pool (0: no pool).",
            gauge,
            [(Vec::new(), ConstGauge::new(self.0.pool_slots as i64))],
        )?;
        let reloads = per_transport().flat_map(|(l, t)| {
            [("ok", t.reloads), ("failed", t.failed_reloads)].map(|(outcome, n)| {
                let mut labels = l.clone();
                labels.push(("outcome", outcome));
                (labels, ConstCounter::new(n))
            })
        });
        Self::family(
            e,
            "water_reloads",
            "Reloads (SIGHUP): ok, or failed (the previous module goes on serving).",
            counter,
            reloads,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_labelled_by_its_file_name() {
        assert_eq!(label("xor"), "xor");
        assert_eq!(label("/etc/water/secret-dir/mine.wasm"), "mine.wasm");
        assert_eq!(label("mine.wasm"), "mine.wasm");
    }

    #[test]
    fn every_family_is_rendered_with_its_labels() {
        let _ = water::metrics::transport("render-test");
        let text = render();
        for name in [
            "water_connections_started_total{transport=\"render-test\",role=\"dialer\"} 0",
            "water_connections_open{transport=\"render-test\",role=\"relay\"} 0",
            "water_connections_ended_total{transport=\"render-test\",role=\"listener\",outcome=\"ok\"} 0",
            "water_setup_seconds_count{transport=\"render-test\",role=\"dialer\"} 0",
            "water_setup_seconds_bucket{transport=\"render-test\",role=\"dialer\",le=\"+Inf\"} 0",
            "water_reloads_total{transport=\"render-test\",outcome=\"failed\"} 0",
            "water_pool_slots ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
