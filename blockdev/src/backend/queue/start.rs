//! Starting requests: turning a read, write, discard or write-zeroes
//! into kernel operations on host ranges (one per qcow2 extent or write
//! piece), zero-filling and synchronous reads where no kernel operation is
//! needed, and the page-cache fallback for I/O O_DIRECT cannot take.

use qcow::device::{chain_extents, Extent, ExtentKind, FileIndex};
use qcow::image::Qcow2;

use super::{Kind, OpKind, OpState, Slot, Start, UringQueue, MAX_IOVECS};
use crate::backend::host::{PUNCH_HOLE, ZERO_RANGE};
use crate::backend::Layout;
use crate::error::{Error, Result};

/// Page-cache writes up to this size are done on the queue's thread
/// instead of through the ring. A buffered write cannot be tried without
/// blocking on ext4 (pwritev2 with RWF_NOWAIT fails with EOPNOTSUPP), so
/// io_uring hands every one to an io-wq worker, and that worker runs the
/// writes to one file one after another: the hand-off and the wake-ups cost
/// more than the copy into the page cache itself (4 KiB writes at depth 32
/// ran at 0.8-0.9 of qemu-img's, which pays the same hand-off). Larger
/// writes stay on the ring so that they overlap with other requests.
const INLINE_BUFFERED_WRITE_MAX: u64 = 128 << 10;

impl UringQueue {
    /// Queues a kernel operation on the request bytes `rel..rel + len`.
    /// Misaligned direct I/O, over-long iovec lists and small page-cache
    /// writes are done at once through the page cache instead.
    pub(super) fn add_io(
        &mut self,
        slot: u32,
        kind: OpKind,
        file: u32,
        host_offset: u64,
        rel: u64,
        len: u64,
    ) {
        let dio = self.disk.host(file).dio();
        let align = dio.map_or(1, |d| u64::from(d.offset));
        let s = &mut self.slots[slot as usize];
        let sync = !(host_offset.is_multiple_of(align) && len.is_multiple_of(align))
            || (!s.use_bounce && s.bufs.iovecs_needed(rel, len) > MAX_IOVECS)
            || (kind == OpKind::Write && dio.is_none() && len <= INLINE_BUFFERED_WRITE_MAX);
        if sync {
            let result = self.sync_io(slot, kind, file, host_offset, rel, len);
            if let Err(e) = result {
                let s = &mut self.slots[slot as usize];
                s.error.get_or_insert(e);
            }
            return;
        }
        let iov_start = s.iovs.len();
        let iov_count = if s.use_bounce {
            let iov = s.bounce.iovec(rel, len);
            s.iovs.push(iov);
            1
        } else {
            s.bufs.iovecs(rel, len, &mut s.iovs)
        };
        let index = s.ops.len() as u64;
        s.ops.push(OpState {
            kind,
            file,
            host_offset,
            rel,
            len,
            remaining: len,
            iov_start,
            iov_count,
            unmerged: false,
        });
        s.pending += 1;
        self.backlog.push_back(u64::from(slot) << 32 | index);
    }

