//! Which modules an operator lets run: `--transport-sha256` pins a module
//! to its hash, `--trusted-key` requires a minisign signature beside it
//! (`<module>.minisig`) by one of the keys given. Checked on the bytes that
//! are then compiled, at start and at every reload.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Largest signature file read (a minisign signature is about 300 bytes
/// plus its comments).
const MAX_SIGNATURE_FILE: u64 = 64 * 1024;

/// The operator's rules for one transport.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The module's SHA-256, when pinned.
    pub sha256: Option<[u8; 32]>,
    /// Keys any one of which must have signed the module (several during a
    /// key rotation). Empty: no signature needed.
    pub keys: Vec<TrustedKey>,
}

/// A minisign public key, with the file it came from (for messages).
#[derive(Clone)]
pub struct TrustedKey {
    key: minisign_verify::PublicKey,
    file: PathBuf,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey").field("file", &self.file).finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// Reads a minisign public key file (`minisign -G` writes one: a
    /// comment line and the key), or a file holding the key's base64 line
    /// alone.
    pub fn from_file(path: &Path) -> anyhow::Result<TrustedKey> {
        let text = crate::transport::read_capped(path, MAX_SIGNATURE_FILE)
            .with_context(|| format!("cannot read trusted key {}", path.display()))?;
        let text =
            String::from_utf8(text).with_context(|| format!("trusted key {}: not text", path.display()))?;
        let key = minisign_verify::PublicKey::decode(&text)
            .or_else(|_| minisign_verify::PublicKey::from_base64(text.trim()))
            .map_err(|e| {
                anyhow::anyhow!("trusted key {}: not a minisign public key ({e})", path.display())
            })?;
        Ok(TrustedKey { key, file: path.to_path_buf() })
    }
}

/// `--transport-sha256`'s value: 64 hex digits.
pub fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{hex:?} is not a SHA-256 (64 hex digits)"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Trust {
    /// Checks `module`, the bytes of transport `name` (a built-in, `file`
    /// `None`, or the module file `file`). A built-in is part of the
    /// `water` binary: it needs no signature (it is trusted as the binary
    /// is), but a pinned hash applies to it too.
    pub fn check(&self, name: &str, file: Option<&Path>, module: &[u8]) -> anyhow::Result<()> {
        if let Some(want) = self.sha256 {
            let got: [u8; 32] = Sha256::digest(module).into();
            if got != want {
                bail!(
                    "{name}: its SHA-256 is {}, not the pinned {} (--transport-sha256): refused",
                    hex(&got),
                    hex(&want)
                );
            }
        }
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(file) = file else {
            tracing::info!("{name}: built in, trusted as the water binary is (no signature needed)");
            return Ok(());
        };
        let sig_path = signature_path(file);
        let text = match crate::transport::read_capped(&sig_path, MAX_SIGNATURE_FILE) {
            Ok(text) => text,
            Err(e) => bail!(
                "{name}: no readable signature {} ({e}); --trusted-key requires one: refused",
                sig_path.display()
            ),
        };
        let signature = String::from_utf8(text)
            .ok()
            .and_then(|t| minisign_verify::Signature::decode(&t).ok())
            .with_context(|| {
                format!("{name}: {} is not a minisign signature: refused", sig_path.display())
            })?;
        // Legacy (non-prehashed) signatures are refused: minisign has made
        // prehashed ones by default since 0.9.
        if self.keys.iter().any(|k| k.key.verify(module, &signature, false).is_ok()) {
            return Ok(());
        }
        let keys: Vec<_> = self.keys.iter().map(|k| k.file.display().to_string()).collect();
        bail!(
            "{name}: the signature {} is not by a trusted key ({}): refused",
            sig_path.display(),
            keys.join(", ")
        )
    }
}

/// `<module>.minisig`, as `minisign -S -m <module>` writes it.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_and_print() {
        let h = parse_sha256(&"ab".repeat(32)).unwrap();
        assert_eq!(h, [0xab; 32]);
        assert_eq!(hex(&h), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_pinned_hash_refuses_other_bytes() {
        let trust = Trust { sha256: Some(Sha256::digest(b"module").into()), keys: Vec::new() };
        trust.check("m", None, b"module").unwrap();
        let e = trust.check("m", None, b"other").unwrap_err().to_string();
        assert!(e.contains("not the pinned") && e.contains("refused"), "{e}");
    }

    #[test]
    fn the_signature_sits_beside_the_module() {
        assert_eq!(signature_path(Path::new("/etc/water/ss.wasm")), Path::new("/etc/water/ss.wasm.minisig"));
    }
}
