//! `poll_oneoff`: wait, without spinning, until a subscription is ready.
//!
//! Layouts (preview1): a subscription is 48 bytes — `userdata: u64` at 0,
//! tag `u8` at 8 (0 clock, 1 fd_read, 2 fd_write), then for a clock `id: u32`
//! at 16, `timeout: u64` at 24, `precision: u64` at 32, `flags: u16` at 40
//! (bit 0: absolute); for an fd, `fd: u32` at 16. An event is 32 bytes —
//! `userdata: u64` at 0, `error: u16` at 8, `type: u8` at 10, `nbytes: u64`
//! at 16, `flags: u16` at 24 (bit 0: hang-up).
//!
//! Every ready subscription yields an event; clocks count only when no fd is
//! ready or when they have expired. A single clock subscription (Rust std's
//! `sleep`) yields exactly one event with its userdata and type.
//!
//! What each kind of fd answers (the table in ARCHITECTURE.md, "poll_oneoff"):
//! a valid fd never yields an error event, because mio's WASI selector (tokio
//! guests) subscribes every fd it wraps for read *and* write and fails the
//! whole poll on one error event; and an fd that can never become ready in a
//! direction never fires there, so a guest that subscribes to it sleeps
//! instead of spinning. Only an fd that is not open answers `badf`.
//!
//! Write readiness: a stream reported writable is reported again at once
//! only after the guest has written to it (any `fd_write`/`sock_send`
//! attempt); otherwise not before [`WRITE_REPEAT`] has passed. tokio's WASI
//! driver subscribes every socket for write interest on every poll, and
//! sockets are nearly always writable, so an idle tokio guest would wake at
//! once forever (a spinning core per idle connection). tokio keeps write
//! readiness until a write answers `again`, so it loses nothing; a
//! level-triggered guest (our SDK, TinyGo) writes before it waits for
//! writability again, so it is never delayed; a guest that is told an fd is
//! writable, writes nothing and asks again waits up to [`WRITE_REPEAT`].

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::Caller;
use water_abi::Errno;

use super::p1::split;
use super::table::{Desc, Stream};
use super::{Clock, WasiCtx, WasiView};

const SUBSCRIPTION_SIZE: u32 = 48;
const EVENT_SIZE: u32 = 32;
const TAG_CLOCK: u8 = 0;
const TAG_FD_READ: u8 = 1;
const TAG_FD_WRITE: u8 = 2;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const EVENTRWFLAGS_HANGUP: u16 = 1;

/// Most subscriptions one call may pass.
pub const MAX_SUBSCRIPTIONS: u32 = 1024;

/// How soon a stream already reported writable, and not written since, is
/// reported writable again (see the module doc).
pub const WRITE_REPEAT: Duration = Duration::from_millis(50);

/// What to wait on for one subscription.
enum Waiter {
    /// `None`: never fires (a deadline too far to represent).
    Clock(Option<Instant>),
    /// `true`: the fd is in blocking mode, readiness must be exact (see
    /// `Stream::poll_read_ready_exact`).
    Read(Stream, bool),
    /// Ready when writable, but not before the instant, if any (see
    /// "write readiness" in the module doc).
    Write(Stream, Option<Instant>),
    /// The future is made only when the call has to wait: the worker polls
    /// its cancel fd on every round, and most rounds find something ready.
    Cancel(
        tokio_util::sync::CancellationToken,
        Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    ),
    /// Ready now, with this many bytes (config file, stdio).
    Now(u64, bool),
    /// Never ready: a direction the fd does not have (writing to the cancel
    /// or config fd, reading stdout). Not an error: see the module doc.
    Never,
    /// Fails now with this errno (bad fd, unknown clock).
    Fail(Errno),
}

struct Sub {
    userdata: u64,
    tag: u8,
    fd: u32,
    waiter: Waiter,
}

struct Event {
    /// The fd of a write event on a stream: to note the report.
    wrote_fd: Option<u32>,
    userdata: u64,
    error: Errno,
    tag: u8,
    nbytes: u64,
    hangup: bool,
}

