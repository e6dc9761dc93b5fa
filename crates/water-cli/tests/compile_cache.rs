//! `--compile-cache DIR`: the second start of a command reads its
//! transport's compiled code from DIR (its log says so) and serves byte for
//! byte; a DIR others can write to is not used, and the command runs as
//! without it; `water pt` takes it too.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const COMPILED: &str = "compiled (no usable entry in the compile cache";
const READ: &str = "compiled code read from the compile cache";

/// The cache files in `dir`.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    files
}

/// `water check T --compile-cache dir` at log level info: status and stderr.
fn check(t: &str, dir: &Path) -> (bool, String) {
    let out = Command::new(WATER)
        .args(["check", t, "--compile-cache", dir.to_str().unwrap()])
        .env("WATER_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn check_compiles_once_then_reads_the_cache() {
    let root = temp_dir("cc-check");
    let dir = root.join("cache");
    let (ok, err) = check("plain", &dir);
    assert!(ok && err.contains(COMPILED), "{err}");
    let files = cache_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let (ok, err) = check("plain", &dir);
    assert!(ok && err.contains(READ), "{err}");
    assert_eq!(cache_files(&dir), files);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_directory_others_can_write_to_is_not_used() {
    let root = temp_dir("cc-open");
    let dir = root.join("cache");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    for _ in 0..2 {
        let (ok, err) = check("plain", &dir);
        assert!(ok, "{err}");
        let refusal: Vec<&str> = err.lines().filter(|l| l.contains("not used")).collect();
        assert_eq!(refusal.len(), 1, "{err}");
        assert!(refusal[0].contains("writable by group or others"), "{err}");
        assert!(err.contains(COMPILED), "{err}");
    }
    assert!(cache_files(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

/// `water client -t ss` → `water server -t ss` → echo, both with the
/// cache, started twice: the first server compiles, the client started
/// after it reads what it wrote, the second time both read, and 1 MiB goes
/// through byte for byte each time.
#[test]
fn client_and_server_read_the_cache_at_their_second_start() {
    let root = temp_dir("cc-ss");
    let dir = root.join("cache");
    let cache = dir.to_str().unwrap();
    let echo = echo_server().to_string();
    let ss = "method=chacha20-ietf-poly1305\npassword=compile cache\n";
    let (server_config, client_config) = (root.join("server.conf"), root.join("client.conf"));
    std::fs::write(&server_config, ss).unwrap();
    // The client's end names the target; the server forwards to --forward.
    std::fs::write(&client_config, format!("{ss}target={echo}\n")).unwrap();
    let (server_config, client_config) = (server_config.to_str().unwrap(), client_config.to_str().unwrap());
    let info = [("WATER_LOG", "info")];
    for (round, server_origin) in [(1, COMPILED), (2, READ)] {
        let (server, server_addr) = Proc::listening_with(
            &[
                "server",
                "-t",
                "ss",
                "--config",
                server_config,
                "--listen",
                "127.0.0.1:0",
                "--forward",
                &echo,
                "--compile-cache",
                cache,
            ],
            &info,
        );
        let server_addr = server_addr.to_string();
        let (client, client_addr) = Proc::listening_with(
            &[
                "client",
                "-t",
                "ss",
                "--config",
                client_config,
                "--listen",
                "127.0.0.1:0",
                "--remote",
                &server_addr,
                "--compile-cache",
                cache,
            ],
            &info,
        );
        let sent = pattern(1 << 20, round);
        assert!(exchange(client_addr, &sent) == sent, "round {round}: differs");
        for (who, p, want) in [("server", &server, server_origin), ("client", &client, READ)] {
            p.wait_stderr(LIMIT, |l| l.contains(want))
                .unwrap_or_else(|err| panic!("round {round}, {who}: no {want:?} in\n{err}"));
        }
        assert_eq!(cache_files(&dir).len(), 1);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn pt_takes_the_flag() {
    let root = temp_dir("cc-pt");
    let dir = root.join("cache");
    for (round, want) in [(1, COMPILED), (2, READ)] {
        let state = root.join(format!("state-{round}"));
        let mut pt = Proc::start(
            WATER,
            &["pt", "--compile-cache", dir.to_str().unwrap()],
            &[
                ("TOR_PT_MANAGED_TRANSPORT_VER", "1"),
                ("TOR_PT_STATE_LOCATION", state.to_str().unwrap()),
                ("TOR_PT_CLIENT_TRANSPORTS", "reverse"),
                ("TOR_PT_EXIT_ON_STDIN_CLOSE", "1"),
                ("WATER_LOG", "info"),
            ],
        );
        let lines = pt.lines_until(LIMIT, |l| l == "CMETHODS DONE");
        assert!(lines.iter().any(|l| l.starts_with("CMETHOD reverse socks5 ")), "{lines:?}");
        let log = state.join("water-pt.log");
        wait_file_line(&log, LIMIT, |l| l.contains(want))
            .unwrap_or_else(|text| panic!("round {round}: {text}"));
        assert_eq!(cache_files(&dir).len(), 1);
        drop(pt);
    }
    let _ = std::fs::remove_dir_all(&root);
}
