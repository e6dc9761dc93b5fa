//! Host-side helpers to test codecs the way the worker drives them.
//!
//! [`pump`] runs bytes through a [`Pipe`] with the reads and writes cut into
//! sizes the test chooses, so a property test can check that a codec's output
//! does not depend on how TCP split the stream.

use std::vec;
use std::vec::Vec;

use crate::codec::Codec;
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
    let mut input = vec![0u8; seg.buffer.max(C::MIN_OUTPUT)];
    let mut output = vec![0u8; seg.buffer.max(C::MIN_OUTPUT)];
    let mut pipe = Pipe::new(codec, &mut input, &mut output);
    let (mut reads, mut writes) = (seg.reads.iter().cycle(), seg.writes.iter().cycle());
    let mut fed = 0;
    let mut out = Vec::with_capacity(data.len());
    let mut idle = 0;
    while !pipe.is_done() {
        let mut moved = false;
        if pipe.wants_read() {
            let buf = pipe.read_buf();
            let n = buf.len().min(data.len() - fed).min((*reads.next().unwrap()).max(1));
            buf[..n].copy_from_slice(&data[fed..fed + n]);
            pipe.received(n);
            fed += n;
            moved = true;
        }
        moved |= pipe.transform()?;
        if pipe.wants_write() {
            let n = pipe.pending().len().min((*writes.next().unwrap()).max(1));
            out.extend_from_slice(&pipe.pending()[..n]);
            pipe.sent(n);
            moved = true;
        }
        if pipe.wants_shutdown() {
            pipe.shut_down();
            moved = true;
        }
        idle = if moved { 0 } else { idle + 1 };
        assert!(idle < 3, "pipe stalled: fed {fed} of {}, wrote {}", data.len(), out.len());
    }
    Ok(out)
}
