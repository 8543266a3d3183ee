//! The request engine of one queue: turns requests into io_uring
//! operations (several per request when a qcow2 request maps to several
//! host ranges), completes a request once all its operations have, and
//! orders flushes after the writes pushed before them.
//!
//! Requests live in slots (one per request in flight, `depth` of them).
//! Each kernel operation's user data is `slot << 32 | operation index`.
//! Operations wait in a backlog when the ring is full.
//!
//! qcow2 writes, write-zeroes and discards that would block on clusters
//! held by another unfinished write (see
//! [`qcow::image::Qcow2::try_begin_write`]) are parked and retried as
//! completions come in, or when another queue lets go of its clusters
//! (`wakers`): the queues of a disk may share one thread, which must never
//! block on what only it can finish. Only [`BlockQueue::wait`], for a
//! caller that blocks anyway, may wait inside the qcow2 library, and only
//! while the queue holds no write plans itself, so queues on separate
//! threads cannot deadlock on each other.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::Arc;

use qcow::image::WritePlan;

use super::bufs::{AlignedBuf, GuestBufs, IoVecs};
use super::host::ZERO_RANGE;
use super::uring::{Op, Ring};
use super::wakers::QueueWaker;
use super::{Disk, Layout};
use crate::disk::{BlockQueue, Completion, IoBuf, Request};
use crate::error::{Error, Result};
use crate::poll::AdaptivePoll;

mod merge;
mod start;

use merge::{MergePool, MERGED};
use start::zero_target;

/// Most iovecs one operation takes (the kernel's UIO_MAXIOV).
const MAX_IOVECS: u32 = 1024;

/// What a slot's request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes { may_unmap: bool },
}

/// What one kernel operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    Fdatasync,
    Fallocate { mode: i32 },
}

/// One kernel operation of a request.
#[derive(Debug, Clone, Copy)]
struct OpState {
    kind: OpKind,
    /// 0: image file, 1: data file.
    file: u32,
    /// Host offset of the next byte.
    host_offset: u64,
    /// Request byte the operation started at.
    rel: u64,
    /// Bytes the operation covers.
    len: u64,
    /// Bytes not yet transferred.
    remaining: u64,
    iov_start: usize,
    iov_count: u32,
    /// Run alone: a merged operation holding it failed or came up short.
    unmerged: bool,
}

/// One request in flight.
#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    user_data: u64,
    kind: Option<Kind>,
    offset: u64,
    len: u64,
    bufs: GuestBufs,
    use_bounce: bool,
    bounce: AlignedBuf,
    iovs: IoVecs,
    ops: Vec<OpState>,
    pending: u32,
    error: Option<Error>,
    plan: Option<WritePlan>,
    write_seq: Option<u64>,
    /// For a flush: it waits for the writes numbered below this.
    flush_before: u64,
    /// For a write-through write: its data has been synced.
    synced: bool,
}

/// Outcome of trying to start a request.
enum Start {
    /// Operations queued (or completed at once).
    Started,
    /// Must wait for an unfinished write (this queue's or another's).
    Parked,
}

/// A [`BlockQueue`] over one io_uring.
pub struct UringQueue {
    disk: Arc<Disk>,
    ring: Ring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    ready: VecDeque<Completion>,
    backlog: VecDeque<u64>,
    parked: VecDeque<u32>,
    flushes: VecDeque<u32>,
    outstanding_writes: BTreeSet<u64>,
    next_write_seq: u64,
    own_plans: u32,
    scratch: Vec<u8>,
    reaped: Vec<(u64, i32)>,
    /// The last submit left operations in the backlog (ring full).
    stalled: bool,
    notify_pending: bool,
    /// An error met while reaping in `pop_completion`, for the next call
    /// that can return one.
    deferred_error: Option<Error>,
    /// This queue's entry among the disk's queues.
    waker: Arc<QueueWaker>,
    /// Starting a request may wait inside the qcow2 library for another
    /// queue's write (only within `wait`, while we hold no plans).
    may_block: bool,
    /// How long `wait` spins on the completion ring before sleeping.
    poll: AdaptivePoll,
    /// Operations of several requests merged into one (see `merge`).
    merges: MergePool,
    /// Reads among the operations in the kernel: `wait` spins only while
    /// nothing else is there (spinning while writes were in flight made
    /// 4 KiB O_DIRECT writes at depth 1 slower and far less steady here).
    reads_in_kernel: u32,
    /// Extents of the qcow2 read being started, kept between requests.
    extents: Vec<qcow::device::Extent>,
}

