//! An in-memory [`BlockBackend`] for tests and benchmarks of the device
//! model, faithful to the contract in [`crate::disk`]: `push` only queues,
//! `submit` performs the queued requests and makes their completions
//! available through `pop_completion` (in submission order, or reversed to
//! exercise out-of-order completion), and signals the completion eventfd.
//!
//! It can also fail requests that touch a chosen byte range, to test how
//! the device reports backend errors.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::disk::{BlockBackend, BlockQueue, Completion, IoBuf, Request};
use crate::{Error, Result};

/// Options of a [`MemDisk`].
#[derive(Debug, Clone, Default)]
pub struct MemDiskOptions {
    /// Refuse writes, discards and write-zeroes.
    pub read_only: bool,
    /// Complete each submitted batch in reverse order.
    pub reverse_completions: bool,
    /// Fail (with an I/O error) every read or write touching this byte range.
    pub fail_range: Option<std::ops::Range<u64>>,
}

/// A disk held in a `Vec<u8>`.
#[derive(Debug, Clone)]
pub struct MemDisk {
    data: Arc<Mutex<Vec<u8>>>,
    options: MemDiskOptions,
    flushes: Arc<Mutex<u64>>,
    /// Reads and writes executed (a merged one counts once).
    transfers: Arc<Mutex<u64>>,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: usize, options: MemDiskOptions) -> Self {
        MemDisk {
            data: Arc::new(Mutex::new(vec![0; size])),
            options,
            flushes: Arc::new(Mutex::new(0)),
            transfers: Arc::new(Mutex::new(0)),
        }
    }

    /// A copy of the disk's contents.
    pub fn contents(&self) -> Vec<u8> {
        lock(&self.data).clone()
    }

    /// Overwrite the disk's contents from `offset`.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        lock(&self.data)[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// How many reads and writes the disk executed (requests the device
    /// merged count once).
    pub fn transfer_count(&self) -> u64 {
        *lock(&self.transfers)
    }

    /// How many flushes completed.
    pub fn flush_count(&self) -> u64 {
        *lock(&self.flushes)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bytes; keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        lock(&self.data).len() as u64
    }

    fn read_only(&self) -> bool {
        self.options.read_only
    }

    fn block_size(&self) -> u32 {
        512
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BlockQueue>> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
            op: "create completion eventfd",
            source,
        })?;
        Ok(Box::new(MemQueue {
            disk: self.clone(),
            depth,
            accepted: Vec::new(),
            completed: VecDeque::new(),
            event,
        }))
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A queue of a [`MemDisk`].
struct MemQueue {
    disk: MemDisk,
    depth: u32,
    accepted: Vec<(Request, u64)>,
    completed: VecDeque<Completion>,
    event: EventFd,
}

impl MemQueue {
    fn execute(&self, request: &Request) -> Result<u64> {
        let mut data = lock(&self.disk.data);
        let size = data.len() as u64;
        let check = |offset: u64, len: u64| -> Result<std::ops::Range<usize>> {
            let end = offset
                .checked_add(len)
                .filter(|end| *end <= size)
                .ok_or(Error::OutOfRange { offset, len, size })?;
            if let Some(bad) = &self.disk.options.fail_range {
                if offset < bad.end && bad.start < end {
                    return Err(Error::Io {
                        op: "injected failure",
                        source: std::io::Error::from_raw_os_error(libc::EIO),
                    });
                }
            }
            Ok(offset as usize..end as usize)
        };
        let total = |bufs: &[IoBuf]| bufs.iter().map(|b| b.len as u64).sum::<u64>();
        if matches!(request, Request::Read { .. } | Request::Write { .. }) {
            *lock(&self.disk.transfers) += 1;
        }
        match request {
            Request::Read { offset, bufs } => {
                let range = check(*offset, total(bufs))?;
                let mut at = range.start;
                for buf in bufs {
                    // SAFETY: push's contract makes `buf` valid for writes of
                    // `buf.len` bytes until this request's completion is
                    // popped, and nobody else touches it meanwhile.
                    let dest = unsafe { std::slice::from_raw_parts_mut(buf.addr, buf.len) };
                    dest.copy_from_slice(&data[at..at + buf.len]);
                    at += buf.len;
                }
                Ok(range.len() as u64)
            }
            Request::Write { offset, bufs } => {
                if self.disk.options.read_only {
                    return Err(Error::ReadOnly);
                }
                let range = check(*offset, total(bufs))?;
                let mut at = range.start;
                for buf in bufs {
                    // SAFETY: push's contract makes `buf` valid for reads of
                    // `buf.len` bytes until this request's completion is popped.
                    let src = unsafe { std::slice::from_raw_parts(buf.addr, buf.len) };
                    data[at..at + buf.len].copy_from_slice(src);
                    at += buf.len;
                }
                Ok(range.len() as u64)
            }
            Request::Flush => {
                drop(data);
                *lock(&self.disk.flushes) += 1;
                Ok(0)
            }
            Request::Discard { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                if self.disk.options.read_only {
                    return Err(Error::ReadOnly);
                }
                let range = check(*offset, *len)?;
                // Discarded ranges read as zero here too.
                data[range].fill(0);
                Ok(0)
            }
        }
    }
}

impl BlockQueue for MemQueue {
    unsafe fn push(&mut self, request: Request, user_data: u64) -> Result<()> {
        if self.in_flight() >= self.depth {
            return Err(Error::QueueFull { depth: self.depth });
        }
        self.accepted.push((request, user_data));
        Ok(())
    }

    fn submit(&mut self) -> Result<()> {
        if self.accepted.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.accepted);
        if self.disk.options.reverse_completions {
            batch.reverse();
        }
        for (request, user_data) in batch {
            let result = self.execute(&request);
            self.completed.push_back(Completion { user_data, result });
        }
        self.event.write(1).map_err(|source| Error::Io {
            op: "signal completion eventfd",
            source,
        })
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.completed.pop_front()
    }

    fn wait(&mut self) -> Result<()> {
        // Everything submitted is already complete; accepted requests are
        // started now, as io_uring's submit-and-wait would.
        self.submit()
    }

    fn in_flight(&self) -> u32 {
        (self.accepted.len() + self.completed.len()) as u32
    }

    fn completion_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}
