//! Operating transports (issue 20): SIGHUP reloads a transport under load
//! without dropping a connection, a broken or untrusted module at start or
//! at reload changes nothing, and `--reuse-port` lets two processes share
//! one port. Real processes, real sockets, the built-in xor module copied
//! to a file as an operator would deploy one.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{LIMIT, Proc, echo, run, temp_dir};

const KEY_A: &str = "key=0a0b0c\n";
const KEY_B: &str = "key=f1f2f3f4\n";
const SIGHUP: i32 = 1;

/// A service that answers each byte plus one: through an echo, xor with
/// one key on the way in and another on the way out would cancel out, so
/// a connection whose two ends disagree would pass unseen.
fn plus_one() -> SocketAddr {
    common::service(|mut s| {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[..n].iter_mut().for_each(|b| *b = b.wrapping_add(1));
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Sends `piece` and checks that each byte came back plus one.
fn round(s: &mut TcpStream, piece: &[u8], back: &mut [u8]) -> Result<(), String> {
    s.write_all(piece).map_err(|e| format!("write: {e}"))?;
    s.read_exact(&mut back[..piece.len()]).map_err(|e| format!("read: {e}"))?;
    let good = back[..piece.len()].iter().zip(piece).all(|(b, p)| *b == p.wrapping_add(1));
    if good { Ok(()) } else { Err("wrong bytes".into()) }
}

/// One fresh connection: 64 KiB in pieces, each answered correctly.
fn fresh_connection_works(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let data = common::pattern(64 << 10, 9);
    let mut back = vec![0u8; 16 << 10];
    for piece in data.chunks(16 << 10) {
        round(&mut s, piece, &mut back)?;
    }
    Ok(())
}

/// The built-in xor module as a file, the way an operator deploys one.
fn module_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, watm_artifacts::Guest::named(name).unwrap().wasm).unwrap();
    path
}

fn write(path: &Path, text: &str) {
    // Written whole, then renamed: a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The pair `water client` → `water server` → plus-one, each on the module
/// file and its own config file.
struct Pair {
    client: Proc,
    server: Proc,
    entry: SocketAddr,
}

fn pair(module: &Path, client_cfg: &Path, server_cfg: &Path, service: SocketAddr, extra: &[&str]) -> Pair {
    let m = module.to_str().unwrap();
    let mut args = vec!["server", "-t", m, "--config", server_cfg.to_str().unwrap()];
    args.extend(["--listen", "127.0.0.1:0", "--forward"]);
    let forward = service.to_string();
    args.push(&forward);
    args.extend(extra);
    // At info: the reload lines are what the tests wait for.
    let info = [("WATER_LOG", "info")];
    let (server, saddr) = Proc::listening_with(&args, &info);
    let remote = saddr.to_string();
    let mut args = vec!["client", "-t", m, "--config", client_cfg.to_str().unwrap()];
    args.extend(["--listen", "127.0.0.1:0", "--remote", &remote]);
    args.extend(extra);
    let (client, entry) = Proc::listening_with(&args, &info);
    Pair { client, server, entry }
}

fn reloaded(p: &Proc, n: u64) -> Result<String, String> {
    let want = format!("; reload {n}");
    p.wait_stderr(LIMIT, |l| l.contains("reloaded") && l.ends_with(&want))
}

#[test]
fn twenty_reloads_under_load_drop_no_connection_and_new_ones_use_the_new_module() {
    let dir = temp_dir("reload-load");
    let module = module_file(&dir, "xor");
    let (ccfg, scfg) = (dir.join("client.conf"), dir.join("server.conf"));
    write(&ccfg, KEY_A);
    write(&scfg, KEY_A);
    let service = plus_one();
    let p = pair(&module, &ccfg, &scfg, service, &[]);

    // 100 connections that stream from start to end, on key A.
    const STREAMS: usize = 100;
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicUsize::new(0));
    // Streams that have made their first round: every one is set up at
    // both ends on key A before the first reload (one that connected
    // between the server's reload and the client's would meet key B at
    // one end only, which no reload order can avoid).
    let started = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (stop, moved, started, entry) = (stop.clone(), moved.clone(), started.clone(), p.entry);
            std::thread::spawn(move || -> Result<usize, String> {
                let mut s = TcpStream::connect(entry).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(LIMIT)).unwrap();
                let piece = common::pattern(8 << 10, i as u32 + 1);
                let mut back = vec![0u8; piece.len()];
                let mut rounds = 0;
                while !stop.load(Ordering::SeqCst) {
                    round(&mut s, &piece, &mut back)
                        .map_err(|e| format!("stream {i}, round {rounds}: {e}"))?;
                    moved.fetch_add(piece.len(), Ordering::SeqCst);
                    if rounds == 0 {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                    rounds += 1;
                }
                Ok(rounds)
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + LIMIT;
    while started.load(Ordering::SeqCst) < STREAMS {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {STREAMS} streams made a first round",
            started.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    for n in 1..=20u64 {
        let key = if n % 2 == 1 { KEY_B } else { KEY_A };
        write(&ccfg, key);
        write(&scfg, key);
        let before = moved.load(Ordering::SeqCst);
        p.server.signal(SIGHUP);
        p.client.signal(SIGHUP);
        reloaded(&p.server, n).unwrap_or_else(|log| panic!("server reload {n}:\n{log}"));
        reloaded(&p.client, n).unwrap_or_else(|log| panic!("client reload {n}:\n{log}"));
        // A connection started now gets the new key at both ends (a stale
        // end would garble the answers).
        fresh_connection_works(p.entry).unwrap_or_else(|e| panic!("new connection after reload {n}: {e}"));
        // The streams on the first module kept moving.
        let deadline = std::time::Instant::now() + LIMIT;
        while moved.load(Ordering::SeqCst) == before {
            assert!(std::time::Instant::now() < deadline, "the streams stalled after reload {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for (i, s) in streams.into_iter().enumerate() {
        let rounds = s.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(rounds > 0, "stream {i} made no round");
    }
    eprintln!("{} bytes each way through 100 streams across 20 reloads", moved.load(Ordering::SeqCst));
}

#[test]
fn a_broken_module_at_reload_changes_nothing() {
    let dir = temp_dir("reload-broken");
    let module = module_file(&dir, "xor");
    let (ccfg, scfg) = (dir.join("client.conf"), dir.join("server.conf"));
    write(&ccfg, KEY_A);
    write(&scfg, KEY_A);
    let p = pair(&module, &ccfg, &scfg, plus_one(), &[]);
    fresh_connection_works(p.entry).unwrap();
    let mut open = TcpStream::connect(p.entry).unwrap();
    open.set_read_timeout(Some(LIMIT)).unwrap();
    let piece = common::pattern(4096, 3);
    let mut back = vec![0u8; 4096];
    round(&mut open, &piece, &mut back).unwrap();

    // Not wasm; then a config the guest refuses.
    std::fs::write(&module, b"not a module").unwrap();
    p.server.signal(SIGHUP);
    let line = p.server.wait_stderr(LIMIT, |l| l.contains("reload of") && l.contains("failed")).unwrap();
    assert!(line.contains("previous module goes on serving"), "{line}");
    std::fs::write(&module, watm_artifacts::Guest::named("xor").unwrap().wasm).unwrap();
    write(&scfg, "key=not hex\n");
    p.server.signal(SIGHUP);
    p.server
        .wait_stderr(LIMIT, |l| l.contains("failed") && l.contains("rejects its configuration"))
        .unwrap_or_else(|log| panic!("{log}"));
    // Old and new connections are served as before.
    round(&mut open, &piece, &mut back).unwrap();
    fresh_connection_works(p.entry).unwrap();
    assert!(!p.server.stderr_so_far().contains("; reload 1"));
}

/// A minisign key pair: the public key file, and a signer.
struct Signer {
    public: PathBuf,
    pk: minisign::PublicKey,
    sk: minisign::SecretKey,
}

fn signer(dir: &Path, name: &str) -> Signer {
    let minisign::KeyPair { pk, sk } = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, pk.to_box().unwrap().to_string()).unwrap();
    Signer { public, pk, sk }
}

impl Signer {
    /// Writes `<module>.minisig`, as `minisign -S -m <module>` does.
    fn sign(&self, module: &Path) {
        let bytes = std::fs::read(module).unwrap();
        let sig = minisign::sign(Some(&self.pk), &self.sk, std::io::Cursor::new(bytes), None, None).unwrap();
        let mut path = module.as_os_str().to_owned();
        path.push(".minisig");
        std::fs::write(path, sig.to_string()).unwrap();
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `water server` with `args` after the usual ones, when it is refused at
/// start: whether it exited with success, and its stderr.
fn refused_server(module: &Path, cfg: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["server", "-t", module.to_str().unwrap(), "--config", cfg.to_str().unwrap()];
    all.extend(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9"]);
    all.extend(args);
    let (status, _, err) = run(&all[..]);
    (status.success(), err)
}

#[test]
fn wrong_hashes_and_missing_or_foreign_signatures_are_refused_at_start() {
    let dir = temp_dir("trust-start");
    let module = module_file(&dir, "xor");
    let cfg = dir.join("server.conf");
    write(&cfg, KEY_A);
    let (ours, theirs) = (signer(&dir, "ours"), signer(&dir, "theirs"));
    let key = ours.public.to_str().unwrap().to_string();
    let refused = |args: &[&str], why: &str| {
        let (ok, err) = refused_server(&module, &cfg, args);
        assert!(!ok, "{args:?} started");
        let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(why) && errors[0].contains("refused"), "{args:?}: {err}");
    };
    refused(&["--transport-sha256", &"00".repeat(32)], "not the pinned");
    refused(&["--trusted-key", &key], "no readable signature");
    theirs.sign(&module);
    refused(&["--trusted-key", &key], "not by a trusted key");
    // Signed by our key, pinned to its hash: it starts and serves.
    ours.sign(&module);
    let hash = sha256_hex(&module);
    let args = ["--trusted-key", key.as_str(), "--transport-sha256", hash.as_str()];
    let echo = echo();
    let p = pair(&module, &cfg, &cfg, echo.addr, &args);
    assert_eq!(common::exchange(p.entry, b"signed and pinned"), b"signed and pinned");
    // During a rotation, either key will do.
    let both = ["--trusted-key", theirs.public.to_str().unwrap(), "--trusted-key", key.as_str()];
    let _rotating = pair(&module, &cfg, &cfg, echo.addr, &both);
}

#[test]
fn a_reload_obeys_the_same_hash_and_signature_rules() {
    let dir = temp_dir("trust-reload");
    let module = module_file(&dir, "xor");
    let (ccfg, scfg) = (dir.join("client.conf"), dir.join("server.conf"));
    write(&ccfg, KEY_A);
    write(&scfg, KEY_A);
    let (ours, theirs) = (signer(&dir, "ours"), signer(&dir, "theirs"));
    ours.sign(&module);
    let key = ours.public.to_str().unwrap().to_string();
    let p = pair(&module, &ccfg, &scfg, plus_one(), &["--trusted-key", &key]);
    fresh_connection_works(p.entry).unwrap();

    // Another module in its place, under the old signature: refused.
    std::fs::write(&module, watm_artifacts::Guest::named("plain").unwrap().wasm).unwrap();
    p.server.signal(SIGHUP);
    p.server.wait_stderr(LIMIT, |l| l.contains("failed") && l.contains("not by a trusted key")).unwrap();
    // Signed by a key the server does not trust: refused.
    theirs.sign(&module);
    p.server.signal(SIGHUP);
    let n = |l: &str| l.contains("failed") && l.contains("not by a trusted key");
    let refusals = || p.server.stderr_so_far().lines().filter(|l| n(l)).count();
    let deadline = std::time::Instant::now() + LIMIT;
    while refusals() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", p.server.stderr_so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
    fresh_connection_works(p.entry).unwrap();
    // Back to xor, signed by our key: accepted.
    std::fs::write(&module, watm_artifacts::Guest::named("xor").unwrap().wasm).unwrap();
    ours.sign(&module);
    p.server.signal(SIGHUP);
    reloaded(&p.server, 1).unwrap_or_else(|log| panic!("{log}"));
    fresh_connection_works(p.entry).unwrap();

    // A pinned hash holds at reload too.
    let hash = sha256_hex(&module);
    let q = pair(&module, &ccfg, &scfg, plus_one(), &["--transport-sha256", &hash]);
    std::fs::write(&module, watm_artifacts::Guest::named("plain").unwrap().wasm).unwrap();
    q.server.signal(SIGHUP);
    q.server.wait_stderr(LIMIT, |l| l.contains("failed") && l.contains("not the pinned")).unwrap();
    fresh_connection_works(q.entry).unwrap();
}

#[test]
fn two_servers_with_reuse_port_share_one_port_and_both_serve() {
    let dir = temp_dir("reuse-port");
    let cfg = dir.join("key.conf");
    write(&cfg, KEY_A);
    let (echo1, echo2) = (echo(), echo());
    let c = cfg.to_str().unwrap();
    let (_first, addr) = Proc::listening(&[
        "server",
        "-t",
        "xor",
        "--config",
        c,
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &echo1.addr.to_string(),
        "--reuse-port",
    ]);
    let (_second, addr2) = Proc::listening(&[
        "server",
        "-t",
        "xor",
        "--config",
        c,
        "--listen",
        &addr.to_string(),
        "--forward",
        &echo2.addr.to_string(),
        "--reuse-port",
    ]);
    assert_eq!(addr, addr2);
    // Without the flag the port is taken.
    let (status, _, err) = run(&[
        "server",
        "-t",
        "xor",
        "--config",
        c,
        "--listen",
        &addr.to_string(),
        "--forward",
        "127.0.0.1:9",
    ]);
    assert!(!status.success() && err.contains("cannot listen"), "{err}");
    let (_client, entry) = Proc::listening(&[
        "client",
        "-t",
        "xor",
        "--config",
        c,
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &addr.to_string(),
    ]);
    // The kernel spreads connections by hash of their ports: 64 connections
    // reach both (each misses with probability 2^-64).
    for i in 0..64u32 {
        let data = common::pattern(1000, i + 1);
        assert_eq!(common::exchange(entry, &data), data);
    }
    let (one, two) = (echo1.connections.load(Ordering::SeqCst), echo2.connections.load(Ordering::SeqCst));
    assert_eq!(one + two, 64);
    assert!(one > 0 && two > 0, "one process served every connection: {one} and {two}");
}

// A SIGHUP sent as soon as a command announces its port: the handlers
// used to be installed after the `listening on` line, so such a signal met
// the default action (the process died) or, under an inherited SIG_IGN
// (nohup), was lost; the twenty-reloads test lost its client's first
// reload that way under load. Each command here starts with SIGHUP's
// default action, gets a SIGHUP the moment its line is read, and must
// reload and go on serving.
#[test]
fn a_sighup_right_after_the_listening_line_reloads_and_never_kills() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("early-hup");
    let module = module_file(&dir, "xor");
    let cfg = dir.join("xor.conf");
    write(&cfg, KEY_A);
    let (m, c) = (module.to_str().unwrap(), cfg.to_str().unwrap());
    let echo = echo().addr.to_string();
    for round in 0..5 {
        for role in [["server", "--forward"], ["client", "--remote"], ["relay", "--remote"]] {
            let mut cmd = std::process::Command::new(common::WATER);
            cmd.args([role[0], "-t", m, "--config", c, "--listen", "127.0.0.1:0", role[1], &echo]);
            cmd.env("WATER_LOG", "info");
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGHUP, libc::SIG_DFL);
                    Ok(())
                });
            }
            let mut p = Proc::spawn(cmd);
            let line = p.line(LIMIT).unwrap_or_else(|| panic!("{} {round}: no line", role[0]));
            assert!(line.starts_with("listening on "), "{line}");
            p.signal(SIGHUP);
            reloaded(&p, 1)
                .unwrap_or_else(|log| panic!("{} {round}: no reload after an early SIGHUP:\n{log}", role[0]));
            assert!(p.child.try_wait().unwrap().is_none(), "{} {round}: the SIGHUP ended it", role[0]);
        }
    }
}
