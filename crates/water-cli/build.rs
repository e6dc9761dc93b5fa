//! Which outside peers the tests can run against.
//!
//! Some tests start independent implementations (shadowsocks-libev, tor,
//! obfs4proxy, curl). On a machine without one, its tests are compiled as
//! `#[ignore]`d with a reason that names what is missing and how to get it
//! (`cfg_attr(not(peer_X), ignore = "...")`), so `cargo test --workspace`
//! passes there and libtest lists each skipped test and counts it. Under CI
//! (`CI=true` or `WATER_REQUIRE_PEERS=1`, which `.ci/run` sets) every peer
//! is required: its cfg is set whether it is found or not, and a missing
//! peer fails its tests with the same message.
//!
//! libtest has no way to skip a test at run time and count it as skipped,
//! hence a build script: a cfg is the only switch `#[ignore]` can read.

use std::path::{Path, PathBuf};

/// A peer: its cfg name, the programs it needs, and how to get them.
struct Peer {
    cfg: &'static str,
    programs: &'static [&'static str],
    root: bool,
    how: &'static str,
}

const PEERS: &[Peer] = &[
    Peer {
        cfg: "peer_ss_libev",
        programs: &["ss-server", "ss-tunnel"],
        root: false,
        how: "apt-get install shadowsocks-libev",
    },
    Peer {
        cfg: "peer_tor",
        programs: &["tor", "tor-gencert", "unshare", "ip"],
        root: true,
        how: "apt-get install tor iproute2 util-linux, and run as root (network namespaces)",
    },
    Peer {
        cfg: "peer_obfs4proxy",
        programs: &["obfs4proxy"],
        root: false,
        how: "apt-get install obfs4proxy",
    },
    Peer {
        cfg: "peer_curl",
        programs: &["curl", "python3"],
        root: false,
        how: "apt-get install curl python3",
    },
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=WATER_REQUIRE_PEERS");
    let mut path_dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    path_dirs.dedup();
    // A program installed later lands in a PATH directory: cargo rescans
    // the (existing) ones, so the next build notices it.
    for dir in path_dirs.iter().filter(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("WATER_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let root = is_root();
    for peer in PEERS {
        println!("cargo::rustc-check-cfg=cfg({})", peer.cfg);
        let missing: Vec<&str> = peer
            .programs
            .iter()
            .copied()
            .filter(|p| !path_dirs.iter().any(|d| is_executable(&d.join(p))))
            .collect();
        let found = missing.is_empty() && (!peer.root || (root && can_unshare_net()));
        if found || required {
            println!("cargo::rustc-cfg={}", peer.cfg);
        }
        if !found {
            let what =
                if missing.is_empty() { "root (unshare --net)".to_string() } else { missing.join(", ") };
            let verdict =
                if required { "required (CI): its tests will fail" } else { "its tests are skipped" };
            println!("cargo::warning=missing {what}: {verdict}; to run them: {}", peer.how);
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a loopback-only network namespace can be made here (root in a
/// container may still lack the capability).
fn can_unshare_net() -> bool {
    std::process::Command::new("unshare")
        .args(["--net", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this build runs as root (network namespaces need it), read from
/// `/proc/self/status` so that the build script needs no dependency.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .is_some_and(|euid| euid == "0")
    })
}
