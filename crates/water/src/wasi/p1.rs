//! The preview1 functions, on a `Linker`.
//!
//! Each function returns the WASI errno (`0` success, positive failure; unlike
//! the `env` imports, preview1 does not negate). Bodies take `Result<_, Errno>`
//! so that every failure path is one `?`.

use wasmtime::{Caller, Extern, FuncType, Linker, Module, Val};
use water_abi::Errno;

use super::memory::GuestMem;
use super::table::{Desc, Stream};
use super::{Clock, MODULE, WasiCtx, WasiView, errno};

/// Why an instance stopped inside a host call (a trap, not an errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit(pub i32);

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest called proc_exit({})", self.0)
    }
}

impl std::error::Error for GuestExit {}

// preview1 constants used here.
const FILETYPE_UNKNOWN: u8 = 0;
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const FILETYPE_REGULAR_FILE: u8 = 4;
const FILETYPE_SOCKET_STREAM: u8 = 6;
const FDFLAGS_NONBLOCK: u16 = 1 << 2;
const RIGHTS_ALL: u64 = (1 << 30) - 1;
const SDFLAGS_RD: u32 = 1;
const SDFLAGS_WR: u32 = 2;
const WHENCE_SET: u32 = 0;
const WHENCE_CUR: u32 = 1;
const WHENCE_END: u32 = 2;

pub(super) fn ret(r: Result<(), Errno>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.code() as i32,
    }
}

/// The instance's memory and WASI state, borrowed together.
pub fn split<'a, T: WasiView>(
    caller: &'a mut Caller<'_, T>,
) -> Result<(GuestMem<'a>, &'a mut WasiCtx), Errno> {
    let memory = match caller.data_mut().wasi().memory {
        Some(m) => m,
        None => match caller.get_export("memory") {
            Some(Extern::Memory(m)) => {
                caller.data_mut().wasi().memory = Some(m);
                m
            }
            _ => return Err(Errno::FAULT),
        },
    };
    let (bytes, data) = memory.data_and_store_mut(caller);
    Ok((GuestMem(bytes), data.wasi()))
}

