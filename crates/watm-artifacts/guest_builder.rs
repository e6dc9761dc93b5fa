//! Builds every crate under `guests/` for `wasm32-wasip1`.
//!
//! Shared, by `#[path]`, between this crate's build script (so that
//! `cargo test` needs no earlier step) and `cargo xtask build-guests` (so that
//! the xtask crate keeps no dependencies). It uses only `std`.
//!
//! Convention: the guest in `guests/<name>/` is the package `watm-<name>`, and
//! its module is `watm_<name>.wasm`. Guests under `test-guests/<name>/`
//! follow the same convention; they are built for the tests only (never a
//! built-in transport of the `water` command).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const TARGET: &str = "wasm32-wasip1";

/// The Cargo profile guests are built with (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "watm";

/// One built guest.
#[derive(Debug, Clone)]
pub struct Built {
    /// The directory name under `guests/` (`"xor"`).
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Whether it came from `test-guests/` (for tests only).
    pub test_only: bool,
}

/// Where the test-only guests live.
pub const TEST_GUESTS: &str = "test-guests";

/// Why a build failed, with the fix where there is one.
#[derive(Debug)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The guests under `root/<dir>` (`guests` or [`TEST_GUESTS`]), sorted by
/// name; none when the directory does not exist.
pub fn guest_names(root: &Path, dir: &str) -> Result<Vec<String>, BuildError> {
    let dir = root.join(dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries =
        std::fs::read_dir(&dir).map_err(|e| BuildError(format!("cannot list {}: {e}", dir.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BuildError(format!("cannot list {}: {e}", dir.display())))?;
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| BuildError(format!("cannot read {}: {e}", manifest.display())))?;
        if !text.contains(&format!("name = \"watm-{name}\"")) {
            return Err(BuildError(format!(
                "{} must name its package `watm-{name}` (guests/<name> is package watm-<name>)",
                manifest.display()
            )));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Checks that the toolchain `rustc` belongs to has the wasm target.
pub fn check_target(rustc: &str) -> Result<(), BuildError> {
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| BuildError(format!("cannot run {rustc}: {e}")))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        return Err(BuildError(format!(
            "the {TARGET} target is not installed for this toolchain.\n\
             Fix: run `rustup target add {TARGET}` (or `rustup toolchain install` in the \
             repository root, which installs what rust-toolchain.toml lists)."
        )));
    }
    Ok(())
}

/// Builds every guest with `cargo` into `target_dir` and returns the modules.
pub fn build(cargo: &str, rustc: &str, root: &Path, target_dir: &Path) -> Result<Vec<Built>, BuildError> {
    check_target(rustc)?;
    let names: Vec<(String, bool)> = guest_names(root, "guests")?
        .into_iter()
        .map(|n| (n, false))
        .chain(guest_names(root, TEST_GUESTS)?.into_iter().map(|n| (n, true)))
        .collect();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(target_dir);
    for (name, _) in &names {
        cmd.args(["-p", &format!("watm-{name}")]);
    }
    // A build script runs with the outer build's flags in the environment;
    // they are for the host target and would override the wasm flags in
    // .cargo/config.toml.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| BuildError(format!("cannot run {cargo}: {e}")))?;
    if !status.success() {
        return Err(BuildError(format!("building the guests failed ({status}); see the cargo output above")));
    }
    let out_dir = target_dir.join(TARGET).join(PROFILE);
    names
        .into_iter()
        .map(|(name, test_only)| {
            let path = out_dir.join(format!("watm_{name}.wasm"));
            if path.is_file() {
                Ok(Built { name, path, test_only })
            } else {
                Err(BuildError(format!("cargo succeeded but {} is missing", path.display())))
            }
        })
        .collect()
}
