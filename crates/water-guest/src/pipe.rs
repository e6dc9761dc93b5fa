//! One direction of a connection: source bytes in, codec, sink bytes out.
//!
//! [`Pipe`] is the worker's bookkeeping with the syscalls left out, so that
//! its rules can be tested on the host:
//! - it reads only while its input buffer has room (backpressure: a sink that
//!   cannot take more stops the source being read);
//! - bytes leave in the order they came, none is dropped;
//! - at the source's end it drains the codec, then asks once for the sink to
//!   be shut down for writing (the half-close), and only then is done;
//! - for a paced codec ([`Codec::PACED`]) it offers the sink only what the
//!   codec released ([`Codec::pace`]), and after a piece with a wait it
//!   holds everything (bytes, new bursts, the half-close) until the wait is
//!   over. The pipe has no clock: the caller reads one when
//!   [`Pipe::needs_clock`] says so and hands it to [`Pipe::tick`], and
//!   sleeps until [`Pipe::held_until`].

use crate::codec::{Codec, Pace, Progress};
use water_abi::Errno;

/// A fixed buffer with a filled window `[start, end)`.
#[derive(Debug)]
struct Window<'a> {
    data: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> Window<'a> {
    fn new(data: &'a mut [u8]) -> Self {
        Window { data, start: 0, end: 0 }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Moves the filled bytes to the front when the free tail is smaller than
    /// `want`, so that the tail can take a useful amount.
    fn free_tail(&mut self, want: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.data.len() - self.end < want && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
    }

    fn grow(&mut self, n: usize) {
        debug_assert!(n <= self.data.len() - self.end);
        self.end += n;
    }
}

/// A paced direction's wait between pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// No wait: the codec may be asked for its next piece.
    Open,
    /// A piece was written that asked for this many nanoseconds after it;
    /// the wait starts at the next clock reading.
    After(u64),
    /// Nothing more leaves before this point on the monotonic clock.
    Until(u64),
}

/// One direction's state; see the module docs.
#[derive(Debug)]
pub struct Pipe<'a, C> {
    codec: C,
    input: Window<'a>,
    output: Window<'a>,
    source_ended: bool,
    codec_finished: bool,
    shut_down: bool,
    /// Paced codecs: bytes at the front of `output` the sink may take.
    released: usize,
    /// Paced codecs: the wait due once `released` has gone out.
    then_wait: u64,
    /// Paced codecs: the wait under way.
    gate: Gate,
    /// Paced codecs: `pace` released nothing and the codec must produce.
    wants_more: bool,
    /// In-place codecs: bytes at the front of the input window already
    /// transformed, which the sink takes from there.
    done: usize,
}

impl<'a, C: Codec> Pipe<'a, C> {
    /// A pipe over two caller-provided buffers. Each must be at least
    /// `C::MIN_OUTPUT` bytes long.
    pub fn new(codec: C, input: &'a mut [u8], output: &'a mut [u8]) -> Self {
        assert!(!input.is_empty() && output.len() >= C::MIN_OUTPUT);
        Pipe {
            codec,
            input: Window::new(input),
            output: Window::new(output),
            source_ended: false,
            codec_finished: false,
            shut_down: false,
            released: 0,
            then_wait: 0,
            gate: Gate::Open,
            wants_more: false,
            done: 0,
        }
    }

    /// The codec transforms where the bytes lie ([`Codec::IN_PLACE`]): the
    /// output buffer is not used.
    const IN_PLACE: bool = C::IN_PLACE && !C::PACED;

    /// A pipe whose input buffer already holds `filled` bytes at its front
    /// (what a handshake read past its own end).
    pub fn with_input(codec: C, input: &'a mut [u8], filled: usize, output: &'a mut [u8]) -> Self {
        assert!(filled <= input.len());
        let mut pipe = Pipe::new(codec, input, output);
        pipe.input.grow(filled);
        pipe
    }

    /// Whether the source should be read now: it has not ended and there is
    /// room for what it sends.
    pub fn wants_read(&self) -> bool {
        !self.source_ended && (self.input.start > 0 || self.input.end < self.input.data.len())
    }

    /// The free space to read the source into; follow with [`Pipe::received`].
    pub fn read_buf(&mut self) -> &mut [u8] {
        // In place, the input also holds bytes waiting for the sink: they
        // move to the front only when the tail has less than a quarter of
        // the buffer left, not before every read.
        let want = if Self::IN_PLACE { self.input.data.len() / 4 } else { usize::MAX };
        self.input.free_tail(want)
    }

