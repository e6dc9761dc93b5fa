//! A test-only WATM written the way other authors' Rust guests are (water-rs's
//! `water_bins`): `std`, tokio's current-thread runtime on `wasm32-wasip1`,
//! `tokio::net::TcpStream::from_std` over every fd the host hands out (the
//! config fd and the cancel fd too), and `tokio::select!` over the two
//! directions and the cancel fd.
//!
//! It is not a reference transport and not a template: it exists to prove
//! that our host runs such guests. mio's WASI selector registers every fd
//! it wraps for read *and* write interest and puts all of them in every
//! `poll_oneoff`; one error event fails the whole poll and tokio panics.
//!
//! Transform: the `xor` reference transport's wire format (byte `i` of each
//! direction XORed with `key[i % len]`, the key as hex in the config), so
//! tests can pair it with the reference `xor` guest byte for byte.
//! An empty key (no config) means identity.

#![cfg(target_os = "wasi")]

use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn host_dial() -> i32;
    fn host_accept() -> i32;
    fn pull_config() -> i32;
}

/// Rust guests export the version marker as a global, TinyGo as a function.
#[unsafe(no_mangle)]
pub static _water_v0: i32 = 0;

static PLAIN: AtomicI32 = AtomicI32::new(-1);
static WIRE: AtomicI32 = AtomicI32::new(-1);
static CANCEL: AtomicI32 = AtomicI32::new(-1);
static KEY: Mutex<Vec<u8>> = Mutex::new(Vec::new());

const ECANCELED: i32 = 11;
const EINVAL: i32 = 28;
const EIO: i32 = 29;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("current-thread runtime")
}

/// A tokio stream over an fd the host gave us.
fn stream(fd: RawFd) -> std::io::Result<TcpStream> {
    // SAFETY: the host handed us `fd` and nothing else in this guest owns it.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

fn errno(e: &std::io::Error) -> i32 {
    -e.raw_os_error().filter(|&n| n > 0).unwrap_or(EIO)
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_init() -> i32 {
    // SAFETY: a v0 host import without preconditions.
    let fd = unsafe { pull_config() };
    if fd < 0 {
        return 0; // no config: identity
    }
    // The config fd goes through tokio too: mio then subscribes it for
    // write interest as well, which a host must answer without an error.
    let text = runtime().block_on(async {
        let mut config = stream(fd)?;
        let mut text = Vec::new();
        config.read_to_end(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    });
    let text = match text {
        Ok(text) => text,
        Err(e) => return errno(&e),
    };
    let text = text.trim_ascii();
    let key: Option<Vec<u8>> = (text.len() % 2 == 0)
        .then(|| text.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect())
        .flatten();
    match key {
        Some(key) => {
            *KEY.lock().expect("one thread") = key;
            0
        }
        None => {
            eprintln!("tokio guest: config must be a hex key");
            -EINVAL
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_cancel_with(fd: i32) -> i32 {
    CANCEL.store(fd, Ordering::Relaxed);
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_dial(internal: i32) -> i32 {
    PLAIN.store(internal, Ordering::Relaxed);
    // SAFETY: a v0 host import without preconditions.
    let fd = unsafe { host_dial() };
    WIRE.store(fd, Ordering::Relaxed);
    fd
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_accept(internal: i32) -> i32 {
    PLAIN.store(internal, Ordering::Relaxed);
    // SAFETY: a v0 host import without preconditions.
    let fd = unsafe { host_accept() };
    WIRE.store(fd, Ordering::Relaxed);
    fd
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_associate() -> i32 {
    // SAFETY: v0 host imports without preconditions.
    let plain = unsafe { host_accept() };
    if plain < 0 {
        return plain;
    }
    PLAIN.store(plain, Ordering::Relaxed);
    // SAFETY: as above.
    let wire = unsafe { host_dial() };
    WIRE.store(wire, Ordering::Relaxed);
    wire.min(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn _water_worker() -> i32 {
    let key = KEY.lock().expect("one thread").clone();
    runtime().block_on(async move {
        let (plain, wire, cancel) = match (
            stream(PLAIN.load(Ordering::Relaxed)),
            stream(WIRE.load(Ordering::Relaxed)),
            stream(CANCEL.load(Ordering::Relaxed)),
        ) {
            (Ok(p), Ok(w), Ok(c)) => (p, w, c),
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return errno(&e),
        };
        let (plain_rd, plain_wr) = plain.into_split();
        let (wire_rd, wire_wr) = wire.into_split();
        let mut cancel = cancel;
        let mut byte = [0u8; 1];
        tokio::select! {
            done = async {
                tokio::try_join!(shuttle(plain_rd, wire_wr, &key), shuttle(wire_rd, plain_wr, &key))
            } => match done {
                Ok(_) => 0,
                Err(e) => errno(&e),
            },
            // Readable (at EOF) once the host cancels.
            _ = cancel.read(&mut byte) => -ECANCELED,
        }
    })
}

/// Copies `from` to `to` through the positional XOR until EOF, then
/// half-closes `to`.
async fn shuttle(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    key: &[u8],
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pos = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(pos);
        }
        if !key.is_empty() {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b ^= key[((pos + i as u64) % key.len() as u64) as usize];
            }
        }
        to.write_all(&buf[..n]).await?;
        pos += n as u64;
    }
}
