//! Host-side helpers to test codecs the way the worker drives them.
//!
//! [`pump`] runs bytes through a [`Pipe`] with the reads and writes cut into
//! sizes the test chooses, so a property test can check that a codec's output
//! does not depend on how TCP split the stream; [`pump_timed`] does the same
//! on a simulated clock and says when each write went, for codecs that pace
//! their output. [`handshake`] runs two [`Handshake`]s against each other
//! the same way.

use std::vec;
use std::vec::Vec;

use crate::codec::{Codec, Handshake, Step};
use crate::pipe::Pipe;
use water_abi::Errno;

/// How [`pump`] cuts the stream.
#[derive(Clone, Debug)]
pub struct Segmentation {
    /// Successive read sizes, cycled; a read never exceeds the free buffer.
    pub reads: Vec<usize>,
    /// Successive sink capacities (how much one write accepts), cycled.
    pub writes: Vec<usize>,
    /// Size of each of the pipe's two buffers.
    pub buffer: usize,
}

impl Default for Segmentation {
    /// Whole-buffer reads and writes over [`crate::BUFFER_SIZE`] buffers.
    fn default() -> Self {
        Segmentation { reads: vec![usize::MAX], writes: vec![usize::MAX], buffer: crate::BUFFER_SIZE }
    }
}

/// Sends `data` through `codec` inside a [`Pipe`], then ends the input, and
/// returns everything the pipe wrote. Sizes of `0` in the segmentation are
/// treated as `1`.
///
/// Errors: the codec's (or the pipe's) errno. Panics if the pipe stops making
/// progress, which would be a hang in a real worker.
pub fn pump<C: Codec>(codec: C, data: &[u8], seg: &Segmentation) -> Result<Vec<u8>, Errno> {
    Ok(pump_timed(codec, data, seg)?.bytes())
}

/// What [`pump_timed`] saw the sink get, on its simulated clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Each write the sink took: when (nanoseconds) and what.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// When the sink was shut down for writing.
    pub shut_down_at: u64,
}