pub async fn poll_oneoff<T: WasiView>(
    caller: &mut Caller<'_, T>,
    subs_ptr: u32,
    events_ptr: u32,
    n: u32,
    nevents_ptr: u32,
) -> Result<(), Errno> {
    if n == 0 || n > MAX_SUBSCRIPTIONS {
        return Err(Errno::INVAL);
    }
    let subs = {
        let (mem, wasi) = split(caller)?;
        wasi.polls += 1;
        mem.slice(events_ptr, n * EVENT_SIZE)?;
        mem.slice(nevents_ptr, 4)?;
        let raw = mem.slice(subs_ptr, n * SUBSCRIPTION_SIZE)?;
        let mut subs = Vec::with_capacity(n as usize);
        for s in raw.chunks_exact(SUBSCRIPTION_SIZE as usize) {
            let u64_at = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().expect("8 bytes"));
            let u32_at = |o: usize| u32::from_le_bytes(s[o..o + 4].try_into().expect("4 bytes"));
            let userdata = u64_at(0);
            let tag = s[8];
            let fd = u32_at(16);
            let waiter = match tag {
                TAG_CLOCK => {
                    let flags = u16::from_le_bytes(s[40..42].try_into().expect("2 bytes"));
                    clock_deadline(wasi, u32_at(16), u64_at(24), flags & SUBCLOCKFLAGS_ABSTIME != 0)
                }
                TAG_FD_READ | TAG_FD_WRITE => fd_waiter(&wasi.table, fd, tag == TAG_FD_READ),
                _ => return Err(Errno::INVAL),
            };
            subs.push(Sub { userdata, tag, fd, waiter });
        }
        subs
    };

    // The timer wakes the call for the earliest clock, and for a held-back
    // write report.
    let earliest = subs
        .iter()
        .filter_map(|s| match s.waiter {
            Waiter::Clock(d) | Waiter::Write(_, d) => d,
            _ => None,
        })
        .min();
    // A deadline already passed (the worker's "don't sleep" zero timeout)
    // needs no timer: the first pass reports it.
    let due_at_start = earliest.is_some_and(|d| d <= Instant::now());
    let mut sleep = earliest.filter(|_| !due_at_start).map(|d| Box::pin(tokio::time::sleep_until(d.into())));
    let mut subs = subs;
    let (coarse, scratch) = {
        let wasi = split(caller)?.1;
        (wasi.coarse_poll, wasi.scratch)
    };
    let wait = super::watched(std::future::poll_fn(|cx| {
        let mut events = Vec::new();
        let now = Instant::now();
        for sub in subs.iter_mut() {
            let (userdata, tag) = (sub.userdata, sub.tag);
            let ev =
                move |error, nbytes, hangup| Event { wrote_fd: None, userdata, error, tag, nbytes, hangup };
            match &mut sub.waiter {
                Waiter::Clock(_) | Waiter::Never => {}
                Waiter::Now(nbytes, hangup) => events.push(ev(Errno(0), *nbytes, *hangup)),
                Waiter::Fail(e) => events.push(ev(*e, 0, false)),
                // A failed stream is ready (hung up): the guest's next read
                // or write returns the error itself. An error event would
                // fail a tokio guest's whole poll.
                Waiter::Read(stream, exact) => {
                    match if *exact { stream.poll_read_ready_exact(cx) } else { stream.poll_read_ready(cx) } {
                        Poll::Ready(Ok(r)) => events.push(ev(Errno(0), r.available as u64, r.closed)),
                        Poll::Ready(Err(_)) => events.push(ev(Errno(0), 0, true)),
                        Poll::Pending => {}
                    }
                }
                Waiter::Write(_, Some(not_before)) if now < *not_before => {}
                Waiter::Write(stream, _) => {
                    let event = match stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(room)) => ev(Errno(0), room as u64, false),
                        Poll::Ready(Err(_)) => ev(Errno(0), 0, true),
                        Poll::Pending => continue,
                    };
                    events.push(Event { wrote_fd: Some(sub.fd), ..event });
                }
                Waiter::Cancel(token, fut) => {
                    let cancelled = match fut {
                        _ if token.is_cancelled() => true,
                        Some(f) => f.as_mut().poll(cx).is_ready(),
                        // Nothing else ready on the first pass either: only
                        // then is a future (and a waker) worth making.
                        None => false,
                    };
                    if cancelled {
                        events.push(ev(Errno(0), 0, true));
                    }
                }
            }
        }
        // Clocks fire when they have expired; check them even when an fd is
        // ready, so that a zero timeout is reported too.
        let clock_due = due_at_start
            || match sleep.as_mut() {
                Some(s) => s.as_mut().poll(cx).is_ready(),
                None => false,
            };
        if clock_due {
            for sub in &subs {
                if let Waiter::Clock(Some(deadline)) = sub.waiter
                    && deadline <= now
                {
                    events.push(Event {
                        wrote_fd: None,
                        userdata: sub.userdata,
                        error: Errno(0),
                        tag: sub.tag,
                        nbytes: 0,
                        hangup: false,
                    });
                }
            }
        }
        if !events.is_empty() {
            if coarse {
                coarsen(&subs, &mut events);
            }
            return Poll::Ready(events);
        }
        // About to wait: register on the cancel tokens too.
        let mut registered_late = false;
        for sub in subs.iter_mut() {
            if let Waiter::Cancel(token, fut @ None) = &mut sub.waiter {
                let mut f = Box::pin(token.clone().cancelled_owned());
                if f.as_mut().poll(cx).is_ready() {
                    registered_late = true;
                }
                *fut = Some(f);
            }
        }
        if registered_late {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }));
    let (events, waited) = match scratch {
        // A wait that lasts gives the guest's scratch pages back (once),
        // then goes on. The timer is made only if the wait is pending.
        Some(table) => {
            let mut wait = std::pin::pin!(wait);
            match std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    // One timer per instance, moved later at each wait: a
                    // registered tokio timer moved later takes no lock and
                    // wakes no thread (the wheel finds the new deadline
                    // when the old one comes), where a new timer per wait
                    // took the wheel's lock each time, and woke the
                    // driver's thread whenever no earlier timer was set.
                    let at = tokio::time::Instant::now() + super::SCRATCH_IDLE;
                    let mut quiet = split(caller)?
                        .1
                        .quiet
                        .take()
                        .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(at)));
                    quiet.as_mut().reset(at);
                    let r = tokio::select! {
                        biased;
                        r = &mut wait => r,
                        () = quiet.as_mut() => {
                            let (mut mem, _) = split(caller)?;
                            let given = super::discard_scratch(&mut mem, table);
                            tracing::trace!(given, "a quiet guest's scratch pages given back");
                            wait.await
                        }
                    };
                    split(caller)?.1.quiet = Some(quiet);
                    r
                }
            }
        }
        None => wait.await,
    };

    let (mut mem, wasi) = split(caller)?;
    let now = Instant::now();
    for fd in events.iter().filter_map(|e| e.wrote_fd) {
        wasi.table.write_reported(fd, now);
    }
    wasi.note_wait(waited);
    for (i, e) in events.iter().enumerate() {
        let mut raw = [0u8; EVENT_SIZE as usize];
        raw[0..8].copy_from_slice(&e.userdata.to_le_bytes());
        raw[8..10].copy_from_slice(&(e.error.code() as u16).to_le_bytes());
        raw[10] = e.tag;
        raw[16..24].copy_from_slice(&e.nbytes.to_le_bytes());
        let flags = if e.hangup { EVENTRWFLAGS_HANGUP } else { 0 };
        raw[24..26].copy_from_slice(&flags.to_le_bytes());
        mem.write(events_ptr + i as u32 * EVENT_SIZE, &raw)?;
    }
    mem.write_u32(nevents_ptr, events.len() as u32)
}