    /// Reads or writes request bytes synchronously through the page cache.
    pub(super) fn sync_io(
        &mut self,
        slot: u32,
        kind: OpKind,
        file: u32,
        host_offset: u64,
        rel: u64,
        len: u64,
    ) -> Result<()> {
        let host = self.disk.host(file);
        let s = &mut self.slots[slot as usize];
        if kind == OpKind::Write && !s.use_bounce {
            if let Some(data) = s.bufs.single_part(rel, len) {
                // SAFETY: the request's buffers stay valid until its
                // completion is popped (push contract), so for this call.
                return unsafe { host.write_buffered_from(data, len as usize, host_offset) };
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(len as usize, 0);
        let r = match kind {
            OpKind::Read => host.read_buffered(&mut scratch, host_offset).map(|()| {
                write_target(s, rel, &scratch);
            }),
            OpKind::Write => {
                read_source(s, rel, &mut scratch);
                host.write_buffered(&scratch, host_offset)
            }
            OpKind::Fdatasync | OpKind::Fallocate { .. } => Ok(()),
        };
        self.scratch = scratch;
        r
    }

    /// Starts a read: one operation for raw, one per host extent for qcow2.
    pub(super) fn start_read(&mut self, slot: u32) -> Result<()> {
        let (offset, len) = {
            let s = &self.slots[slot as usize];
            (s.offset, s.len)
        };
        let disk = self.disk.clone();
        match &disk.layout {
            Layout::Raw => self.add_io(slot, OpKind::Read, 0, offset, 0, len),
            Layout::Qcow2(q) if q.backing_image().is_some() => {
                self.start_chain_read(slot, q, offset, len)?
            }
            Layout::Qcow2(q) => {
                // One vector for every request of the queue.
                let mut extents = std::mem::take(&mut self.extents);
                let started = self.start_image_read(slot, q, offset, len, &mut extents);
                self.extents = extents;
                started?;
            }
        }
        Ok(())
    }

    /// Starts a read of a qcow2 image without a backing file, mapping it
    /// into `extents`.
    fn start_image_read(
        &mut self,
        slot: u32,
        q: &Qcow2,
        offset: u64,
        len: u64,
        extents: &mut Vec<Extent>,
    ) -> Result<()> {
        let mut pos = offset;
        while pos < offset + len {
            q.extents_into(pos, offset + len - pos, extents)?;
            if extents.is_empty() {
                return Err(self.out_of_range(pos, offset + len));
            }
            for e in extents.iter() {
                self.start_extent_read(slot, q, offset, 0, e)?;
                pos = e.guest_offset + e.len;
            }
        }
        Ok(())
    }

    /// Starts a read of a qcow2 image with a backing chain, mapped through
    /// the whole chain.
    fn start_chain_read(&mut self, slot: u32, q: &Qcow2, offset: u64, len: u64) -> Result<()> {
        let mut pos = offset;
        while pos < offset + len {
            let extents = chain_extents(q, pos, offset + len - pos)?;
            if extents.is_empty() {
                return Err(self.out_of_range(pos, offset + len));
            }
            for e in &extents {
                let extent = Extent {
                    guest_offset: e.guest_offset,
                    len: e.len,
                    kind: e.kind,
                };
                self.start_extent_read(slot, q, offset, e.depth, &extent)?;
                pos = e.guest_offset + e.len;
            }
        }
        Ok(())
    }

    /// Starts the part of a qcow2 read (of the request starting at guest
    /// `offset`) that extent `e` of chain layer `depth` (0: the image)
    /// covers: data in the image or in any backing file goes through the
    /// ring, zeros are filled in, and compressed clusters (or backing data
    /// kept in a backing image's own data file) are read through the
    /// library. An unallocated extent reads as zero: with a backing chain
    /// it means that no layer has the range.
    fn start_extent_read(
        &mut self,
        slot: u32,
        q: &Qcow2,
        offset: u64,
        depth: u32,
        e: &Extent,
    ) -> Result<()> {
        let rel = e.guest_offset - offset;
        let layers = self.disk.backing.len() as u32;
        match e.kind {
            // The ring's fixed files are the image file, its data file
            // (index 1, as `FileIndex::QCOW2_DATA_FILE`), then the backing
            // layers.
            ExtentKind::Data { host_offset, file } if depth == 0 => {
                self.add_io(slot, OpKind::Read, file.0, host_offset, rel, e.len)
            }
            ExtentKind::Data {
                host_offset,
                file: FileIndex::IMAGE,
            } if depth <= layers => {
                self.add_io(slot, OpKind::Read, depth + 1, host_offset, rel, e.len)
            }
            ExtentKind::Zero { .. } | ExtentKind::Unallocated { .. } => {
                zero_target(&mut self.slots[slot as usize], rel, e.len)
            }
            _ => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.resize(e.len as usize, 0);
                let r = if depth == 0 {
                    q.read_extent(e, &mut scratch)
                } else {
                    q.read_at(&mut scratch, e.guest_offset)
                };
                if r.is_ok() {
                    write_target(&mut self.slots[slot as usize], rel, &scratch);
                }
                self.scratch = scratch;
                r?;
            }
        }
        Ok(())
    }

    fn out_of_range(&self, pos: u64, end: u64) -> Error {
        Error::OutOfRange {
            offset: pos,
            len: end - pos,
            size: self.disk.size,
        }
    }

    /// Starts a write. qcow2 writes plan their clusters first, and park
    /// when another unfinished write holds them.
    pub(super) fn start_write(&mut self, slot: u32) -> Result<Start> {
        let (offset, len) = {
            let s = &self.slots[slot as usize];
            (s.offset, s.len)
        };
        let disk = self.disk.clone();
        match &disk.layout {
            Layout::Raw => {
                fill_bounce(&mut self.slots[slot as usize]);
                self.add_io(slot, OpKind::Write, 0, offset, 0, len);
            }
            Layout::Qcow2(q) => {
                let plan = match q.try_begin_write(offset, len)? {
                    Some(plan) => plan,
                    None if self.own_plans > 0 || !self.may_block => return Ok(Start::Parked),
                    // Within `wait`, holding nothing anyone could wait for:
                    // block until the other thread's queue lets go.
                    None => q.begin_write(offset, len)?,
                };
                self.own_plans += 1;
                fill_bounce(&mut self.slots[slot as usize]);
                for p in &plan.pieces {
                    self.add_io(
                        slot,
                        OpKind::Write,
                        p.file.0,
                        p.host_offset,
                        p.guest_offset - offset,
                        p.len,
                    );
                }
                self.slots[slot as usize].plan = Some(plan);
            }
        }
        Ok(Start::Started)
    }

    /// Starts a discard or write-zeroes.
    pub(super) fn start_zeroes(&mut self, slot: u32, kind: Kind) -> Result<Start> {
        let (offset, len) = {
            let s = &self.slots[slot as usize];
            (s.offset, s.len)
        };
        let disk = self.disk.clone();
        match &disk.layout {
            Layout::Raw => {
                let mode = match kind {
                    Kind::WriteZeroes { may_unmap: false } => ZERO_RANGE,
                    _ => PUNCH_HOLE,
                };
                let s = &mut self.slots[slot as usize];
                let index = s.ops.len() as u64;
                s.ops.push(OpState {
                    kind: OpKind::Fallocate { mode },
                    file: 0,
                    host_offset: offset,
                    rel: 0,
                    len,
                    remaining: len,
                    iov_start: 0,
                    iov_count: 0,
                    unmerged: false,
                });
                s.pending += 1;
                self.backlog.push_back(u64::from(slot) << 32 | index);
            }
            Layout::Qcow2(q) => {
                // These wait for in-flight clusters: only without plans of
                // our own, and only within `wait` (see start_write).
                if self.own_plans > 0 || (!self.may_block && q.range_in_flight(offset, len)) {
                    return Ok(Start::Parked);
                }
                match kind {
                    Kind::Discard => q.discard(offset, len)?,
                    Kind::WriteZeroes { may_unmap } => q.write_zeroes(offset, len, may_unmap)?,
                    _ => {}
                }
            }
        }
        Ok(Start::Started)
    }

    /// Starts the request in `slot`; completes it at once when it needs no
    /// kernel operation or fails.
    pub(super) fn start(&mut self, slot: u32) -> Start {
        let s = &mut self.slots[slot as usize];
        let kind = s.kind.expect("a started slot has a request");
        let direct_align = self.disk.dio_offset_align();
        let mem_align = self.disk.dio_mem_align();
        s.use_bounce = false;
        if matches!(kind, Kind::Read | Kind::Write)
            && direct_align > 1
            && !s.bufs.is_aligned(mem_align, direct_align)
        {
            s.use_bounce = true;
            s.bounce.resize(s.len as usize, mem_align as usize);
        }
        let result = match kind {
            Kind::Read => self.start_read(slot).map(|()| Start::Started),
            Kind::Write => self.start_write(slot),
            Kind::Discard | Kind::WriteZeroes { .. } => self.start_zeroes(slot, kind),
            Kind::Flush => unreachable!("flushes start in run_flushes"),
        };
        match result {
            Ok(Start::Parked) => Start::Parked,
            Ok(Start::Started) => {
                if self.slots[slot as usize].pending == 0 {
                    self.finish_slot(slot);
                }
                Start::Started
            }
            Err(e) => {
                let s = &mut self.slots[slot as usize];
                s.error.get_or_insert(e);
                if s.pending == 0 {
                    self.finish_slot(slot);
                }
                Start::Started
            }
        }
    }
}

/// Zero-fills request bytes `rel..rel + len` of a read.
pub(super) fn zero_target(s: &mut Slot, rel: u64, len: u64) {
    if s.use_bounce {
        s.bounce.as_mut_slice()[rel as usize..(rel + len) as usize].fill(0);
    } else {
        s.bufs.fill_zero(rel, len);
    }
}

/// Stores `data` at request byte `rel` of a read.
fn write_target(s: &mut Slot, rel: u64, data: &[u8]) {
    if s.use_bounce {
        s.bounce.as_mut_slice()[rel as usize..rel as usize + data.len()].copy_from_slice(data);
    } else {
        s.bufs.copy_from(rel, data);
    }
}

/// Loads request bytes `rel..rel + out.len()` of a write.
fn read_source(s: &Slot, rel: u64, out: &mut [u8]) {
    if s.use_bounce {
        out.copy_from_slice(&s.bounce.as_slice()[rel as usize..rel as usize + out.len()]);
    } else {
        s.bufs.copy_to(rel, out);
    }
}

/// Copies a write's data into its bounce buffer, if it uses one.
fn fill_bounce(s: &mut Slot) {
    if s.use_bounce {
        let len = s.len as usize;
        let mut bounce = std::mem::take(&mut s.bounce);
        s.bufs.copy_to(0, &mut bounce.as_mut_slice()[..len]);
        s.bounce = bounce;
    }
}
