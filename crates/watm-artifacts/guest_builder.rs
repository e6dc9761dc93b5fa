//! Builds every crate under `guests/` (and, for tests, `test-guests/`) for
//! `wasm32-wasip1`.
//!
//! Shared, by `#[path]`, between this crate's build script (so that
//! `cargo test` needs no earlier step) and `cargo xtask build-guests` (so that
//! the xtask crate keeps no dependencies). It uses only `std`.
//!
//! Convention: the guest in `guests/<name>/` is the package `watm-<name>`, and
//! its module is `watm_<name>.wasm`; its feature `v1` builds it as WATM v1
//! (into a target directory of its own). Guests under `test-guests/<name>/`
//! follow the same convention; they are built for the tests only (never a
//! built-in transport of the `water` command).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const TARGET: &str = "wasm32-wasip1";

/// The Cargo profile guests are built with (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "watm";

/// Where a kind of guest lives and how its packages are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `guests/<name>`, package `watm-<name>`: the reference transports,
    /// embedded in the `water` command.
    Reference,
    /// `test-guests/<name>`, package `watm-<name>`: guests that only tests
    /// load (foreign shapes, other toolchains' runtimes, SDK examples).
    Test,
    /// The reference transports again, built as WATM v1 (each guest's
    /// feature `v1`), for v1 hosts such as water-go's and Lantern's. Built
    /// into a target directory of their own: the file names are the v0
    /// builds'.
    ReferenceV1,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Reference | Kind::ReferenceV1 => "guests",
            Kind::Test => "test-guests",
        }
    }

    /// Where under the build's target directory this kind's cargo run
    /// writes.
    fn target_dir(self, target_dir: &Path) -> PathBuf {
        match self {
            Kind::ReferenceV1 => target_dir.join("v1"),
            Kind::Reference | Kind::Test => target_dir.to_path_buf(),
        }
    }

    fn package(self, name: &str) -> String {
        format!("watm-{name}")
    }
}

/// One built guest.
#[derive(Debug, Clone)]
pub struct Built {
    /// The directory name under `guests/` or `test-guests/` (`"xor"`).
    pub name: String,
    /// Which kind of guest it is.
    pub kind: Kind,
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

/// The guests of `kind` under `root`, sorted by name (none when the
/// directory does not exist).
pub fn guest_names(root: &Path, kind: Kind) -> Result<Vec<String>, BuildError> {
    let dir = root.join(kind.dir());
    if !dir.is_dir() {
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
        let package = kind.package(&name);
        if !text.contains(&format!("name = \"{package}\"")) {
            return Err(BuildError(format!(
                "{} must name its package `{package}` ({}/<name> is package {})",
                manifest.display(),
                kind.dir(),
                kind.package("<name>")
            )));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn has_target(rustc: &str) -> Result<bool, BuildError> {
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| BuildError(format!("cannot run {rustc}: {e}")))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(out.status.success() && !libdir.is_empty() && Path::new(&libdir).is_dir())
}

/// Makes sure the toolchain `rustc` belongs to has the wasm target.
///
/// rustup adds `rust-toolchain.toml`'s targets only when it installs the
/// toolchain itself, so a machine that already had the pinned toolchain
/// lacks the target. Where rustup is present this adds it (`say` is told
/// first, so that the build says why it pauses); elsewhere the error says
/// how to get it.
pub fn ensure_target(rustc: &str, root: &Path, say: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    if has_target(rustc)? {
        return Ok(());
    }
    let missing = || {
        BuildError(format!(
            "the {TARGET} target is not installed for this toolchain, and rustup could not add it.\n\
             Fix: run `rustup target add {TARGET}` (or `rustup toolchain install` in the \
             repository root, which installs what rust-toolchain.toml lists), or install the \
             {TARGET} standard library for your Rust toolchain by its own means."
        ))
    };
    say(&format!("the {TARGET} target is missing: running `rustup target add {TARGET}`"));
    // rustup resolves the toolchain from rust-toolchain.toml in `root`; the
    // outer cargo's RUSTUP_TOOLCHAIN (set by rustup's proxy) names the same.
    let added = Command::new("rustup").current_dir(root).args(["target", "add", TARGET]).status();
    match added {
        Ok(status) if status.success() && has_target(rustc)? => Ok(()),
        _ => Err(missing()),
    }
}

/// Builds every guest of the `kinds` with `cargo` into `target_dir` and
/// returns the modules. `say` gets progress worth telling (a target being
/// installed).
pub fn build(
    cargo: &str,
    rustc: &str,
    root: &Path,
    target_dir: &Path,
    kinds: &[Kind],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Built>, BuildError> {
    ensure_target(rustc, root, say)?;
    let mut guests = Vec::new();
    // Features unify within a cargo run, and a test guest's std
    // dependencies (mio turns on `wasi/std`) would pull `std` into the
    // no_std SDK of the others: the reference guests (all no_std) share one
    // run, each test guest has its own.
    let mut runs: Vec<(Kind, Vec<String>)> = Vec::new();
    for &kind in kinds {
        let names = guest_names(root, kind)?;
        match kind {
            Kind::Reference | Kind::ReferenceV1 if !names.is_empty() => runs.push((kind, names)),
            Kind::Reference | Kind::ReferenceV1 => {}
            Kind::Test => runs.extend(names.into_iter().map(|name| (kind, vec![name]))),
        }
    }
    for (kind, names) in runs {
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root)
            .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
            .arg(kind.target_dir(target_dir));
        for name in &names {
            cmd.args(["-p", &kind.package(name)]);
        }
        if kind == Kind::ReferenceV1 {
            cmd.args(["--features", "v1"]);
        }
        // A build script runs with the outer build's flags in the
        // environment; they are for the host target and would override the
        // wasm flags in .cargo/config.toml.
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
            let v1 = if kind == Kind::ReferenceV1 { " as v1" } else { "" };
            return Err(BuildError(format!(
                "building the {}{v1} failed ({status}); see the cargo output above",
                kind.dir()
            )));
        }
        guests.extend(names.into_iter().map(|name| (kind, name)));
    }
    guests
        .into_iter()
        .map(|(kind, name)| {
            let out_dir = kind.target_dir(target_dir).join(TARGET).join(PROFILE);
            let path = out_dir.join(format!("{}.wasm", kind.package(&name).replace('-', "_")));
            if path.is_file() {
                Ok(Built { name, kind, path })
            } else {
                Err(BuildError(format!("cargo succeeded but {} is missing", path.display())))
            }
        })
        .collect()
}