    /// `n` bytes were read into [`Pipe::read_buf`]; `0` means the source ended.
    pub fn received(&mut self, n: usize) {
        if n == 0 {
            self.source_ended = true;
        } else {
            self.input.grow(n);
        }
    }

    /// Whether [`Pipe::pending`] has bytes for the sink.
    pub fn wants_write(&self) -> bool {
        if Self::IN_PLACE {
            self.done > 0
        } else if C::PACED {
            self.released > 0
        } else {
            !self.output.is_empty()
        }
    }

    /// Transformed bytes the sink may take now (for a paced codec, what it
    /// released); follow with [`Pipe::sent`].
    pub fn pending(&self) -> &[u8] {
        if Self::IN_PLACE {
            return &self.input.filled()[..self.done];
        }
        let filled = self.output.filled();
        if C::PACED { &filled[..self.released] } else { filled }
    }

    /// `n` bytes of [`Pipe::pending`] were written.
    pub fn sent(&mut self, n: usize) {
        if Self::IN_PLACE {
            debug_assert!(n <= self.done);
            self.input.consume(n);
            self.done -= n;
            return;
        }
        self.output.consume(n);
        if C::PACED {
            debug_assert!(n <= self.released);
            self.released -= n;
            if self.released == 0 && self.then_wait > 0 {
                self.gate = Gate::After(core::mem::take(&mut self.then_wait));
            }
        }
    }

    /// Output produced and not released yet (always 0 for an unpaced codec).
    fn unreleased(&self) -> usize {
        self.output.filled().len() - self.released
    }

    /// No wait under way or due after the bytes released: a paced codec
    /// may be asked for more.
    fn no_wait(&self) -> bool {
        self.gate == Gate::Open && self.then_wait == 0
    }

    /// Whether the codec may be handed input (or asked to finish) now. A
    /// paced codec's output is released before it makes more, and a new
    /// burst waits for the gap after the last piece, as a blocking writer's
    /// next write would.
    fn may_transform(&self) -> bool {
        !C::PACED || self.wants_more || (self.unreleased() == 0 && self.no_wait())
    }

    /// Asks a paced codec for its next piece when the sink has taken the
    /// last and no wait is under way. Returns whether it released bytes.
    fn release(&mut self) -> Result<bool, Errno> {
        if !C::PACED || self.released > 0 || self.wants_more || self.gate != Gate::Open {
            return Ok(false);
        }
        let pending = self.unreleased();
        if pending == 0 {
            return Ok(false);
        }
        let Pace { release, then_wait } = self.codec.pace(pending);
        if release > pending {
            return Err(Errno::IO);
        }
        if release == 0 {
            self.wants_more = true;
            return Ok(false);
        }
        (self.released, self.then_wait) = (release, then_wait);
        Ok(true)
    }

    /// Whether anything waits for a paced direction's gate: input to
    /// transform, output to release, or the end to pass on.
    fn held(&self) -> bool {
        !self.shut_down && (!self.input.is_empty() || !self.output.is_empty() || self.source_ended)
    }

    /// Whether the caller should read the monotonic clock and pass it to
    /// [`Pipe::tick`]: a wait starts, or one under way holds something
    /// back. Always `false` for a codec that does not pace.
    pub fn needs_clock(&self) -> bool {
        C::PACED
            && match self.gate {
                Gate::Open => false,
                Gate::After(_) => true,
                Gate::Until(_) => self.held(),
            }
    }

    /// The monotonic clock reads `now` (nanoseconds): a wait that was due
    /// starts, one that is over ends. Returns whether a wait ended (then
    /// [`Pipe::transform`] has work).
    pub fn tick(&mut self, now: u64) -> bool {
        if let Gate::After(wait) = self.gate {
            self.gate = Gate::Until(now.saturating_add(wait));
        }
        match self.gate {
            Gate::Until(at) if now >= at => {
                self.gate = Gate::Open;
                true
            }
            _ => false,
        }
    }

    /// When a wait under way ends while something waits for it: the
    /// caller sleeps until then (with its fds), and then calls
    /// [`Pipe::tick`]. `None` for a codec that does not pace.
    pub fn held_until(&self) -> Option<u64> {
        match self.gate {
            Gate::Until(at) if C::PACED && self.held() => Some(at),
            _ => None,
        }
    }

