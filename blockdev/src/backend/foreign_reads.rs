//! Reads of a foreign disk's plain data through io_uring, straight into
//! the guest's buffers: where the format maps a guest range to bytes as
//! they are in one of its files (a vmdk's flat extents and allocated
//! grains, a vhdx, vpc or vdi allocated block, a qed allocated cluster),
//! the read goes to the kernel as the qcow2 path's do. Everything else of
//! the request (holes, zeros, compressed grains, a backing file's data)
//! is read through the format on the queue's thread, as before.
//!
//! Only reads take this path: every write still goes through the format
//! synchronously, so a write (and the metadata it allocates) is done
//! before any later request starts, and a flush has no write in flight to
//! wait for. A foreign format never moves or frees a block while the disk
//! is open (no discard, no defragmentation), so a read in flight cannot
//! meet a block reused for something else.

use qcow::device::{Extent, ExtentKind, FileIndex};
use qcow::formats::ForeignImage;

use super::bufs::{GuestBufs, IoVecs};
use super::foreign::MAX_CHUNK;
use super::uring::{Op, Ring};
use crate::disk::Completion;
use crate::error::{Error, Result};

/// Most files of one image registered with a queue's ring (a vmdk with
/// more extent files reads the rest through the format).
const MAX_RING_FILES: u32 = 1024;

/// One operation of a read in the kernel.
#[derive(Debug, Clone, Copy)]
struct RingOp {
    /// First request byte it fills.
    rel: u64,
    /// Bytes it reads.
    len: u64,
}

/// A read with operations in the kernel.
struct PendingRead {
    user_data: u64,
    /// Guest offset of the request's first byte.
    offset: u64,
    bufs: GuestBufs,
    /// The operations' iovecs, kept (and not moved) until they complete.
    iovecs: IoVecs,
    ops: Vec<RingOp>,
    /// Operations still in the kernel.
    pending: u32,
    /// The first error met; the read completes with it once nothing of
    /// it is left in the kernel.
    error: Option<Error>,
}

/// Vectors one request's planning uses, kept between requests.
#[derive(Default)]
struct Scratch {
    /// The format's extents of the range being planned.
    extents: Vec<Extent>,
    /// Ring operations planned: (part, ring file, host offset).
    ops: Vec<(RingOp, u32, u64)>,
    /// Each operation's first iovec and iovec count.
    spans: Vec<(usize, u32)>,
    /// Completions reaped from the kernel: (user data, result).
    done: Vec<(u64, i32)>,
}

/// A foreign disk queue's ring and the reads it has in flight.
pub(super) struct RingReads {
    ring: Ring,
    /// The ring's file index of each of the image's files (by
    /// [`FileIndex`]); `None`: read through the format.
    files: Vec<Option<u32>>,
    reads: Vec<Option<PendingRead>>,
    free: Vec<u32>,
    /// Vectors of finished reads, kept for the next ones so that a read
    /// allocates nothing in the steady state.
    spare: Vec<(IoVecs, Vec<RingOp>)>,
    /// Scratch space of [`RingReads::start`] and [`RingReads::reap`],
    /// kept between requests.
    scratch: Scratch,
    /// Operations handed to the kernel since the queue opened.
    ring_ops: u64,
}

impl RingReads {
    /// A ring for reads of `image` with room for `depth` requests, or
    /// `None` when the image hands out no file (an encrypted volume) or
    /// the kernel refuses a ring: reads then all go through the format.
    pub fn new(image: &dyn ForeignImage, depth: u32) -> Option<RingReads> {
        let mut fds = Vec::new();
        let mut files = Vec::new();
        for index in 0..MAX_RING_FILES {
            let Some(file) = image.extent_file(FileIndex(index)) else {
                if index == 0 {
                    // Every other index is the layer's to skip; without
                    // its own file, nothing is read around it.
                    return None;
                }
                break;
            };
            let fd = file.storage.as_file().map(std::os::fd::AsRawFd::as_raw_fd);
            files.push(fd.map(|_| fds.len() as u32));
            fds.extend(fd);
        }
        if fds.is_empty() {
            return None;
        }
        let ring = Ring::new(depth.saturating_mul(4).max(8), &fds).ok()?;
        Some(RingReads {
            ring,
            files,
            reads: Vec::new(),
            free: Vec::new(),
            spare: Vec::new(),
            scratch: Scratch::default(),
            ring_ops: 0,
        })
    }