/// Links every implemented preview1 function, and a `nosys` stub for every
/// other preview1 function `module` imports.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        "fd_read",
        |mut caller: Caller<'_, T>, (fd, iovs, n, nread): (i32, i32, i32, i32)| {
            Box::new(async move {
                Ok(ret(fd_read(&mut caller, fd as u32, iovs as u32, n as u32, nread as u32).await))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, T>, (fd, iovs, n, nwritten): (i32, i32, i32, i32)| {
            Box::new(async move {
                Ok(ret(fd_write(&mut caller, fd as u32, iovs as u32, n as u32, nwritten as u32).await))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, T>, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                Ok(ret(super::poll::poll_oneoff(
                    &mut caller,
                    subs as u32,
                    events as u32,
                    n as u32,
                    nevents as u32,
                )
                .await))
            })
        },
    )?;
    linker.func_wrap(MODULE, "fd_close", |mut caller: Caller<'_, T>, fd: i32| -> i32 {
        let wasi = caller.data_mut().wasi();
        let closed = wasi.table.remove(fd as u32).map(|desc| {
            // The host holds other handles of a stream (to watch it, to
            // reset it on failure), so dropping the guest's would not close
            // it: end it both ways as a close does, so that the peer reads
            // EOF now, not when the worker ends.
            if let Desc::Stream { stream, .. } = desc {
                let _ = stream.shutdown(true, true);
            }
        });
        if closed.is_ok() {
            wasi.note_write_end(fd as u32);
        }
        ret(closed)
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |mut caller: Caller<'_, T>, fd: i32, buf: i32| -> i32 {
        ret(fd_fdstat_get(&mut caller, fd as u32, buf as u32))
    })?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_set_flags",
        |mut caller: Caller<'_, T>, fd: i32, flags: i32| -> i32 {
            ret(fd_fdstat_set_flags(caller.data_mut().wasi(), fd as u32, flags as u32))
        },
    )?;
    linker.func_wrap(MODULE, "fd_prestat_get", |mut caller: Caller<'_, T>, fd: i32, _buf: i32| -> i32 {
        // No preopens: every fd, open or not, is "not a preopen".
        let _ = caller.data_mut().wasi().table.get(fd as u32);
        Errno::BADF.code() as i32
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, T>, _fd: i32, _path: i32, _len: i32| -> i32 { Errno::BADF.code() as i32 },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |mut caller: Caller<'_, T>, fd: i32, offset: i64, whence: i32, newoffset: i32| -> i32 {
            ret(fd_seek(&mut caller, fd as u32, offset, whence as u32, newoffset as u32))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "path_open",
        |mut caller: Caller<'_, T>,
         dirfd: i32,
         _dirflags: i32,
         _path: i32,
         _path_len: i32,
         _oflags: i32,
         _rights_base: i64,
         _rights_inheriting: i64,
         _fdflags: i32,
         _opened: i32|
         -> i32 {
            // No filesystem: there is no directory fd to open anything under.
            match caller.data_mut().wasi().table.get(dirfd as u32) {
                Ok(_) => Errno::NOTDIR.code() as i32,
                Err(e) => e.code() as i32,
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, T>, id: i32, _precision: i64, out: i32| -> i32 {
            ret(clock_time_get(&mut caller, id as u32, out as u32))
        },
    )?;
    linker.func_wrap(MODULE, "clock_res_get", |mut caller: Caller<'_, T>, id: i32, out: i32| -> i32 {
        ret(Clock::from_id(id as u32)
            .and_then(|_| split(&mut caller))
            .and_then(|(mut mem, _)| mem.write_u64(out as u32, 1_000)))
    })?;
    for (sizes, get) in [("args_sizes_get", "args_get"), ("environ_sizes_get", "environ_get")] {
        // Empty argument list and environment.
        linker.func_wrap(MODULE, sizes, |mut caller: Caller<'_, T>, count: i32, buf_size: i32| -> i32 {
            ret(split(&mut caller).and_then(|(mut mem, _)| {
                mem.write_u32(count as u32, 0).and(mem.write_u32(buf_size as u32, 0))
            }))
        })?;
        linker.func_wrap(MODULE, get, |_: Caller<'_, T>, _ptrs: i32, _buf: i32| -> i32 { 0 })?;
    }
    linker.func_wrap_async(MODULE, "random_get", |mut caller: Caller<'_, T>, (buf, len): (i32, i32)| {
        Box::new(async move { Ok(ret(random_get(&mut caller, buf as u32, len as u32).await)) })
    })?;
    linker.func_wrap(MODULE, "proc_exit", |_: Caller<'_, T>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(GuestExit(code)))
    })?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, T>| -> i32 { 0 })?;
    super::sock::add_to_linker(linker)?;
    linker.func_wrap(MODULE, "sock_shutdown", |mut caller: Caller<'_, T>, fd: i32, how: i32| -> i32 {
        ret(sock_shutdown(caller.data_mut().wasi(), fd as u32, how as u32))
    })?;

    for import in module.imports() {
        let name = import.name();
        if import.module() != MODULE || IMPLEMENTED.contains(&name) || !super::ALL_FUNCTIONS.contains(&name) {
            continue;
        }
        if let wasmtime::ExternType::Func(ty) = import.ty() {
            stub_nosys(linker, name, ty)?;
        }
    }
    Ok(())
}

/// The preview1 functions [`add_to_linker`] implements.
pub const IMPLEMENTED: &[&str] = &[
    "fd_read",
    "fd_write",
    "poll_oneoff",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_seek",
    "path_open",
    "clock_time_get",
    "clock_res_get",
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "random_get",
    "proc_exit",
    "sched_yield",
    "sock_shutdown",
    "sock_recv",
    "sock_send",
];

/// A preview1 function the module imports but we do not implement: it
/// answers `nosys` (whatever its parameters) and touches nothing.
fn stub_nosys<T: WasiView>(linker: &mut Linker<T>, name: &str, ty: FuncType) -> wasmtime::Result<()> {
    linker.func_new(MODULE, name, ty, |_caller, _params, out| {
        if let [slot] = out {
            *slot = Val::I32(Errno::NOSYS.code() as i32);
        }
        Ok(())
    })?;
    Ok(())
}

