//! The on-disk compile cache ([`crate::Config::compile_cache`]): a module's
//! compiled code kept in a file, so that a process that loads the same
//! module again deserializes it instead of compiling it.
//!
//! A cache file is native code that this process maps executable: whoever
//! can write it can run code as us. So a file is used only when nobody but
//! our effective uid (or root) can have written it, and only for the key it
//! was written under:
//! - the directory is opened once and checked on that open descriptor
//!   (`fstat`): a directory owned by the effective uid and not writable by
//!   group or others. Otherwise the cache is not used at all (one warning
//!   per load) and nothing is written. A directory it creates gets mode
//!   0700. Files are then opened relative to that descriptor (`openat`), so
//!   a path swapped after the check changes nothing.
//! - a file is opened with `O_NOFOLLOW` (a symlink is refused) and checked
//!   on its descriptor: a regular file owned by the effective uid, not
//!   writable by group or others.
//! - its header names the key it was written for and the SHA-256 of the
//!   code after it; both must match before wasmtime sees a byte (which then
//!   checks its own header: version, target, settings). This catches a
//!   truncated or garbled file and a file copied under another module's
//!   name, not a deliberate forgery by our own uid, which could run code as
//!   us anyway.
//!
//! Files are written whole to a temporary name in the same directory,
//! `fsync`ed, then renamed over the final name (and the directory synced),
//! so a reader sees a complete file or none, and two processes compiling
//! the same module at once each write a complete file (the last rename
//! wins; both are valid).

use std::ffi::CString;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;

/// The first bytes of every cache file; the last byte is the layout's
/// version.
const MAGIC: &[u8; 8] = b"WATERCC\x01";
/// Magic, key, payload length (u64, little-endian), payload SHA-256.
const HEADER: usize = 8 + 32 + 8 + 32;
/// Largest cache file read (a 16 MiB module compiles to far less).
const MAX_FILE: u64 = 1 << 30;

/// What a module's compiled code depends on: its bytes, the engine's
/// compilation settings and target (wasmtime's own compatibility hash,
/// which covers wasmtime's version, the CPU features in use, the tunables
/// such as the memory reservation and epoch interruption), and our crate's
/// version.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key([u8; 32]);

impl Key {
    pub fn new(engine: &Engine, wasm: &[u8]) -> Key {
        /// Feeds what `Hash` writes into SHA-256.
        struct Feed<'a>(&'a mut Sha256);
        impl Hasher for Feed<'_> {
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let mut sha = Sha256::new();
        let mut part = |bytes: &[u8]| {
            sha.update((bytes.len() as u64).to_le_bytes());
            sha.update(bytes);
        };
        part(b"water compile cache");
        part(env!("CARGO_PKG_VERSION").as_bytes());
        part(&Sha256::digest(wasm));
        let mut engine_hash = Sha256::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut Feed(&mut engine_hash));
        part(&engine_hash.finalize());
        Key(sha.finalize().into())
    }

    /// The cache file's name.
    fn file_name(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}.cwasm")
    }
}

/// What the cache holds for a key.
pub(crate) enum Lookup {
    /// A file that passed every check: the serialized module.
    Hit(Vec<u8>),
    /// No file.
    Absent,
    /// A file that failed a check (why), to be recompiled and replaced.
    Rejected(String),
}

/// A checked cache directory, held open.
pub(crate) struct CompileCache {
    dir: OwnedFd,
    path: PathBuf,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `meta` (of an open file) could have been written by someone other
/// than us, if it could.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    let me = euid();
    if meta.uid() != me {
        return Some(format!("owned by uid {}, not ours ({me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    None
}

fn c_name(name: &str) -> CString {
    CString::new(name).expect("cache file names have no NUL")
}

impl CompileCache {
    /// Opens `path` (created with mode 0700 if missing) and checks it;
    /// `Err` says why it is not used.
    pub fn open(path: &Path) -> Result<CompileCache, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| format!("cannot create it: {e}"))?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("cannot open it: {e}"))?;
        let meta = dir.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
        if !meta.is_dir() {
            return Err("not a directory".into());
        }
        if let Some(why) = untrusted(&meta) {
            return Err(why);
        }
        Ok(CompileCache { dir: dir.into(), path: path.to_owned() })
    }

