//! The SDK's config size limit, `water_guest::MAX_CONFIG` (16 KiB), through
//! a real guest: a config of exactly that size is read whole; one byte more
//! fails `_water_init` with `fbig` rather than being cut.

mod support;

use water::{Config, Watm};
use water_guest::MAX_CONFIG;

use support::{XOR_KEY, bounded, echo_server, exchange};

/// `key=<XOR_KEY>` padded with blank lines (skipped by the grammar) to `len`
/// bytes, the key last so that a truncated config would lose it.
fn padded(len: usize) -> Vec<u8> {
    let pair = format!("key={XOR_KEY}");
    let mut config = vec![b'\n'; len - pair.len()];
    config.extend_from_slice(pair.as_bytes());
    config
}

async fn round_trip(config: Vec<u8>) -> Result<Vec<u8>, water::Error> {
    let g = watm_artifacts::Guest::named("xor").unwrap();
    let watm = Watm::new(g.wasm, Config::default().transport_config(config))?;
    let echo = echo_server().await;
    let conn = water::Dialer::new(&watm)?.dial(echo.to_string()).await?;
    Ok(exchange(conn, b"sixteen kibibytes").await?)
}

#[tokio::test]
async fn a_config_of_max_config_bytes_is_read_whole_and_one_more_is_refused() {
    bounded(async {
        assert_eq!(MAX_CONFIG, 16 * 1024);
        assert_eq!(round_trip(padded(MAX_CONFIG)).await.unwrap(), b"sixteen kibibytes");
        let err = round_trip(padded(MAX_CONFIG + 1)).await.unwrap_err().to_string();
        assert!(err.contains("fbig") && err.contains("larger than 16 KiB"), "{err}");
    })
    .await;
}
