//! `water bench --lantern`: every figure of Lantern's benchmark shape is
//! reported with a value for WATER and for its baselines (raw TCP and the
//! native path), in the JSON and the table forms; with `--libev` against
//! shadowsocks-libev's `ss-tunnel` and `ss-server`, which the command
//! starts itself on 127.0.0.1 and kills at its end.
//!
//! Short runs (`--seconds 1`, a few held connections), and no assertion
//! about time or speed: these are benchmarks on a shared machine, checked
//! only for reporting what they should. Without the libev binaries the
//! libev test is ignored, with the reason (`build.rs`); under CI it is
//! required.

mod common;

use common::{LIMIT, Proc};

/// Figures every Lantern run reports (generic and libev alike).
const FIGURES: [&str; 7] = [
    "memory per held connection, this process (RSS)",
    "memory per held connection once quiet (2 s), this process (RSS)",
    "1 KiB echo, per op (median)",
    "1 KiB echo, throughput",
    "4 B ping-pong (median)",
    "setup to first echoed byte (median)",
    "setup CPU per connection, this process",
];

/// Runs `water args` to its end (bounded) and returns its stdout.
fn bench(args: &[&str]) -> String {
    let mut p = Proc::water(args);
    let mut out = Vec::new();
    while let Some(line) = p.line(LIMIT) {
        out.push(line);
    }
    let status = p.exited();
    assert!(status.success(), "water {args:?}: {status}; stderr:\n{}", p.stderr_text());
    out.join("\n")
}

/// The three values (raw, native, WATER) of figure `name` in the JSON
/// output; `None` for a `null`.
fn json_values(json: &str, name: &str) -> [Option<f64>; 3] {
    let at = json.find(&format!(r#"{{"name":"{name}""#)).unwrap_or_else(|| panic!("{name} missing: {json}"));
    let rest = &json[at..];
    let start = rest.find(r#""values":["#).unwrap() + r#""values":["#.len();
    let end = start + rest[start..].find(']').unwrap();
    let v: Vec<Option<f64>> = rest[start..end].split(',').map(|x| x.trim().parse().ok()).collect();
    assert_eq!(v.len(), 3, "{name}: {}", &rest[start..end]);
    [v[0], v[1], v[2]]
}

#[test]
fn lantern_shape_reports_every_figure_with_its_baselines() {
    let json = bench(&["bench", "-t", "plain", "--lantern", "--seconds", "1", "--hold", "20", "--json"]);
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert!(json.contains(r#""name":"raw TCP""#) && json.contains(r#""name":"native""#), "{json}");
    assert!(json.contains("water::Forwarder (plain)"), "the hops are named: {json}");
    for name in FIGURES {
        let [raw, native, water] = json_values(&json, name);
        let (raw, native, water) = (raw.unwrap(), native.unwrap(), water.unwrap());
        assert!(water > 0.0, "{name}: WATER {water}");
        if name.starts_with("memory") {
            // An RSS delta over a few connections can be 0 for raw TCP.
            assert!(raw >= 0.0 && native >= 0.0, "{name}: {raw} {native}");
        } else {
            assert!(raw > 0.0 && native > 0.0, "{name}: {raw} {native}");
        }
    }
    // Ratios to both baselines are reported.
    assert!(json.contains(r#""water_to_raw":"#) && json.contains(r#""water_to_native":"#), "{json}");
}

#[test]
#[cfg_attr(
    not(peer_ss_libev),
    ignore = "needs shadowsocks-libev's ss-server and ss-tunnel: apt-get install shadowsocks-libev"
)]
fn lantern_shape_against_libev_reports_every_figure_beside_native_ss() {
    let table = bench(&["bench", "-t", "ss", "--libev", "--seconds", "1", "--hold", "20"]);
    assert!(table.contains("native SS  client → ss-tunnel → ss-server → echo"), "{table}");
    assert!(table.contains("WATER+SS   water::Dialer (ss, in this process) → ss-server → echo"), "{table}");
    let libev = [
        "setup CPU per connection, ss-tunnel",
        "setup CPU per connection, ss-server",
        "setup CPU per connection, all processes",
        "memory per held connection, ss-server (RSS)",
        "memory per held connection, all processes",
    ];
    for name in FIGURES.iter().chain(&libev) {
        let line =
            table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing:\n{table}"));
        // "—" for a path that does not cross that process.
        let v: Vec<Option<f64>> =
            line[name.len()..].split_whitespace().take(3).map(|x| x.parse().ok()).collect();
        let (raw, native, water) = (v[0], v[1], v[2]);
        if name.contains("ss-tunnel") {
            // Only the native path crosses ss-tunnel.
            assert!(raw.is_none() && water.is_none() && native.unwrap() >= 0.0, "{line}");
        } else if name.contains("ss-server") {
            assert!(raw.is_none(), "{line}");
            // libev may reuse what the warm-up's connections freed: an
            // RSS delta over a few connections can be 0.
            assert!(native.unwrap() >= 0.0 && water.unwrap() >= 0.0, "{line}");
        } else {
            let (raw, native, water) = (raw.unwrap(), native.unwrap(), water.unwrap());
            assert!(water > 0.0 && native > 0.0 && raw >= 0.0, "{line}");
            if !name.starts_with("memory") {
                assert!(raw > 0.0, "{line}");
            }
        }
    }
    // Lantern's published figures are set beside ours.
    assert_eq!(table.matches("Lantern's, Apple M4 Pro (published)").count(), 4, "{table}");
}
