//! The client side of Tor's Extended ORPort (torspec `ext-orport-spec`):
//! SAFE_COOKIE authentication, then `USERADDR` and `TRANSPORT`, then
//! `DONE`, after which the connection carries the OR protocol. Through it a
//! bridge learns which transport and which client address a connection
//! came from.
//!
//! No maintained Rust crate implements this side of the protocol (it is a
//! few fixed messages); the HMAC is RustCrypto's.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first 32 bytes of an auth cookie file.
const COOKIE_HEADER: &[u8; 32] = b"! Extended ORPort Auth Cookie !\x0a";
const SAFE_COOKIE: u8 = 1;
const SERVER_TO_CLIENT: &[u8] = b"ExtORPort authentication server-to-client hash";
const CLIENT_TO_SERVER: &[u8] = b"ExtORPort authentication client-to-server hash";
const CMD_DONE: u16 = 0x0000;
const CMD_USERADDR: u16 = 0x0001;
const CMD_TRANSPORT: u16 = 0x0002;
const REPLY_OKAY: u16 = 0x1000;
/// Limit on the whole handshake with tor (local, so short).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The 32-byte secret from `TOR_PT_AUTH_COOKIE_FILE`.
#[derive(Clone)]
pub struct Cookie([u8; 32]);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(…)")
    }
}

impl Cookie {
    /// Reads and checks a cookie file: the 32-byte header, then the cookie.
    pub fn read(path: &Path) -> anyhow::Result<Cookie> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read auth cookie file {}: {e}", path.display()))?;
        Cookie::parse(&bytes).ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not an Extended ORPort auth cookie file (64 bytes starting with the header)",
                path.display()
            )
        })
    }

    fn parse(bytes: &[u8]) -> Option<Cookie> {
        let (header, cookie) = bytes.split_at_checked(32)?;
        (header == COOKIE_HEADER && cookie.len() == 32).then(|| Cookie(cookie.try_into().expect("32 bytes")))
    }

    fn mac(&self, label: &[u8], client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac
    }
}

/// Connects to the Extended ORPort at `addr`, authenticates with `cookie`,
/// reports the client's address and the transport's name, and returns the
/// stream ready for the OR protocol.
pub async fn connect(
    addr: &str,
    cookie: &Cookie,
    user: SocketAddr,
    transport: &str,
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&mut stream, cookie, user, transport)).await {
        Ok(r) => r.map(|()| stream),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "Extended ORPort handshake timed out")),
    }
}

fn refused(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.into())
}

/// The handshake on any stream (tested against an in-memory server).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cookie: &Cookie,
    user: SocketAddr,
    transport: &str,
) -> io::Result<()> {
    // The server lists its auth types, ending with 0.
    let mut safe_cookie = false;
    loop {
        match s.read_u8().await? {
            0 => break,
            SAFE_COOKIE => safe_cookie = true,
            _ => {}
        }
    }
    if !safe_cookie {
        return Err(refused("the Extended ORPort does not offer SAFE_COOKIE authentication"));
    }
    let mut client_nonce = [0u8; 32];
    getrandom::fill(&mut client_nonce).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    s.write_all(&[SAFE_COOKIE]).await?;
    s.write_all(&client_nonce).await?;
    let mut server_hash = [0u8; 32];
    let mut server_nonce = [0u8; 32];
    s.read_exact(&mut server_hash).await?;
    s.read_exact(&mut server_nonce).await?;
    // Constant-time comparison (`verify_slice`).
    if cookie.mac(SERVER_TO_CLIENT, &client_nonce, &server_nonce).verify_slice(&server_hash).is_err() {
        return Err(refused("the Extended ORPort's server hash is wrong (another cookie?)"));
    }
    let client_hash = cookie.mac(CLIENT_TO_SERVER, &client_nonce, &server_nonce).finalize().into_bytes();
    s.write_all(&client_hash).await?;
    if s.read_u8().await? != 1 {
        return Err(refused("the Extended ORPort refused our authentication (wrong cookie?)"));
    }
    command(s, CMD_USERADDR, user.to_string().as_bytes()).await?;
    command(s, CMD_TRANSPORT, transport.as_bytes()).await?;
    command(s, CMD_DONE, b"").await?;
    s.flush().await?;
    let reply = s.read_u16().await?;
    let len = s.read_u16().await?;
    let mut body = vec![0u8; usize::from(len)];
    s.read_exact(&mut body).await?;
    if reply != REPLY_OKAY {
        return Err(refused(format!("the Extended ORPort denied the connection (reply {reply:#06x})")));
    }
    Ok(())
}

