//! Resolving `--transport T` and `--config FILE`, and loading the module
//! (with `--compile-cache DIR`, every command's transports go through it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use water::{Config, Watm};

pub use crate::trust::Trust;

/// The key built-in `xor` uses when no `--config` is given ("WATER" in
/// ASCII). Documented in the README; fine for a demo, useless for hiding
/// anything.
pub const DEMO_XOR_KEY: &str = "5741544552";

/// Largest `--config` file read (a transport's config is a key or a few
/// parameters; this only keeps a wrong path from reading a disk image).
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a whole file of at most `max` bytes; a larger one is an error
/// (before reading it).
pub fn read_capped(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("larger than {max} bytes");
    }
    Ok(bytes)
}

/// `--compile-cache DIR`, set once at start by `main`: every transport this
/// process loads (`load_trusted`, at start and at reload) keeps its
/// compiled code there.
static COMPILE_CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Sets `--compile-cache` for every later load; only the first call counts.
pub fn set_compile_cache(dir: Option<PathBuf>) {
    let _ = COMPILE_CACHE.set(dir);
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
pub fn load_with(name_or_path: &str, config: Option<&Path>, cfg: Config) -> anyhow::Result<Watm> {
    load_trusted(name_or_path, config, cfg, &Trust::default())
}

/// A transport as the operator named it, which can be read again (a
/// reload reads the module and its config anew, under the same rules).
#[derive(Clone, Debug)]
pub struct Source {
    /// A built-in name or a module file.
    pub transport: String,
    /// The config file.
    pub config: Option<PathBuf>,
    /// The hash and signature rules.
    pub trust: Trust,
    /// The library options (limits) it is loaded with.
    pub library: Config,
}

impl Source {
    /// Reads and checks the module and its config, compiles it (on a
    /// blocking thread: compiling takes a core for a while, and the
    /// connections' tasks must not wait behind it), then runs its init
    /// once with the config in a throwaway instance, so that a bad config
    /// is an error here rather than on each connection.
    pub async fn load(&self) -> anyhow::Result<Watm> {
        let me = self.clone();
        let watm = tokio::task::spawn_blocking(move || {
            load_trusted(&me.transport, me.config.as_deref(), me.library, &me.trust)
        })
        .await
        .context("the loading thread failed")??;
        watm.check_init().await.context("the transport rejects its configuration")?;
        Ok(watm)
    }
}

/// [`load_with`], with the module's bytes checked against `trust` before
/// they are compiled (or their compiled code read from `--compile-cache`,
/// whose key is the same bytes' hash).
pub fn load_trusted(
    name_or_path: &str,
    config: Option<&Path>,
    cfg: Config,
    trust: &Trust,
) -> anyhow::Result<Watm> {
    let Some(dir) = COMPILE_CACHE.get().cloned().flatten() else {
        return load_module(name_or_path, config, cfg, trust);
    };
    let watm = load_module(name_or_path, config, cfg.compile_cache(Some(dir.clone())), trust)?;
    match watm.code_origin() {
        water::CodeOrigin::Cache => {
            tracing::info!(
                "transport {name_or_path}: compiled code read from the compile cache {}",
                dir.display()
            )
        }
        _ => tracing::info!(
            "transport {name_or_path}: compiled (no usable entry in the compile cache {})",
            dir.display()
        ),
    }
    Ok(watm)
}

fn load_module(
    name_or_path: &str,
    config: Option<&Path>,
    mut cfg: Config,
    trust: &Trust,
) -> anyhow::Result<Watm> {
    if let Some(path) = config {
        let bytes = read_capped(path, MAX_CONFIG_FILE)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let bytes = if name_or_path == "obfs4" && bytes.trim_ascii_start().starts_with(b"{") {
            obfs4_state_to_config(&bytes)
                .with_context(|| format!("cannot read {} as obfs4_state.json", path.display()))?
        } else {
            bytes
        };
        cfg = cfg.transport_config(bytes);
    }
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".wasm");
    if let (false, Some(guest)) = (looks_like_path, watm_artifacts::Guest::named(name_or_path)) {
        if guest.name == "xor" && config.is_none() {
            tracing::warn!("built-in xor without --config: using the demo key {DEMO_XOR_KEY} (not secret)");
            // key=value, so that a connection's `key=` argument can override it.
            cfg = cfg.transport_config(format!("key={DEMO_XOR_KEY}"));
        }
        trust.check(name_or_path, None, guest.wasm)?;
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
    trust.check(name_or_path, Some(Path::new(name_or_path)), &bytes)?;
    Watm::new(&bytes, cfg).with_context(|| name_or_path.to_string())
}

/// obfs4proxy's `obfs4_state.json` (one flat JSON object: `node-id`,
/// `private-key`, `public-key`, `drbg-seed` as strings, `iat-mode` as a
/// number) as the built-in obfs4's `key=value` config, so that a bridge
/// identity moves between obfs4proxy and `water` unchanged. Strings with
/// escapes, nested values and anything else are refused.
pub fn obfs4_state_to_config(json: &[u8]) -> anyhow::Result<Vec<u8>> {
    let text = std::str::from_utf8(json).context("not UTF-8")?.trim();
    let body = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).context("not a JSON object")?;
    let mut out = Vec::new();
    for pair in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(':').with_context(|| format!("`{pair}` is not \"key\": value"))?;
        let unquote =
            |s: &str| s.trim().strip_prefix('"').and_then(|s| s.strip_suffix('"')).map(str::to_string);
        let key = unquote(key).with_context(|| format!("key `{}` is not a string", key.trim()))?;
        let value = match unquote(value) {
            Some(v) => v,
            None if value.trim().bytes().all(|b| b.is_ascii_digit()) => value.trim().to_string(),
            None => bail!("value of `{key}` is neither a string nor a number"),
        };
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !plain(&key) || !plain(&value) {
            bail!("`{key}`: unexpected characters (escapes are not supported)");
        }
        out.extend_from_slice(format!("{key}={value}\n").as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obfs4_state_files_become_configs() {
        let json =
            br#"{"node-id":"0e65","private-key":"0cea","public-key":"3aaf","drbg-seed":"0e90","iat-mode":1}"#;
        let config = obfs4_state_to_config(json).unwrap();
        assert_eq!(
            String::from_utf8(config).unwrap(),
            "node-id=0e65\nprivate-key=0cea\npublic-key=3aaf\ndrbg-seed=0e90\niat-mode=1\n"
        );
        assert!(obfs4_state_to_config(b"node-id=1").is_err());
        assert!(obfs4_state_to_config(br#"{"a":"b\"c"}"#).is_err());
        assert!(obfs4_state_to_config(br#"{"a":{"b":1}}"#).is_err());
    }
}
