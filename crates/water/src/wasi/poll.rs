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

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::Caller;
use water_abi::Errno;

use super::p1::split;
use super::table::{Desc, Stream};
use super::{Clock, WasiCtx, WasiView, errno};

const SUBSCRIPTION_SIZE: u32 = 48;
const EVENT_SIZE: u32 = 32;
const TAG_CLOCK: u8 = 0;
const TAG_FD_READ: u8 = 1;
const TAG_FD_WRITE: u8 = 2;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const EVENTRWFLAGS_HANGUP: u16 = 1;

/// Most subscriptions one call may pass.
pub const MAX_SUBSCRIPTIONS: u32 = 1024;

/// What to wait on for one subscription.
enum Waiter {
    /// `None`: never fires (a deadline too far to represent).
    Clock(Option<Instant>),
    Read(Stream),
    Write(Stream),
    /// The future is made only when the call has to wait: the worker polls
    /// its cancel fd on every round, and most rounds find something ready.
    Cancel(
        tokio_util::sync::CancellationToken,
        Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    ),
    /// Ready now, with this many bytes (config file, stdio).
    Now(u64, bool),
    /// Fails now with this errno (bad fd, unknown clock).
    Fail(Errno),
}

struct Sub {
    userdata: u64,
    tag: u8,
    waiter: Waiter,
}

struct Event {
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
            let waiter = match tag {
                TAG_CLOCK => {
                    let flags = u16::from_le_bytes(s[40..42].try_into().expect("2 bytes"));
                    clock_deadline(wasi, u32_at(16), u64_at(24), flags & SUBCLOCKFLAGS_ABSTIME != 0)
                }
                TAG_FD_READ | TAG_FD_WRITE => fd_waiter(&wasi.table, u32_at(16), tag == TAG_FD_READ),
                _ => return Err(Errno::INVAL),
            };
            subs.push(Sub { userdata, tag, waiter });
        }
        subs
    };

    let earliest = subs
        .iter()
        .filter_map(|s| match s.waiter {
            Waiter::Clock(d) => d,
            _ => None,
        })
        .min();
    // A deadline already passed (the worker's "don't sleep" zero timeout)
    // needs no timer: the first pass reports it.
    let due_at_start = earliest.is_some_and(|d| d <= Instant::now());
    let mut sleep = earliest.filter(|_| !due_at_start).map(|d| Box::pin(tokio::time::sleep_until(d.into())));
    let mut subs = subs;
    let (events, waited) = super::watched(std::future::poll_fn(|cx| {
        let mut events = Vec::new();
        for sub in subs.iter_mut() {
            let (userdata, tag) = (sub.userdata, sub.tag);
            let ev = move |error, nbytes, hangup| Event { userdata, error, tag, nbytes, hangup };
            match &mut sub.waiter {
                Waiter::Clock(_) => {}
                Waiter::Now(nbytes, hangup) => events.push(ev(Errno(0), *nbytes, *hangup)),
                Waiter::Fail(e) => events.push(ev(*e, 0, false)),
                Waiter::Read(stream) => match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(r)) => events.push(ev(Errno(0), r.available as u64, r.closed)),
                    Poll::Ready(Err(e)) => events.push(ev(errno::from_io(&e), 0, false)),
                    Poll::Pending => {}
                },
                Waiter::Write(stream) => match stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(room)) => events.push(ev(Errno(0), room as u64, false)),
                    Poll::Ready(Err(e)) => events.push(ev(errno::from_io(&e), 0, false)),
                    Poll::Pending => {}
                },
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
            let now = Instant::now();
            for sub in &subs {
                if let Waiter::Clock(Some(deadline)) = sub.waiter
                    && deadline <= now
                {
                    events.push(Event {
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
    }))
    .await;

    let (mut mem, wasi) = split(caller)?;
    wasi.waits += u64::from(waited);
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
    match (table.get(fd), read) {
        (Err(e), _) => Waiter::Fail(e),
        (Ok(Desc::Stream { stream, .. }), true) => Waiter::Read(stream.clone()),
        (Ok(Desc::Stream { stream, .. }), false) => Waiter::Write(stream.clone()),
        (Ok(Desc::Cancel { token, .. }), true) => Waiter::Cancel(token.clone(), None),
        (Ok(Desc::Config { data, pos }), true) => {
            let left = (data.len() as u64).saturating_sub(*pos);
            Waiter::Now(left, left == 0)
        }
        (Ok(Desc::Stdin), true) => Waiter::Now(0, true),
        (Ok(Desc::Output(_)), false) => Waiter::Now(0, false),
        _ => Waiter::Fail(Errno::BADF),
    }
}
