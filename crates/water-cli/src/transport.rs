//! Resolving `--transport T` and `--config FILE`.

use std::path::Path;

use anyhow::{Context, bail};
use water::{Config, Watm};

/// The key built-in `xor` uses when no `--config` is given ("WATER" in
/// ASCII). Documented in the README; fine for a demo, useless for hiding
/// anything.
pub const DEMO_XOR_KEY: &str = "5741544552";

/// Largest `--config` file read (a transport's config is a key or a few
/// parameters; this only keeps a wrong path from reading a disk image).
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a whole file of at most `max` bytes; a larger one is an error
/// (before reading it).
fn read_capped(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("larger than {max} bytes");
    }
    Ok(bytes)
}

/// Built-in transport names.
pub fn builtins() -> Vec<&'static str> {
    watm_artifacts::GUESTS.iter().map(|g| g.name).collect()
}

/// Loads `name_or_path` with the given config file.
pub fn load(name_or_path: &str, config: Option<&Path>) -> anyhow::Result<Watm> {
    load_with(name_or_path, config, Config::default())
}

/// [`load`], starting from `cfg` (the tunnels' limits).
pub fn load_with(name_or_path: &str, config: Option<&Path>, mut cfg: Config) -> anyhow::Result<Watm> {
    if let Some(path) = config {
        let bytes = read_capped(path, MAX_CONFIG_FILE)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        cfg = cfg.transport_config(bytes);
    }
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".wasm");
    if let (false, Some(guest)) = (looks_like_path, watm_artifacts::Guest::named(name_or_path)) {
        if guest.name == "xor" && config.is_none() {
            tracing::warn!("built-in xor without --config: using the demo key {DEMO_XOR_KEY} (not secret)");
            // key=value, so that a connection's `key=` argument can override it.
            cfg = cfg.transport_config(format!("key={DEMO_XOR_KEY}"));
        }
        return Watm::new(guest.wasm, cfg).with_context(|| format!("built-in transport {name_or_path}"));
    }
    if !looks_like_path && !Path::new(name_or_path).exists() {
        bail!(
            "unknown transport `{name_or_path}`: not a built-in ({}) and no such file",
            builtins().join(", ")
        );
    }
    let bytes = read_capped(Path::new(name_or_path), cfg.module_size_limit())
        .with_context(|| format!("cannot read {name_or_path}"))?;
    Watm::new(&bytes, cfg).with_context(|| name_or_path.to_string())
}
