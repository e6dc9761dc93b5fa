//! `sock_recv` and `sock_send`: what wasi-libc's `recv`/`send` and Rust
//! std's `TcpStream::peek` call. On a stream they are `fd_read`/`fd_write`
//! with flags; on anything else `notsock`.
//!
//! `sock_recv` flags: `RECV_PEEK` leaves the bytes to be read again;
//! `RECV_WAITALL` keeps reading until the buffer is full, the stream ends
//! or fails (with bytes already read, those are returned and the end or
//! error is left for the next call), or — on a non-blocking fd — nothing
//! more is there. Only the first non-empty iovec is used, as in `fd_read`.

use std::io;

use wasmtime::{Caller, Linker};
use water_abi::Errno;

use super::p1::{ret, split};
use super::table::Desc;
use super::{MODULE, WasiView, errno};

const RECV_PEEK: u32 = 1;
const RECV_WAITALL: u32 = 2;

pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        "sock_recv",
        |mut caller: Caller<'_, T>,
         (fd, iovs, n, flags, out_len, out_flags): (i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let r = sock_recv(&mut caller, fd as u32, iovs as u32, n as u32, flags as u32).await;
                Ok(ret(r.and_then(|len| {
                    let (mut mem, _) = split(&mut caller)?;
                    mem.slice(out_flags as u32, 2)?;
                    mem.write_u32(out_len as u32, len)?;
                    // roflags: never RECV_DATA_TRUNCATED for a stream.
                    mem.write(out_flags as u32, &0u16.to_le_bytes())
                })))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "sock_send",
        |mut caller: Caller<'_, T>, (fd, iovs, n, flags, out_len): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let r = async {
                    // No send flags are defined in preview1.
                    if flags != 0 {
                        return Err(Errno::INVAL);
                    }
                    split(&mut caller)?.1.table.stream(fd as u32)?;
                    super::p1::fd_write(&mut caller, fd as u32, iovs as u32, n as u32, out_len as u32).await
                };
                Ok(ret(r.await))
            })
        },
    )?;
    Ok(())
}

async fn sock_recv<T: WasiView>(
    caller: &mut Caller<'_, T>,
    fd: u32,
    iovs: u32,
    n: u32,
    flags: u32,
) -> Result<u32, Errno> {
    if flags & !(RECV_PEEK | RECV_WAITALL) != 0 {
        return Err(Errno::INVAL);
    }
    let (peek, wait_all) = (flags & RECV_PEEK != 0, flags & RECV_WAITALL != 0);
    let (ptr, len) = {
        let (mem, wasi) = split(caller)?;
        wasi.table.stream(fd)?;
        mem.first_iovec(iovs, n)?
    };
    let mut filled = 0u32;
    loop {
        let (mut mem, wasi) = split(caller)?;
        // Cloned only to wait, as in `fd_read`.
        let (stream, nonblocking) = match wasi.table.get(fd)? {
            Desc::Stream { stream, nonblocking } => (stream, *nonblocking),
            _ => return Err(Errno::NOTSOCK),
        };
        let buf = mem.slice_mut(ptr + filled, len - filled)?;
        let got = if peek { stream.try_peek(buf) } else { stream.try_read(buf) };
        match got {
            Ok(k) => {
                if !peek {
                    wasi.note_read(fd, k);
                }
                filled += k as u32;
                // A peek never waits for more: the bytes it saw stay queued.
                if k == 0 || filled == len || !wait_all || peek {
                    return Ok(filled);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if nonblocking {
                    return if filled > 0 { Ok(filled) } else { Err(Errno::AGAIN) };
                }
                let stream = stream.clone();
                let (ready, waited) = super::watched(stream.readable()).await;
                caller.data_mut().wasi().note_wait(waited);
                ready.map_err(|e| errno::from_io(&e))?;
            }
            Err(e) => {
                wasi.note_failure(fd, &e);
                if filled > 0 {
                    return Ok(filled);
                }
                return Err(errno::from_io(&e));
            }
        }
    }
}
