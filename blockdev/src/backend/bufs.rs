//! Request buffers: the caller's scattered [`IoBuf`]s (raw addresses, valid
//! under [`crate::disk::BlockQueue::push`]'s contract) and the aligned
//! bounce buffers used when O_DIRECT cannot take the caller's memory.
//!
//! Every access to caller memory goes through [`GuestBufs`], which is
//! built once, unsafely, from a request, and offers safe byte-range
//! operations afterwards: describing a range as iovecs for the kernel,
//! zero-filling it, or copying in and out of it.

use crate::disk::IoBuf;

/// The buffers of one request, seen as one byte range `0..len()`.
#[derive(Debug, Default)]
pub struct GuestBufs {
    bufs: Vec<IoBuf>,
    len: u64,
}

// SAFETY: the buffers are plain memory that the push contract hands to the
// queue; the queue (and so this value) is used from one thread at a time.
unsafe impl Send for GuestBufs {}

impl GuestBufs {
    /// Wraps a request's buffers.
    ///
    /// # Safety
    /// Each buffer must be valid for reads and writes of its whole length,
    /// and used by no one else, for as long as this value lives.
    pub unsafe fn new(bufs: Vec<IoBuf>) -> GuestBufs {
        let len = bufs.iter().map(|b| b.len as u64).sum();
        GuestBufs { bufs, len }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether every buffer starts at a multiple of `mem_align` and is a
    /// multiple of `len_align` long (what O_DIRECT needs).
    pub fn is_aligned(&self, mem_align: u64, len_align: u64) -> bool {
        self.bufs.iter().all(|b| {
            (b.addr as u64).is_multiple_of(mem_align) && (b.len as u64).is_multiple_of(len_align)
        })
    }

    /// Calls `f(buffer index, offset in it, length)` for each buffer part
    /// that holds the request bytes `start..start + len`.
    fn for_parts(&self, start: u64, len: u64, mut f: impl FnMut(usize, usize, usize)) {
        let end = start + len;
        let mut pos = 0u64;
        for (i, b) in self.bufs.iter().enumerate() {
            let b_end = pos + b.len as u64;
            if b_end > start && pos < end {
                let from = start.max(pos);
                let to = end.min(b_end);
                f(i, (from - pos) as usize, (to - from) as usize);
            }
            if b_end >= end {
                break;
            }
            pos = b_end;
        }
    }

    /// The address of the request bytes `start..start + len` when they lie
    /// in one buffer.
    pub fn single_part(&self, start: u64, len: u64) -> Option<*const u8> {
        let mut found = None;
        let mut parts = 0;
        self.for_parts(start, len, |i, off, part| {
            parts += 1;
            if part as u64 == len {
                // Inside buffer i: off + part <= its len.
                found = Some(self.bufs[i].addr.wrapping_add(off).cast_const());
            }
        });
        if parts == 1 {
            found
        } else {
            None
        }
    }

    /// How many iovecs describe the request bytes `start..start + len`.
    pub fn iovecs_needed(&self, start: u64, len: u64) -> u32 {
        let mut n = 0;
        self.for_parts(start, len, |_, _, _| n += 1);
        n
    }

    /// Appends iovecs describing the request bytes `start..start + len`;
    /// returns how many were appended.
    pub fn iovecs(&self, start: u64, len: u64, out: &mut IoVecs) -> u32 {
        let mut n = 0;
        self.for_parts(start, len, |i, off, part| {
            out.0.push(libc::iovec {
                // The pointer stays inside the buffer: off + part <= its len.
                iov_base: self.bufs[i].addr.wrapping_add(off).cast(),
                iov_len: part,
            });
            n += 1;
        });
        n
    }

    /// Zero-fills the request bytes `start..start + len`.
    pub fn fill_zero(&self, start: u64, len: u64) {
        self.for_parts(start, len, |i, off, part| {
            // SAFETY: `off + part` lies within buffer i, which `new`'s
            // contract makes valid for writes and ours alone.
            unsafe { std::ptr::write_bytes(self.bufs[i].addr.add(off), 0, part) };
        });
    }

    /// Copies `data` into the request bytes `start..start + data.len()`.
    pub fn copy_from(&self, start: u64, data: &[u8]) {
        let mut done = 0usize;
        self.for_parts(start, data.len() as u64, |i, off, part| {
            // SAFETY: as in fill_zero; `data` is a separate allocation, so
            // the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data[done..].as_ptr(),
                    self.bufs[i].addr.add(off),
                    part,
                )
            };
            done += part;
        });
    }

    /// Copies the request bytes `start..start + out.len()` into `out`.
    pub fn copy_to(&self, start: u64, out: &mut [u8]) {
        let mut done = 0usize;
        self.for_parts(start, out.len() as u64, |i, off, part| {
            // SAFETY: `off + part` lies within buffer i, valid for reads by
            // `new`'s contract; `out` is a separate allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.bufs[i].addr.add(off),
                    out[done..].as_mut_ptr(),
                    part,
                )
            };
            done += part;
        });
    }
}

