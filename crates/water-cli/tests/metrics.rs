//! `--metrics ADDR` (issue 20): curl reads Prometheus text from `water
//! client` and `water server` while connections run, and the counters
//! match what the test did: open connections, ended ones by outcome (a
//! refused dial typed as `Io`), bytes, setups; and the body names no
//! address, no config, and no label but transport, role and outcome.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LIMIT, Proc, WATER, echo, exchange, free_port, pattern, temp_dir, wait_file_line};

const KEY: &str = "key=0a0b0c\n";
/// Connections run to their end.
const DONE: usize = 5;
/// Connections held open while the metrics are read.
const HELD: usize = 3;
const BYTES: usize = 10_000;
const SIGHUP: i32 = 1;

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Starts `water args --metrics 127.0.0.1:0`; its listening address and
/// its metrics URL (from the log line at start).
fn with_metrics(args: &[&str]) -> (Proc, std::net::SocketAddr, String) {
    let mut all = args.to_vec();
    all.extend(["--metrics", "127.0.0.1:0"]);
    let (p, addr) = Proc::listening_with(&all, &[("WATER_LOG", "info")]);
    let line = p.wait_stderr(LIMIT, |l| l.contains("metrics on http://")).expect("the metrics log line");
    let url = line.split("metrics on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    (p, addr, url)
}

/// The body curl reads from `url`.
fn curl(url: &str) -> String {
    let out = Command::new("curl").args(["-sS", "--max-time", "30", url]).output().expect("curl");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("k=v");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap_or_else(|_| panic!("value in {l:?}")))
        })
        .collect()
}

/// The value of `name` with exactly these labels (0 when absent: a
/// counter not yet seen).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.iter().find(|(n, l, _)| n == name && *l == want).map_or(0.0, |s| s.2)
}

