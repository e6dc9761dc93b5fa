//! The AEAD's speed inside wasm, piece by piece, under this host's engine:
//! `test-guests/aead-check` runs MIB MiB of one primitive in 16 KiB
//! messages during `_water_init` (`work=KIND:MIB`), and the time of that
//! init, less the same init with no work, is the primitive's. Kinds taken in
//! turn, medians:
//!
//! - `seal`: `watm-aead`'s ChaCha20-Poly1305 (SIMD128 ChaCha20 and
//!   Poly1305);
//! - `rustcrypto`: RustCrypto's `chacha20poly1305`, compiled into the same
//!   module (its portable code: the crates have no wasm SIMD backend);
//! - `chacha`, `poly`: the two halves of `seal` alone;
//! - `open`: a seal and its open (open alone is this less `seal`).
//!
//! `cargo run --release -p water-bench --example aead_wasm -- [MIB] [ROUNDS]`

use std::time::{Duration, Instant};

const KINDS: [&str; 5] = ["seal", "rustcrypto", "chacha", "poly", "open"];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), water::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let wasm = watm_artifacts::AEAD_CHECK.wasm;
    let config = |work: Option<&str>| {
        let cfg = water::Config::default().setup_timeout(Duration::from_secs(300));
        match work {
            Some(kind) => cfg.transport_config(format!("work={kind}:{mib}")),
            None => cfg,
        }
    };
    let base = water::Watm::new(wasm, config(None))?;
    let watms: Vec<water::Watm> =
        KINDS.iter().map(|k| water::Watm::new(wasm, config(Some(k)))).collect::<Result<_, _>>()?;
    let mut base_times = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); KINDS.len()];
    for _ in 0..rounds {
        let t = Instant::now();
        base.check_init().await?;
        base_times.push(t.elapsed());
        for (i, watm) in watms.iter().enumerate() {
            let t = Instant::now();
            watm.check_init().await?;
            times[i].push(t.elapsed());
        }
    }
    let base = median(base_times);
    println!("aead in wasm, {mib} MiB in 16 KiB messages, median of {rounds} (init alone {base:.1?}):");
    let speed = |d: Duration| f64::from(mib) / d.saturating_sub(base).as_secs_f64();
    let seal = speed(median(times[0].clone()));
    for (kind, t) in KINDS.iter().zip(times) {
        let s = speed(median(t));
        println!("  {kind:>10}: {s:6.0} MiB/s  ({:.2} x seal)", s / seal);
    }
    Ok(())
}
