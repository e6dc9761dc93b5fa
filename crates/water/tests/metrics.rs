//! `water::metrics` wired in: what the `water` command's test
//! (`crates/water-cli/tests/metrics.rs`) does not reach — a spinning guest
//! throttled then stopped, a connection refused by the cap, reloads that
//! succeed and fail, and an open connection's instance. Each test uses a
//! label of its own, so tests running at once do not mix their counts.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use water::metrics::{RoleSnapshot, TransportSnapshot, snapshot};
use water::{Config, Dialer, Error, Watm};

fn of(label: &str) -> TransportSnapshot {
    snapshot().transports.into_iter().find(|t| t.transport == label).expect("the label is registered")
}

fn dialer(label: &str) -> RoleSnapshot {
    of(label).roles.into_iter().find(|r| r.role == "dialer").expect("dialer")
}

fn plain(config: Config) -> Watm {
    Watm::new(&watm_artifacts::Guest::named("plain").unwrap().bytes(), config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_is_counted_throttled_then_stopped() {
    bounded(async {
        let echo = echo_server().await;
        let spinner = r#"(module
          (import "env" "host_dial" (func $host_dial (result i32)))
          (memory (export "memory") 1)
          (func (export "_water_v0"))
          (func (export "_water_init") (result i32) i32.const 0)
          (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
          (func (export "_water_dial") (param i32) (result i32) call $host_dial)
          (func (export "_water_accept") (param i32) (result i32) i32.const -1)
          (func (export "_water_associate") (result i32) i32.const -1)
          (func (export "_water_worker") (result i32) (loop br 0) i32.const 0))"#;
        // A spin limit long enough that it is throttled (after 5 busy
        // ticks) well before it is stopped.
        let config = Config::default().spin_limit(Duration::from_secs(2)).metrics_label("test-spin");
        let watm = Watm::new(&wat::parse_str(spinner).unwrap(), config).unwrap();
        let mut conn = Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        // Nobody cancels it: the host stops it by itself.
        conn.read(&mut [0u8; 8]).await.unwrap_err();
        let closed = conn.close().await;
        assert!(matches!(closed, Err(Error::Spinning { .. })), "{closed:?}");
        let t = of("test-spin");
        assert_eq!(t.stopped, 1);
        assert!(t.throttled >= 1, "{t:?}");
        let d = dialer("test-spin");
        assert_eq!((d.started, d.open, d.ended.clone()), (1, 0, vec![("Spinning", 1)]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reloads_and_instances_are_counted() {
    bounded(async {
        let echo = echo_server().await;
        let watm = plain(Config::default().max_connections(1).metrics_label("test-ops"));
        let dialer_role = Dialer::new(&watm).unwrap();
        let held = dialer_role.dial(echo.to_string()).await.unwrap();
        assert!(matches!(dialer_role.dial(echo.to_string()).await, Err(Error::TooManyConnections(1))));
        let t = of("test-ops");
        assert_eq!(t.pooled_instances + t.on_demand_instances, 1, "{t:?}");
        assert_eq!(t.pooled_instances, u64::from(watm.pooled()), "{t:?}");
        let d = dialer("test-ops");
        assert_eq!((d.started, d.open, d.refused, d.setups()), (1, 1, 1, 1));

        // A replacement counts under the new module's label; one the role
        // refuses (no `_water_dial`) counts as failed.
        let reloader = dialer_role.reloader();
        reloader.replace(&plain(Config::default().max_connections(1).metrics_label("test-ops"))).unwrap();
        let listener_only = r#"(module
          (func (export "_water_v0"))
          (memory (export "memory") 1)
          (func (export "_water_init") (result i32) i32.const 0)
          (func (export "_water_cancel_with") (param i32) (result i32) i32.const 0)
          (func (export "_water_accept") (param i32) (result i32) i32.const -1)
          (func (export "_water_worker") (result i32) i32.const 0))"#;
        let other =
            Watm::new(&wat::parse_str(listener_only).unwrap(), Config::default().metrics_label("test-ops"))
                .unwrap();
        assert!(reloader.replace(&other).is_err());
        let t = of("test-ops");
        assert_eq!((t.reloads, t.failed_reloads), (1, 1));

        // Counted before `close` returns: the worker's end is recorded
        // before it is reported.
        let sent = data(50_000, 3);
        let mut held = held;
        let (mut r, mut w) = tokio::io::split(&mut held);
        let write = async {
            w.write_all(&sent).await?;
            w.shutdown().await
        };
        let mut got = Vec::new();
        tokio::try_join!(write, r.read_to_end(&mut got)).unwrap();
        assert!(got == sent);
        held.close().await.unwrap();
        let d = dialer("test-ops");
        assert_eq!((d.open, d.ended.clone()), (0, vec![("ok", 1)]));
        assert!(d.sent_bytes >= sent.len() as u64 && d.received_bytes >= sent.len() as u64, "{d:?}");
        let t = of("test-ops");
        assert_eq!(t.pooled_instances + t.on_demand_instances, 0, "{t:?}");
    })
    .await;
}
