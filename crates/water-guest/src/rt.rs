//! The bodies of the v0 exports that [`crate::export_transport!`] defines.
//!
//! One [`Runtime`] lives in a `static` of the guest. WATM v0 uses one
//! instance per connection, so it holds one connection's state.

use core::cell::{Cell, UnsafeCell};

use water_abi::{Errno, status};

use crate::codec::{Handshake, InitError, Role, Step, Transport};
use crate::pipe::Pipe;
use crate::sys::{self, Fd, Interest};
use crate::{BUFFER_SIZE, MAX_CONFIG, OUTPUT_SLACK};

/// The worker's buffers, in a `static` of their own: all zeros, so they sit
/// in `.bss` and cost no bytes of the module, whatever the small state next
/// to them holds (a `None` whose niche is not zero would move a whole
/// combined struct into the data segment). Not for direct use.
///
/// Page-aligned, so that a host that discards their scratch parts (see
/// `scratch`) can give whole pages back.
#[repr(C, align(4096))]
pub struct Buffers {
    /// Input buffers, one per direction.
    inputs: UnsafeCell<[[u8; BUFFER_SIZE]; 2]>,
    /// Output buffers, one per direction, each starting on a page of its
    /// own (their size is not a multiple of one).
    outputs: UnsafeCell<[PageAligned<{ BUFFER_SIZE + OUTPUT_SLACK }>; 2]>,
    /// `_water_scratch`'s table: (address, length) pairs, written before
    /// each wait of the worker's pipes (all zeros, none, until then).
    scratch: UnsafeCell<[u32; 2 * water_abi::v0::SCRATCH_RANGES]>,
}

// `init_with_config` reads the config into an input buffer.
const _: () = assert!(MAX_CONFIG <= BUFFER_SIZE);

/// A buffer that starts on a page boundary, so that a host discarding
/// scratch pages loses no page to a neighbour's bytes.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct PageAligned<const N: usize>([u8; N]);

// SAFETY: as for `Runtime` below: single-threaded, never re-entered.
unsafe impl Sync for Buffers {}

impl core::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Buffers")
    }
}

impl Buffers {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Buffers {
            inputs: UnsafeCell::new([[0; BUFFER_SIZE]; 2]),
            outputs: UnsafeCell::new([PageAligned([0; BUFFER_SIZE + OUTPUT_SLACK]); 2]),
            scratch: UnsafeCell::new([0; 2 * water_abi::v0::SCRATCH_RANGES]),
        }
    }
}

/// Per-instance state. Not for direct use: see [`crate::export_transport!`].
pub struct Runtime<T: 'static> {
    transport: UnsafeCell<Option<T>>,
    buffers: &'static Buffers,
    cancel_fd: Cell<Option<Fd>>,
    /// (plain, wire) once a role call succeeded.
    fds: Cell<Option<(Fd, Fd)>>,
    /// Set with `fds`.
    role: Cell<Option<Role>>,
}

// SAFETY: wasm32-wasip1 modules are single-threaded (no shared memory, no
// threads), and the exports never re-enter one another, so the cells are
// never accessed concurrently.
unsafe impl<T: 'static> Sync for Runtime<T> {}