/// `Config::coarse_poll`: every fd subscription without an event gets one
/// (ready, no bytes known), as hosts that poll coarsely report.
fn coarsen(subs: &[Sub], events: &mut Vec<Event>) {
    for sub in subs {
        let fd_sub = sub.tag == TAG_FD_READ || sub.tag == TAG_FD_WRITE;
        if fd_sub && !events.iter().any(|e| e.userdata == sub.userdata && e.tag == sub.tag) {
            events.push(Event {
                wrote_fd: None,
                userdata: sub.userdata,
                error: Errno(0),
                tag: sub.tag,
                nbytes: 0,
                hangup: false,
            });
        }
    }
}

fn clock_deadline(wasi: &WasiCtx, id: u32, timeout: u64, absolute: bool) -> Waiter {
    let clock = match Clock::from_id(id) {
        Ok(clock) => clock,
        Err(e) => return Waiter::Fail(e),
    };
    let timeout = Duration::from_nanos(timeout);
    // An absolute timeout is a reading of the same clock.
    let delay = if absolute { timeout.saturating_sub(wasi.now(clock)) } else { timeout };
    Waiter::Clock(Instant::now().checked_add(delay))
}

fn fd_waiter(table: &super::table::FdTable, fd: u32, read: bool) -> Waiter {
    let desc = match table.get(fd) {
        Ok(desc) => desc,
        Err(e) => return Waiter::Fail(e),
    };
    match (desc, read) {
        (Desc::Stream { stream, nonblocking }, true) => Waiter::Read(stream.clone(), !nonblocking),
        (Desc::Stream { stream, .. }, false) => {
            let not_before =
                table.last_write_report(fd).map(|at| at + WRITE_REPEAT).filter(|&t| t > Instant::now());
            Waiter::Write(stream.clone(), not_before)
        }
        (Desc::Cancel { token, .. }, true) => Waiter::Cancel(token.clone(), None),
        (Desc::Config { data, pos }, true) => {
            let left = (data.len() as u64).saturating_sub(*pos);
            Waiter::Now(left, left == 0)
        }
        (Desc::Stdin, true) => Waiter::Now(0, true),
        (Desc::Output(_), false) => Waiter::Now(0, false),
        (Desc::Cancel { .. } | Desc::Config { .. } | Desc::Stdin, false) | (Desc::Output(_), true) => {
            Waiter::Never
        }
        // A directory is never read or written.
        (Desc::Dir { .. }, _) => Waiter::Never,
    }
}