    /// Operations handed to the kernel since the queue opened.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn ring_ops(&self) -> u64 {
        self.ring_ops
    }

    /// Reads in flight.
    pub fn in_flight(&self) -> u32 {
        (self.reads.len() - self.free.len()) as u32
    }

    /// The eventfd the kernel signals on completions.
    pub fn completion_fd(&self) -> std::os::fd::RawFd {
        self.ring.completion_fd()
    }

    /// Wakes whoever waits on the completion fd (for requests that
    /// completed without the kernel).
    pub fn notify(&self) {
        self.ring.notify();
    }

    /// Starts reading guest bytes `offset..offset + bufs.len()` into
    /// `bufs`: plain data through the ring, the rest through `image` now.
    /// Returns the completion when nothing went to the kernel.
    pub fn start(
        &mut self,
        image: &dyn ForeignImage,
        offset: u64,
        bufs: GuestBufs,
        user_data: u64,
        bounce: &mut Vec<u8>,
    ) -> Option<Completion> {
        let len = bufs.len();
        let mut scratch = std::mem::take(&mut self.scratch);
        let planned = self.plan(image, offset, &bufs, bounce, &mut scratch);
        let completion = match planned {
            Err(e) => Some(Completion {
                user_data,
                result: Err(e),
            }),
            Ok(()) if scratch.ops.is_empty() => Some(Completion {
                user_data,
                result: Ok(len),
            }),
            Ok(()) => self.push_ops(image, offset, bufs, user_data, bounce, &mut scratch),
        };
        self.scratch = scratch;
        completion
    }

    /// Hands the planned operations of a read to the ring; returns the
    /// completion when none of them went to the kernel.
    fn push_ops(
        &mut self,
        image: &dyn ForeignImage,
        offset: u64,
        bufs: GuestBufs,
        user_data: u64,
        bounce: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Option<Completion> {
        let len = bufs.len();
        let (mut iovecs, mut ring_ops) = self.spare.pop().unwrap_or_default();
        iovecs.clear();
        ring_ops.clear();
        scratch.spans.clear();
        for (op, _, _) in &scratch.ops {
            let start = iovecs.len();
            let count = bufs.iovecs(op.rel, op.len, &mut iovecs);
            scratch.spans.push((start, count));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.reads.push(None);
                (self.reads.len() - 1) as u32
            }
        };
        let read = self.reads[slot as usize].insert(PendingRead {
            user_data,
            offset,
            bufs,
            iovecs,
            ops: ring_ops,
            pending: 0,
            error: None,
        });
        for (&(op, file, host_offset), &(start, count)) in scratch.ops.iter().zip(&scratch.spans) {
            let ring_op = Op::Read {
                file,
                offset: host_offset,
                iov: read.iovecs.ptr_at(start),
                iov_count: count,
            };
            let index = read.ops.len() as u64;
            // SAFETY: the iovecs live in `read`, which stays in its slot
            // (its vector never grows again) until every operation of it
            // is reaped; they describe the guest buffers the push contract
            // keeps valid and ours until the request's completion is
            // popped, which happens only after that.
            let pushed = unsafe { self.ring.push(&ring_op, u64::from(slot) << 32 | index) };
            read.ops.push(op);
            if pushed {
                read.pending += 1;
                self.ring_ops += 1;
            } else if let Err(e) = read_through(image, read, read.ops.len() - 1, 0, bounce) {
                // No room in the ring: this part through the format.
                read.error.get_or_insert(e);
            }
        }
        if read.pending == 0 {
            let done = self.reads[slot as usize].take().expect("slot just filled");
            self.free.push(slot);
            self.spare.push((done.iovecs, done.ops));
            return Some(Completion {
                user_data,
                result: done.error.map_or(Ok(len), Err),
            });
        }
        None
    }

    /// Splits a read into ring operations (part, ring file, host offset)
    /// and reads every other part through the format at once.
    fn plan(
        &self,
        image: &dyn ForeignImage,
        offset: u64,
        bufs: &GuestBufs,
        bounce: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let Scratch { extents, ops, .. } = scratch;
        ops.clear();
        let end = offset + bufs.len();
        let mut pos = offset;
        while pos < end {
            extents.clear();
            image.extents_for_io(pos, end - pos, extents)?;
            if extents.is_empty() {
                return Err(Error::OutOfRange {
                    offset: pos,
                    len: end - pos,
                    size: image.virtual_size(),
                });
            }
            for &e in extents.iter() {
                let Extent {
                    guest_offset,
                    len,
                    kind,
                } = e;
                let from = guest_offset.max(pos);
                let to = (guest_offset + len).min(end);
                if from >= to {
                    continue;
                }
                let part = RingOp {
                    rel: from - offset,
                    len: to - from,
                };
                match kind {
                    ExtentKind::Data { host_offset, file } => {
                        match self.files.get(file.0 as usize).copied().flatten() {
                            Some(ring_file) => {
                                ops.push((part, ring_file, host_offset + (from - guest_offset)))
                            }
                            None => read_part(image, bufs, offset, part, bounce)?,
                        }
                    }
                    // No backing file can show through a zero extent.
                    ExtentKind::Zero { .. } => bufs.fill_zero(part.rel, part.len),
                    _ => read_part(image, bufs, offset, part, bounce)?,
                }
                pos = to;
            }
        }
        Ok(())
    }

    /// Hands pushed operations to the kernel.
    pub fn submit(&mut self) -> Result<()> {
        if self.ring.has_unsubmitted() {
            self.ring.submit(0)?;
        }
        Ok(())
    }

    /// Waits until the kernel completes at least one operation.
    pub fn wait(&mut self) -> Result<()> {
        if self.in_flight() > 0 && !self.ring.completions_ready() {
            self.ring.submit(1)?;
        }
        Ok(())
    }

    /// Whether the kernel has posted completions not yet reaped.
    pub fn completions_ready(&mut self) -> bool {
        self.ring.completions_ready()
    }

    /// Takes the kernel's completions; reads whose operations are all
    /// done go to `ready`. A short read is finished through the format.
    pub fn reap(
        &mut self,
        image: &dyn ForeignImage,
        bounce: &mut Vec<u8>,
        ready: &mut std::collections::VecDeque<Completion>,
    ) {
        let mut done = std::mem::take(&mut self.scratch.done);
        done.clear();
        self.ring
            .reap(|user_data, result| done.push((user_data, result)));
        for &(user_data, result) in &done {
            let slot = (user_data >> 32) as usize;
            let index = (user_data & u64::from(u32::MAX)) as usize;
            let Some(read) = self.reads.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            read.pending -= 1;
            let want = read.ops[index].len;
            if result < 0 {
                read.error.get_or_insert(Error::Io {
                    op: "io_uring read",
                    source: std::io::Error::from_raw_os_error(-result),
                });
            } else if (result as u64) < want {
                if let Err(e) = read_through(image, read, index, result as u64, bounce) {
                    read.error.get_or_insert(e);
                }
            }
            if read.pending == 0 {
                let finished = self.reads[slot].take().expect("slot checked above");
                self.free.push(slot as u32);
                let len = finished.bufs.len();
                ready.push_back(Completion {
                    user_data: finished.user_data,
                    result: finished.error.map_or(Ok(len), Err),
                });
                self.spare.push((finished.iovecs, finished.ops));
            }
        }
        self.scratch.done = done;
    }
}

/// Reads operation `index` of `read` from byte `skip` on through the
/// format (a short read's rest, or an operation the ring had no room for).
fn read_through(
    image: &dyn ForeignImage,
    read: &PendingRead,
    index: usize,
    skip: u64,
    bounce: &mut Vec<u8>,
) -> Result<()> {
    let op = read.ops[index];
    let part = RingOp {
        rel: op.rel + skip,
        len: op.len - skip,
    };
    read_part(image, &read.bufs, read.offset, part, bounce)
}

/// Reads the request bytes `part` (of a request at guest `offset`) through
/// the format, in steps of at most [`MAX_CHUNK`] bytes.
fn read_part(
    image: &dyn ForeignImage,
    bufs: &GuestBufs,
    offset: u64,
    part: RingOp,
    bounce: &mut Vec<u8>,
) -> Result<()> {
    let mut done = 0u64;
    while done < part.len {
        let n = (part.len - done).min(MAX_CHUNK as u64) as usize;
        bounce.resize(n, 0);
        image.read_at(&mut bounce[..n], offset + part.rel + done)?;
        bufs.copy_from(part.rel + done, &bounce[..n]);
        done += n as u64;
    }
    Ok(())
}
