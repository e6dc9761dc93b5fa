//! Captures known-answer vectors from obfs4proxy for `src/tests.rs`:
//!
//! 1. an obfs4proxy bridge (managed mode, in front of an echo service)
//!    answers a client handshake made with a fixed session key; the client
//!    then sends one payload frame, and everything the bridge sends back
//!    (reply, PRNG-seed frame, the echoed frame, padding) is recorded;
//! 2. an obfs4proxy client (SOCKS5, the bridge's cert in the credentials)
//!    sends its handshake request to a listener that records it.
//!
//! The output is Rust constants to paste into the tests. Needs
//! `obfs4proxy` on PATH; everything stays on 127.0.0.1.
//!
//! ```text
//! cargo run -p watm-obfs4 --example capture_vectors
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use water_guest::{Handshake, Role, Transport};
use watm_obfs4::handshake::{ClientHandshake, Session};
use watm_obfs4::{IatMode, Obfs4};

/// How many times the message is sent.
const MESSAGES: usize = 8;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_line(r: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("obfs4-vectors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The echo service behind the bridge.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("obfs4proxy")
        .env_clear()
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", &dir)
        .env("TOR_PT_SERVER_TRANSPORTS", "obfs4")
        .env("TOR_PT_SERVER_BINDADDR", format!("obfs4-127.0.0.1:{port}"))
        .env("TOR_PT_ORPORT", echo_addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("obfs4proxy on PATH");
    let mut out = server.stdout.take().unwrap();
    let cert = loop {
        let line = read_line(&mut out);
        if let Some(args) = line.strip_prefix(&format!("SMETHOD obfs4 127.0.0.1:{port} ARGS:")) {
            break args.split(',').find_map(|a| a.strip_prefix("cert=")).unwrap().to_string();
        }
    };
    std::thread::spawn(move || while !read_line(&mut out).is_empty() {});
    let state = std::fs::read_to_string(dir.join("obfs4_state.json")).unwrap();

    // 1. Our client, fixed session key, against the bridge.
    let client = Obfs4::from_config(format!("cert={cert};iat-mode=0").as_bytes()).unwrap();
    let bridge = *client.bridge().unwrap();
    let (private, tweak) = (0u8..)
        .find_map(|i| {
            let private = [i; 32];
            Session::from_private(private, 0x80 | i).map(|_| (private, 0x80 | i))
        })
        .unwrap();
    let hour = watm_obfs4::handshake::epoch_hour().unwrap();
    let session = Session::from_private(private, tweak).unwrap();
    let mut hs = ClientHandshake::new(bridge, session, 100, hour, [0; 24]);
    let mut req = vec![0u8; 9000];
    let n = hs.step(&mut [], &mut req).unwrap().produced;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&req[..n]).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let keys = loop {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "bridge closed");
        got.extend_from_slice(&buf[..k]);
        let mut input = got.clone();
        let step = hs.step(&mut input, &mut [0u8; 9000]).unwrap();
        if step.done {
            break hs.keys();
        }
    };
    // Eight messages, apart in time, so that the bridge echoes each in a
    // burst of its own (each padded to a length from its distribution).
    let message = b"known answer through obfs4proxy";
    let mut wire = vec![0u8; 8192];
    let mut enc = client.encoder(Role::Dialer, &keys);
    for _ in 0..MESSAGES {
        let p = water_guest::Codec::transform(&mut enc, message, &mut wire).unwrap();
        s.write_all(&wire[..p.produced]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Everything the bridge sends for a second (the echo and its padding).
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        got.extend_from_slice(&buf[..k]);
    }
    let _ = IatMode::None;

    // 2. obfs4proxy's client against a recording listener.
    let rec = TcpListener::bind("127.0.0.1:0").unwrap();
    let rec_addr = rec.local_addr().unwrap();
    let cdir = dir.join("client");
    std::fs::create_dir_all(&cdir).unwrap();
    let mut cproc = Command::new("obfs4proxy")
        .env_clear()
        .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", &cdir)
        .env("TOR_PT_CLIENT_TRANSPORTS", "obfs4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cout = cproc.stdout.take().unwrap();
    let socks = loop {
        let line = read_line(&mut cout);
        if let Some(a) = line.strip_prefix("CMETHOD obfs4 socks5 ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || while !read_line(&mut cout).is_empty() {});
    let chour = watm_obfs4::handshake::epoch_hour().unwrap();
    let mut c = TcpStream::connect(&socks).unwrap();
    let args = format!("cert={cert};iat-mode=0");
    c.write_all(&[5, 1, 2]).unwrap();
    c.read_exact(&mut [0u8; 2]).unwrap();
    let mut auth = vec![1, args.len() as u8];
    auth.extend_from_slice(args.as_bytes());
    auth.extend_from_slice(&[1, 0]);
    c.write_all(&auth).unwrap();
    c.read_exact(&mut [0u8; 2]).unwrap();
    let std::net::SocketAddr::V4(v4) = rec_addr else { unreachable!() };
    let mut connect = vec![5, 1, 0, 1];
    connect.extend_from_slice(&v4.ip().octets());
    connect.extend_from_slice(&v4.port().to_be_bytes());
    c.write_all(&connect).unwrap();
    let (mut r, _) = rec.accept().unwrap();
    r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = Vec::new();
    while let Ok(k) = r.read(&mut buf) {
        if k == 0 {
            break;
        }
        request.extend_from_slice(&buf[..k]);
    }
    let _ = (server.kill(), cproc.kill(), server.wait(), cproc.wait());

    println!("// Captured from obfs4proxy 0.0.14 by examples/capture_vectors.rs.");
    println!("const KAT_STATE: &str = r#\"{}\"#;", state.trim());
    println!("const KAT_CERT: &str = \"{cert}\";");
    println!("const KAT_CLIENT_PRIVATE: &str = \"{}\";", hex(&private));
    println!("const KAT_CLIENT_TWEAK: u8 = {tweak:#04x};");
    println!("const KAT_HOUR: u64 = {hour};");
    println!("const KAT_MESSAGE: &[u8] = b\"{}\";", std::str::from_utf8(message).unwrap());
    println!("const KAT_MESSAGES: usize = {MESSAGES};");
    println!("const KAT_SERVER_STREAM: &str = \"{}\";", hex(&got));
    println!("const KAT_CLIENT_HOUR: u64 = {chour};");
    println!("const KAT_CLIENT_REQUEST: &str = \"{}\";", hex(&request));
    let _ = std::fs::remove_dir_all(&dir);
}
