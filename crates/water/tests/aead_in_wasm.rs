//! `watm-aead`'s SIMD128 ChaCha20 checked where it runs for real: inside a
//! wasm module under this host. On the host, `cargo test -p watm-aead` runs
//! the same algorithm on plain words; only in wasm are the `v128` lanes,
//! shuffles and shifts real. The test-only `aead-check` guest seals RFC
//! 8439's vector and ~1,100 messages of every short length and chunk sizes
//! up to 16383 bytes with `watm-aead` and with RustCrypto's crate compiled
//! beside it, in `_water_init`, and refuses to start on the first
//! difference. Then a connection carries bytes through it, so the check
//! runs as a real dial does.

mod support;

use water::{Config, Error, Watm};

use support::{bounded, data, echo_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simd_chacha20_poly1305_matches_rustcrypto_inside_wasm() {
    bounded(async {
        let watm = Watm::new(watm_artifacts::AEAD_CHECK.wasm, Config::default()).unwrap();
        watm.check_init().await.unwrap();
        let echo = echo_server().await;
        let conn = water::Dialer::new(&watm).unwrap().dial(echo.to_string()).await.unwrap();
        let sent = data(64 << 10, 3);
        let back = support::exchange(conn, &sent).await.unwrap();
        assert!(back == sent, "{} bytes back of {}", back.len(), sent.len());
    })
    .await;
}

/// The negative control: one flipped bit of ours must be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_in_wasm_can_fail() {
    bounded(async {
        let watm =
            Watm::new(watm_artifacts::AEAD_CHECK.wasm, Config::default().transport_config("flip=1")).unwrap();
        match watm.check_init().await {
            Err(Error::Guest { export: "_water_init", message: Some(m), .. }) => {
                assert!(m.contains("differs from RustCrypto"), "{m}");
            }
            other => panic!("a flipped bit passed the check: {other:?}"),
        }
    })
    .await;
}
