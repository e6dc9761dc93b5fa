//! The one way host code reads and writes guest memory: bounds-checked
//! accessors over the instance's linear memory. A bad pointer or length is
//! `fault` (or `inval`/`overflow` for sizes), never a panic.

use water_abi::Errno;

/// Most iovecs one call may pass (POSIX's usual `IOV_MAX`).
pub const MAX_IOVECS: u32 = 1024;

/// The host's page size (the unit [`GuestMem::discard`] works in).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a constant of the system.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1))
}

/// A view of guest memory for the duration of one host call.
pub struct GuestMem<'a>(pub &'a mut [u8]);

fn range(len_mem: usize, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, Errno> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(Errno::FAULT)?;
    if end > len_mem {
        return Err(Errno::FAULT);
    }
    Ok(start..end)
}

impl<'a> GuestMem<'a> {
    pub fn slice(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        Ok(&self.0[range(self.0.len(), ptr, len)?])
    }

    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let r = range(self.0.len(), ptr, len)?;
        Ok(&mut self.0[r])
    }

    pub fn read_u32(&self, ptr: u32) -> Result<u32, Errno> {
        let mut out = [0u8; 4];
        out.copy_from_slice(self.slice(ptr, 4)?);
        Ok(u32::from_le_bytes(out))
    }

    /// Gives back to the kernel the whole host pages inside `len` bytes at
    /// `ptr`, whose contents the guest said it will not read again (its
    /// scratch): they read as zeros (or the module's initial image) after,
    /// and cost no memory until touched. Returns the bytes given back; 0
    /// for a range out of bounds or holding no whole page.
    pub fn discard(&mut self, ptr: u32, len: u32) -> usize {
        let Ok(r) = range(self.0.len(), ptr, len) else { return 0 };
        let page = page_size();
        let base = self.0.as_mut_ptr() as usize;
        let start = (base + r.start).next_multiple_of(page);
        let end = (base + r.end) / page * page;
        if end <= start {
            return 0;
        }
        // SAFETY: `[start, end)` lies inside the guest memory this view
        // borrows exclusively (`&mut`), so no other reference sees the
        // bytes change; MADV_DONTNEED on private memory (anonymous, or a
        // private mapping of the module's image) only replaces the pages'
        // contents, which is a write of valid `u8`s through that borrow.
        let ok = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0;
        if ok { end - start } else { 0 }
    }

    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<(), Errno> {
        let len = u32::try_from(bytes.len()).map_err(|_| Errno::OVERFLOW)?;
        self.slice_mut(ptr, len)?.copy_from_slice(bytes);
        Ok(())
    }

    pub fn write_u32(&mut self, ptr: u32, v: u32) -> Result<(), Errno> {
        self.write(ptr, &v.to_le_bytes())
    }

    pub fn write_u64(&mut self, ptr: u32, v: u64) -> Result<(), Errno> {
        self.write(ptr, &v.to_le_bytes())
    }

    /// Reads an iovec array (`{ buf: u32, len: u32 }` each), checking that
    /// every buffer lies inside memory.
    pub fn iovecs(&self, ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
        self.checked_iovecs(ptr, count)?.collect()
    }

    /// The iovecs at `ptr`, each checked as it is yielded; the array
    /// itself is checked here.
    fn checked_iovecs(
        &self,
        ptr: u32,
        count: u32,
    ) -> Result<impl Iterator<Item = Result<(u32, u32), Errno>> + '_, Errno> {
        if count > MAX_IOVECS {
            return Err(Errno::INVAL);
        }
        let raw = self.slice(ptr, count.checked_mul(8).ok_or(Errno::OVERFLOW)?)?;
        Ok(raw.chunks_exact(8).map(|chunk| {
            let buf = u32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(chunk[4..].try_into().expect("4 bytes"));
            range(self.0.len(), buf, len)?;
            Ok((buf, len))
        }))
    }

    /// The bytes of an iovec array, in order, at most `max` of them (the
    /// rest is not read).
    pub fn gather(&self, ptr: u32, count: u32, max: usize) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for (buf, len) in self.iovecs(ptr, count)? {
            let take = (len as usize).min(max - out.len());
            out.extend_from_slice(self.slice(buf, take as u32)?);
            if out.len() == max {
                break;
            }
        }
        Ok(out)
    }

    /// The first non-empty iovec, or an empty one: reads and writes move one
    /// buffer per call, which preview1 allows (short reads and writes).
    /// Every iovec is checked, as [`GuestMem::iovecs`] does, without a
    /// list: this runs on every read and write a guest makes.
    pub fn first_iovec(&self, ptr: u32, count: u32) -> Result<(u32, u32), Errno> {
        let mut first = (0, 0);
        for iovec in self.checked_iovecs(ptr, count)? {
            let (buf, len) = iovec?;
            if first.1 == 0 && len > 0 {
                first = (buf, len);
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's scratch table may lie: ranges out of bounds, overflowing,
    /// or over bytes it still needs. Only whole pages inside its own
    /// memory are ever given back, and they read as zeros after.
    #[test]
    fn a_scratch_table_that_lies_discards_only_whole_pages_of_its_own_memory() {
        let page = page_size();
        let mut backing = vec![7u8; 8 * page];
        // A view starting mid-page, as guest memory need not be aligned.
        let mut m = GuestMem(&mut backing[100..]);
        let len = m.0.len() as u32;
        let table = 16;
        let ranges: [(u32, u32); 4] = [(len - 10, 100), (u32::MAX - 1, 5), (0, 50), (0, len)];
        for (i, (at, n)) in ranges.iter().enumerate() {
            m.write_u32(table + 8 * i as u32, *at).unwrap();
            m.write_u32(table + 8 * i as u32 + 4, *n).unwrap();
        }
        // Out of bounds, overflowing, less than a page: nothing; the whole
        // memory: its whole pages, the partial ones at each end kept.
        let base = m.0.as_ptr() as usize;
        let first = base.next_multiple_of(page) - base;
        let end = (base + m.0.len()) / page * page - base;
        let given = crate::wasi::discard_scratch(&mut m, table);
        assert_eq!(given, end - first, "the whole pages inside, and no more");
        // (Bytes 16..48 hold the table.)
        assert!(m.0[48.min(first)..first].iter().all(|&b| b == 7), "bytes before the first whole page kept");
        assert!(m.0[first..end].iter().all(|&b| b == 0), "the whole pages read as zeros");
        assert!(m.0[end..].iter().all(|&b| b == 7), "bytes after the last whole page kept");
        // A table out of bounds is no table.
        assert_eq!(crate::wasi::discard_scratch(&mut m, len - 4), 0);
        assert_eq!(crate::wasi::discard_scratch(&mut m, u32::MAX), 0);
        // The memory is still memory.
        m.write(first as u32, b"still here").unwrap();
        assert_eq!(m.slice(first as u32, 10).unwrap(), b"still here");
    }

    #[test]
    fn out_of_bounds_is_fault_not_panic() {
        let mut mem = [0u8; 64];
        let mut m = GuestMem(&mut mem);
        assert_eq!(m.read_u32(61), Err(Errno::FAULT));
        assert_eq!(m.read_u32(u32::MAX), Err(Errno::FAULT));
        assert_eq!(m.slice(60, u32::MAX), Err(Errno::FAULT));
        assert_eq!(m.write_u64(57, 1), Err(Errno::FAULT));
        m.write_u32(60, 7).unwrap();
        assert_eq!(m.read_u32(60), Ok(7));
        // One iovec pointing past the end spoils the array.
        m.write_u32(0, 16).unwrap();
        m.write_u32(4, 8).unwrap();
        m.write_u32(8, 60).unwrap();
        m.write_u32(12, 8).unwrap();
        assert_eq!(m.iovecs(0, 1), Ok(vec![(16, 8)]));
        assert_eq!(m.iovecs(0, 2), Err(Errno::FAULT));
        assert_eq!(m.iovecs(0, MAX_IOVECS + 1), Err(Errno::INVAL));
        // The first non-empty iovec, with every one of them checked: a bad
        // one after it still spoils the call.
        assert_eq!(m.first_iovec(0, 1), Ok((16, 8)));
        assert_eq!(m.first_iovec(0, 2), Err(Errno::FAULT));
        assert_eq!(m.first_iovec(0, MAX_IOVECS + 1), Err(Errno::INVAL));
        assert_eq!(m.first_iovec(60, 1), Err(Errno::FAULT));
        m.write_u32(4, 0).unwrap();
        m.write_u32(8, 20).unwrap();
        m.write_u32(12, 4).unwrap();
        assert_eq!(m.first_iovec(0, 2), Ok((20, 4)), "the empty one skipped");
        assert_eq!(m.first_iovec(0, 1), Ok((0, 0)), "none: an empty buffer");
        assert_eq!(m.first_iovec(0, 0), Ok((0, 0)));
    }
}
