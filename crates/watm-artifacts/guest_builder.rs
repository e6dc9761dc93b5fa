//! Builds every crate under `guests/` for `wasm32-wasip1`.
//!
//! Shared, by `#[path]`, between this crate's build script (so that
//! `cargo test` needs no earlier step) and `cargo xtask build-guests` (so that
//! the xtask crate keeps no dependencies). It uses only `std`.
//!
//! Convention: the guest in `guests/<name>/` is the package `watm-<name>`, and
//! its module is `watm_<name>.wasm`.

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
}

/// Why a build failed, with the fix where there is one.
#[derive(Debug)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The guests under `root/guests`, sorted by name.
pub fn guest_names(root: &Path) -> Result<Vec<String>, BuildError> {
    let dir = root.join("guests");
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
    let names = guest_names(root)?;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(target_dir);
    for name in &names {
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
        .map(|name| {
            let path = out_dir.join(format!("watm_{name}.wasm"));
            if path.is_file() {
                Ok(Built { name, path })
            } else {
                Err(BuildError(format!("cargo succeeded but {} is missing", path.display())))
            }
        })
        .collect()
}
