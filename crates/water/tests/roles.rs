//! Every role with every reference guest, over real sockets: 8 MiB of
//! random data both ways at once, verified byte for byte.

mod support;

use support::*;
use tokio::net::TcpListener;
use water::{Dialer, Listener, Relay};

const SIZE: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_round_trips_8_mib_through_each_guest() {
    bounded(async {
        let echo = echo_server().await;
        for (i, name) in GUESTS.iter().enumerate() {
            let dialer = Dialer::new(&guest(name)).unwrap();
            let conn = dialer.dial(echo.to_string()).await.unwrap();
            let sent = data(SIZE, i as u64 + 1);
            let got = exchange(conn, &sent).await.unwrap();
            assert!(got == sent, "{name}: {} bytes back, differ", got.len());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_wire_bytes_are_the_transports_encoding() {
    bounded(async {
        for name in GUESTS {
            // A server that records what arrives and answers with a known
            // wire-encoded reply.
            let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = server.local_addr().unwrap();
            let reply = data(100_000, 99);
            let wire_reply = encode(name, &reply);
            let recorder = tokio::spawn(async move {
                let (s, _) = server.accept().await.unwrap();
                exchange(s, &wire_reply).await.unwrap()
            });
            let conn = Dialer::new(&guest(name)).unwrap().dial(addr.to_string()).await.unwrap();
            let sent = data(300_000, 7);
            let got = exchange(conn, &sent).await.unwrap();
            let wire = recorder.await.unwrap();
            // Frames depend on how reads fell; only xor and plain are
            // segmentation-free byte for byte.
            let want = if name == "reverse" { wire.clone() } else { encode(name, &sent) };
            assert_eq!(decode(name, &wire), sent, "{name}: wire does not decode to what was sent");
            assert!(
                wire == want,
                "{name}: wire bytes are not the encoding ({} vs {} bytes, first diff at {:?})",
                wire.len(),
                want.len(),
                wire.iter().zip(&want).position(|(a, b)| a != b)
            );
            assert!(got == reply, "{name}: reply not decoded");
            if name != "plain" {
                assert!(wire != sent, "{name}: wire is plain text");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_serves_a_client_that_speaks_the_wire_format() {
    bounded(async {
        for (i, name) in GUESTS.iter().enumerate() {
            let listener = Listener::bind(&guest(name), "127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // The application: echo whatever the guest decodes.
            let app = tokio::spawn(async move {
                let (conn, _peer) = listener.accept().await.unwrap();
                let (mut r, mut w) = tokio::io::split(conn);
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                tokio::io::AsyncWriteExt::shutdown(&mut w).await.unwrap();
            });
            let sent = data(SIZE, 10 + i as u64);
            let wire_back = exchange(connect(addr).await, &encode(name, &sent)).await.unwrap();
            let back = decode(name, &wire_back);
            assert!(
                back == sent,
                "{name}: listener round trip differs ({} vs {} bytes, first diff at {:?})",
                back.len(),
                sent.len(),
                back.iter().zip(&sent).position(|(a, b)| a != b)
            );
            app.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_joins_a_plain_client_to_a_wrapped_remote() {
    bounded(async {
        let echo = echo_server().await;
        for (i, name) in GUESTS.iter().enumerate() {
            let relay = Relay::new(&guest(name), echo.to_string()).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(async move {
                relay
                    .serve(listener, async {
                        let _ = stop_rx.await;
                    })
                    .await
            });
            let sent = data(SIZE, 20 + i as u64);
            let got = exchange(connect(addr).await, &sent).await.unwrap();
            assert!(got == sent, "{name}: relay round trip differs ({} bytes)", got.len());
            stop_tx.send(()).unwrap();
            serving.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_request_then_whole_reply() {
    bounded(async {
        for name in GUESTS {
            // Reads the request to EOF, then replies with it four times over,
            // speaking the transport's wire format.
            let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = server.local_addr().unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut s, _) = server.accept().await.unwrap();
                let mut req = Vec::new();
                s.read_to_end(&mut req).await.unwrap();
                let req = decode(name, &req);
                s.write_all(&encode(name, &req.repeat(4))).await.unwrap();
            });
            let watm = guest(name);
            let conn = Dialer::new(&watm).unwrap().dial(addr.to_string()).await.unwrap();
            let req = data(1 << 20, 5);
            // `exchange` shuts down writing after the request, then reads on.
            let reply = exchange(conn, &req).await.unwrap();
            assert_eq!(reply.len(), 4 * req.len(), "{name}");
            assert!(reply == req.repeat(4), "{name}: reply differs");
        }
    })
    .await;
}

/// Goes to a fixed address whatever the application asked for (a stand-in
/// for "through another proxy").
struct FixedConnector(std::net::SocketAddr);

impl water::Connector for FixedConnector {
    fn connect<'a>(
        &'a self,
        _addr: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'a>,
    > {
        Box::pin(tokio::net::TcpStream::connect(self.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_connector_and_dial_filter() {
    bounded(async {
        let echo = echo_server().await;
        let bytes = watm_artifacts::Guest::named("plain").unwrap().bytes();

        let via = water::Watm::new(&bytes, water::Config::default().connector(FixedConnector(echo))).unwrap();
        let conn = Dialer::new(&via).unwrap().dial("unresolvable.invalid:9").await.unwrap();
        assert_eq!(exchange(conn, b"through the connector").await.unwrap(), b"through the connector");

        let fenced =
            water::Watm::new(&bytes, water::Config::default().dial_filter(|a| !a.ip().is_loopback()))
                .unwrap();
        match Dialer::new(&fenced).unwrap().dial(echo.to_string()).await {
            Err(water::Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
            other => panic!("filtered dial: {other:?}"),
        }
    })
    .await;
}