    /// Runs the codec over buffered input into free output space, as far as
    /// it goes, and for a paced codec releases its next piece when it may.
    /// Returns whether anything moved.
    ///
    /// Errors: the codec's own, and [`Errno::IO`] when the codec breaks its
    /// progress or pacing contract (instead of hanging the connection).
    pub fn transform(&mut self) -> Result<bool, Errno> {
        if Self::IN_PLACE {
            return self.transform_in_place();
        }
        let mut moved = false;
        loop {
            moved |= self.release()?;
            if !self.may_transform() {
                break;
            }
            let out = self.output.free_tail(C::MIN_OUTPUT);
            if out.is_empty() {
                if self.wants_more {
                    // A piece larger than the output buffer: it can never
                    // be released whole.
                    return Err(Errno::IO);
                }
                break;
            }
            let room = out.len();
            let Progress { consumed, produced } = self.codec.transform(self.input.filled(), out)?;
            if consumed > self.input.end - self.input.start || produced > room {
                return Err(Errno::IO);
            }
            self.input.consume(consumed);
            self.output.grow(produced);
            if consumed == 0 && produced == 0 {
                if self.wants_more {
                    // `pace` asked for more output and none came: nothing
                    // else would ever release the bytes held.
                    return Err(Errno::IO);
                }
                break;
            }
            if produced > 0 {
                self.wants_more = false;
            }
            moved = true;
        }
        if self.source_ended && !self.codec_finished && self.input.is_empty() {
            loop {
                moved |= self.release()?;
                if !self.may_transform() {
                    break;
                }
                let out = self.output.free_tail(C::MIN_OUTPUT);
                if out.len() < C::MIN_OUTPUT {
                    break;
                }
                let room = out.len();
                let produced = self.codec.finish(out)?;
                if produced > room {
                    return Err(Errno::IO);
                }
                if produced == 0 {
                    self.codec_finished = true;
                    moved = true;
                    break;
                }
                self.output.grow(produced);
                moved = true;
            }
            moved |= self.release()?;
        }
        // Input waiting while the whole output buffer was on offer: the codec
        // broke its contract, and waiting would hang the connection.
        if !moved && !self.input.is_empty() && self.output.is_empty() && self.may_transform() {
            return Err(Errno::IO);
        }
        Ok(moved)
    }

    /// [`Pipe::transform`] for an in-place codec: the bytes received since
    /// the last call are transformed where they lie and join those waiting
    /// for the sink; at the source's end, with nothing left to transform,
    /// the codec is finished (it has no trailer).
    fn transform_in_place(&mut self) -> Result<bool, Errno> {
        let mut moved = false;
        let (start, end) = (self.input.start, self.input.end);
        if start + self.done < end {
            self.codec.transform_in_place(&mut self.input.data[start + self.done..end])?;
            self.done = end - start;
            moved = true;
        }
        if self.source_ended && !self.codec_finished {
            self.codec_finished = true;
            moved = true;
        }
        Ok(moved)
    }

    /// Whether the sink should now be shut down for writing: the source
    /// ended, every byte went out (and, paced, the wait after the last
    /// piece is over), and it was not done yet.
    pub fn wants_shutdown(&self) -> bool {
        let out = if Self::IN_PLACE { self.input.is_empty() } else { self.output.is_empty() };
        self.codec_finished && out && !self.shut_down && (!C::PACED || self.no_wait())
    }

    /// The sink was shut down (or could not be, because it is gone).
    pub fn shut_down(&mut self) {
        self.shut_down = true;
    }

    /// This direction is over: source ended, all bytes delivered, sink shut.
    pub fn is_done(&self) -> bool {
        self.shut_down
    }

    /// The parts of this pipe's two buffers that hold no byte it will read
    /// again (outside each filled window), as (address, length): what a
    /// host may discard while the worker waits (`_water_scratch`).
    pub fn scratch(&self) -> [(usize, usize); 4] {
        let free = |w: &Window<'_>| {
            let base = w.data.as_ptr() as usize;
            [(base, w.start), (base + w.end, w.data.len() - w.end)]
        };
        let [a, b] = free(&self.input);
        let [c, d] = free(&self.output);
        [a, b, c, d]
    }
}