async fn command<S: AsyncWrite + Unpin>(s: &mut S, kind: u16, body: &[u8]) -> io::Result<()> {
    let len = u16::try_from(body.len()).map_err(|_| io::Error::other("Extended ORPort command too long"))?;
    s.write_all(&kind.to_be_bytes()).await?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server side, as tor runs it: returns the commands it received.
    async fn server<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        cookie: &Cookie,
    ) -> io::Result<Vec<(u16, Vec<u8>)>> {
        s.write_all(&[SAFE_COOKIE, 0]).await?;
        assert_eq!(s.read_u8().await?, SAFE_COOKIE);
        let mut client_nonce = [0u8; 32];
        s.read_exact(&mut client_nonce).await?;
        let server_nonce = [7u8; 32];
        let hash = cookie.mac(SERVER_TO_CLIENT, &client_nonce, &server_nonce).finalize().into_bytes();
        s.write_all(&hash).await?;
        s.write_all(&server_nonce).await?;
        let mut client_hash = [0u8; 32];
        s.read_exact(&mut client_hash).await?;
        let ok =
            cookie.mac(CLIENT_TO_SERVER, &client_nonce, &server_nonce).verify_slice(&client_hash).is_ok();
        s.write_all(&[u8::from(ok)]).await?;
        if !ok {
            return Ok(vec![]);
        }
        let mut got = Vec::new();
        loop {
            let kind = s.read_u16().await?;
            let mut body = vec![0u8; usize::from(s.read_u16().await?)];
            s.read_exact(&mut body).await?;
            got.push((kind, body));
            if kind == CMD_DONE {
                s.write_all(&[0x10, 0x00, 0, 0]).await?;
                return Ok(got);
            }
        }
    }

    fn cookie_file(fill: u8) -> Vec<u8> {
        let mut bytes = COOKIE_HEADER.to_vec();
        bytes.extend_from_slice(&[fill; 32]);
        bytes
    }

    #[tokio::test]
    async fn safe_cookie_then_useraddr_transport_done() {
        let cookie = Cookie::parse(&cookie_file(3)).unwrap();
        let (mut a, mut b) = tokio::io::duplex(1024);
        let user: SocketAddr = "192.0.2.7:4321".parse().unwrap();
        let (ours, theirs) = tokio::join!(handshake(&mut a, &cookie, user, "plain"), server(&mut b, &cookie));
        ours.unwrap();
        assert_eq!(
            theirs.unwrap(),
            vec![
                (CMD_USERADDR, b"192.0.2.7:4321".to_vec()),
                (CMD_TRANSPORT, b"plain".to_vec()),
                (CMD_DONE, vec![])
            ]
        );
    }

    #[tokio::test]
    async fn another_cookie_is_refused_before_any_command() {
        let ours = Cookie::parse(&cookie_file(3)).unwrap();
        let tors = Cookie::parse(&cookie_file(4)).unwrap();
        let (mut a, mut b) = tokio::io::duplex(1024);
        let user: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let client = async move {
            let r = handshake(&mut a, &ours, user, "plain").await;
            drop(a);
            r
        };
        let (r, theirs) = tokio::join!(client, server(&mut b, &tors));
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("server hash"), "{e}");
        // The server got no client hash, let alone a command.
        assert!(theirs.is_err());
    }

    #[test]
    fn cookie_files_are_checked() {
        assert!(Cookie::parse(&cookie_file(1)).is_some());
        assert!(Cookie::parse(&cookie_file(1)[..63]).is_none());
        let mut bad = cookie_file(1);
        bad[0] = b'?';
        assert!(Cookie::parse(&bad).is_none());
        assert!(Cookie::parse(b"").is_none());
    }
}