async fn fd_read<T: WasiView>(
    caller: &mut Caller<'_, T>,
    fd: u32,
    iovs: u32,
    n: u32,
    nread: u32,
) -> Result<(), Errno> {
    let (ptr, len) = {
        let (mem, _) = split(caller)?;
        mem.slice(nread, 4)?;
        mem.first_iovec(iovs, n)?
    };
    loop {
        let (mut mem, wasi) = split(caller)?;
        let (stream, nonblocking) = match wasi.table.get_mut(fd)? {
            Desc::Stdin => return mem.write_u32(nread, 0),
            Desc::Output(_) => return Err(Errno::BADF),
            Desc::Config { data, pos } => {
                let start = (*pos).min(data.len() as u64) as usize;
                let k = (data.len() - start).min(len as usize);
                let data = data.clone();
                *pos += k as u64;
                mem.slice_mut(ptr, k as u32)?.copy_from_slice(&data[start..start + k]);
                return mem.write_u32(nread, k as u32);
            }
            Desc::Cancel { token, nonblocking } => {
                if token.is_cancelled() {
                    return mem.write_u32(nread, 0);
                }
                if *nonblocking {
                    return Err(Errno::AGAIN);
                }
                let token = token.clone();
                let ((), waited) = super::watched(token.cancelled()).await;
                caller.data_mut().wasi().note_wait(waited);
                continue;
            }
            Desc::Stream { stream, nonblocking } => (stream.clone(), *nonblocking),
        };
        match stream.try_read(mem.slice_mut(ptr, len)?) {
            Ok(k) => {
                wasi.note_read(fd, k);
                return mem.write_u32(nread, k as u32);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if nonblocking {
                    return Err(Errno::AGAIN);
                }
                let (ready, waited) = super::watched(stream.readable()).await;
                caller.data_mut().wasi().note_wait(waited);
                ready.map_err(|e| errno::from_io(&e))?;
            }
            Err(e) => {
                wasi.note_failure(fd, &e);
                return Err(errno::from_io(&e));
            }
        }
    }
}

pub(super) async fn fd_write<T: WasiView>(
    caller: &mut Caller<'_, T>,
    fd: u32,
    iovs: u32,
    n: u32,
    nwritten: u32,
) -> Result<(), Errno> {
    {
        let (mem, _) = split(caller)?;
        mem.slice(nwritten, 4)?;
    }
    loop {
        let (mut mem, wasi) = split(caller)?;
        // Any write attempt makes the fd's write readiness news again.
        wasi.table.wrote(fd);
        let (stream, nonblocking): (Stream, bool) = match wasi.table.get(fd)? {
            Desc::Output(which) => {
                let which = *which;
                let mut total = 0u32;
                for (ptr, len) in mem.iovecs(iovs, n)? {
                    wasi.output.write(which, mem.slice(ptr, len)?);
                    total = total.saturating_add(len);
                }
                return mem.write_u32(nwritten, total);
            }
            Desc::Stream { stream, nonblocking } => (stream.clone(), *nonblocking),
            Desc::Stdin | Desc::Config { .. } | Desc::Cancel { .. } => return Err(Errno::BADF),
        };
        let (ptr, len) = mem.first_iovec(iovs, n)?;
        match stream.try_write(mem.slice(ptr, len)?) {
            Ok(k) => {
                wasi.note_write(fd, k);
                return mem.write_u32(nwritten, k as u32);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if nonblocking {
                    return Err(Errno::AGAIN);
                }
                let (ready, waited) = super::watched(stream.writable()).await;
                caller.data_mut().wasi().note_wait(waited);
                ready.map_err(|e| errno::from_io(&e))?;
            }
            Err(e) => {
                wasi.note_failure(fd, &e);
                return Err(errno::from_io(&e));
            }
        }
    }
}

/// Bytes `random_get` fills before it lets other tasks run.
const RANDOM_CHUNK: u32 = 64 << 10;

