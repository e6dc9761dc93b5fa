//! `cargo xtask fuzz --seconds N`: the bounded fuzz tests of
//! `crates/water/tests/fuzz.rs`, each for N seconds instead of the fixed
//! count of cases that `cargo test` gives them, from a fresh seed (the tests print it);
//! `FUZZ_SEED` in the environment replays a run.

use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let seconds = match args {
        [flag, n] if flag == "--seconds" => n
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or(format!("bad --seconds {n:?}"))?,
        [] => 60.0,
        _ => return Err("usage: cargo xtask fuzz [--seconds N]".into()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A fresh seed each run (the tests' own default is fixed); FUZZ_SEED
    // in the environment replays one.
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
        (nanos.unwrap_or(1) as u64).to_string()
    });
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["test", "-p", "water", "--test", "fuzz", "--", "--nocapture", "--test-threads", "1"])
        .env("FUZZ_SECONDS", seconds.to_string())
        .env("FUZZ_SEED", seed)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("the fuzz tests failed ({status})")) }
}
