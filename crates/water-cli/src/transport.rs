//! Resolving `--transport T` and `--config FILE`.

use std::path::Path;

use anyhow::{Context, bail};
use water::{Config, Watm};

/// The key built-in `xor` uses when no `--config` is given ("WATER" in
/// ASCII). Documented in the README; fine for a demo, useless for hiding
/// anything.
pub const DEMO_XOR_KEY: &str = "5741544552";

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
        let bytes = std::fs::read(path).with_context(|| format!("cannot read config {}", path.display()))?;
        cfg = cfg.transport_config(bytes);
    }
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".wasm");
    if let (false, Some(guest)) = (looks_like_path, watm_artifacts::Guest::named(name_or_path)) {
        if guest.name == "xor" && config.is_none() {
            tracing::warn!("built-in xor without --config: using the demo key {DEMO_XOR_KEY} (not secret)");
            cfg = cfg.transport_config(DEMO_XOR_KEY);
        }
        return Watm::new(guest.wasm, cfg).with_context(|| format!("built-in transport {name_or_path}"));
    }
    if !looks_like_path && !Path::new(name_or_path).exists() {
        bail!(
            "unknown transport `{name_or_path}`: not a built-in ({}) and no such file",
            builtins().join(", ")
        );
    }
    let bytes = std::fs::read(name_or_path).with_context(|| format!("cannot read {name_or_path}"))?;
    Watm::new(&bytes, cfg).with_context(|| name_or_path.to_string())
}