/// Fills guest memory with random bytes, [`RANDOM_CHUNK`] at a time with a
/// yield between: a request for the whole memory (up to 4 GiB, seconds of
/// work) must not hold a runtime thread that other connections need.
async fn random_get<T: WasiView>(caller: &mut Caller<'_, T>, buf: u32, len: u32) -> Result<(), Errno> {
    split(caller)?.0.slice(buf, len)?;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(RANDOM_CHUNK);
        {
            let (mut mem, _) = split(caller)?;
            getrandom::fill(mem.slice_mut(buf + done, n)?).map_err(|_| Errno::IO)?;
        }
        done += n;
        if done < len {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

fn fd_fdstat_get<T: WasiView>(caller: &mut Caller<'_, T>, fd: u32, buf: u32) -> Result<(), Errno> {
    let (mut mem, wasi) = split(caller)?;
    let (filetype, nonblocking) = match wasi.table.get(fd)? {
        Desc::Stdin | Desc::Output(_) => (FILETYPE_CHARACTER_DEVICE, false),
        Desc::Stream { nonblocking, .. } => (FILETYPE_SOCKET_STREAM, *nonblocking),
        Desc::Cancel { nonblocking, .. } => (FILETYPE_UNKNOWN, *nonblocking),
        Desc::Config { .. } => (FILETYPE_REGULAR_FILE, false),
    };
    let mut stat = [0u8; 24];
    stat[0] = filetype;
    let flags = if nonblocking { FDFLAGS_NONBLOCK } else { 0 };
    stat[2..4].copy_from_slice(&flags.to_le_bytes());
    stat[8..16].copy_from_slice(&RIGHTS_ALL.to_le_bytes());
    stat[16..24].copy_from_slice(&RIGHTS_ALL.to_le_bytes());
    mem.write(buf, &stat)
}

fn fd_fdstat_set_flags(wasi: &mut WasiCtx, fd: u32, flags: u32) -> Result<(), Errno> {
    let want_nonblocking = flags & u32::from(FDFLAGS_NONBLOCK) != 0;
    if flags & !u32::from(FDFLAGS_NONBLOCK) != 0 {
        return Err(Errno::NOTSUP);
    }
    match wasi.table.get_mut(fd)? {
        Desc::Stream { nonblocking, .. } | Desc::Cancel { nonblocking, .. } => {
            *nonblocking = want_nonblocking;
            Ok(())
        }
        // Nothing else ever blocks.
        _ => Ok(()),
    }
}

fn fd_seek<T: WasiView>(
    caller: &mut Caller<'_, T>,
    fd: u32,
    offset: i64,
    whence: u32,
    newoffset: u32,
) -> Result<(), Errno> {
    let (mut mem, wasi) = split(caller)?;
    let Desc::Config { data, pos } = wasi.table.get_mut(fd)? else {
        return Err(Errno::SPIPE);
    };
    let base = match whence {
        WHENCE_SET => 0,
        WHENCE_CUR => *pos as i64,
        WHENCE_END => data.len() as i64,
        _ => return Err(Errno::INVAL),
    };
    let new = base.checked_add(offset).ok_or(Errno::OVERFLOW)?;
    if new < 0 {
        return Err(Errno::INVAL);
    }
    mem.slice(newoffset, 8)?;
    *pos = new as u64;
    mem.write_u64(newoffset, new as u64)
}

fn clock_time_get<T: WasiView>(caller: &mut Caller<'_, T>, id: u32, out: u32) -> Result<(), Errno> {
    let clock = Clock::from_id(id)?;
    let (mut mem, wasi) = split(caller)?;
    let now = wasi.now(clock);
    mem.write_u64(out, u64::try_from(now.as_nanos()).map_err(|_| Errno::OVERFLOW)?)
}

fn sock_shutdown(wasi: &mut WasiCtx, fd: u32, how: u32) -> Result<(), Errno> {
    if how & !(SDFLAGS_RD | SDFLAGS_WR) != 0 || how == 0 {
        return Err(Errno::INVAL);
    }
    let stream = wasi.table.stream(fd)?;
    stream.shutdown(how & SDFLAGS_RD != 0, how & SDFLAGS_WR != 0).map_err(|e| errno::from_io(&e))?;
    if how & SDFLAGS_WR != 0 {
        wasi.note_write_end(fd);
    }
    Ok(())
}
