//! The SDK's handshake phase over real sockets, with the test-only `hello`
//! guest (`test-guests/hello`: a nonce exchange, then one XOR key stream per
//! direction): a WATER dialer against a WATER listener; native peers that
//! speak the protocol from the guest's own rlib against each of them (one
//! sends its first data in the same write as its handshake reply, so the
//! bytes the guest's handshake read past its end must reach the decoder);
//! and a wrong hello.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use water::{Config, Watm};
use water_guest::testing::{Segmentation, pump};
use water_guest::{Role, Transport};
use watm_hello::{Hello, MAGIC, NONCE, derive};

use support::{LIMIT, bounded, data, echoing_listener};

fn hello() -> Watm {
    Watm::new(watm_artifacts::HELLO.wasm, Config::default()).unwrap()
}

#[tokio::test]
async fn a_dialer_and_a_listener_handshake_and_carry_data() {
    bounded(async {
        let watm = hello();
        let addr = echoing_listener(&watm).await;
        let sent = data(1 << 20, 7);
        let conn = water::Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let got = support::exchange(conn, &sent).await.unwrap();
        assert!(got == sent, "{} bytes back of {}", got.len(), sent.len());
    })
    .await;
}

#[tokio::test]
async fn a_native_client_derives_the_listeners_keys() {
    bounded(async {
        let watm = hello();
        let addr = echoing_listener(&watm).await;
        let ours = [0x42u8; NONCE];
        let native = Hello { fixed_nonce: Some(ours) };
        let sent = data(200_000, 9);
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The hello, then (keys known from the listener's nonce) the data.
        let mut hello = vec![MAGIC];
        hello.extend_from_slice(&ours);
        s.write_all(&hello).await.unwrap();
        let mut theirs = [0u8; NONCE];
        tokio::time::timeout(LIMIT, s.read_exact(&mut theirs)).await.unwrap().unwrap();
        assert_ne!(theirs, ours, "the listener drew its own nonce");
        let keys = derive(&ours, &theirs);
        let wire = pump(native.encoder(Role::Dialer, &keys), &sent, &Segmentation::default()).unwrap();
        assert_ne!(wire[..64], sent[..64], "the data is not sent in the clear");
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&wire).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(LIMIT, r.read_to_end(&mut back)).await.unwrap().unwrap();
        writer.await.unwrap();
        let plain = pump(native.decoder(Role::Dialer, &keys), &back, &Segmentation::default()).unwrap();
        assert!(plain == sent, "{} bytes back of {}", plain.len(), sent.len());
    })
    .await;
}

#[tokio::test]
async fn a_dialer_decodes_data_that_came_in_the_same_write_as_the_reply() {
    // The dialer's guest writes its hello, reads the listener's nonce, and
    // its decoder must start with whatever arrived behind that nonce in the
    // same read: a native listener sends its nonce and its first data in
    // one write.
    bounded(async {
        let watm = hello();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let theirs = [0x17u8; NONCE];
        let greeting = data(50_000, 3);
        let g = greeting.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 1 + NONCE];
            s.read_exact(&mut hello).await.unwrap();
            assert_eq!(hello[0], MAGIC);
            let keys = derive(hello[1..].try_into().unwrap(), &theirs);
            let native = Hello { fixed_nonce: Some(theirs) };
            let mut out = theirs.to_vec();
            out.extend(pump(native.encoder(Role::Listener, &keys), &g, &Segmentation::default()).unwrap());
            s.write_all(&out).await.unwrap();
            s.shutdown().await.unwrap();
            // Hold until the dialer closes.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let mut conn = water::Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(LIMIT, conn.read_to_end(&mut got)).await.unwrap().unwrap();
        assert!(got == greeting, "{} bytes of {}", got.len(), greeting.len());
        conn.shutdown().await.unwrap();
        let _ = conn.close().await;
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_wrong_hello_ends_the_connection() {
    bounded(async {
        let watm = hello();
        let addr = echoing_listener(&watm).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[MAGIC ^ 1; 1 + NONCE]).await.unwrap();
        let mut buf = Vec::new();
        // The listener's handshake fails: the connection closes with no reply.
        let r = tokio::time::timeout(LIMIT, s.read_to_end(&mut buf)).await.unwrap();
        assert!(buf.is_empty(), "{r:?}");
    })
    .await;
}
