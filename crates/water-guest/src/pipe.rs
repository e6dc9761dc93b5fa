//! One direction of a connection: source bytes in, codec, sink bytes out.
//!
//! [`Pipe`] is the worker's bookkeeping with the syscalls left out, so that
//! its rules can be tested on the host:
//! - it reads only while its input buffer has room (backpressure: a sink that
//!   cannot take more stops the source being read);
//! - bytes leave in the order they came, none is dropped;
//! - at the source's end it drains the codec, then asks once for the sink to
//!   be shut down for writing (the half-close), and only then is done.

use crate::codec::{Codec, Progress};
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

/// One direction's state; see the module docs.
#[derive(Debug)]
pub struct Pipe<'a, C> {
    codec: C,
    input: Window<'a>,
    output: Window<'a>,
    source_ended: bool,
    codec_finished: bool,
    shut_down: bool,
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
        }
    }

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
        self.input.free_tail(usize::MAX)
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
        !self.output.is_empty()
    }

    /// Transformed bytes waiting for the sink; follow with [`Pipe::sent`].
    pub fn pending(&self) -> &[u8] {
        self.output.filled()
    }

    /// `n` bytes of [`Pipe::pending`] were written.
    pub fn sent(&mut self, n: usize) {
        self.output.consume(n);
    }

    /// Runs the codec over buffered input into free output space, as far as
    /// it goes. Returns whether anything moved.
    ///
    /// Errors: the codec's own, and [`Errno::IO`] when the codec breaks its
    /// progress contract (instead of hanging the connection).
    pub fn transform(&mut self) -> Result<bool, Errno> {
        let mut moved = false;
        loop {
            let out = self.output.free_tail(C::MIN_OUTPUT);
            if out.is_empty() {
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
                break;
            }
            moved = true;
        }
        if self.source_ended && !self.codec_finished && self.input.is_empty() {
            loop {
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
        }
        // Input waiting while the whole output buffer was on offer: the codec
        // broke its contract, and waiting would hang the connection.
        if !moved && !self.input.is_empty() && self.output.is_empty() {
            return Err(Errno::IO);
        }
        Ok(moved)
    }

    /// Whether the sink should now be shut down for writing: the source
    /// ended, every byte went out, and it was not done yet.
    pub fn wants_shutdown(&self) -> bool {
        self.codec_finished && self.output.is_empty() && !self.shut_down
    }

    /// The sink was shut down (or could not be, because it is gone).
    pub fn shut_down(&mut self) {
        self.shut_down = true;
    }

    /// This direction is over: source ended, all bytes delivered, sink shut.
    pub fn is_done(&self) -> bool {
        self.shut_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
