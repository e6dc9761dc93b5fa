//! The bodies of the v0 exports that [`crate::export_transport!`] defines.
//!
//! One [`Runtime`] lives in a `static` of the guest. WATM v0 uses one
//! instance per connection, so it holds one connection's state.

use core::cell::{Cell, UnsafeCell};

use water_abi::{Errno, status};

use crate::codec::{InitError, Transport};
use crate::pipe::Pipe;
use crate::sys::{self, Fd, Interest};
use crate::{BUFFER_SIZE, MAX_CONFIG, OUTPUT_SLACK};

/// Per-instance state. Not for direct use: see [`crate::export_transport!`].
pub struct Runtime<T> {
    transport: UnsafeCell<Option<T>>,
    /// Input buffers, one per direction.
    inputs: UnsafeCell<[[u8; BUFFER_SIZE]; 2]>,
    /// Output buffers, one per direction.
    outputs: UnsafeCell<[[u8; BUFFER_SIZE + OUTPUT_SLACK]; 2]>,
    cancel_fd: Cell<Option<Fd>>,
    /// (plain, wire) once a role call succeeded.
    fds: Cell<Option<(Fd, Fd)>>,
}

// SAFETY: wasm32-wasip1 modules are single-threaded (no shared memory, no
// threads), and the exports never re-enter one another, so the cells are
// never accessed concurrently.
unsafe impl<T> Sync for Runtime<T> {}

impl<T> core::fmt::Debug for Runtime<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runtime")
            .field("cancel_fd", &self.cancel_fd.get())
            .field("fds", &self.fds.get())
            .finish()
    }
}

const ERR_NO_INIT: &str = "_water_init has not succeeded";

impl<T: Transport> Runtime<T> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Runtime {
            transport: UnsafeCell::new(None),
            inputs: UnsafeCell::new([[0; BUFFER_SIZE]; 2]),
            outputs: UnsafeCell::new([[0; BUFFER_SIZE + OUTPUT_SLACK]; 2]),
            cancel_fd: Cell::new(None),
            fds: Cell::new(None),
        }
    }

    pub fn init(&self) -> i32 {
        let result = if T::WANTS_CONFIG { self.init_with_config() } else { T::new(None) };
        match result {
            Ok(transport) => {
                // SAFETY: single-threaded, and no reference into the cell is live.
                unsafe { *self.transport.get() = Some(transport) };
                0
            }
            Err(InitError { errno, message }) => {
                report(message);
                status::encode_err(errno)
            }
        }
    }

    fn init_with_config(&self) -> Result<T, InitError> {
        let fd = match sys::pull_config() {
            Ok(fd) => fd,
            // The host has no config for us (the Go host answers `-acces`).
            Err(_) => return T::new(None),
        };
        let mut buf = [0u8; MAX_CONFIG];
        let mut len = 0;
        let result = loop {
            if len == buf.len() {
                // One more byte would not fit: refuse rather than truncate.
                let mut probe = [0u8; 1];
                match sys::read(fd, &mut probe) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {
                        break Err(InitError { errno: Errno::FBIG, message: "config is larger than 4 KiB" });
                    }
                    Err(errno) => {
                        break Err(InitError { errno, message: "cannot read config" });
                    }
                }
            }
            match sys::read(fd, &mut buf[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) => len += n,
                Err(Errno::INTR) => {}
                Err(errno) => {
                    break Err(InitError { errno, message: "cannot read config" });
                }
            }
        };
        sys::close(fd);
        result?;
        T::new(Some(&buf[..len]))
    }

    pub fn cancel_with(&self, fd: i32) -> i32 {
        match u32::try_from(fd) {
            Ok(fd) => {
                self.cancel_fd.set(Some(fd));
                0
            }
            Err(_) => status::encode_err(Errno::BADF),
        }
    }

    fn role(&self, plain: Fd, wire: Result<Fd, Errno>) -> i32 {
        match wire {
            Ok(wire) => {
                self.fds.set(Some((plain, wire)));
                status::encode_ok(wire)
            }
            Err(errno) => status::encode_err(errno),
        }
    }

    pub fn dial(&self, internal_fd: i32) -> i32 {
        match u32::try_from(internal_fd) {
            Ok(plain) => self.role(plain, sys::host_dial()),
            Err(_) => status::encode_err(Errno::BADF),
        }
    }

    pub fn accept(&self, internal_fd: i32) -> i32 {
        match u32::try_from(internal_fd) {
            Ok(plain) => self.role(plain, sys::host_accept()),
            Err(_) => status::encode_err(Errno::BADF),
        }
    }

    pub fn associate(&self) -> i32 {
        let plain = match sys::host_accept() {
            Ok(fd) => fd,
            Err(errno) => return status::encode_err(errno),
        };
        match sys::host_dial() {
            Ok(wire) => {
                self.fds.set(Some((plain, wire)));
                0
            }
            Err(errno) => {
                sys::close(plain);
                status::encode_err(errno)
            }
        }
    }

    pub fn worker(&self) -> i32 {
        // SAFETY: single-threaded; the worker is the only user of the cell
        // while it runs.
        let Some(transport) = (unsafe { &*self.transport.get() }) else {
            report(ERR_NO_INIT);
            return status::encode_err(Errno::INVAL);
        };
        let Some((plain, wire)) = self.fds.get() else {
            report("_water_worker called before a role call succeeded");
            return status::encode_err(Errno::INVAL);
        };
        // SAFETY: as above; the buffers are borrowed for this call only, and
        // `worker` is called once per instance.
        let [up_in, down_in] = unsafe { &mut *self.inputs.get() };
        // SAFETY: as above.
        let [up_out, down_out] = unsafe { &mut *self.outputs.get() };
        let up = Pipe::new(transport.encoder(), up_in, up_out);
        let down = Pipe::new(transport.decoder(), down_in, down_out);
        match run(up, down, plain, wire, self.cancel_fd.get()) {
            Ok(()) => 0,
            Err(errno) => status::encode_err(errno),
        }
    }
}