/// Packs `ranges` (address, length) into `table`'s first `table.len() /
/// 2 - 1` slots: empty ranges dropped, ranges that touch merged (a drained
/// window leaves its buffer as two touching ranges), what does not fit
/// left out (those bytes are only kept). Unused slots are zeroed. The last
/// slot is left to the caller: the dead stack below the waiting frame.
pub fn pack_scratch(ranges: impl IntoIterator<Item = (usize, usize)>, table: &mut [u32]) {
    let slots = table.len() / 2 - 1;
    let mut packed: [(usize, usize); 16] = [(0, 0); 16];
    let mut n = 0;
    for (at, len) in ranges {
        if len == 0 {
            continue;
        }
        if let Some(last) = packed[..n].iter_mut().find(|(a, l)| *a + *l == at || at + len == *a) {
            let start = last.0.min(at);
            *last = (start, last.1 + len);
        } else if n < slots.min(packed.len()) {
            packed[n] = (at, len);
            n += 1;
        }
    }
    for (i, slot) in table.chunks_exact_mut(2).take(slots).enumerate() {
        // wasm32 addresses and lengths fit in a u32.
        let (at, len) = if i < n { packed[i] } else { (0, 0) };
        slot[0] = at as u32;
        slot[1] = len as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_ranges_are_packed_merged_and_leave_the_last_slot() {
        let mut t = [7u32; 16];
        // Two drained buffers, each as two touching ranges, and empties.
        pack_scratch([(100, 10), (110, 90), (0, 0), (500, 0), (1000, 50), (1050, 50)], &mut t);
        assert_eq!(t[..4], [100, 100, 1000, 100]);
        assert!(t[4..14].iter().all(|&v| v == 0), "unused slots zeroed: {t:?}");
        assert_eq!(t[14..], [7, 7], "the last slot is the caller's");
        // A range that touches from below merges too.
        let mut t = [0u32; 16];
        pack_scratch([(200, 10), (150, 50)], &mut t);
        assert_eq!(t[..2], [150, 60]);
        // More apart ranges than slots: the first seven kept.
        let mut t = [0u32; 16];
        pack_scratch((0..10).map(|i| (i * 100, 10)), &mut t);
        assert_eq!(t[12..14], [600, 10]);
        assert_eq!(t[14..], [0, 0]);
    }

    #[test]
    fn scratch_is_exactly_what_lies_outside_the_filled_windows() {
        struct Copy;
        impl Codec for Copy {
            fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
                let n = input.len().min(output.len());
                output[..n].copy_from_slice(&input[..n]);
                Ok(Progress { consumed: n, produced: n })
            }
        }
        let (mut input, mut output) = ([0u8; 64], [0u8; 64]);
        let (i0, o0) = (input.as_ptr() as usize, output.as_ptr() as usize);
        let mut p = Pipe::new(Copy, &mut input, &mut output);
        // Empty: both buffers are scratch, whole.
        assert_eq!(p.scratch(), [(i0, 0), (i0, 64), (o0, 0), (o0, 64)]);
        p.read_buf()[..10].copy_from_slice(&[1; 10]);
        p.received(10);
        // Ten bytes wait in the input: everything after them is scratch.
        assert_eq!(p.scratch()[..2], [(i0, 0), (i0 + 10, 54)]);
        p.transform().unwrap();
        // Moved to the output: the input is scratch again (its window is
        // empty at 10), the output's ten bytes are not.
        let s = p.scratch();
        assert_eq!(s[0].1 + s[1].1, 64);
        assert_eq!(s[2..], [(o0, 0), (o0 + 10, 54)]);
        p.sent(4);
        assert_eq!(p.scratch()[2..], [(o0, 4), (o0 + 10, 54)]);
    }

    /// Adds one to every byte, holding back nothing.
    struct Inc;
    impl Codec for Inc {
        fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
            let n = input.len().min(output.len());
            for (o, i) in output[..n].iter_mut().zip(input) {
                *o = i.wrapping_add(1);
            }
            Ok(Progress { consumed: n, produced: n })
        }
    }

    /// `Inc`, in place.
    struct IncInPlace;
    impl Codec for IncInPlace {
        const IN_PLACE: bool = true;
        fn transform_in_place(&mut self, data: &mut [u8]) -> Result<(), Errno> {
            data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            Ok(())
        }
        fn transform(&mut self, _: &[u8], _: &mut [u8]) -> Result<Progress, Errno> {
            unreachable!("an in-place codec is never asked to transform into the output")
        }
    }

    #[test]
    fn an_in_place_codec_leaves_the_output_buffer_alone_and_half_closes_last() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let o0 = b.as_ptr() as usize;
        let mut p = Pipe::new(IncInPlace, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        p.transform().unwrap();
        assert_eq!(p.pending(), b"bcd");
        p.sent(1);
        p.read_buf()[..2].copy_from_slice(b"xy");
        p.received(2);
        p.received(0);
        assert!(p.transform().unwrap());
        assert_eq!(p.pending(), b"cdyz");
        assert!(!p.wants_shutdown(), "shutdown before the bytes left");
        p.sent(4);
        assert!(p.wants_shutdown());
        // The output buffer was never used: all of it is scratch.
        assert_eq!(p.scratch()[2..], [(o0, 0), (o0, 32)]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Under any read and write cut and buffer size, an in-place pipe
        /// delivers every byte in order, transformed once.
        #[test]
        fn in_place_pipes_keep_order(
            len in 0usize..3000,
            reads in proptest::collection::vec(1usize..500, 1..5),
            writes in proptest::collection::vec(1usize..300, 1..5),
            buffer in 16usize..700,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let seg = Segmentation { reads, writes, buffer };
            let got = crate::testing::pump(IncInPlace, &data, &seg).unwrap();
            let want: Vec<u8> = data.iter().map(|b| b + 1).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// Consumes nothing, ever: a broken codec.
    struct Stuck;
    impl Codec for Stuck {
        fn transform(&mut self, _: &[u8], _: &mut [u8]) -> Result<Progress, Errno> {
            Ok(Progress::default())
        }
    }

    #[test]
    fn stops_reading_when_the_sink_is_slow_and_keeps_order() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(Inc, &mut a, &mut b);
        let data: Vec<u8> = (0..200u8).collect();
        let mut fed = 0;
        let mut out = Vec::new();
        let mut most_held = 0;
        while out.len() < data.len() {
            if p.wants_read() && fed < data.len() {
                let buf = p.read_buf();
                assert!(!buf.is_empty(), "wants_read with no room");
                let n = buf.len().min(data.len() - fed).min(7);
                buf[..n].copy_from_slice(&data[fed..fed + n]);
                p.received(n);
                fed += n;
            }
            p.transform().unwrap();
            // A sink that takes 3 bytes at a time.
            let n = p.pending().len().min(3);
            out.extend_from_slice(&p.pending()[..n]);
            p.sent(n);
            most_held = most_held.max(fed - out.len());
        }
        // The source is read no faster than the sink drains, once the two
        // buffers are full.
        assert!(most_held <= 64, "held {most_held} bytes, more than the two buffers");
        assert!(most_held > 32, "held {most_held} bytes: the input buffer never filled");
        let want: Vec<u8> = data.iter().map(|b| b + 1).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn half_close_comes_after_the_last_byte() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(Inc, &mut a, &mut b);
        let buf = p.read_buf();
        buf[..3].copy_from_slice(b"abc");
        p.received(3);
        p.received(0);
        p.transform().unwrap();
        assert!(!p.wants_shutdown(), "shutdown before the bytes left");
        assert_eq!(p.pending(), b"bcd");
        p.sent(3);
        p.transform().unwrap();
        assert!(p.wants_shutdown());
        assert!(!p.wants_read());
        p.shut_down();
        assert!(p.is_done() && !p.wants_shutdown());
    }

    /// `Inc`, paced: pieces of at most `piece` bytes with `wait` ns after
    /// each; with `pad`, a short piece is first padded with zeros to
    /// `piece` (asking for more output, as obfs4's paranoid mode does).
    /// Every answer of `pace` is logged.
    struct Paced {
        piece: usize,
        wait: u64,
        pad: bool,
        /// Zeros owed by the next `transform` call.
        owed: usize,
        log: std::rc::Rc<std::cell::RefCell<Vec<Pace>>>,
    }

    impl Paced {
        fn new(piece: usize, wait: u64, pad: bool) -> (Paced, std::rc::Rc<std::cell::RefCell<Vec<Pace>>>) {
            let log = std::rc::Rc::default();
            (Paced { piece, wait, pad, owed: 0, log: std::rc::Rc::clone(&log) }, log)
        }
    }

    impl Codec for Paced {
        const PACED: bool = true;

        fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
            if self.owed > 0 {
                let n = self.owed.min(output.len());
                output[..n].fill(0);
                self.owed -= n;
                return Ok(Progress { consumed: 0, produced: n });
            }
            Inc.transform(input, output)
        }

        fn pace(&mut self, pending: usize) -> Pace {
            let answer = if self.pad && pending < self.piece {
                self.owed = self.piece - pending;
                Pace { release: 0, then_wait: 0 }
            } else {
                Pace { release: pending.min(self.piece), then_wait: self.wait }
            };
            self.log.borrow_mut().push(answer);
            answer
        }
    }

    use crate::testing::{Segmentation, Trace, pump_timed, pump_with_clock};

    /// Checks a paced pump's trace against the codec's log: the writes cut
    /// the stream exactly at the released pieces, each piece waits for the
    /// gap after the one before, and the half-close for the last gap.
    fn check_pieces(trace: &Trace, log: &[Pace]) {
        let pieces: Vec<Pace> = log.iter().copied().filter(|p| p.release > 0).collect();
        let mut writes = trace.writes.iter();
        let mut free_at = 0u64;
        for (i, piece) in pieces.iter().enumerate() {
            let mut left = piece.release;
            let mut last = 0;
            while left > 0 {
                let (at, bytes) = writes.next().unwrap_or_else(|| panic!("piece {i} never fully written"));
                assert!(bytes.len() <= left, "a write crossed the end of piece {i}");
                assert!(*at >= free_at, "piece {i} went at {at}, before its gap ended at {free_at}");
                left -= bytes.len();
                last = *at;
            }
            free_at = last + piece.then_wait;
        }
        assert!(writes.next().is_none(), "bytes written that were never released");
        assert!(
            trace.shut_down_at >= free_at,
            "half-close at {}, before the last gap ended",
            trace.shut_down_at
        );
    }

    #[test]
    fn a_paced_codec_goes_out_in_its_pieces_with_its_gaps() {
        let data: Vec<u8> = (0..100u8).collect();
        let (codec, log) = Paced::new(30, 1_000, false);
        let trace = pump_timed(codec, &data, &Segmentation::default()).unwrap();
        let want: Vec<u8> = data.iter().map(|b| b + 1).collect();
        assert_eq!(trace.bytes(), want);
        // One read, one burst, four pieces 1 µs apart; the half-close after
        // the last gap.
        let sizes: Vec<(u64, usize)> = trace.writes.iter().map(|(at, b)| (*at, b.len())).collect();
        assert_eq!(sizes, [(0, 30), (1_000, 30), (2_000, 30), (3_000, 10)]);
        assert_eq!(trace.shut_down_at, 4_000);
        check_pieces(&trace, &log.borrow());
    }

    #[test]
    fn a_burst_that_arrives_during_a_gap_waits_for_it() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let (codec, _) = Paced::new(4, 500, false);
        let mut p = Pipe::new(codec, &mut a, &mut b);
        p.read_buf()[..6].copy_from_slice(b"abcdef");
        p.received(6);
        assert!(p.transform().unwrap());
        assert_eq!(p.pending(), b"bcde");
        p.sent(4);
        // The wait starts at the next clock reading, whatever arrives.
        assert!(p.needs_clock());
        assert!(!p.tick(100));
        p.read_buf()[..2].copy_from_slice(b"gh");
        p.received(2);
        p.transform().unwrap();
        assert!(!p.wants_write(), "a piece went during the gap");
        assert_eq!(p.held_until(), Some(600));
        assert!(!p.tick(599));
        assert!(p.tick(600));
        p.transform().unwrap();
        assert_eq!(p.pending(), b"fg", "the rest of the first burst, not merged with the next");
        p.sent(2);
        assert!(!p.tick(700) && p.tick(1_200));
        p.transform().unwrap();
        assert_eq!(p.pending(), b"hi");
        // Nothing held back: no reason to wake up at the gap's end.
        p.sent(2);
        p.tick(1_300);
        assert_eq!(p.held_until(), None);
        assert!(!p.needs_clock() && !p.wants_write());
    }

    #[test]
    fn the_half_close_waits_for_the_last_gap() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let (codec, _) = Paced::new(8, 50, false);
        let mut p = Pipe::new(codec, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        p.received(0);
        p.transform().unwrap();
        p.sent(3);
        p.transform().unwrap();
        assert!(!p.wants_shutdown(), "half-closed before the gap began");
        p.tick(10);
        assert_eq!(p.held_until(), Some(60), "the end waits for the gap");
        assert!(!p.wants_shutdown());
        assert!(p.tick(60));
        p.transform().unwrap();
        assert!(p.wants_shutdown());
    }

    #[test]
    fn a_codec_that_does_not_pace_never_needs_the_clock() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(Inc, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        p.transform().unwrap();
        assert_eq!(p.pending(), b"bcd");
        p.sent(3);
        assert!(!p.needs_clock() && p.held_until().is_none());
    }

    #[test]
    fn a_paced_codec_may_ask_for_more_output_first() {
        let data: Vec<u8> = (0..50u8).collect();
        let (codec, log) = Paced::new(20, 7, true);
        let trace = pump_timed(codec, &data, &Segmentation::default()).unwrap();
        // Two full pieces, then the last 10 bytes padded to 20.
        let mut want: Vec<u8> = data.iter().map(|b| b + 1).collect();
        want.extend_from_slice(&[0; 10]);
        assert_eq!(trace.bytes(), want);
        let sizes: Vec<(u64, usize)> = trace.writes.iter().map(|(at, b)| (*at, b.len())).collect();
        assert_eq!(sizes, [(0, 20), (7, 20), (14, 20)]);
        check_pieces(&trace, &log.borrow());
    }

    /// Releases nothing and then produces nothing: a broken pacer.
    struct NeverReleases;
    impl Codec for NeverReleases {
        const PACED: bool = true;
        fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
            Inc.transform(input, output)
        }
        fn pace(&mut self, _: usize) -> Pace {
            Pace::default()
        }
    }

    /// Releases more than it has.
    struct OverReleases;
    impl Codec for OverReleases {
        const PACED: bool = true;
        fn transform(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, Errno> {
            Inc.transform(input, output)
        }
        fn pace(&mut self, pending: usize) -> Pace {
            Pace { release: pending + 1, then_wait: 0 }
        }
    }

    #[test]
    fn a_pacer_that_breaks_its_contract_is_an_error_not_a_hang() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(NeverReleases, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        assert_eq!(p.transform(), Err(Errno::IO));
        // A padded piece larger than the whole output buffer.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let (codec, _) = Paced::new(40, 0, true);
        let mut p = Pipe::new(codec, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        assert_eq!(p.transform(), Err(Errno::IO));
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(OverReleases, &mut a, &mut b);
        p.read_buf()[..3].copy_from_slice(b"abc");
        p.received(3);
        assert_eq!(p.transform(), Err(Errno::IO));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Under any read and write cut, buffer size and clock, a paced
        /// pipe delivers every byte in order, in exactly the pieces the
        /// codec released, each after the gap before it, and the half-close
        /// last; the simulated worker never spins (`pump_with_clock`
        /// checks a wait it sleeps for lies ahead).
        #[test]
        fn paced_pipes_keep_order_pieces_and_gaps(
            len in 0usize..3000,
            piece in 1usize..200,
            wait in 0u64..5_000,
            pad in proptest::bool::ANY,
            reads in proptest::collection::vec(1usize..500, 1..5),
            writes in proptest::collection::vec(1usize..300, 1..5),
            buffer in 16usize..700,
            steps in proptest::collection::vec(0u64..3_000, 1..5),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // A padded piece must fit the output buffer (or the pipe says
            // `io`: the test below).
            let piece = if pad { piece.min(buffer) } else { piece };
            let (codec, log) = Paced::new(piece, wait, pad);
            let seg = Segmentation { reads, writes, buffer };
            let trace = pump_with_clock(codec, &data, &seg, &steps).unwrap();
            let got = trace.bytes();
            if pad {
                // Padding only follows a burst's short tail: what is not a
                // zero is the data, in order.
                let data_only: Vec<u8> = got.iter().copied().filter(|&b| b != 0).collect();
                let want: Vec<u8> = data.iter().map(|b| b + 1).collect();
                proptest::prop_assert_eq!(data_only, want);
            } else {
                let want: Vec<u8> = data.iter().map(|b| b + 1).collect();
                proptest::prop_assert_eq!(got, want);
            }
            check_pieces(&trace, &log.borrow());
        }
    }

    #[test]
    fn a_codec_that_never_consumes_is_an_error_not_a_spin() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut p = Pipe::new(Stuck, &mut a, &mut b);
        assert_eq!(p.transform(), Ok(false), "no input is no error");
        p.read_buf()[0] = 1;
        p.received(1);
        assert_eq!(p.transform(), Err(Errno::IO));
    }
}
