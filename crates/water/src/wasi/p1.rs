//! The preview1 functions, on a `Linker`.
//!
//! Each function returns the WASI errno (`0` success, positive failure; unlike
//! the `env` imports, preview1 does not negate). Bodies take `Result<_, Errno>`
//! so that every failure path is one `?`.

use wasmtime::{Caller, Extern, FuncType, Linker, Module, Val};
use water_abi::Errno;

use super::memory::GuestMem;
use super::table::Desc;
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
const FILETYPE_DIRECTORY: u8 = 3;
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
    linker.func_wrap(MODULE, "fd_prestat_get", |mut caller: Caller<'_, T>, fd: i32, buf: i32| -> i32 {
        ret(fd_prestat_get(&mut caller, fd as u32, buf as u32))
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |mut caller: Caller<'_, T>, fd: i32, path: i32, len: i32| -> i32 {
            ret(fd_prestat_dir_name(&mut caller, fd as u32, path as u32, len as u32))
        },
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
         path: i32,
         path_len: i32,
         oflags: i32,
         rights_base: i64,
         _rights_inheriting: i64,
         fdflags: i32,
         opened: i32|
         -> i32 {
            let open = OpenArgs {
                dirfd: dirfd as u32,
                path: path as u32,
                path_len: path_len as u32,
                oflags: oflags as u32,
                rights: rights_base as u64,
                fdflags: fdflags as u32,
                opened: opened as u32,
            };
            ret(path_open(&mut caller, open))
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
    loop {
        // One borrow of memory and table per attempt; the stream is cloned
        // only when the call has to wait (this runs on every read).
        let (mut mem, wasi) = split(caller)?;
        mem.slice(nread, 4)?;
        let (ptr, len) = mem.first_iovec(iovs, n)?;
        let (stream, nonblocking) = match wasi.table.get_mut(fd)? {
            Desc::Stdin => return mem.write_u32(nread, 0),
            Desc::Output(_) => return Err(Errno::BADF),
            Desc::Dir { .. } => return Err(Errno::ISDIR),
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
            Desc::Stream { stream, nonblocking } => (&*stream, *nonblocking),
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
                let stream = stream.clone();
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
    // Bytes of the first iovec already written (only with `whole_writes`).
    let mut done = 0u32;
    loop {
        // As in `fd_read`: one borrow per attempt, a clone only to wait.
        let (mut mem, wasi) = split(caller)?;
        mem.slice(nwritten, 4)?;
        // Any write attempt makes the fd's write readiness news again.
        wasi.table.wrote(fd);
        let (stream, nonblocking) = match wasi.table.get(fd)? {
            Desc::Output(which) => {
                let which = *which;
                let mut total = 0u32;
                for (ptr, len) in mem.iovecs(iovs, n)? {
                    wasi.output.write(which, mem.slice(ptr, len)?);
                    total = total.saturating_add(len);
                }
                return mem.write_u32(nwritten, total);
            }
            Desc::Stream { stream, nonblocking } => (stream, *nonblocking),
            Desc::Stdin | Desc::Config { .. } | Desc::Cancel { .. } | Desc::Dir { .. } => {
                return Err(Errno::BADF);
            }
        };
        let (ptr, len) = mem.first_iovec(iovs, n)?;
        // Guests that treat `again` and short writes on a stream as errors
        // (water-go's v1 library) write whole, waiting for room.
        let (whole, nonblocking) = (wasi.whole_writes, nonblocking && !wasi.whole_writes);
        match stream.try_write(mem.slice(ptr + done, len - done)?) {
            Ok(k) => {
                wasi.note_write(fd, k);
                done += k as u32;
                if !whole || done == len || k == 0 {
                    return mem.write_u32(nwritten, done);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if nonblocking {
                    return Err(Errno::AGAIN);
                }
                let stream = stream.clone();
                let (ready, waited) = super::watched(stream.writable()).await;
                caller.data_mut().wasi().note_wait(waited);
                ready.map_err(|e| errno::from_io(&e))?;
            }
            Err(e) => {
                wasi.note_failure(fd, &e);
                if done > 0 {
                    // What went out is reported; the error comes next time.
                    return mem.write_u32(nwritten, done);
                }
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
        Desc::Dir { .. } => (FILETYPE_DIRECTORY, false),
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

/// `fd_prestat_get`: a preopened directory is a `prestat` of tag 0 (dir)
/// and its name's length; any other fd, open or not, is not a preopen
/// (`badf`, which ends a guest's scan of preopens).
fn fd_prestat_get<T: WasiView>(caller: &mut Caller<'_, T>, fd: u32, buf: u32) -> Result<(), Errno> {
    let (mut mem, wasi) = split(caller)?;
    let Ok(Desc::Dir { path, .. }) = wasi.table.get(fd) else { return Err(Errno::BADF) };
    let mut stat = [0u8; 8];
    stat[4..8].copy_from_slice(&(path.len() as u32).to_le_bytes());
    mem.write(buf, &stat)
}

/// `fd_prestat_dir_name`: the preopen's path, at most `len` bytes of it.
fn fd_prestat_dir_name<T: WasiView>(
    caller: &mut Caller<'_, T>,
    fd: u32,
    buf: u32,
    len: u32,
) -> Result<(), Errno> {
    let (mut mem, wasi) = split(caller)?;
    let Ok(Desc::Dir { path, .. }) = wasi.table.get(fd) else { return Err(Errno::BADF) };
    if (len as usize) < path.len() {
        return Err(Errno::NAMETOOLONG);
    }
    let path = path.clone();
    mem.write(buf, path.as_bytes())
}

/// `path_open`'s arguments that matter here.
struct OpenArgs {
    dirfd: u32,
    path: u32,
    path_len: u32,
    oflags: u32,
    rights: u64,
    fdflags: u32,
    opened: u32,
}

/// Longest path `path_open` reads.
const MAX_PATH: u32 = 1024;

/// `path_open` under a preopened in-memory directory: a file of it, by
/// its name (a leading `./` allowed), opened read-only. Creating,
/// truncating, writing or opening as a directory is refused (`rofs`,
/// `notdir`); an unknown name is `noent`; any other fd is `notdir`.
fn path_open<T: WasiView>(caller: &mut Caller<'_, T>, a: OpenArgs) -> Result<(), Errno> {
    const OFLAGS_CREAT: u32 = 1;
    const OFLAGS_DIRECTORY: u32 = 2;
    const OFLAGS_EXCL: u32 = 4;
    const OFLAGS_TRUNC: u32 = 8;
    const RIGHTS_FD_WRITE: u64 = 1 << 6;
    const FDFLAGS_APPEND: u32 = 1;
    let (mut mem, wasi) = split(caller)?;
    if a.path_len > MAX_PATH {
        return Err(Errno::NAMETOOLONG);
    }
    let name = mem.slice(a.path, a.path_len)?.to_vec();
    let Desc::Dir { files, .. } = wasi.table.get(a.dirfd)? else { return Err(Errno::NOTDIR) };
    if a.oflags & (OFLAGS_CREAT | OFLAGS_EXCL | OFLAGS_TRUNC) != 0
        || a.rights & RIGHTS_FD_WRITE != 0
        || a.fdflags & FDFLAGS_APPEND != 0
    {
        return Err(Errno::ROFS);
    }
    let name = name.strip_prefix(b"./").unwrap_or(&name);
    let Some((_, data)) = files.iter().find(|(n, _)| n.as_bytes() == name) else { return Err(Errno::NOENT) };
    if a.oflags & OFLAGS_DIRECTORY != 0 {
        return Err(Errno::NOTDIR);
    }
    let fd = wasi.table.insert(Desc::Config { data: data.clone(), pos: 0 })?;
    mem.write_u32(a.opened, fd)
}