/// Reads `url` until `ok` holds of its samples (a connection's end is
/// counted when its worker returns, a moment after the peer saw it), at
/// most `LIMIT`; the last body.
fn until(url: &str, what: &str, ok: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = curl(url);
        if ok(&parse(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: never true; last body:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What every body must be: no address, no config, only the labels
/// transport, role, outcome (and a histogram's `le`).
fn check_privacy(text: &str, secrets: &[&str]) {
    check_privacy_of(text, secrets, "xor");
}

fn check_privacy_of(text: &str, secrets: &[&str], transport: &str) {
    for s in secrets {
        assert!(!text.contains(s), "{s:?} appears in the metrics:\n{text}");
    }
    // Nothing that looks like an IPv4 address (four dotted numbers) or an
    // IPv6 one (`::`, or a bracketed host).
    for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '{' || c == '}') {
        let parts: Vec<&str> = word.split('.').collect();
        let dotted =
            parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let colons =
            word.contains(':') && word.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        assert!(!dotted && !colons && !word.contains('['), "an address? {word:?} in:\n{text}");
    }
    for (name, labels, _) in parse(text) {
        for key in labels.keys() {
            assert!(["transport", "role", "outcome", "le"].contains(&key.as_str()), "label {key} on {name}");
        }
        if let Some(t) = labels.get("transport") {
            assert_eq!(t, transport, "{name}");
        }
    }
}

/// A connection through `addr` with `n` bytes echoed, left open.
fn held(addr: std::net::SocketAddr, n: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let data = pattern(n, 7);
    s.write_all(&data).unwrap();
    let mut back = vec![0; n];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    s
}

#[test]
#[cfg_attr(not(peer_curl), ignore = "needs curl and python3: apt-get install curl python3")]
fn curl_reads_counters_that_match_the_connections_while_they_run() {
    let dir = temp_dir("metrics");
    let key = dir.join("key");
    std::fs::write(&key, KEY).unwrap();
    let key = key.to_str().unwrap();
    let service = echo();
    let forward = service.addr.to_string();
    let (server, server_addr, server_url) = with_metrics(&[
        "server",
        "-t",
        "xor",
        "--config",
        key,
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &forward,
    ]);
    let remote = server_addr.to_string();
    let (_client, client_addr, client_url) = with_metrics(&[
        "client",
        "-t",
        "xor",
        "--config",
        key,
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &remote,
    ]);
    // A client whose remote refuses: its one connection fails in setup.
    let dead = format!("127.0.0.1:{}", free_port());
    let (_refused, refused_addr, refused_url) =
        with_metrics(&["client", "-t", "xor", "--config", key, "--listen", "127.0.0.1:0", "--remote", &dead]);
    let secrets = [
        "127.0.0.1",
        "0a0b0c",
        dir.to_str().unwrap(),
        &forward,
        &remote,
        &dead,
        &client_addr.to_string(),
        &server_addr.to_string(),
    ];

    // Before any connection: every series at zero, the pool's size shown.
    let text = curl(&client_url);
    check_privacy(&text, &secrets);
    let samples = parse(&text);
    let dialer = [("transport", "xor"), ("role", "dialer")];
    assert_eq!(value(&samples, "water_connections_started_total", &dialer), 0.0);
    assert!(samples.iter().any(|(n, l, _)| n == "water_pool_slots" && l.is_empty()), "{text}");

    for i in 0..DONE {
        let data = pattern(BYTES, i as u32);
        assert_eq!(exchange(client_addr, &data), data, "connection {i}");
    }
    let open: Vec<TcpStream> = (0..HELD).map(|_| held(client_addr, 1000)).collect();

    // While HELD connections run: curl sees them open on both ends, and
    // the finished ones ended `ok`.
    let (done, held_n, started) = (DONE as f64, HELD as f64, (DONE + HELD) as f64);
    let listener = [("transport", "xor"), ("role", "listener")];
    for (url, role) in [(&client_url, dialer), (&server_url, listener)] {
        let ok: Vec<(&str, &str)> = role.iter().copied().chain([("outcome", "ok")]).collect();
        let text = until(url, "finished connections counted", |s| {
            value(s, "water_connections_ended_total", &ok) == done
        });
        check_privacy(&text, &secrets);
        let s = parse(&text);
        assert_eq!(value(&s, "water_connections_open", &role), held_n, "{text}");
        assert_eq!(value(&s, "water_connections_started_total", &role), started, "{text}");
        assert_eq!(value(&s, "water_setup_seconds_count", &role), started, "{text}");
        let ended: f64 = s
            .iter()
            .filter(|(n, l, _)| n == "water_connections_ended_total" && l["role"] == role[1].1)
            .map(|s| s.2)
            .sum();
        assert_eq!(ended, done, "no other outcome: {text}");
        let min = (DONE * BYTES) as f64;
        assert!(value(&s, "water_network_sent_bytes_total", &role) >= min, "{text}");
        assert!(value(&s, "water_network_received_bytes_total", &role) >= min, "{text}");
        // Each open connection's instance, in a pool slot or on demand.
        let instances = value(&s, "water_instances_pooled", &role[..1])
            + value(&s, "water_instances_on_demand", &role[..1]);
        assert_eq!(instances, held_n, "{text}");
        // The other roles saw nothing.
        let relay = [("transport", "xor"), ("role", "relay")];
        assert_eq!(value(&s, "water_connections_started_total", &relay), 0.0);
        assert_eq!(value(&s, "water_connections_refused_total", &role), 0.0);
    }

    // The refused dial: one connection, ended in setup as `Io`.
    let mut s = TcpStream::connect(refused_addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = s.read(&mut [0; 16]);
    let io: Vec<(&str, &str)> = dialer.iter().copied().chain([("outcome", "Io")]).collect();
    let text = until(&refused_url, "the refused dial counted", |s| {
        value(s, "water_connections_ended_total", &io) == 1.0
    });
    check_privacy(&text, &secrets);
    let s = parse(&text);
    assert_eq!(value(&s, "water_connections_started_total", &dialer), 1.0, "{text}");
    assert_eq!(value(&s, "water_connections_open", &dialer), 0.0, "{text}");
    assert_eq!(value(&s, "water_setup_seconds_count", &dialer), 1.0, "{text}");

    // The held ones closed cleanly: every connection ended `ok`, none open.
    for mut s in open {
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    }
    for (url, role) in [(&client_url, dialer), (&server_url, listener)] {
        let ok: Vec<(&str, &str)> = role.iter().copied().chain([("outcome", "ok")]).collect();
        let text = until(url, "every connection ended", |s| {
            value(s, "water_connections_ended_total", &ok) == started
                && value(s, "water_connections_open", &role) == 0.0
        });
        check_privacy(&text, &secrets);
        let s = parse(&text);
        let min = (DONE * BYTES + HELD * 1000) as f64;
        assert!(value(&s, "water_network_sent_bytes_total", &role) >= min, "{text}");
        assert!(value(&s, "water_network_received_bytes_total", &role) >= min, "{text}");
        assert_eq!(value(&s, "water_instances_pooled", &role[..1]), 0.0, "{text}");
        assert_eq!(value(&s, "water_instances_on_demand", &role[..1]), 0.0, "{text}");
    }

    // Reloads: one that succeeds, one whose config the transport rejects.
    let reloads = |outcome| [("transport", "xor"), ("outcome", outcome)];
    server.signal(SIGHUP);
    server.wait_stderr(LIMIT, |l| l.contains("reloaded xor")).expect("the reload");
    std::fs::write(dir.join("key"), "key=zz\n").unwrap();
    server.signal(SIGHUP);
    server.wait_stderr(LIMIT, |l| l.contains("reload of xor failed")).expect("the failed reload");
    let text = curl(&server_url);
    check_privacy(&text, &secrets);
    let s = parse(&text);
    assert_eq!(value(&s, "water_reloads_total", &reloads("ok")), 1.0, "{text}");
    assert_eq!(value(&s, "water_reloads_total", &reloads("failed")), 1.0, "{text}");

    // Only /metrics is served.
    let other = client_url.replace("/metrics", "/other");
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &other]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
#[cfg_attr(not(peer_curl), ignore = "needs curl and python3: apt-get install curl python3")]
fn water_pt_serves_one_endpoint_labelled_by_the_transport_name() {
    let dir = temp_dir("metrics-pt");
    let state = dir.join("state");
    let service = echo();
    let mut pt = Proc::start(
        WATER,
        &["pt", "--metrics", "127.0.0.1:0"],
        &[
            ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
            ("TOR_PT_STATE_LOCATION", state.to_str().unwrap()),
            ("TOR_PT_CLIENT_TRANSPORTS", "plain"),
            ("WATER_LOG", "info"),
        ],
    );
    let lines = pt.lines_until(LIMIT, |l| l == "CMETHODS DONE");
    let socks: std::net::SocketAddr = lines
        .iter()
        .find_map(|l| l.strip_prefix("CMETHOD plain socks5 "))
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .unwrap();
    // Its log goes to the state directory, as every line of `water pt`.
    let line = wait_file_line(&state.join("water-pt.log"), LIMIT, |l| l.contains("metrics on http://"))
        .expect("the metrics log line");
    let url = line.split("metrics on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();

    // One SOCKS5 CONNECT through `plain`, held open while curl reads.
    let mut s = TcpStream::connect(socks).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let std::net::SocketAddr::V4(target) = service.addr else { panic!("IPv4") };
    let mut request = vec![5, 1, 0, 5, 1, 0, 1];
    request.extend_from_slice(&target.ip().octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..4], [5, 0, 5, 0][..], "{reply:?}");
    s.write_all(b"through the PT").unwrap();
    let mut back = [0u8; 14];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the PT");

    let dialer = [("transport", "plain"), ("role", "dialer")];
    let text =
        until(&url, "the PT's connection counted", |s| value(s, "water_connections_open", &dialer) == 1.0);
    check_privacy_of(&text, &["127.0.0.1", dir.to_str().unwrap(), &socks.to_string()], "plain");
    assert_eq!(value(&parse(&text), "water_connections_started_total", &dialer), 1.0, "{text}");
}
