//! The contract between the device model (or `img bench`) and a backend.
//!
//! A [`BlockBackend`] is one opened disk. Each virtio queue (or bench
//! worker) opens its own [`BlockQueue`] with [`BlockBackend::open_queue`];
//! a queue is used from one thread, owns its io_uring, and completes
//! requests in any order. Requests carry caller-chosen `user_data` that
//! comes back with the completion.
//!
//! Buffers are raw host addresses (normally inside guest memory that the
//! caller has validated): [`BlockQueue::push`] is `unsafe` because the
//! backend reads or writes them after `push` returns, until the request's
//! completion is popped.

use std::os::fd::RawFd;

use crate::Result;

/// One contiguous buffer of a request: `len` bytes at host address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoBuf {
    /// Host virtual address of the first byte.
    pub addr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: an IoBuf is only an address and a length; whoever dereferences it
// does so under BlockQueue::push's contract, from whichever thread runs the
// queue.
unsafe impl Send for IoBuf {}

/// What a request asks of the disk. Offsets and lengths are in bytes and
/// multiples of 512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Fill `bufs`, in order, from the disk starting at `offset`.
    Read {
        /// First disk byte.
        offset: u64,
        /// Destination buffers; their total length is the request length.
        bufs: Vec<IoBuf>,
    },
    /// Write `bufs`, in order, to the disk starting at `offset`.
    Write {
        /// First disk byte.
        offset: u64,
        /// Source buffers; their total length is the request length.
        bufs: Vec<IoBuf>,
    },
    /// Make every write completed before this request durable (data and,
    /// for qcow2, the metadata those writes need). Completes only after
    /// every write pushed before it on this queue has completed.
    Flush,
    /// The range's contents no longer matter (qcow2 discard, or punching a
    /// hole in a raw file).
    Discard {
        /// First disk byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range reads as zeroes afterwards.
    WriteZeroes {
        /// First disk byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Whether the backend may deallocate the range instead of writing
        /// zeroes (virtio's UNMAP flag).
        may_unmap: bool,
    },
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The `user_data` given to [`BlockQueue::push`].
    pub user_data: u64,
    /// Bytes transferred (reads and writes), or the error.
    pub result: Result<u64>,
}

/// One submission/completion queue of a disk, used from one thread.
///
/// Dropping a queue waits until nothing (the kernel included) uses the
/// buffers of its requests any more; requests not yet finished are dropped
/// without a completion (finished writes stay written).
pub trait BlockQueue: Send {
    /// Accept a request. It may start at once or when [`BlockQueue::submit`]
    /// is called; either way its completion comes from
    /// [`BlockQueue::pop_completion`]. Fails with `QueueFull` when the
    /// queue's depth is reached (reap completions, then retry), and with
    /// `OutOfRange`/`ReadOnly` at once for requests the disk cannot take.
    ///
    /// # Safety
    /// Every buffer in `request` must be valid for reads (Write) or writes
    /// (Read) for its whole length, and not be accessed by anyone else,
    /// from this call until the completion carrying `user_data` is popped.
    unsafe fn push(&mut self, request: Request, user_data: u64) -> Result<()>;

    /// Hand every accepted request to the kernel (one syscall for a batch).
    fn submit(&mut self) -> Result<()>;

    /// The next finished request, if any, without blocking.
    fn pop_completion(&mut self) -> Option<Completion>;

    /// Block until at least one request is finished (returns at once if one
    /// is already waiting, or if none is in flight).
    fn wait(&mut self) -> Result<()>;

    /// Requests accepted and not yet popped.
    fn in_flight(&self) -> u32;

    /// Whether a request may finish within [`BlockQueue::push`], one at a
    /// time as they come (a format driver that serializes its requests),
    /// so that a caller that must stop at the first failure looks for a
    /// completion after each push. The default says no: requests run
    /// together once submitted, and looking costs every push.
    fn completes_on_push(&self) -> bool {
        false
    }

    /// Whether a completion can be popped now or is waiting to be reaped,
    /// found without a system call (for a caller that spins a little
    /// before it sleeps on [`BlockQueue::completion_fd`]). The default says
    /// no, for queues that cannot tell cheaply.
    fn completions_ready(&mut self) -> bool {
        false
    }

    /// Whether spinning on [`BlockQueue::completions_ready`] is likely to
    /// pay now: something is in flight and all of it is of a kind whose
    /// completion comes soon (reads). The default says no.
    fn worth_polling(&self) -> bool {
        false
    }

    /// An eventfd that becomes readable when completions are waiting, for
    /// an event loop; read it to reset it.
    fn completion_fd(&self) -> RawFd;

    /// Tell the queue that request buffers will lie in `ranges`, so that it
    /// can register them with the kernel once instead of having each
    /// request's pages pinned anew (io_uring fixed buffers; it pays with
    /// O_DIRECT). Best effort: whether the queue registered them; a queue
    /// that cannot (or a kernel that refuses) works as before. The default
    /// registers nothing.
    ///
    /// # Safety
    /// Every range must stay valid memory (mapped and not freed) until the
    /// queue is dropped.
    unsafe fn register_memory(&mut self, ranges: &[IoBuf]) -> bool {
        let _ = ranges;
        false
    }
}

/// How the backend treats the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// O_DIRECT: data bypasses the host page cache; flush still syncs.
    None,
    /// Through the page cache; flush syncs.
    #[default]
    Writeback,
}

/// One opened disk (raw file or qcow2 image with its chain).
pub trait BlockBackend: Send + Sync {
    /// Disk size in bytes.
    fn size(&self) -> u64;
    /// Whether writes, discards and write-zeroes are refused.
    fn read_only(&self) -> bool;
    /// Logical block size the disk reports (512, or the O_DIRECT alignment).
    fn block_size(&self) -> u32;
    /// Open a queue able to hold `depth` requests in flight.
    fn open_queue(&self, depth: u32) -> Result<Box<dyn BlockQueue>>;
    /// Flush everything and mark the image clean; call once all queues are
    /// dropped. After this returns, `qemu-img check` finds nothing.
    fn close(&self) -> Result<()>;
    /// The qcow2 image behind the disk, for internal snapshots taken while
    /// its queues are idle (a paused VM); `None` for other formats.
    fn qcow2(&self) -> Option<&qcow::image::Qcow2> {
        None
    }
}
