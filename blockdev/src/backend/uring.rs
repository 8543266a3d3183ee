//! The io_uring of one queue: the only place in the backends that talks to
//! the kernel's submission and completion rings, and so the home of their
//! unsafe code.
//!
//! A [`Ring`] owns the ring, the files registered with it (operations name
//! them by index, which spares the kernel a file-table look-up per
//! request), and the eventfd the kernel signals when it posts completions.
//! It also keeps the number of operations the kernel holds below the
//! completion ring's size, so that no completion is ever dropped.

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::disk::IoBuf;
use crate::error::{Error, Result};

/// Largest submission ring we build (the kernel's limit is 32768).
pub const MAX_RING_ENTRIES: u32 = 4096;

/// Longest buffer the kernel registers as one fixed buffer.
const MAX_FIXED_BUFFER: usize = 1 << 30;

/// One operation for the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// `preadv` into `iov_count` buffers at `iov`.
    Read {
        /// Index of the registered file.
        file: u32,
        /// File offset.
        offset: u64,
        /// First iovec.
        iov: *const libc::iovec,
        /// Number of iovecs.
        iov_count: u32,
    },
    /// `pwritev` from `iov_count` buffers at `iov`.
    Write {
        /// Index of the registered file.
        file: u32,
        /// File offset.
        offset: u64,
        /// First iovec.
        iov: *const libc::iovec,
        /// Number of iovecs.
        iov_count: u32,
    },
    /// `fdatasync`.
    Fdatasync {
        /// Index of the registered file.
        file: u32,
    },
    /// `fallocate(mode, offset, len)`.
    Fallocate {
        /// Index of the registered file.
        file: u32,
        /// `FALLOC_FL_*` flags.
        mode: i32,
        /// File offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// A queue's io_uring with its registered files and completion eventfd.
pub struct Ring {
    ring: IoUring,
    eventfd: EventFd,
    /// Operations pushed to the submission ring and not yet reaped.
    in_kernel: u32,
    /// Most operations the kernel may hold at once (the completion ring's
    /// size).
    max_in_kernel: u32,
    /// Memory registered as fixed buffers: (first byte, one past the
    /// last, buffer index), sorted by first byte.
    fixed: Vec<(usize, usize, u16)>,
}

impl Ring {
    /// A ring able to hold `entries` submissions (rounded up by the kernel
    /// to a power of two) and twice as many completions, with `files`
    /// registered as indexes 0, 1, ...
    pub fn new(entries: u32, files: &[RawFd]) -> Result<Ring> {
        let entries = entries.clamp(1, MAX_RING_ENTRIES);
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .setup_clamp()
            .build(entries)
            .map_err(|source| Error::Io {
                op: "io_uring_setup",
                source,
            })?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
            op: "eventfd",
            source,
        })?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(|source| Error::Io {
                op: "io_uring register eventfd",
                source,
            })?;
        if !files.is_empty() {
            ring.submitter()
                .register_files(files)
                .map_err(|source| Error::Io {
                    op: "io_uring register files",
                    source,
                })?;
        }
        let max_in_kernel = ring.params().cq_entries();
        Ok(Ring {
            ring,
            eventfd,
            in_kernel: 0,
            max_in_kernel,
            fixed: Vec::new(),
        })
    }

    /// Register `ranges` as the ring's fixed buffers (once per ring), so
    /// that single-buffer reads and writes inside them skip pinning their
    /// pages on every operation. Best effort: false when the kernel refuses
    /// (a locked-memory limit, a range over 1 GiB, too many ranges) or
    /// buffers are already registered.
    ///
    /// # Safety
    /// Every range must stay valid memory until the ring is dropped.
    pub unsafe fn register_buffers(&mut self, ranges: &[IoBuf]) -> bool {
        if !self.fixed.is_empty()
            || ranges.is_empty()
            || ranges.len() > usize::from(u16::MAX)
            || ranges
                .iter()
                .any(|r| r.len == 0 || r.len > MAX_FIXED_BUFFER)
        {
            return false;
        }
        let iovecs: Vec<libc::iovec> = ranges
            .iter()
            .map(|r| libc::iovec {
                iov_base: r.addr.cast(),
                iov_len: r.len,
            })
            .collect();
        // SAFETY: the caller keeps every range valid until the ring (which
        // unregisters them as it closes) is dropped.
        if unsafe { self.ring.submitter().register_buffers(&iovecs) }.is_err() {
            return false;
        }
        self.fixed = ranges
            .iter()
            .enumerate()
            .map(|(index, r)| (r.addr as usize, r.addr as usize + r.len, index as u16))
            .collect();
        self.fixed.sort_unstable();
        true
    }

    /// The fixed buffer holding `len` bytes at `addr`, if any.
    fn fixed_index(&self, addr: usize, len: usize) -> Option<u16> {
        if self.fixed.is_empty() {
            return None;
        }
        let after = self.fixed.partition_point(|&(start, _, _)| start <= addr);
        let &(_, end, index) = self.fixed.get(after.checked_sub(1)?)?;
        (addr.checked_add(len)? <= end).then_some(index)
    }

    /// Whether another operation fits now (room in the submission ring and
    /// under the completion ring's size).
    pub fn has_room(&mut self) -> bool {
        self.in_kernel < self.max_in_kernel && !self.ring.submission().is_full()
    }

    /// Operations pushed and not yet reaped.
    pub fn in_kernel(&self) -> u32 {
        self.in_kernel
    }

    /// Puts `op` into the submission ring; it starts at the next
    /// [`Ring::submit`]. Returns false (and does nothing) when there is no
    /// room.
    ///
    /// # Safety
    /// For `Read` and `Write`, the `iov_count` iovecs at `iov` and the
    /// memory they describe must stay valid (and, for `Read`, unused by
    /// anyone else) until the completion carrying `user_data` has been
    /// returned by [`Ring::reap`].
    pub unsafe fn push(&mut self, op: &Op, user_data: u64) -> bool {
        if !self.has_room() {
            return false;
        }
        let entry: squeue::Entry = match *op {
            Op::Read {
                file,
                offset,
                iov,
                iov_count,
            } => {
                if iov_count == 1 {
                    // SAFETY: the caller guarantees `iov` points to one
                    // valid iovec.
                    let one = unsafe { *iov };
                    let (ptr, len) = (one.iov_base.cast::<u8>(), one.iov_len as u32);
                    match self.fixed_index(ptr as usize, one.iov_len) {
                        Some(index) => opcode::ReadFixed::new(types::Fixed(file), ptr, len, index)
                            .offset(offset)
                            .build(),
                        None => opcode::Read::new(types::Fixed(file), ptr, len)
                            .offset(offset)
                            .build(),
                    }
                } else {
                    opcode::Readv::new(types::Fixed(file), iov, iov_count)
                        .offset(offset)
                        .build()
                }
            }
            Op::Write {
                file,
                offset,
                iov,
                iov_count,
            } => {
                if iov_count == 1 {
                    // SAFETY: as for Read.
                    let one = unsafe { *iov };
                    let (ptr, len) = (one.iov_base.cast_const().cast::<u8>(), one.iov_len as u32);
                    match self.fixed_index(ptr as usize, one.iov_len) {
                        Some(index) => opcode::WriteFixed::new(types::Fixed(file), ptr, len, index)
                            .offset(offset)
                            .build(),
                        None => opcode::Write::new(types::Fixed(file), ptr, len)
                            .offset(offset)
                            .build(),
                    }
                } else {
                    opcode::Writev::new(types::Fixed(file), iov, iov_count)
                        .offset(offset)
                        .build()
                }
            }
            Op::Fdatasync { file } => opcode::Fsync::new(types::Fixed(file))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Fallocate {
                file,
                mode,
                offset,
                len,
            } => opcode::Fallocate::new(types::Fixed(file), len)
                .offset(offset)
                .mode(mode)
                .build(),
        };
        let entry = entry.user_data(user_data);
        // SAFETY: the entry's buffers stay valid until its completion is
        // reaped, by this function's contract; the entry names only files
        // registered with this ring.
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if pushed {
            self.in_kernel += 1;
        }
        pushed
    }

    /// Hands every pushed operation to the kernel (one `io_uring_enter`),
    /// and waits for at least `wait_for` completions.
    pub fn submit(&mut self, wait_for: usize) -> Result<()> {
        loop {
            match self.ring.submit_and_wait(wait_for) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // EBUSY: the completion ring is full; reaping makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(source) => {
                    return Err(Error::Io {
                        op: "io_uring_enter",
                        source,
                    })
                }
            }
        }
    }

    /// Whether the kernel has posted completions not yet reaped (no
    /// system call).
    pub fn completions_ready(&mut self) -> bool {
        let mut cq = self.ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Whether operations sit in the submission ring, not yet submitted.
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Calls `f(user_data, result)` for every completion waiting in the
    /// completion ring (no system call). `result` is the operation's
    /// return value: bytes moved, or a negated errno.
    pub fn reap(&mut self, mut f: impl FnMut(u64, i32)) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            self.in_kernel -= 1;
            n += 1;
            f(cqe.user_data(), cqe.result());
        }
        n
    }

    /// Another handle on the completion eventfd, for waking the queue from
    /// elsewhere.
    pub fn completion_eventfd(&self) -> Result<EventFd> {
        self.eventfd.try_clone().map_err(|source| Error::Io {
            op: "dup eventfd",
            source,
        })
    }

    /// The eventfd the kernel signals on completions.
    pub fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Signals the eventfd ourselves (for requests that completed without
    /// the kernel).
    pub fn notify(&self) {
        // A full counter (never in practice) still leaves it readable.
        let _ = self.eventfd.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_and_writes_a_file_through_the_ring() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        let mut ring = Ring::new(4, &[f.as_raw_fd()]).unwrap();
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        let iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 100,
            },
        ];
        let op = Op::Read {
            file: 0,
            offset: 0,
            iov: iovs.as_ptr(),
            iov_count: 2,
        };
        // SAFETY: `iovs`, `a` and `b` outlive the reap below.
        assert!(unsafe { ring.push(&op, 42) });
        ring.submit(1).unwrap();
        let mut seen = Vec::new();
        ring.reap(|ud, res| seen.push((ud, res)));
        assert_eq!(seen, vec![(42, 4196)]);
        assert!(a.iter().all(|&x| x == 7));
        assert!(b[..100].iter().all(|&x| x == 7) && b[100] == 0);
        assert_eq!(ring.in_kernel(), 0);
        let mut v = 0u64;
        // The kernel signalled the eventfd.
        let fd = ring.completion_fd();
        // SAFETY: reading 8 bytes into a u64 from our own eventfd.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert!(v >= 1);
    }

    #[test]
    fn fixed_buffers_carry_reads_and_writes_inside_them_only() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[3u8; 16384]).unwrap();
        let mut ring = Ring::new(4, &[f.as_raw_fd()]).unwrap();
        let mut pool = vec![0u8; 8192];
        let range = IoBuf {
            addr: pool.as_mut_ptr(),
            len: pool.len(),
        };
        // SAFETY: `pool` outlives the ring, which is dropped explicitly
        // before it below.
        assert!(unsafe { ring.register_buffers(&[range]) });
        assert!(!unsafe { ring.register_buffers(&[range]) }, "once per ring");
        let base = pool.as_ptr() as usize;
        assert_eq!(ring.fixed_index(base, 8192), Some(0));
        assert_eq!(ring.fixed_index(base + 4096, 4096), Some(0));
        assert_eq!(ring.fixed_index(base + 4096, 4097), None);
        assert_eq!(ring.fixed_index(base - 1, 2), None);
        // A write from inside the pool, then a read into it.
        pool[..4096].fill(9);
        let out = [libc::iovec {
            iov_base: pool.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        let write = Op::Write {
            file: 0,
            offset: 4096,
            iov: out.as_ptr(),
            iov_count: 1,
        };
        // SAFETY: `out` and `pool` outlive the reap below.
        assert!(unsafe { ring.push(&write, 1) });
        ring.submit(1).unwrap();
        let mut seen = Vec::new();
        ring.reap(|ud, res| seen.push((ud, res)));
        let back = [libc::iovec {
            // SAFETY: 4096 bytes into an 8192-byte vector.
            iov_base: unsafe { pool.as_mut_ptr().add(4096) }.cast(),
            iov_len: 4096,
        }];
        let read = Op::Read {
            file: 0,
            offset: 4096,
            iov: back.as_ptr(),
            iov_count: 1,
        };
        // SAFETY: as above.
        assert!(unsafe { ring.push(&read, 2) });
        ring.submit(1).unwrap();
        ring.reap(|ud, res| seen.push((ud, res)));
        assert_eq!(seen, vec![(1, 4096), (2, 4096)]);
        assert!(pool[4096..].iter().all(|&x| x == 9));
        drop(ring);
        let mut file = vec![0u8; 16384];
        use std::io::{Read, Seek};
        f.rewind().unwrap();
        f.read_exact(&mut file).unwrap();
        assert!(file[4096..8192].iter().all(|&x| x == 9));
        assert!(file[..4096].iter().all(|&x| x == 3));
    }

    #[test]
    fn fixed_buffers_are_best_effort() {
        let f = tempfile::tempfile().unwrap();
        let mut ring = Ring::new(4, &[f.as_raw_fd()]).unwrap();
        let mut byte = 0u8;
        let empty = IoBuf {
            addr: &mut byte,
            len: 0,
        };
        // SAFETY: refused before the kernel sees it.
        assert!(!unsafe { ring.register_buffers(&[empty]) });
        assert!(!unsafe { ring.register_buffers(&[]) });
        assert_eq!(ring.fixed_index(&byte as *const u8 as usize, 1), None);
    }

    #[test]
    fn refuses_more_than_the_completion_ring_holds() {
        let f = tempfile::tempfile().unwrap();
        let mut ring = Ring::new(1, &[f.as_raw_fd()]).unwrap();
        let mut pushed = 0;
        for i in 0..16 {
            // SAFETY: fdatasync carries no buffers.
            if unsafe { ring.push(&Op::Fdatasync { file: 0 }, i) } {
                pushed += 1;
            } else {
                ring.submit(0).unwrap();
            }
        }
        assert!(pushed <= 2 * 2);
        ring.submit(pushed).unwrap();
        assert_eq!(ring.reap(|_, res| assert_eq!(res, 0)), pushed);
    }
}