fn report(message: &str) {
    sys::stderr(b"watm: ");
    sys::stderr(message.as_bytes());
    sys::stderr(b"\n");
}

/// How many rounds of reads and writes one direction may make before the
/// other direction and the cancel fd get a look.
const ROUNDS_PER_TURN: usize = 8;

fn run<E: crate::Codec, D: crate::Codec>(
    mut up: Pipe<'_, E>,
    mut down: Pipe<'_, D>,
    plain: Fd,
    wire: Fd,
    cancel: Option<Fd>,
) -> Result<(), Errno> {
    sys::set_nonblocking(plain)?;
    sys::set_nonblocking(wire)?;
    if let Some(fd) = cancel {
        sys::set_nonblocking(fd)?;
    }
    let mut events = [wasi::Event {
        userdata: 0,
        error: wasi::ERRNO_SUCCESS,
        type_: wasi::EVENTTYPE_FD_READ,
        fd_readwrite: wasi::EventFdReadwrite { nbytes: 0, flags: 0 },
    }; 6];
    loop {
        let hot = turn(&mut up, plain, wire)? | turn(&mut down, wire, plain)?;
        if up.is_done() && down.is_done() {
            return Ok(());
        }
        let mut interests = [Interest::Read(0); 6];
        let mut n = 0;
        let mut add = |i: Interest| {
            interests[n] = i;
            n += 1;
        };
        if let Some(fd) = cancel {
            add(Interest::Read(fd));
        }
        if up.wants_read() {
            add(Interest::Read(plain));
        }
        if up.wants_write() {
            add(Interest::Write(wire));
        }
        if down.wants_read() {
            add(Interest::Read(wire));
        }
        if down.wants_write() {
            add(Interest::Write(plain));
        }
        if hot {
            add(Interest::Now);
        }
        let ready = sys::poll(&interests[..n], &mut events)?;
        if let Some(fd) = cancel
            && events[..ready].iter().any(|e| e.userdata == 0)
            && cancelled(fd)?
        {
            return Err(Errno::CANCELED);
        }
    }
}

/// Whether the host really cancelled: readiness is a hint (some hosts
/// report every watched fd ready when any one is), so the cancel fd must
/// read as EOF or data, not `again`.
fn cancelled(fd: Fd) -> Result<bool, Errno> {
    match sys::read(fd, &mut [0u8; 1]) {
        Ok(_) => Ok(true),
        Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Moves one direction's bytes as far as they go without blocking. Returns
/// whether it was still moving when its turn ran out (then the caller must
/// not sleep: the pipe may hold work that no fd event will announce).
fn turn<C: crate::Codec>(pipe: &mut Pipe<'_, C>, src: Fd, dst: Fd) -> Result<bool, Errno> {
    for _ in 0..ROUNDS_PER_TURN {
        let mut moved = false;
        if pipe.wants_read() {
            match sys::read(src, pipe.read_buf()) {
                Ok(n) => {
                    pipe.received(n);
                    moved = true;
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        moved |= pipe.transform()?;
        while pipe.wants_write() {
            match sys::write(dst, pipe.pending()) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => {
                    pipe.sent(n);
                    moved = true;
                    // Room in the output may let more input through.
                    pipe.transform()?;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        if pipe.wants_shutdown() {
            // A peer that is already gone cannot be half-closed; that is not
            // a failure of this direction.
            match sys::shutdown_write(dst) {
                Ok(()) | Err(Errno::NOTCONN) => {}
                Err(e) => return Err(e),
            }
            pipe.shut_down();
            moved = true;
        }
        if !moved {
            return Ok(false);
        }
    }
    Ok(true)
}