fn io_err(op: &'static str, errno: i32) -> Error {
    Error::Io {
        op,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

impl UringQueue {
    /// A queue of `depth` slots over `disk`.
    pub fn new(disk: Arc<Disk>, depth: u32) -> Result<UringQueue> {
        // Registered in file index order (see Disk::host).
        let fds: Vec<RawFd> = disk.hosts().map(|h| h.data_fd()).collect();
        let ring = Ring::new(depth.saturating_mul(2).max(8), &fds)?;
        let slots = (0..depth).map(|_| Slot::default()).collect();
        let waker = disk.wakers.register(ring.completion_eventfd()?);
        let poll = AdaptivePoll::new(disk.poll_max);
        Ok(UringQueue {
            disk,
            ring,
            slots,
            free: (0..depth).rev().collect(),
            ready: VecDeque::new(),
            backlog: VecDeque::new(),
            parked: VecDeque::new(),
            flushes: VecDeque::new(),
            outstanding_writes: BTreeSet::new(),
            next_write_seq: 0,
            own_plans: 0,
            scratch: Vec::new(),
            reaped: Vec::new(),
            stalled: false,
            notify_pending: false,
            deferred_error: None,
            poll,
            merges: MergePool::default(),
            reads_in_kernel: 0,
            extents: Vec::new(),
            waker,
            may_block: false,
        })
    }

    /// Tries to start `slot`, parking it if it must wait for an unfinished
    /// write; a queue with parked requests is woken when any queue of the
    /// disk lets go of a write plan.
    fn start_or_park(&mut self, slot: u32) {
        let epoch = self.disk.wakers.epoch();
        if let Start::Parked = self.start(slot) {
            self.parked.push_back(slot);
            self.disk.wakers.set_parked(&self.waker, true);
            if self.disk.wakers.released_since(epoch) {
                // The holder may have let go before we were marked parked.
                self.waker.wake();
            }
        }
    }

    /// Finishes a request: its completion becomes poppable, its slot free.
    fn complete(&mut self, slot: u32, result: Result<u64>) {
        let s = &mut self.slots[slot as usize];
        if let Some(seq) = s.write_seq.take() {
            self.outstanding_writes.remove(&seq);
        }
        self.ready.push_back(Completion {
            user_data: s.user_data,
            result,
        });
        s.busy = false;
        s.kind = None;
        s.bufs = GuestBufs::default();
        s.iovs.clear();
        s.ops.clear();
        s.error = None;
        self.free.push(slot);
    }

    /// All operations of `slot` are done: commit and complete it.
    fn finish_slot(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let mut error = s.error.take();
        if let Some(plan) = s.plan.take() {
            self.own_plans -= 1;
            if let Layout::Qcow2(q) = &self.disk.layout {
                let held = plan.holds_clusters();
                if error.is_some() {
                    q.abort_write(plan);
                } else if let Err(e) = q.finish_write(plan) {
                    error = Some(e.into());
                }
                // Only a plan holding clusters can have parked anyone.
                if held {
                    self.disk.wakers.plan_released(&self.waker);
                }
            }
        }
        let s = &mut self.slots[slot as usize];
        if error.is_none() && s.kind == Some(Kind::Write) && self.disk.write_through && !s.synced {
            s.synced = true;
            match self.sync_or_queue_syncs(slot) {
                Ok(true) => {}
                // The data syncs finish the slot when they complete.
                Ok(false) => return,
                Err(e) => error = Some(e),
            }
        }
        let s = &mut self.slots[slot as usize];
        if error.is_none() && s.kind == Some(Kind::Read) && s.use_bounce {
            s.bufs.copy_from(0, &s.bounce.as_slice()[..s.len as usize]);
        }
        let bytes = match s.kind {
            Some(Kind::Read | Kind::Write) => s.len,
            _ => 0,
        };
        self.complete(slot, error.map_or(Ok(bytes), Err));
    }

    /// Handles a completion the kernel posted (of a merged operation or
    /// not).
    fn on_kernel_completion(&mut self, user_data: u64, result: i32) {
        if self.kernel_op_kind(user_data) == OpKind::Read {
            self.reads_in_kernel -= 1;
        }
        self.on_completion(user_data, result);
    }

    /// Handles the completion of one operation (or of a merged one).
    fn on_completion(&mut self, user_data: u64, result: i32) {
        if user_data & MERGED != 0 {
            self.on_merged_completion((user_data & 0xffff_ffff) as u32, result);
            return;
        }
        let slot = (user_data >> 32) as u32;
        let index = (user_data & 0xffff_ffff) as usize;
        let s = &mut self.slots[slot as usize];
        let op = s.ops[index];
        let mut done = true;
        match op.kind {
            OpKind::Read | OpKind::Write => {
                let name = if matches!(op.kind, OpKind::Read) {
                    "read"
                } else {
                    "write"
                };
                if result < 0 {
                    s.error.get_or_insert(io_err(name, -result));
                } else if (result as u64) < op.remaining {
                    let n = result as u64;
                    if n == 0 && matches!(op.kind, OpKind::Read) {
                        // End of file: the rest reads as zero.
                        let at = op.rel + op.len - op.remaining;
                        zero_target(s, at, op.remaining);
                    } else if n == 0 {
                        s.error.get_or_insert(io_err(name, libc::EIO));
                    } else {
                        let (iov_start, iov_count) = s.iovs.advance(op.iov_start, op.iov_count, n);
                        let o = &mut s.ops[index];
                        o.host_offset += n;
                        o.remaining -= n;
                        o.iov_start = iov_start;
                        o.iov_count = iov_count;
                        self.backlog.push_back(user_data);
                        done = false;
                    }
                }
            }
            OpKind::Fdatasync => {
                if result < 0 {
                    s.error.get_or_insert(io_err("fdatasync", -result));
                }
            }
            OpKind::Fallocate { mode } => {
                if result < 0 {
                    let errno = -result;
                    let unsupported =
                        matches!(errno, libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV);
                    if !unsupported {
                        s.error.get_or_insert(io_err("fallocate", errno));
                    } else if s.kind != Some(Kind::Discard) || mode == ZERO_RANGE {
                        // Write-zeroes must read as zero: write them.
                        if let Err(e) = self.disk.image.write_zero_bytes(op.host_offset, op.len) {
                            s.error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        if done {
            s.pending -= 1;
            if s.pending == 0 {
                self.finish_slot(slot);
            }
        }
    }

    /// Makes what `slot` covers durable: a qcow2 image with metadata to
    /// write back is flushed at once by the library (`Ok(true)`); otherwise
    /// only data needs syncing, and fdatasync operations on the image file
    /// (and the data file) are queued for the ring (`Ok(false)`: the slot
    /// finishes when they complete), so the queue's thread does not wait.
    fn sync_or_queue_syncs(&mut self, slot: u32) -> Result<bool> {
        if let Layout::Qcow2(q) = &self.disk.layout {
            if q.flush_metadata()? {
                return Ok(true);
            }
        }
        let files = if self.disk.data_file.is_some() { 2 } else { 1 };
        let s = &mut self.slots[slot as usize];
        for file in 0..files {
            s.ops.push(OpState {
                kind: OpKind::Fdatasync,
                file,
                host_offset: 0,
                rel: 0,
                len: 0,
                remaining: 0,
                iov_start: 0,
                iov_count: 0,
                unmerged: false,
            });
            let index = (s.ops.len() - 1) as u64;
            self.backlog.push_back(u64::from(slot) << 32 | index);
        }
        s.pending = files;
        Ok(false)
    }

    /// Starts flushes whose earlier writes have all completed.
    fn run_flushes(&mut self) {
        while let Some(&slot) = self.flushes.front() {
            let before = self.slots[slot as usize].flush_before;
            if self
                .outstanding_writes
                .first()
                .is_some_and(|&oldest| oldest < before)
            {
                break;
            }
            self.flushes.pop_front();
            if self.disk.read_only || self.disk.ignore_flush {
                self.complete(slot, Ok(0));
                continue;
            }
            match self.sync_or_queue_syncs(slot) {
                Ok(true) => self.complete(slot, Ok(0)),
                Ok(false) => {}
                Err(e) => self.complete(slot, Err(e)),
            }
        }
    }

    /// Retries parked requests in order.
    fn run_parked(&mut self) {
        let epoch = self.disk.wakers.epoch();
        let mut n = self.parked.len();
        while n > 0 {
            n -= 1;
            let Some(slot) = self.parked.pop_front() else {
                break;
            };
            if let Start::Parked = self.start(slot) {
                self.parked.push_back(slot);
            }
        }
        let parked = !self.parked.is_empty();
        self.disk.wakers.set_parked(&self.waker, parked);
        if parked && self.disk.wakers.released_since(epoch) {
            // A plan let go meanwhile (perhaps our own): look again.
            self.waker.wake();
        }
    }

    /// Moves backlog operations into the ring while it has room.
    fn fill_ring(&mut self) {
        while let Some(&user_data) = self.backlog.front() {
            match self.push_merged() {
                Some(true) => continue,
                Some(false) => break,
                None => {}
            }
            let slot = (user_data >> 32) as usize;
            let index = (user_data & 0xffff_ffff) as usize;
            let s = &self.slots[slot];
            let o = s.ops[index];
            let op = match o.kind {
                OpKind::Read => Op::Read {
                    file: o.file,
                    offset: o.host_offset,
                    iov: s.iovs.ptr_at(o.iov_start),
                    iov_count: o.iov_count,
                },
                OpKind::Write => Op::Write {
                    file: o.file,
                    offset: o.host_offset,
                    iov: s.iovs.ptr_at(o.iov_start),
                    iov_count: o.iov_count,
                },
                OpKind::Fdatasync => Op::Fdatasync { file: o.file },
                OpKind::Fallocate { mode } => Op::Fallocate {
                    file: o.file,
                    mode,
                    offset: o.host_offset,
                    len: o.len,
                },
            };
            // SAFETY: the iovecs live in the slot, which is not reused and
            // gets no new iovecs until all its operations have completed;
            // they point into the slot's bounce buffer or into caller
            // buffers valid until the request's completion is popped (the
            // push contract), which happens after this operation's
            // completion is reaped.
            if !unsafe { self.ring.push(&op, user_data) } {
                break;
            }
            if o.kind == OpKind::Read {
                self.reads_in_kernel += 1;
            }
            self.backlog.pop_front();
        }
    }

    /// Pushes what fits and submits it (one system call per ring-full).
    fn submit_all(&mut self) -> Result<()> {
        loop {
            self.fill_ring();
            self.stalled = !self.backlog.is_empty();
            if !self.ring.has_unsubmitted() {
                return Ok(());
            }
            self.ring.submit(0)?;
            if self.backlog.is_empty() || !self.ring.has_room() {
                return Ok(());
            }
        }
    }

    /// Reaps kernel completions and moves everything forward that can.
    /// With `submit`, new operations are submitted at once; without, they
    /// are only put into the ring (the caller submits them with its wait).
    fn progress(&mut self, submit: bool) -> Result<()> {
        // Operations pushed by the caller wait for its submit (or wait);
        // only those this call creates are submitted here.
        let before = self.backlog.len();
        let mut reaped = std::mem::take(&mut self.reaped);
        self.ring.reap(|ud, res| reaped.push((ud, res)));
        for &(ud, res) in &reaped {
            self.on_kernel_completion(ud, res);
        }
        reaped.clear();
        self.reaped = reaped;
        if !self.parked.is_empty() {
            self.run_parked();
        }
        if !self.flushes.is_empty() {
            self.run_flushes();
        }
        // A backlog left by a full ring must not wait for the caller.
        if self.backlog.len() > before || (self.stalled && !self.backlog.is_empty()) {
            if submit {
                self.submit_all()?;
            } else {
                self.fill_ring();
            }
        }
        Ok(())
    }
}

impl BlockQueue for UringQueue {
    unsafe fn push(&mut self, request: Request, user_data: u64) -> Result<()> {
        let (kind, offset, len, bufs) = match request {
            Request::Read { offset, bufs } => (Kind::Read, offset, 0, bufs),
            Request::Write { offset, bufs } => (Kind::Write, offset, 0, bufs),
            Request::Flush => (Kind::Flush, 0, 0, Vec::new()),
            Request::Discard { offset, len } => (Kind::Discard, offset, len, Vec::new()),
            Request::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => (Kind::WriteZeroes { may_unmap }, offset, len, Vec::new()),
        };
        // SAFETY: the caller promises (push contract) that the buffers are
        // valid and ours until this request's completion is popped; the
        // slot keeps them exactly that long.
        let bufs = unsafe { GuestBufs::new(bufs) };
        let len = if matches!(kind, Kind::Read | Kind::Write) {
            bufs.len()
        } else {
            len
        };
        if kind != Kind::Flush {
            if kind != Kind::Read && self.disk.read_only {
                return Err(Error::ReadOnly);
            }
            match offset.checked_add(len) {
                Some(end) if end <= self.disk.size => {}
                _ => {
                    return Err(Error::OutOfRange {
                        offset,
                        len,
                        size: self.disk.size,
                    })
                }
            }
        }
        let Some(slot) = self.free.pop() else {
            return Err(Error::QueueFull {
                depth: self.slots.len() as u32,
            });
        };
        let write_seq = if matches!(kind, Kind::Read | Kind::Flush) {
            None
        } else {
            let seq = self.next_write_seq;
            self.next_write_seq += 1;
            self.outstanding_writes.insert(seq);
            Some(seq)
        };
        let s = &mut self.slots[slot as usize];
        s.busy = true;
        s.user_data = user_data;
        s.kind = Some(kind);
        s.offset = offset;
        s.len = len;
        s.bufs = bufs;
        s.pending = 0;
        s.error = None;
        s.write_seq = write_seq;
        s.flush_before = self.next_write_seq;
        s.synced = false;
        self.notify_pending = true;
        if kind == Kind::Flush {
            self.flushes.push_back(slot);
            self.run_flushes();
            return Ok(());
        }
        if len == 0 {
            self.complete(slot, Ok(0));
            return Ok(());
        }
        // A write may not overtake a parked one it overlaps.
        let overlaps_parked = kind != Kind::Read
            && self.parked.iter().any(|&p| {
                let o = &self.slots[p as usize];
                o.offset < offset + len && offset < o.offset + o.len
            });
        if overlaps_parked {
            self.parked.push_back(slot);
            return Ok(());
        }
        self.start_or_park(slot);
        Ok(())
    }

    fn submit(&mut self) -> Result<()> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        self.submit_all()?;
        if self.notify_pending {
            self.notify_pending = false;
            if !self.ready.is_empty() {
                self.ring.notify();
            }
        }
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        if self.ready.is_empty() {
            if let Err(e) = self.progress(true) {
                // Reported by the next submit or wait.
                self.deferred_error.get_or_insert(e);
            }
        }
        self.ready.pop_front()
    }

    fn wait(&mut self) -> Result<()> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        loop {
            // Pushed requests are submitted by the same system call that
            // waits (a caller need not call submit first).
            self.fill_ring();
            self.progress(false)?;
            if !self.ready.is_empty() {
                if self.ring.has_unsubmitted() {
                    self.ring.submit(0)?;
                }
                return Ok(());
            }
            if self.ring.in_kernel() == 0 && self.backlog.is_empty() {
                if self.parked.is_empty() && self.flushes.is_empty() {
                    return Ok(());
                }
                // Nothing of ours is in the kernel: parked requests can
                // now block in the qcow2 library if they must (for a plan
                // another thread's queue holds).
                self.may_block = true;
                self.run_parked();
                self.may_block = false;
                self.run_flushes();
                self.submit_all()?;
                if !self.ready.is_empty() || self.ring.in_kernel() > 0 {
                    continue;
                }
                if self.parked.is_empty() && self.flushes.is_empty() {
                    return Ok(());
                }
            }
            let spin = !self.poll.spin().is_zero() && self.worth_polling();
            if spin {
                // Spin on the ring first: a completion that comes soon
                // saves the sleep and the wake-up.
                if self.ring.has_unsubmitted() {
                    self.ring.submit(0)?;
                }
                let ring = &mut self.ring;
                if self.poll.run(|| ring.completions_ready()) {
                    continue;
                }
            }
            let reads_only = self.worth_polling();
            let sleep = std::time::Instant::now();
            self.ring.submit(1)?;
            if reads_only {
                self.poll.slept(sleep.elapsed());
            }
        }
    }

    fn in_flight(&self) -> u32 {
        (self.slots.len() - self.free.len()) as u32
    }

    fn completions_ready(&mut self) -> bool {
        !self.ready.is_empty() || self.ring.completions_ready()
    }

    fn worth_polling(&self) -> bool {
        self.ring.in_kernel() > 0 && self.reads_in_kernel == self.ring.in_kernel()
    }

    unsafe fn register_memory(&mut self, ranges: &[IoBuf]) -> bool {
        // SAFETY: the caller keeps the ranges valid until the queue, and
        // so the ring, is dropped.
        unsafe { self.ring.register_buffers(ranges) }
    }

    fn completion_fd(&self) -> RawFd {
        self.ring.completion_fd()
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still write into slot memory: wait for every
        // operation it holds before anything is freed.
        self.backlog.clear();
        self.parked.clear();
        self.flushes.clear();
        while self.ring.in_kernel() > 0 {
            if self.ring.submit(1).is_err() {
                // Cannot wait: leak the memory rather than free it under
                // the kernel's feet.
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            let mut reaped = Vec::new();
            self.ring.reap(|ud, res| reaped.push((ud, res)));
            for (ud, res) in reaped {
                self.on_kernel_completion(ud, res);
            }
            self.backlog.clear();
        }
        if let Layout::Qcow2(q) = &self.disk.layout {
            for s in &mut self.slots {
                if let Some(plan) = s.plan.take() {
                    q.abort_write(plan);
                    self.disk.wakers.plan_released(&self.waker);
                }
            }
        }
        self.disk.wakers.unregister(&self.waker);
    }
}