/// The iovecs of one request's operations, kept until they complete.
#[derive(Debug, Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs point into buffers the queue owns or holds under the
// push contract; the queue is used from one thread at a time.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Forgets every iovec (keeps the memory).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Number of iovecs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Appends one.
    pub fn push(&mut self, iov: libc::iovec) {
        self.0.push(iov);
    }

    /// Address of iovec `index` (stable while no iovec is added).
    pub fn ptr_at(&self, index: usize) -> *const libc::iovec {
        self.0[index..].as_ptr()
    }

    /// Appends copies of the `count` iovecs from `start` to `out`.
    pub fn copy_to(&self, start: usize, count: u32, out: &mut Vec<libc::iovec>) {
        out.extend_from_slice(&self.0[start..start + count as usize]);
    }

    /// Drops the first `n` bytes of the `count` iovecs starting at
    /// `start` (after a short transfer); returns the new start and count.
    pub fn advance(&mut self, start: usize, count: u32, mut n: u64) -> (usize, u32) {
        let end = start + count as usize;
        let mut i = start;
        while n > 0 && i < end {
            let iov = &mut self.0[i];
            if (iov.iov_len as u64) <= n {
                n -= iov.iov_len as u64;
                i += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n as usize).cast();
                iov.iov_len -= n as usize;
                n = 0;
            }
        }
        (i, (end - i) as u32)
    }
}

/// A zeroed byte buffer whose start is aligned to `align` bytes.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    #[cfg(test)]
    /// A buffer of `len` bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.resize(len, align);
        b
    }

    /// Makes the buffer `len` bytes long and aligned to `align`, reusing
    /// its memory when it is large enough.
    pub fn resize(&mut self, len: usize, align: usize) {
        let align = align.max(1);
        if self.storage.len() < len + align {
            self.storage = vec![0u8; len + align];
        }
        let addr = self.storage.as_ptr() as usize;
        self.start = addr.next_multiple_of(align) - addr;
        self.len = len;
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// An iovec for the bytes `start..start + len`.
    pub fn iovec(&mut self, start: u64, len: u64) -> libc::iovec {
        let s = &mut self.as_mut_slice()[start as usize..(start + len) as usize];
        libc::iovec {
            iov_base: s.as_mut_ptr().cast(),
            iov_len: s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_bufs(a: &mut [u8], b: &mut [u8]) -> GuestBufs {
        let bufs = vec![
            IoBuf {
                addr: a.as_mut_ptr(),
                len: a.len(),
            },
            IoBuf {
                addr: b.as_mut_ptr(),
                len: b.len(),
            },
        ];
        // SAFETY: a and b outlive the returned value in every test.
        unsafe { GuestBufs::new(bufs) }
    }

    #[test]
    fn ranges_span_buffers() {
        let mut a = [1u8; 6];
        let mut b = [2u8; 10];
        let g = two_bufs(&mut a, &mut b);
        assert_eq!(g.len(), 16);
        let mut out = IoVecs::default();
        assert_eq!(g.iovecs(4, 8, &mut out), 2);
        assert_eq!((out.0[0].iov_len, out.0[1].iov_len), (2, 6));
        assert_eq!(out.advance(0, 2, 3), (1, 1));
        assert_eq!(out.0[1].iov_len, 5);
        let mut copy = [0u8; 4];
        g.copy_to(4, &mut copy);
        assert_eq!(copy, [1, 1, 2, 2]);
        g.fill_zero(5, 2);
        g.copy_from(14, &[9, 9]);
        drop(g);
        assert_eq!(a, [1, 1, 1, 1, 1, 0]);
        assert_eq!(b, [0, 2, 2, 2, 2, 2, 2, 2, 9, 9]);
    }

    #[test]
    fn alignment_checks_address_and_length() {
        let mut buf = AlignedBuf::new(8192, 4096);
        assert_eq!(buf.as_slice().as_ptr() as usize % 4096, 0);
        let s = buf.as_mut_slice();
        let (head, tail) = s.split_at_mut(4096);
        let g = two_bufs(head, tail);
        assert!(g.is_aligned(4096, 512));
        let g2 = two_bufs(&mut head[1..], &mut tail[..512]);
        assert!(!g2.is_aligned(512, 512));
    }
}
