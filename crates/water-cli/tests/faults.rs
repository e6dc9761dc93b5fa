//! Fault injection over real sockets through `water client` → `water server`
//! → a service, with a healthy connection running beside the faults the whole
//! time: a service that resets mid-stream, one that half-closes, a reader at
//! 64 KiB/s, a peer that connects to the server and never speaks, and the
//! server killed mid-stream (then started again on the same port). Each
//! faulty connection must end within its bound (no hang), the processes must
//! give back their fds, and the healthy connection must not lose one byte.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, Proc, pattern, temp_dir};

/// What the service does, chosen by the first byte a connection sends.
const ECHO: u8 = b'E';
/// Echo 64 KiB, then reset the connection (linger 0).
const RESET: u8 = b'R';
/// Echo 64 KiB, then half-close while the client still writes (and read
/// on, discarding).
const HALF: u8 = b'H';
/// Send 8 MiB at once, whatever the reader's pace.
const FLOOD: u8 = b'F';

fn service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(mut s: TcpStream) {
    let mut kind = [0u8; 1];
    if s.read_exact(&mut kind).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut echoed = 0usize;
    match kind[0] {
        FLOOD => {
            let _ = s.write_all(&pattern(8 << 20, 9));
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        }
        k => loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = s.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
            echoed += n;
            if echoed >= 64 << 10 && k == RESET {
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                return;
            }
            if echoed >= 64 << 10 && k == HALF {
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
                return;
            }
        },
    }
}

/// Whether a read ended by its timeout (the connection hung), not by EOF
/// or an error.
fn timed_out(ended: Option<ErrorKind>) -> bool {
    matches!(ended, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

/// Waits until `p` holds at most `fds` fds again; the count it reached.
fn settles_to(p: &Proc, fds: usize) -> usize {
    let start = Instant::now();
    loop {
        let now = p.open_fds();
        if now <= fds || start.elapsed() > LIMIT {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection through the tunnel to the service doing `kind`.
fn connect(client: SocketAddr, kind: u8) -> TcpStream {
    let mut s = TcpStream::connect(client).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[kind]).unwrap();
    s
}

/// Echo rounds of 32 KiB through the tunnel until `stop`, each checked;
/// returns the bytes that came back right. Panics at the first wrong byte.
fn healthy(client: SocketAddr, stop: Arc<AtomicBool>, moved: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = connect(client, ECHO);
        let mut round = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let sent = pattern(32 << 10, 100 + round);
            s.write_all(&sent).expect("healthy connection: write");
            let mut got = vec![0u8; sent.len()];
            s.read_exact(&mut got).expect("healthy connection: read");
            assert!(got == sent, "healthy connection: round {round} came back different");
            moved.fetch_add(sent.len() as u64, Ordering::Relaxed);
            round += 1;
        }
    })
}

/// Reads until EOF or an error; what came, and whether it ended in an error.
fn drain(mut s: TcpStream) -> (usize, Option<ErrorKind>) {
    let mut n = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, None),
            Ok(k) => n += k,
            Err(e) => return (n, Some(e.kind())),
        }
    }
}