impl<T: 'static> core::fmt::Debug for Runtime<T> {
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
    pub const fn new(buffers: &'static Buffers) -> Self {
        Runtime {
            transport: UnsafeCell::new(None),
            buffers,
            cancel_fd: Cell::new(None),
            fds: Cell::new(None),
            role: Cell::new(None),
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
            Err(e) => {
                report(T::NAME, e.message());
                status::encode_err(e.errno)
            }
        }
    }

    /// `_water_scratch`: the address of the scratch table (see
    /// `water_abi::v0::SCRATCH`).
    pub fn scratch(&self) -> i32 {
        self.buffers.scratch.get() as usize as i32
    }

    /// `_water_unique_prefix`: see [`Transport::unique_prefix`]; 0 before
    /// `_water_init` succeeded.
    pub fn unique_prefix(&self) -> i32 {
        // SAFETY: single-threaded, and no mutable reference into the cell is
        // live during this call.
        match unsafe { &*self.transport.get() } {
            Some(t) => t.unique_prefix().min(64) as i32,
            None => 0,
        }
    }

    fn init_with_config(&self) -> Result<T, InitError> {
        let fd = match sys::config_fd() {
            Ok(fd) => fd,
            // The host has no config for us (the Go host answers `-acces`
            // in v0; a v1 host mounts no file).
            Err(_) => return T::new(None),
        };
        // The config is read into the wire → plain input buffer, which the
        // worker has not started to use: a 16 KiB array on the stack would
        // leave its pages resident for the connection's life, where the
        // buffer's are scratch once the worker waits (`_water_scratch`).
        // SAFETY: single-threaded, and the buffers are borrowed only by
        // `worker`, which runs after `_water_init` has returned.
        let [_, down_in] = unsafe { &mut *self.buffers.inputs.get() };
        let buf = &mut down_in[..MAX_CONFIG];
        let mut len = 0;
        let result = loop {
            if len == buf.len() {
                // One more byte would not fit: refuse rather than truncate.
                let mut probe = [0u8; 1];
                match sys::read(fd, &mut probe) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {
                        break Err(InitError::fixed(Errno::FBIG, "config is larger than 16 KiB"));
                    }
                    Err(errno) => {
                        break Err(InitError::fixed(errno, "cannot read config"));
                    }
                }
            }
            match sys::read(fd, &mut buf[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) => len += n,
                Err(Errno::INTR) => {}
                Err(errno) => {
                    break Err(InitError::fixed(errno, "cannot read config"));
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

    fn role(&self, role: Role, plain: Fd, wire: Result<Fd, Errno>) -> i32 {
        match wire {
            Ok(wire) => {
                self.fds.set(Some((plain, wire)));
                self.role.set(Some(role));
                status::encode_ok(wire)
            }
            Err(errno) => status::encode_err(errno),
        }
    }

    pub fn dial(&self, internal_fd: i32) -> i32 {
        match u32::try_from(internal_fd) {
            Ok(plain) => self.role(Role::Dialer, plain, sys::host_dial()),
            Err(_) => status::encode_err(Errno::BADF),
        }
    }

    pub fn accept(&self, internal_fd: i32) -> i32 {
        match u32::try_from(internal_fd) {
            Ok(plain) => self.role(Role::Listener, plain, sys::host_accept()),
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
                self.role.set(Some(Role::Relay));
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
            report(T::NAME, ERR_NO_INIT);
            return status::encode_err(Errno::INVAL);
        };
        let (Some((plain, wire)), Some(role)) = (self.fds.get(), self.role.get()) else {
            report(T::NAME, "_water_worker called before a role call succeeded");
            return status::encode_err(Errno::INVAL);
        };
        // SAFETY: as above; the buffers are borrowed for this call only, and
        // `worker` is called once per instance.
        let [up_in, down_in] = unsafe { &mut *self.buffers.inputs.get() };
        // SAFETY: as above.
        let [PageAligned(up_out), PageAligned(down_out)] = unsafe { &mut *self.buffers.outputs.get() };
        let result = transport.handshake(role).and_then(|hs| {
            // The handshake reads into the wire → plain input buffer, so that
            // what it read past its end is already where the decoder looks.
            let (keys, leftover) = handshake(hs, wire, self.cancel_fd.get(), down_in, up_out)?;
            let mut both = pipes(transport, role, &keys, [up_in, up_out], [down_in, down_out], leftover);
            // SAFETY: as above: only the worker writes the table.
            let scratch = unsafe { &mut *self.buffers.scratch.get() };
            run(&mut both.0, &mut both.1, plain, wire, self.cancel_fd.get(), scratch)
        });
        match result {
            Ok(()) => 0,
            Err(errno) => status::encode_err(errno),
        }
    }
}

/// Both directions' pipes, built in a frame of their own. A codec's state
/// can be large (ss's decoder holds a 16 KiB chunk buffer), and each move
/// that builds a pipe may leave a copy in the frame it happens in: here
/// those copies are in a frame that is gone while the worker runs, so they
/// lie in the dead stack that a waiting worker lists as scratch, instead
/// of in the worker's own frame for the connection's life (ss's was 52 KiB
/// with them inlined).
#[inline(never)]
fn pipes<'a, T: Transport>(
    transport: &T,
    role: Role,
    keys: &crate::codec::Keys<T>,
    [up_in, up_out]: [&'a mut [u8]; 2],
    [down_in, down_out]: [&'a mut [u8]; 2],
    leftover: usize,
) -> (Pipe<'a, T::Encoder>, Pipe<'a, T::Decoder>) {
    let up = Pipe::new(transport.encoder(role, keys), up_in, up_out);
    let down = Pipe::with_input(transport.decoder(role, keys), down_in, leftover, down_out);
    (up, down)
}

fn report(name: &str, message: &str) {
    sys::stderr(b"watm ");
    sys::stderr(name.as_bytes());
    sys::stderr(b": ");
    sys::stderr(message.as_bytes());
    sys::stderr(b"\n");
}

/// Runs a handshake on the wire fd until it is done and everything it wrote
/// went out. Returns its keys and how many bytes past its end it read (moved
/// to the front of `input`). Waits with `poll_oneoff`, answers cancellation,
/// and ends at the handshake's [`Handshake::deadline`] while it is not done.
fn handshake<H: Handshake>(
    mut hs: H,
    wire: Fd,
    cancel: Option<Fd>,
    input: &mut [u8],
    output: &mut [u8],
) -> Result<(H::Keys, usize), Errno> {
    sys::set_nonblocking(wire)?;
    if let Some(fd) = cancel {
        sys::set_nonblocking(fd)?;
    }
    let (mut start, mut end) = (0, 0);
    let (mut sent, mut filled) = (0, 0);
    let (mut done, mut eof) = (false, false);
    let mut events = [EMPTY_EVENT; 4];
    loop {
        while !done {
            if sent == filled {
                (sent, filled) = (0, 0);
            }
            if output.len() - filled < H::MIN_OUTPUT {
                break;
            }
            let Step { consumed, produced, done: now } =
                hs.step(&mut input[start..end], &mut output[filled..])?;
            if consumed > end - start || produced > output.len() - filled {
                return Err(Errno::IO);
            }
            start += consumed;
            filled += produced;
            done = now;
            if consumed == 0 && produced == 0 {
                break;
            }
        }
        while sent < filled {
            match sys::write(wire, &output[sent..filled]) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        if done && sent == filled {
            input.copy_within(start..end, 0);
            return Ok((hs.keys(), end - start));
        }
        if !done && eof {
            return Err(hs.peer_closed());
        }
        let reading = !done;
        if reading {
            if start == end {
                (start, end) = (0, 0);
            } else if end == input.len() {
                input.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            }
            if end == input.len() {
                // A handshake message larger than the buffer, or a handshake
                // that stopped consuming: a protocol it cannot finish.
                return Err(Errno::PROTO);
            }
            match sys::read(wire, &mut input[end..]) {
                Ok(0) => {
                    eof = true;
                    continue;
                }
                Ok(n) => {
                    end += n;
                    continue;
                }
                Err(Errno::AGAIN) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        let mut interests = [Interest::Read(0); 4];
        let mut n = 0;
        if let Some(fd) = cancel {
            interests[n] = Interest::Read(fd);
            n += 1;
        }
        if reading {
            interests[n] = Interest::Read(wire);
            n += 1;
            if let Some(at) = hs.deadline() {
                if sys::monotonic_now()? >= at {
                    return Err(hs.timed_out());
                }
                interests[n] = Interest::Until(at);
                n += 1;
            }
        }
        if sent < filled {
            interests[n] = Interest::Write(wire);
            n += 1;
        }
        let ready = sys::poll(&interests[..n], &mut events, None)?;
        if let Some(fd) = cancel
            && events[..ready].iter().any(|e| e.userdata == 0)
            && cancelled(fd)?
        {
            return Err(Errno::CANCELED);
        }
    }
}

const EMPTY_EVENT: wasi::Event = wasi::Event {
    userdata: 0,
    error: wasi::ERRNO_SUCCESS,
    type_: wasi::EVENTTYPE_FD_READ,
    fd_readwrite: wasi::EventFdReadwrite { nbytes: 0, flags: 0 },
};

/// How many rounds of reads and writes one direction may make before the
/// other direction and the cancel fd get a look.
const ROUNDS_PER_TURN: usize = 8;

fn run<E: crate::Codec, D: crate::Codec>(
    up: &mut Pipe<'_, E>,
    down: &mut Pipe<'_, D>,
    plain: Fd,
    wire: Fd,
    cancel: Option<Fd>,
    scratch: &mut [u32; 2 * water_abi::v0::SCRATCH_RANGES],
) -> Result<(), Errno> {
    sys::set_nonblocking(plain)?;
    sys::set_nonblocking(wire)?;
    if let Some(fd) = cancel {
        sys::set_nonblocking(fd)?;
    }
    let mut events = [EMPTY_EVENT; 8];
    loop {
        let hot = turn(up, plain, wire)? | turn(down, wire, plain)?;
        if up.is_done() && down.is_done() {
            return Ok(());
        }
        let mut interests = [Interest::Read(0); 8];
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
        // A paced direction holding bytes back sleeps until its gap ends,
        // beside the fds: the other direction keeps moving meanwhile.
        if let Some(at) = up.held_until() {
            add(Interest::Until(at));
        }
        if let Some(at) = down.held_until() {
            add(Interest::Until(at));
        }
        if hot {
            add(Interest::Now);
        }
        // Tell the host which bytes it may discard while this waits: a
        // quiet connection's buffers, and the stack below this wait (the
        // last slot, filled by `sys::poll` from inside its own frame).
        crate::pipe::pack_scratch(up.scratch().into_iter().chain(down.scratch()), scratch);
        let stack_slot = scratch.len() - 2;
        let ready = sys::poll(&interests[..n], &mut events, Some(&mut scratch[stack_slot..]))?;
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
        moved |= clock(pipe)?;
        moved |= pipe.transform()?;
        while pipe.wants_write() {
            match sys::write(dst, pipe.pending()) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => {
                    pipe.sent(n);
                    moved = true;
                    // A paced piece that went out starts its wait now.
                    clock(pipe)?;
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

/// Reads the clock for a paced pipe when it needs it (never for a codec
/// that does not pace). Returns whether a wait ended.
fn clock<C: crate::Codec>(pipe: &mut Pipe<'_, C>) -> Result<bool, Errno> {
    if pipe.needs_clock() { Ok(pipe.tick(sys::monotonic_now()?)) } else { Ok(false) }
}
