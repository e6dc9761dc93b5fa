//! The server side of SOCKS5: RFC 1928's CONNECT, with no authentication or
//! RFC 1929 username/password, where the credentials are the connection's
//! transport arguments (the Tor pluggable-transport convention, pt-spec
//! 3.5: `k=v;k=v` split over the username and the password, the password a
//! single NUL byte when the arguments fit in the username).
//!
//! Written by hand rather than with a crate: the protocol is the few
//! messages below, and the maintained server crates (fast-socks5) log the
//! credentials at debug level, while here they are transport arguments that
//! can hold secrets (keys, passwords). Nothing in this module logs them.
//!
//! Used by `water client --socks5` and by `water pt`'s client half.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use water::{Dialer, TransportArgs};

/// How long a client may take over its greeting and request.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;
const CONNECT: u8 = 0x01;

/// RFC 1928 reply codes (section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply for a failed dial through the transport.
    pub fn for_error(e: &water::Error) -> Reply {
        let water::Error::Io(io) = e else {
            return Reply::GeneralFailure;
        };
        match io.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NotFound => Reply::HostUnreachable,
            io::ErrorKind::TimedOut => Reply::TtlExpired,
            io::ErrorKind::PermissionDenied => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        }
    }
}

/// A CONNECT request that passed the handshake.
#[derive(Debug)]
pub struct Request {
    /// `host:port` (`[v6]:port` for IPv6).
    pub target: String,
    /// The transport arguments from the username/password (empty without
    /// authentication).
    pub args: TransportArgs,
}

/// Why a handshake ended without a request. Whatever reply the protocol
/// allows has already been sent.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("the client offers no method we accept (no-auth or username/password)")]
    NoMethod,
    #[error("bad username/password sub-negotiation (version {0})")]
    AuthVersion(u8),
    #[error("the username/password are not key=value transport arguments: {0}")]
    BadArgs(water_abi::args::ArgsError),
    #[error("unsupported SOCKS command {0} (only CONNECT)")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("the domain name is not UTF-8")]
    BadDomain,
    #[error("SOCKS handshake not finished within {HANDSHAKE_LIMIT:?}")]
    Timeout,
    #[error("SOCKS handshake: {0}")]
    Io(#[from] io::Error),
}

/// Runs the server side of the handshake up to (not including) the reply
/// to the request, bounded by [`HANDSHAKE_LIMIT`]. Unsupported commands and
/// address types get their reply code here.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Request, HandshakeError> {
    match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(s)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Request, HandshakeError> {
    // Greeting: VER NMETHODS METHODS...
    let [version, count] = read_array(s).await?;
    if version != VERSION {
        return Err(HandshakeError::Version(version));
    }
    let mut methods = vec![0u8; usize::from(count)];
    s.read_exact(&mut methods).await?;
    // Username/password first when offered: that is how arguments come.
    let method = [USER_PASS, NO_AUTH].into_iter().find(|m| methods.contains(m));
    s.write_all(&[VERSION, method.unwrap_or(NO_ACCEPTABLE)]).await?;
    let args = match method {
        None => return Err(HandshakeError::NoMethod),
        Some(NO_AUTH) => TransportArgs::new(),
        Some(_) => credentials(s).await?,
    };

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let [version, command, _reserved, atyp] = read_array(s).await?;
    if version != VERSION {
        return Err(HandshakeError::Version(version));
    }
    // The whole request is read before any refusal, so that closing after
    // the reply never discards it with a reset (an unknown address type
    // has no known length: refused at once).
    let host = match atyp {
        0x01 => Ok(Ipv4Addr::from(read_array::<4, _>(s).await?).to_string()),
        0x04 => Ok(format!("[{}]", Ipv6Addr::from(read_array::<16, _>(s).await?))),
        0x03 => {
            let [len] = read_array(s).await?;
            let mut name = vec![0u8; usize::from(len)];
            s.read_exact(&mut name).await?;
            String::from_utf8(name).ok().filter(|n| !n.is_empty()).ok_or(HandshakeError::BadDomain)
        }
        other => {
            reply(s, Reply::AddressTypeNotSupported).await?;
            return Err(HandshakeError::AddressType(other));
        }
    };
    let port = u16::from_be_bytes(read_array(s).await?);
    let host = match host {
        Ok(host) => host,
        Err(e) => {
            reply(s, Reply::HostUnreachable).await?;
            return Err(e);
        }
    };
    if command != CONNECT {
        reply(s, Reply::CommandNotSupported).await?;
        return Err(HandshakeError::Command(command));
    }
    Ok(Request { target: format!("{host}:{port}"), args })
}