impl Trace {
    /// Every byte written, in order.
    pub fn bytes(&self) -> Vec<u8> {
        self.writes.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// [`pump`] on a simulated monotonic clock, for paced codecs
/// ([`Codec::PACED`]): the clock stands still while anything moves and
/// jumps to the end of a wait when only the wait holds the pipe, as a
/// worker sleeping in `poll_oneoff` would see it. Returns each write with
/// its time. Same errors and panics as [`pump`].
pub fn pump_timed<C: Codec>(codec: C, data: &[u8], seg: &Segmentation) -> Result<Trace, Errno> {
    pump_with_clock(codec, data, seg, &[0])
}

/// [`pump_timed`] whose clock also advances by `steps` (nanoseconds,
/// cycled) on every round, as a real one does between syscalls.
pub fn pump_with_clock<C: Codec>(
    codec: C,
    data: &[u8],
    seg: &Segmentation,
    steps: &[u64],
) -> Result<Trace, Errno> {
    let mut input = vec![0u8; seg.buffer.max(C::MIN_OUTPUT)];
    let mut output = vec![0u8; seg.buffer.max(C::MIN_OUTPUT)];
    let mut pipe = Pipe::new(codec, &mut input, &mut output);
    let (mut reads, mut writes) = (seg.reads.iter().cycle(), seg.writes.iter().cycle());
    let mut steps = steps.iter().cycle();
    let mut fed = 0;
    let mut trace = Trace::default();
    let mut now = 0u64;
    let mut idle = 0;
    while !pipe.is_done() {
        let mut moved = false;
        now += steps.next().copied().unwrap_or(0);
        if pipe.wants_read() {
            let buf = pipe.read_buf();
            let n = buf.len().min(data.len() - fed).min((*reads.next().unwrap()).max(1));
            buf[..n].copy_from_slice(&data[fed..fed + n]);
            pipe.received(n);
            fed += n;
            moved = true;
        }
        if pipe.needs_clock() {
            moved |= pipe.tick(now);
        }
        moved |= pipe.transform()?;
        if pipe.wants_write() {
            let n = pipe.pending().len().min((*writes.next().unwrap()).max(1));
            trace.writes.push((now, pipe.pending()[..n].to_vec()));
            pipe.sent(n);
            moved = true;
        }
        if pipe.needs_clock() {
            moved |= pipe.tick(now);
        }
        if pipe.wants_shutdown() {
            pipe.shut_down();
            trace.shut_down_at = now;
            moved = true;
        }
        if !moved && let Some(at) = pipe.held_until() {
            // Asleep until the wait ends.
            assert!(at > now, "held until {at}, which has passed ({now}): a spin");
            now = at;
            moved = true;
        }
        idle = if moved { 0 } else { idle + 1 };
        assert!(idle < 3, "pipe stalled: fed {fed} of {}, wrote {}", data.len(), trace.bytes().len());
    }
    Ok(trace)
}

/// The end of a [`handshake`] for one side: its keys, and what it had read
/// past its own end (the start of the peer's data, for the decoder).
#[derive(Debug)]
pub struct Finished<K> {
    /// [`Handshake::keys`].
    pub keys: K,
    /// Bytes the peer sent that the handshake did not consume.
    pub leftover: Vec<u8>,
}

/// Both ends of a [`handshake`]: the client's, then the server's.
pub type Both<C, S> = (Finished<C>, Finished<S>);

/// Runs two handshakes against each other in memory, the way the worker
/// drives one (a first step with no input; output offered in `buffer`-sized
/// pieces; the peer's bytes delivered in pieces cut by `seg.reads`), until
/// both are done. `after_client` and `after_server` are bytes each side sends
/// right after its handshake (the first data of its encoder), to check that
/// they reach the other side's decoder as leftover whatever the cut.
///
/// Errors: the first errno either side returns. Panics when both stop making
/// progress (a real connection would hang).
pub fn handshake<C: Handshake, S: Handshake>(
    client: C,
    server: S,
    seg: &Segmentation,
    after_client: &[u8],
    after_server: &[u8],
) -> Result<Both<C::Keys, S::Keys>, Errno> {
    struct Side<H: Handshake> {
        hs: Option<H>,
        /// Bytes from the peer not yet given to `step`.
        inbox: Vec<u8>,
        /// How much of `inbox` the side may see so far.
        visible: usize,
        keys: Option<H::Keys>,
    }
    impl<H: Handshake> Side<H> {
        /// One step; returns what it wrote for the peer and whether it moved.
        fn step(&mut self, buffer: usize, after: &[u8]) -> Result<(Vec<u8>, bool), Errno> {
            let Some(hs) = self.hs.as_mut() else { return Ok((Vec::new(), false)) };
            let mut out = vec![0u8; buffer.max(H::MIN_OUTPUT)];
            let Step { consumed, produced, done } = hs.step(&mut self.inbox[..self.visible], &mut out)?;
            assert!(consumed <= self.visible && produced <= out.len(), "step overran its buffers");
            self.inbox.drain(..consumed);
            self.visible -= consumed;
            out.truncate(produced);
            if done {
                self.keys = Some(self.hs.take().expect("running").keys());
                out.extend_from_slice(after);
            }
            Ok((out, consumed > 0 || produced > 0 || done))
        }
    }
    let mut c = Side { hs: Some(client), inbox: Vec::new(), visible: 0, keys: None };
    let mut s = Side { hs: Some(server), inbox: Vec::new(), visible: 0, keys: None };
    let mut reads = seg.reads.iter().cycle();
    let mut idle = 0;
    while c.hs.is_some() || s.hs.is_some() {
        let (to_server, c_moved) = c.step(seg.buffer, after_client)?;
        s.inbox.extend_from_slice(&to_server);
        let (to_client, s_moved) = s.step(seg.buffer, after_server)?;
        c.inbox.extend_from_slice(&to_client);
        // Deliver the next piece of what each side has been sent.
        let mut delivered = false;
        for side_visible in [(&mut c.visible, c.inbox.len()), (&mut s.visible, s.inbox.len())] {
            let (visible, len) = side_visible;
            let n = (len - *visible).min((*reads.next().expect("cycle")).max(1));
            *visible += n;
            delivered |= n > 0;
        }
        idle = if c_moved || s_moved || delivered { 0 } else { idle + 1 };
        assert!(idle < 3, "handshake stalled");
    }
    Ok((
        Finished { keys: c.keys.expect("done"), leftover: c.inbox },
        Finished { keys: s.keys.expect("done"), leftover: s.inbox },
    ))
}
