//! The on-disk compile cache (`Config::compile_cache`): a second load reads
//! the code instead of compiling it and works byte for byte; a file or
//! directory anyone else could have written is never used; a damaged file
//! or another module's is detected and replaced; concurrent loads are fine.
//! `Watm::code_origin` says where each load's code came from.

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use support::{bounded, data, echoing_listener, exchange};
use water::{CodeOrigin, Config, Dialer, Watm};

const SS_SERVER: &str = "method=chacha20-ietf-poly1305\npassword=compile cache\n";
const SS_CLIENT: &str = "method=chacha20-ietf-poly1305\npassword=compile cache\ntarget=127.0.0.1:9\n";

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let root = std::env::temp_dir().join(format!("water-compile-cache-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Scratch(root)
    }

    /// A directory under it, created with `mode` (or left to the cache to
    /// create, with `None`).
    fn dir(&self, name: &str, mode: Option<u32>) -> PathBuf {
        let dir = self.0.join(name);
        if let Some(mode) = mode {
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads guest `name` with `cache` and the transport config `config`.
fn load(name: &str, config: &str, cache: &Path) -> Watm {
    let guest = watm_artifacts::Guest::named(name).expect("built guest");
    let cfg = Config::default().transport_config(config).compile_cache(Some(cache.to_owned()));
    Watm::new(guest.wasm, cfg).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn origin(name: &str, dir: &Path) -> CodeOrigin {
    let config = if name == "ss" { SS_SERVER } else { "" };
    load(name, config, dir).code_origin()
}

/// Every entry of `dir` (temporary files included), sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    all.sort();
    all
}

/// The one cache file in `dir`.
fn only_file(dir: &Path) -> PathBuf {
    let all = entries(dir);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].extension().is_some_and(|e| e == "cwasm"), "{all:?}");
    all[0].clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// 256 KiB each way through an ss dialer and an ss listener whose
/// application echoes, both loaded from `dir`'s cache.
async fn ss_round_trip(dir: &Path) {
    let server = load("ss", SS_SERVER, dir);
    let client = load("ss", SS_CLIENT, dir);
    assert_eq!((server.code_origin(), client.code_origin()), (CodeOrigin::Cache, CodeOrigin::Cache));
    let sent = data(256 << 10, 11);
    let got = bounded(async {
        let addr = echoing_listener(&server).await;
        let conn = Dialer::new(&client).unwrap().dial(addr.to_string()).await.unwrap();
        exchange(conn, &sent).await.unwrap()
    })
    .await;
    assert!(got == sent, "{} bytes back of {}", got.len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_load_reads_the_cache_and_works_byte_for_byte() {
    let scratch = Scratch::new("second");
    // Created by the cache, private.
    let dir = scratch.dir("nested/cache", None);
    let first = load("ss", SS_SERVER, &dir);
    assert_eq!(first.code_origin(), CodeOrigin::Compiled);
    assert_eq!(mode(&dir), 0o700);
    let file = only_file(&dir);
    assert_eq!(mode(&file), 0o600);
    // The transport config is no part of the code: the client's config
    // finds the server's entry.
    let second = load("ss", SS_CLIENT, &dir);
    assert_eq!(second.code_origin(), CodeOrigin::Cache);
    // Deserialized into the pooled engine as a compiled module is.
    assert_eq!(second.pooled(), first.pooled());
    assert_eq!(only_file(&dir), file);
    ss_round_trip(&dir).await;
    // Without a cache, nothing changes.
    let g = watm_artifacts::Guest::named("ss").unwrap();
    let plain = Watm::new(g.wasm, Config::default().transport_config(SS_SERVER)).unwrap();
    assert_eq!(plain.code_origin(), CodeOrigin::Compiled);
}

#[test]
fn directories_others_can_write_to_are_not_used() {
    let scratch = Scratch::new("dirs");
    for mode in [0o777, 0o770, 0o702] {
        let dir = scratch.dir(&format!("mode-{mode:o}"), Some(mode));
        assert_eq!(origin("plain", &dir), CodeOrigin::Compiled, "{mode:o}");
        assert_eq!(origin("plain", &dir), CodeOrigin::Compiled, "{mode:o}");
        assert!(entries(&dir).is_empty(), "mode {mode:o}: written to {:?}", entries(&dir));
    }
    // Sticky or not: /tmp-like directories are everyone's.
    let sticky = scratch.dir("sticky", Some(0o1777));
    assert_eq!(origin("plain", &sticky), CodeOrigin::Compiled);
    assert!(entries(&sticky).is_empty());
    // A plain file where the directory should be: compiled, and no error.
    let not_dir = scratch.0.join("file");
    std::fs::write(&not_dir, b"").unwrap();
    assert_eq!(origin("plain", &not_dir), CodeOrigin::Compiled);
    // A directory of another user's: only root can make one to test with.
    if is_root() {
        let theirs = scratch.dir("theirs", Some(0o755));
        std::os::unix::fs::chown(&theirs, Some(65_534), Some(65_534)).unwrap();
        assert_eq!(origin("plain", &theirs), CodeOrigin::Compiled);
        assert!(entries(&theirs).is_empty());
    }
    // The same directory made private is used.
    let fixed = scratch.0.join("mode-777");
    std::fs::set_permissions(&fixed, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(origin("plain", &fixed), CodeOrigin::Compiled);
    assert_eq!(origin("plain", &fixed), CodeOrigin::Cache);
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

#[test]
fn files_others_could_have_written_are_not_used() {
    let scratch = Scratch::new("files");
    let dir = scratch.dir("cache", Some(0o700));
    assert_eq!(origin("plain", &dir), CodeOrigin::Compiled);
    let file = only_file(&dir);
    // Valid content, but group- or other-writable: refused, and replaced by
    // a private file.
    for mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(origin("plain", &dir), CodeOrigin::Compiled, "{mode:o}");
        assert_eq!(self::mode(&file), 0o600);
        assert_eq!(origin("plain", &dir), CodeOrigin::Cache);
    }
    // A symlink to a valid file: not followed (O_NOFOLLOW), and replaced by
    // a file of its own.
    let linked = scratch.dir("linked", Some(0o700));
    let link = linked.join(file.file_name().unwrap());
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert_eq!(origin("plain", &linked), CodeOrigin::Compiled);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_file(), "the link is still there");
    assert_eq!(origin("plain", &linked), CodeOrigin::Cache);
    // Another user's file in our directory (only root can make one).
    if is_root() {
        std::os::unix::fs::chown(&file, Some(65_534), Some(65_534)).unwrap();
        assert_eq!(origin("plain", &dir), CodeOrigin::Compiled);
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), 0);
        assert_eq!(origin("plain", &dir), CodeOrigin::Cache);
    }
    // Not a regular file: a directory under the entry's name.
    let odd = scratch.dir("odd", Some(0o700));
    std::fs::create_dir(odd.join(file.file_name().unwrap())).unwrap();
    assert_eq!(origin("plain", &odd), CodeOrigin::Compiled);
    assert_eq!(origin("plain", &odd), CodeOrigin::Compiled, "a directory cannot be replaced by a rename");
}

/// The cache file layout: magic (8), key (32), payload length (8, LE),
/// payload SHA-256 (32), payload.
const HEADER: usize = 80;

/// `file`'s header rewritten to describe `payload`, so that only
/// wasmtime's own checks are left to refuse it.
fn rewrap(file: &Path, payload: &[u8]) {
    let old = std::fs::read(file).unwrap();
    let mut new = old[..48].to_vec();
    new[40..48].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    new.extend_from_slice(&Sha256::digest(payload));
    new.extend_from_slice(payload);
    std::fs::write(file, new).unwrap();
}

#[test]
fn damaged_files_are_detected_and_rewritten() {
    let scratch = Scratch::new("damaged");
    let dir = scratch.dir("cache", Some(0o700));
    assert_eq!(origin("plain", &dir), CodeOrigin::Compiled);
    let file = only_file(&dir);
    let good = std::fs::read(&file).unwrap();
    let flipped = |at: usize| {
        let mut g = good.clone();
        g[at] ^= 0x40;
        g
    };
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("a header cut short", good[..40].to_vec()),
        ("the code truncated", good[..good.len() / 2].to_vec()),
        ("the last byte of code flipped", flipped(good.len() - 1)),
        ("the first byte of code flipped", flipped(HEADER)),
        ("the magic changed", flipped(7)),
        ("the key changed", flipped(8)),
        ("a byte appended", [&good[..], b"x"].concat()),
    ];
    for (what, bytes) in damages {
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(origin("plain", &dir), CodeOrigin::Compiled, "{what}");
        assert!(std::fs::read(&file).unwrap() == good, "{what}: not rewritten");
        assert_eq!(origin("plain", &dir), CodeOrigin::Cache, "{what}");
    }
    // A consistent header over code wasmtime refuses: the last check is
    // wasmtime's, and it also leads to a rewrite.
    rewrap(&file, b"\x7fELF, but not wasmtime's");
    assert_eq!(origin("plain", &dir), CodeOrigin::Compiled);
    assert!(std::fs::read(&file).unwrap() == good);
    assert_eq!(origin("plain", &dir), CodeOrigin::Cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_never_gets_another_modules_entry() {
    let scratch = Scratch::new("other");
    let dir = scratch.dir("cache", Some(0o700));
    assert_eq!(origin("plain", &dir), CodeOrigin::Compiled);
    let plain_file = only_file(&dir);
    assert_eq!(origin("ss", &dir), CodeOrigin::Compiled);
    let ss_file = entries(&dir).into_iter().find(|p| *p != plain_file).unwrap();
    assert_eq!(entries(&dir).len(), 2);
    // plain's whole file (valid, private, ours) under ss's name: its
    // header names plain's key.
    let plain_code = std::fs::read(&plain_file).unwrap();
    std::fs::write(&ss_file, &plain_code).unwrap();
    assert_eq!(origin("ss", &dir), CodeOrigin::Compiled);
    assert!(std::fs::read(&ss_file).unwrap() != plain_code, "not rewritten");
    // The file names differ because the keys do, and so do the keys
    // in the headers.
    let ss_key = std::fs::read(&ss_file).unwrap()[8..40].to_vec();
    assert_ne!(ss_key, plain_code[8..40]);
    assert_eq!(origin("ss", &dir), CodeOrigin::Cache);
    assert_eq!(origin("plain", &dir), CodeOrigin::Cache);
    ss_round_trip(&dir).await;
    // Another guest, another file.
    assert_eq!(origin("xor", &dir), CodeOrigin::Compiled);
    assert_eq!(entries(&dir).len(), 3);
}

#[test]
fn concurrent_loads_write_one_whole_file() {
    let scratch = Scratch::new("concurrent");
    let dir = scratch.dir("cache", None);
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        let loads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    load("ss", SS_SERVER, &dir).code_origin()
                })
            })
            .collect();
        for l in loads {
            // Compiled or, for a thread that came late, read.
            let _ = l.join().unwrap();
        }
    });
    // One complete file, no temporary file left.
    only_file(&dir);
    assert_eq!(origin("ss", &dir), CodeOrigin::Cache);
}

#[test]
fn the_cache_file_layout_is_what_the_tests_assume() {
    let scratch = Scratch::new("layout");
    let dir = scratch.dir("cache", None);
    load("plain", "", &dir);
    let bytes = std::fs::read(only_file(&dir)).unwrap();
    assert_eq!(&bytes[..8], b"WATERCC\x01");
    let payload = &bytes[HEADER..];
    assert_eq!(bytes[40..48], (payload.len() as u64).to_le_bytes());
    assert_eq!(bytes[48..80], Sha256::digest(payload)[..]);
    // The file is named by its key.
    let hex: String = bytes[8..40].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(only_file(&dir).file_name().unwrap().to_str().unwrap(), format!("{hex}.cwasm"));
}