/// RFC 1929: VER ULEN UNAME PLEN PASSWD, answered VER STATUS. The
/// arguments are the username followed by the password, unless the
/// password is the single NUL that stands for "unused".
async fn credentials<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<TransportArgs, HandshakeError> {
    let [version, ulen] = read_array(s).await?;
    if version != 1 {
        s.write_all(&[1, 1]).await?;
        return Err(HandshakeError::AuthVersion(version));
    }
    let mut text = vec![0u8; usize::from(ulen)];
    s.read_exact(&mut text).await?;
    let [plen] = read_array(s).await?;
    let mut password = vec![0u8; usize::from(plen)];
    s.read_exact(&mut password).await?;
    if password != [0] {
        text.extend_from_slice(&password);
    }
    match TransportArgs::parse(text) {
        Ok(args) => {
            s.write_all(&[1, 0]).await?;
            Ok(args)
        }
        Err(e) => {
            s.write_all(&[1, 1]).await?;
            Err(HandshakeError::BadArgs(e))
        }
    }
}

/// Sends the reply to a request; the bound address is given as 0.0.0.0:0
/// (clients of a proxy that dials through a transport have no use for it).
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: Reply) -> io::Result<()> {
    s.write_all(&[VERSION, code as u8, 0, 0x01, 0, 0, 0, 0, 0, 0]).await?;
    s.flush().await
}

async fn read_array<const N: usize, S: AsyncRead + Unpin>(s: &mut S) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Where a SOCKS front sends its connections.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The SOCKS target is the address the transport dials (a bridge), and
    /// the credentials are the connection's transport arguments.
    Bridge,
    /// The transport always dials this address; the SOCKS target reaches
    /// the guest as the argument `target=host:port`, after the
    /// credentials' arguments (so it wins over a `target` among them).
    Proxy(String),
}

/// Serves SOCKS5 on `listener` until `stop`: every CONNECT is dialed
/// through `dialer` per `mode`, answered with the reply code of the dial's
/// outcome, then carried both ways. A bad request or a failed dial ends
/// that connection only.
pub async fn serve(
    dialer: Dialer,
    listener: TcpListener,
    mode: Mode,
    signals: crate::tunnel::Signals,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    crate::tunnel::serve(listener, signals, drain, move |stream, stops| {
        let (dialer, mode) = (dialer.clone(), mode.clone());
        async move { carry(dialer, stream, mode, stops).await }
    })
    .await
}

