//! A real tor (Debian's `tor` package) in a loopback-only network
//! namespace, for the tests that run a bridge and a client through a
//! pluggable transport (`tor.rs` over `water pt`, `obfs4.rs` between
//! `water pt` and obfs4proxy).
//!
//! **Tor never reaches beyond loopback.** Each test re-runs its own test
//! binary under `unshare --net` (a network namespace with only loopback),
//! where an `#[ignore]`d inner function does the work; that function calls
//! [`enter_namespace`], which refuses to go on unless it sees a namespace
//! with nothing but `lo`. And every torrc points the directory authorities
//! at a dead loopback port and drops the fallback directories. If the
//! namespace cannot be created the test fails; it never runs tor outside
//! one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, free_port, wait_file_line};

/// How long a tor may take to register its transport or to fetch the
/// bridge's descriptor (measured here: under 2 s).
pub const TOR_STEP: Duration = Duration::from_secs(15);
/// Bound on one whole namespaced run.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const NETNS_VAR: &str = "WATER_TOR_NETNS";

/// Runs the ignored test `inner` of this binary inside a new network
/// namespace and fails with its output unless it passes.
pub fn in_namespace(inner: &str) {
    // One tor test at a time: several tor networks at once on two cores
    // starved the private network's authority, whose consensus then came
    // too late for the 90 s bound.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&exe)
        .args([inner, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(NETNS_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run unshare (util-linux) to make the loopback-only network namespace");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{inner}: no result within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        status.success() && text.contains("1 passed"),
        "{inner} in a network namespace failed ({status}); unshare --net needs root (CI runs as root):\n{text}"
    );
    // The inner half's own report (what it printed), for --nocapture.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// The inner half's guard: we are in the namespace the outer half made,
/// and it has no interface but loopback (read through netlink's view in
/// /proc/self/net, which follows the namespace, unlike /sys). Then brings
/// `lo` up.
pub fn enter_namespace() {
    assert_eq!(
        std::env::var(NETNS_VAR).as_deref(),
        Ok("1"),
        "refusing to run tor outside the loopback-only namespace (run the non-ignored test instead)"
    );
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let ifaces: Vec<&str> = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(ifaces, ["lo"], "refusing to run tor: this namespace has other interfaces");
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip (iproute2)");
    assert!(up.success(), "cannot bring lo up in the namespace");
    let tor =
        Command::new("tor").arg("--version").output().expect("tor is not installed (.ci/run installs it)");
    assert!(tor.status.success());
}

/// The directory authority every bridge test names: a dead loopback port.
pub fn dead_authority() -> String {
    let fake = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    format!("DirAuthority fake orport=1 no-v2 v3ident={fake} 127.0.0.1:1 {fake}")
}

/// What every test torrc holds: logs on stdout, no fallback directories,
/// and the given (loopback) authority.
pub fn common_torrc(data: &Path, authority: &str) -> String {
    format!("DataDirectory {}\nLog notice stdout\nUseDefaultFallbackDirs 0\n{authority}\n", data.display())
}

/// A tor with data directory `dir/name`, no SOCKS port, the dead
/// authority, and `torrc`'s lines.
pub fn start_tor(dir: &Path, name: &str, torrc: &str) -> Proc {
    start_tor_with(dir, name, &format!("SocksPort 0\n{torrc}"), &dead_authority())
}

pub fn start_tor_with(dir: &Path, name: &str, torrc: &str, authority: &str) -> Proc {
    let data = dir.join(name);
    let path = dir.join(format!("{name}.torrc"));
    std::fs::write(&path, format!("{}{torrc}", common_torrc(&data, authority))).unwrap();
    // tor passes its environment on to `water pt`: its log at info.
    Proc::start("tor", &["-f", path.to_str().unwrap()], &[("WATER_LOG", "info")])
}

/// A bridge tor (data directory `dir/bridge`) whose server transport `t` is
/// the program `exec` (a command line), listening on a free loopback port,
/// with more torrc lines `extra` (each ending in a newline); returns it,
/// the transport's address and the bridge's fingerprint.
pub fn bridge(dir: &Path, t: &str, exec: &str, extra: &str) -> (Proc, String, String) {
    // Without a listen address the PT would bind 0.0.0.0.
    let port = free_port();
    let torrc = format!(
        "ORPort 127.0.0.1:auto\nBridgeRelay 1\nAssumeReachable 1\nPublishServerDescriptor 0\n\
         ServerTransportPlugin {t} exec {exec}\nServerTransportListenAddr {t} 127.0.0.1:{port}\n{extra}"
    );
    let mut tor = start_tor(dir, "bridge", &torrc);
    let prefix = format!("Registered server transport '{t}' at '");
    let line = tor
        .wait_for(TOR_STEP, |l| l.contains(&prefix))
        .unwrap_or_else(|seen| panic!("the bridge did not register {t}:\n{}", seen.join("\n")));
    let addr = line.split(&prefix).nth(1).unwrap().trim_end_matches('\'').to_string();
    let fingerprint = std::fs::read_to_string(dir.join("bridge/fingerprint")).unwrap();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    (tor, addr, fingerprint)
}

/// A client tor (data directory `dir/client`) using bridge `bridge_line`
/// through transport `t`, the program `exec`; waits for the bridge's
/// descriptor: `Ok(line)`, or every line seen within `limit`.
pub fn client(
    dir: &Path,
    t: &str,
    exec: &str,
    bridge_line: &str,
    limit: Duration,
) -> Result<String, Vec<String>> {
    let torrc = format!("UseBridges 1\nClientTransportPlugin {t} exec {exec}\nBridge {bridge_line}\n");
    let mut tor = start_tor(dir, "client", &torrc);
    tor.wait_for(limit, |l| l.contains("new bridge descriptor") && l.contains("(fresh)"))
}

/// The bridge's `water-pt.log` (read as it grows) says the transport
/// listened and forwarded to `upstream`, and holds no warning or error.
pub fn bridge_pt_log_is_clean(dir: &Path, t: &str, upstream: &str) {
    let log = dir.join("bridge/pt_state/water-pt.log");
    for want in [format!("transport={t}"), upstream.to_string()] {
        wait_file_line(&log, TOR_STEP, |l| l.contains(&want))
            .unwrap_or_else(|text| panic!("the bridge PT never logged {want:?}:\n{text}"));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "the bridge PT logged a failure:\n{text}");
}
