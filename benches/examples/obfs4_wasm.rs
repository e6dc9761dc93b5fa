//! obfs4's primitives inside wasm, one at a time, under this host's engine:
//! `test-guests/obfs4-check` runs N units of one primitive during
//! `_water_init` (`work=KIND:N`), and the time of that init, less the same
//! init with no work, is the primitive's. Kinds taken in turn, medians of
//! ROUNDS (the guest's documentation says what each unit is):
//!
//! - `box`: the obfs4 guest's secretbox, `watm_aead::salsa` (SIMD128
//!   XSalsa20, two-lane Poly1305), sealing 1430-byte packets (a full
//!   frame's), a fresh nonce each;
//! - `rustcrypto`: RustCrypto's `crypto_secretbox` doing the same, compiled
//!   into the same module (its portable code);
//! - `box-open`: a seal and its open;
//! - `box-16k`: `box` in 16 KiB messages (what a frame's size costs);
//! - `siphash`: one frame's length mask (SipHash-2-4 OFB block);
//! - `hmac`: HMAC-SHA256 over 8 KiB (a padded handshake message);
//! - `hmac-short`: HMAC-SHA256 of 32 bytes (a handshake mark);
//! - `keypair`: one attempt at an Elligator2-representable key pair;
//! - `decode`: a representative to its public key;
//! - `x25519`: one Diffie-Hellman.
//!
//! `cargo run --release -p water-bench --example obfs4_wasm -- [MIB] [ROUNDS]`

use std::time::{Duration, Instant};

/// A kind, its `N` for a run of `mib` MiB, and how many operations that is.
struct Kind {
    name: &'static str,
    n: u32,
    ops: f64,
}

const PACKET: f64 = 1430.0;

fn kinds(mib: u32) -> Vec<Kind> {
    let frames = f64::from(mib) * f64::from((1u32 << 20) / 1430);
    vec![
        Kind { name: "box", n: mib, ops: frames },
        Kind { name: "rustcrypto", n: mib, ops: frames },
        Kind { name: "box-open", n: mib, ops: frames },
        Kind { name: "box-16k", n: mib, ops: f64::from(mib * 64) },
        Kind { name: "siphash", n: mib * 300, ops: f64::from(mib * 300) * 1000.0 },
        Kind { name: "hmac", n: mib, ops: f64::from(mib * 128) },
        Kind { name: "hmac-short", n: mib * 4, ops: f64::from(mib * 4) * 1000.0 },
        Kind { name: "keypair", n: mib * 40, ops: f64::from(mib * 40) },
        Kind { name: "decode", n: mib * 40, ops: f64::from(mib * 40) },
        Kind { name: "x25519", n: mib * 40, ops: f64::from(mib * 40) },
    ]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), water::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let wasm = watm_artifacts::OBFS4_CHECK.wasm;
    let config = |work: Option<String>| {
        let cfg = water::Config::default().setup_timeout(Duration::from_secs(300));
        match work {
            Some(work) => cfg.transport_config(work),
            None => cfg,
        }
    };
    let kinds = kinds(mib);
    let base = water::Watm::new(wasm, config(None))?;
    let watms: Vec<water::Watm> = kinds
        .iter()
        .map(|k| water::Watm::new(wasm, config(Some(format!("work={}:{}", k.name, k.n)))))
        .collect::<Result<_, _>>()?;
    let mut base_times = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
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
    println!("obfs4's primitives in wasm, median of {rounds} (init alone {base:.1?}):");
    // Seconds per operation of each kind.
    let per_op: Vec<f64> =
        kinds.iter().zip(times).map(|(k, t)| median(t).saturating_sub(base).as_secs_f64() / k.ops).collect();
    let at = |name: &str| per_op[kinds.iter().position(|k| k.name == name).unwrap()];
    let mibs = |secs_per_frame: f64| PACKET / secs_per_frame / f64::from(1u32 << 20);
    let (ours, theirs) = (at("box"), at("rustcrypto"));
    println!(
        "  secretbox seal, watm_aead::salsa: {:6.0} MiB/s  {:5.2} us per 1430-byte packet",
        mibs(ours),
        ours * 1e6
    );
    println!(
        "  secretbox seal, crypto_secretbox: {:6.0} MiB/s  {:5.2} us  (watm_aead::salsa {:.2} x of it)",
        mibs(theirs),
        theirs * 1e6,
        theirs / ours
    );
    let big = at("box-16k");
    println!(
        "  secretbox seal, watm_aead::salsa, 16 KiB messages: {:6.0} MiB/s  ({:.2} x the 1430-byte rate)",
        16384.0 / big / f64::from(1u32 << 20),
        (16384.0 / big) / (PACKET / ours)
    );
    let open = at("box-open") - ours;
    println!("  secretbox open (seal+open less seal): {:6.0} MiB/s  {:5.2} us", mibs(open), open * 1e6);
    let sip = at("siphash");
    println!(
        "  siphash length mask: {:6.1} ns per frame  ({:.1} % of a packet's seal)",
        sip * 1e9,
        100.0 * sip / ours
    );
    let hmac = at("hmac");
    println!(
        "  hmac-sha256, 8 KiB: {:6.0} MiB/s  {:5.1} us per message",
        8192.0 / hmac / f64::from(1u32 << 20),
        hmac * 1e6
    );
    println!("  hmac-sha256, 32 bytes: {:6.2} us", at("hmac-short") * 1e6);
    let (pair, decode, dh) = (at("keypair"), at("decode"), at("x25519"));
    println!("  elligator2 key pair attempt: {:6.1} us (about two per key pair)", pair * 1e6);
    println!("  elligator2 representative to key: {:6.1} us", decode * 1e6);
    println!("  x25519: {:6.1} us", dh * 1e6);
    // One end's curve work per handshake: a key pair (two attempts on
    // average), the peer's representative, and two Diffie-Hellmans.
    let curve = 2.0 * pair + decode + 2.0 * dh;
    println!("  one end's curve work per handshake (2 attempts, 1 decode, 2 x25519): {:6.0} us", curve * 1e6);
    Ok(())
}