/// One SOCKS connection: handshake, dial per `mode`, reply, carry until
/// either side ends or `stops.cut` (the handshake and dial end at
/// `stops.setup`).
pub async fn carry(
    dialer: Dialer,
    mut stream: TcpStream,
    mode: Mode,
    stops: crate::tunnel::Stops,
) -> anyhow::Result<()> {
    let setup = async {
        let Request { target, args } = accept(&mut stream).await?;
        let (addr, args) = match mode {
            Mode::Bridge => (target, args),
            Mode::Proxy(remote) => (remote, args.arg("target", target)),
        };
        // The reply must precede any byte from the far side, so the plain side
        // is an in-process connection rather than the socket handed to the guest.
        match dialer.dial_with_args(addr.clone(), &args).await {
            Ok(conn) => anyhow::Ok(Some(conn)),
            Err(e) => {
                let _ = reply(&mut stream, Reply::for_error(&e)).await;
                // The target is the user's, and a peer's text: scrubbed, or escaped.
                Err(e).with_context(|| format!("dial {}", water::logging::Scrubbed(&addr)))
            }
        }
    };
    let set_up = tokio::select! {
        r = setup => r?,
        () = stops.setup.cancelled() => None,
    };
    let Some(mut conn) = set_up else { return Ok(()) };
    reply(&mut stream, Reply::Succeeded).await?;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut conn) => {
            if let Err(e) = r {
                // The connection failed (its guest did): a reset, not a FIN
                // that would read as a clean end of a truncated stream.
                let _ = stream.set_zero_linger();
                return Err(e.into());
            }
        }
        () = stops.cut.cancelled() => { conn.abort().await?; return Ok(()); }
    }
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the server side on one end of an in-memory pipe against
    /// `client` bytes; returns the result and what the server wrote.
    async fn serve(client: &[u8]) -> (Result<Request, HandshakeError>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        theirs.write_all(client).await.unwrap();
        theirs.shutdown().await.unwrap();
        let result = accept(&mut ours).await;
        drop(ours);
        let mut written = Vec::new();
        theirs.read_to_end(&mut written).await.unwrap();
        (result, written)
    }

    #[tokio::test]
    async fn connect_by_name_with_no_auth() {
        let (r, out) = serve(b"\x05\x01\x00\x05\x01\x00\x03\x09localhost\x01\xbb").await;
        let req = r.unwrap();
        assert_eq!(req.target, "localhost:443");
        assert!(req.args.is_empty());
        assert_eq!(out, [5, 0]);
    }

    #[tokio::test]
    async fn tor_style_credentials_are_the_arguments() {
        // Username `cert=a;iat-mode=0`, password one NUL.
        let mut msg = b"\x05\x02\x00\x02\x01\x11cert=a;iat-mode=0\x01\x00".to_vec();
        msg.extend_from_slice(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90");
        let (r, out) = serve(&msg).await;
        let req = r.unwrap();
        assert_eq!(req.target, "127.0.0.1:8080");
        assert_eq!(req.args.as_bytes(), b"cert=a;iat-mode=0");
        assert_eq!(out, [5, 2, 1, 0]);
        // Split across both fields.
        let mut msg = b"\x05\x01\x02\x01\x04key=\x03abc".to_vec();
        msg.extend_from_slice(b"\x05\x01\x00\x04");
        msg.extend_from_slice(&[0; 15]);
        msg.extend_from_slice(b"\x01\x00\x50");
        let (r, _) = serve(&msg).await;
        let req = r.unwrap();
        assert_eq!(req.target, "[::1]:80");
        assert_eq!(req.args.get("key").as_deref(), Some(&b"abc"[..]));
    }

    #[tokio::test]
    async fn refusals_get_their_reply_codes() {
        let (r, out) = serve(b"\x04\x01\x00\x50").await;
        assert!(matches!(r, Err(HandshakeError::Version(4))));
        assert!(out.is_empty());
        let (r, out) = serve(b"\x05\x01\x01").await;
        assert!(matches!(r, Err(HandshakeError::NoMethod)));
        assert_eq!(out, [5, 0xff]);
        let (r, out) = serve(b"\x05\x01\x02\x01\x07novalue\x01\x00").await;
        assert!(matches!(r, Err(HandshakeError::BadArgs(_))));
        assert_eq!(out, [5, 2, 1, 1]);
        // BIND and UDP ASSOCIATE: command not supported.
        for cmd in [2u8, 3] {
            let (r, out) = serve(&[5, 1, 0, 5, cmd, 0, 1, 127, 0, 0, 1, 0, 80]).await;
            assert!(matches!(r, Err(HandshakeError::Command(c)) if c == cmd));
            assert_eq!(out, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        }
        let (r, out) = serve(&[5, 1, 0, 5, 1, 0, 9, 1, 2]).await;
        assert!(matches!(r, Err(HandshakeError::AddressType(9))));
        assert_eq!(out, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        // Truncated: an I/O error, no panic.
        let (r, _) = serve(&[5, 1, 0, 5, 1, 0, 1, 127]).await;
        assert!(matches!(r, Err(HandshakeError::Io(_))));
    }
}