#[test]
fn faults_end_their_own_connection_only_and_leave_nothing_open() {
    let dir = temp_dir("faults");
    let key = dir.join("key");
    std::fs::write(&key, "key=9f3c51a7e0\n").unwrap();
    let key = key.to_str().unwrap();
    let svc = service();
    let (server, server_addr) = Proc::listening(&[
        "server",
        "-t",
        "xor",
        "--config",
        key,
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &svc.to_string(),
    ]);
    let mut server = Some(server);
    let (mut client, client_addr) = Proc::listening(&[
        "client",
        "-t",
        "xor",
        "--config",
        key,
        "--listen",
        "127.0.0.1:0",
        "--remote",
        &server_addr.to_string(),
    ]);
    let (stop, moved) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let beside = healthy(client_addr, stop.clone(), moved.clone());
    // The baseline once the healthy connection is set up end to end (its
    // first round came back), and nothing else is open.
    let start = Instant::now();
    while moved.load(Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < LIMIT, "the healthy connection never completed a round");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (client_fds, server_fds) = (client.open_fds(), server.as_ref().unwrap().open_fds());

    // The service resets mid-stream: the reply stops, with an error or EOF,
    // well before the 20 s read bound (no hang), after at most what was
    // echoed.
    let mut s = connect(client_addr, RESET);
    s.write_all(&pattern(1 << 20, 1)).ok();
    let (got, ended) = drain(s);
    assert!(got <= 1 << 20 && !timed_out(ended), "reset: {got} bytes, then {ended:?}");

    // The service half-closes after 64 KiB while the client still sends:
    // the client reads EOF after everything the service echoed.
    let mut s = connect(client_addr, HALF);
    let sent = pattern(256 << 10, 2);
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(&sent);
        })
    };
    let mut back = Vec::new();
    let ended = s.read_to_end(&mut back);
    assert!(ended.is_ok(), "half-close: {ended:?}");
    assert!(
        back.len() >= 64 << 10 && back[..] == pattern(256 << 10, 2)[..back.len()],
        "half-close: {}",
        back.len()
    );
    drop(s);
    writer.join().unwrap();

    // A reader at 64 KiB/s of an 8 MiB reply: every byte, in order, however
    // long the buffers on the way stay full. (Read for 2 s at that pace,
    // then at full speed, to bound the test's time.)
    let mut s = connect(client_addr, FLOOD);
    let want = pattern(8 << 20, 9);
    let mut got = Vec::with_capacity(want.len());
    let mut buf = [0u8; 8 << 10];
    let slow_until = Instant::now() + Duration::from_secs(2);
    while got.len() < want.len() {
        let n = s.read(&mut buf).expect("slow reader: read");
        assert!(n > 0, "slow reader: EOF after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if Instant::now() < slow_until {
            std::thread::sleep(Duration::from_millis(125 * n as u64 / (8 << 10) as u64));
        }
    }
    assert!(got == want, "slow reader: the reply differs");
    drop(s);

    // Peers that connect to the server and never speak, and one that sends
    // garbage: the healthy connection goes on; closing them frees their fds.
    let silent: Vec<_> = (0..8).map(|_| TcpStream::connect(server_addr).unwrap()).collect();
    let mut garbage = TcpStream::connect(server_addr).unwrap();
    garbage.write_all(&[0xAA; 4096]).ok();
    // Each reached the server (it holds an fd for it) before they leave.
    let start = Instant::now();
    while server.as_ref().unwrap().open_fds() < server_fds + silent.len() + 1 {
        assert!(start.elapsed() < LIMIT, "the server never accepted the silent peers");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(silent);
    drop(garbage);

    let server_now = settles_to(server.as_ref().unwrap(), server_fds);
    assert!(server_now <= server_fds, "server fds {server_fds} -> {server_now}");
    let client_now = settles_to(&client, client_fds);
    assert!(client_now <= client_fds, "client fds {client_fds} -> {client_now}");

    // The server is killed mid-stream: the client's connection ends (no
    // hang), the client process lives on, and serves again once a server is
    // back on the same port.
    stop.store(true, Ordering::Relaxed);
    beside.join().expect("the healthy connection lost or changed bytes");
    let healthy_bytes = moved.load(Ordering::Relaxed);
    assert!(healthy_bytes > 0, "the healthy connection moved nothing");
    let mut s = connect(client_addr, ECHO);
    s.write_all(&pattern(64 << 10, 3)).unwrap();
    let mut first = vec![0u8; 64 << 10];
    s.read_exact(&mut first).unwrap();
    let mut server_proc = server.take().unwrap();
    server_proc.child.kill().unwrap();
    let _ = server_proc.child.wait();
    let _ = s.write_all(&pattern(64 << 10, 4));
    let (after, ended) = drain(s);
    assert!(!timed_out(ended), "killed server: the client connection hung");
    assert!(after <= 64 << 10, "killed server: {after} bytes after the kill");
    assert!(client.child.try_wait().unwrap().is_none(), "the client process died with its server");
    let (_server, again) = Proc::listening(&[
        "server",
        "-t",
        "xor",
        "--config",
        key,
        "--listen",
        &server_addr.to_string(),
        "--forward",
        &svc.to_string(),
    ]);
    assert_eq!(again, server_addr);
    let mut s = connect(client_addr, ECHO);
    let sent = pattern(128 << 10, 5);
    s.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    s.read_exact(&mut back).unwrap();
    assert!(back == sent, "after the restart: the round trip differs");
    eprintln!(
        "faults: healthy connection {} KiB byte-exact beside every fault; fds server {server_fds} -> \
         {server_now}, client {client_fds} -> {client_now}",
        healthy_bytes >> 10
    );
    let _ = std::fs::remove_dir_all(&dir);
}