    /// Where `key`'s file is (for logs).
    pub fn file(&self, key: &Key) -> PathBuf {
        self.path.join(key.file_name())
    }

    /// The code stored for `key`, checked (see the module's doc).
    pub fn read(&self, key: &Key) -> Lookup {
        let name = c_name(&key.file_name());
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: `self.dir` is an open directory fd and `name` a
        // NUL-terminated string, both alive for the call.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Lookup::Absent,
                Some(libc::ELOOP) => Lookup::Rejected("a symlink".into()),
                _ => Lookup::Rejected(format!("cannot open it: {e}")),
            };
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(e) => return Lookup::Rejected(format!("cannot stat it: {e}")),
        };
        if !meta.is_file() {
            return Lookup::Rejected("not a regular file".into());
        }
        if let Some(why) = untrusted(&meta) {
            return Lookup::Rejected(why);
        }
        if meta.len() > MAX_FILE {
            return Lookup::Rejected(format!("{} bytes, more than {MAX_FILE}", meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        if let Err(e) = (&mut file).take(MAX_FILE).read_to_end(&mut bytes) {
            return Lookup::Rejected(format!("cannot read it: {e}"));
        }
        match unpack(&bytes, key) {
            Ok(()) => {
                bytes.drain(..HEADER);
                Lookup::Hit(bytes)
            }
            Err(why) => Lookup::Rejected(why.into()),
        }
    }

    /// Stores `payload` (a serialized module) under `key`, replacing any
    /// file there, atomically.
    pub fn write(&self, key: &Key, payload: &[u8]) -> io::Result<()> {
        let final_name = c_name(&key.file_name());
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| io::Error::other(format!("no random temporary name: {e}")))?;
        let temp =
            format!(".{}.{}.{:016x}.tmp", key.file_name(), std::process::id(), u64::from_le_bytes(nonce));
        let temp_name = c_name(&temp);
        let dir = self.dir.as_raw_fd();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `dir` is an open directory fd and `temp_name` a
        // NUL-terminated string, both alive for the call.
        let fd = unsafe { libc::openat(dir, temp_name.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = (|| -> io::Result<()> {
            file.write_all(&header(key, payload))?;
            file.write_all(payload)?;
            file.sync_all()?;
            // SAFETY: both names are NUL-terminated strings relative to the
            // open directory fd `dir`, alive for the call.
            if unsafe { libc::renameat(dir, temp_name.as_ptr(), dir, final_name.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // The rename itself reaches the disk with the directory.
            // SAFETY: `dir` is an open fd.
            unsafe { libc::fsync(dir) };
            Ok(())
        })();
        if written.is_err() {
            // SAFETY: as the rename's; the name is ours (O_EXCL).
            unsafe { libc::unlinkat(dir, temp_name.as_ptr(), 0) };
        }
        written
    }
}

fn header(key: &Key, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..40].copy_from_slice(&key.0);
    h[40..48].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[48..].copy_from_slice(&Sha256::digest(payload));
    h
}

/// Checks a whole file's header against `key` and its payload.
fn unpack(bytes: &[u8], key: &Key) -> Result<(), &'static str> {
    if bytes.len() < HEADER {
        return Err("shorter than its header (truncated)");
    }
    let (h, payload) = bytes.split_at(HEADER);
    if &h[..8] != MAGIC {
        return Err("not a cache file of this version");
    }
    if h[8..40] != key.0 {
        return Err("written for another module or engine");
    }
    if h[40..48] != (payload.len() as u64).to_le_bytes() {
        return Err("its length differs from its header's (truncated or garbled)");
    }
    if h[48..] != Sha256::digest(payload)[..] {
        return Err("its code's SHA-256 differs from its header's (garbled)");
    }
    Ok(())
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache").field("path", &self.path).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_bind_the_key_and_the_payload() {
        let (key, other) = (Key([1; 32]), Key([2; 32]));
        let mut file = header(&key, b"code").to_vec();
        file.extend_from_slice(b"code");
        assert_eq!(unpack(&file, &key), Ok(()));
        assert!(unpack(&file, &other).is_err());
        assert!(unpack(&file[..file.len() - 1], &key).is_err());
        assert!(unpack(&file[..HEADER - 1], &key).is_err());
        let mut garbled = file.clone();
        *garbled.last_mut().unwrap() ^= 1;
        assert!(unpack(&garbled, &key).is_err());
    }
}
