//! Merging: reads (or writes) of several requests that follow one another
//! in a file become one kernel operation, as QEMU's virtio-blk merges a
//! guest's sequential requests. A virtual or real disk serves one 128 KiB
//! request in far less time than 32 of 4 KiB, and the page cache copies it
//! in one go.
//!
//! Only whole operations waiting next to each other in the backlog merge,
//! up to [`MAX_MERGE_PARTS`] of them and [`MAX_MERGE_BYTES`]. When a merged
//! operation completes in full, each part completes as if it had run
//! alone; when it fails or comes up short, each part runs again alone
//! (reading or writing the same bytes twice is harmless), so errors and
//! short transfers are still reported per request.

use super::{OpKind, OpState, UringQueue, MAX_IOVECS};
use crate::backend::uring::Op;

/// User data bit of merged operations (a slot's never has it: slots are
/// fewer than 2^31).
pub(super) const MERGED: u64 = 1 << 63;

/// Most operations one merged operation covers.
const MAX_MERGE_PARTS: usize = 32;

/// Most bytes one merged operation moves.
const MAX_MERGE_BYTES: u64 = 1 << 20;

/// One merged operation in flight.
#[derive(Debug, Default)]
struct MergedOp {
    /// The parts' user data (slot << 32 | operation index), in file order.
    parts: Vec<u64>,
    /// The parts' iovecs, concatenated; the kernel reads them until the
    /// operation completes, so the vector is not touched meanwhile.
    iovs: Vec<libc::iovec>,
    len: u64,
}

/// Merged operations, reused (with their vectors) from one to the next.
#[derive(Debug, Default)]
pub(super) struct MergePool {
    ops: Vec<MergedOp>,
    free: Vec<u32>,
}

// SAFETY: the iovecs point into buffers the queue owns or holds under the
// push contract; the queue is used from one thread at a time.
unsafe impl Send for MergePool {}

impl MergePool {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.ops.push(MergedOp::default());
            (self.ops.len() - 1) as u32
        })
    }
}

fn split(user_data: u64) -> (usize, usize) {
    (
        (user_data >> 32) as usize,
        (user_data & 0xffff_ffff) as usize,
    )
}

fn mergeable(o: &OpState) -> bool {
    matches!(o.kind, OpKind::Read | OpKind::Write) && o.remaining == o.len && !o.unmerged
}

impl UringQueue {
    fn op_at(&self, user_data: u64) -> &OpState {
        let (slot, index) = split(user_data);
        &self.slots[slot].ops[index]
    }

    /// Pushes the operation at the front of the backlog merged with those
    /// after it that continue it. `None` when it merges with nothing (the
    /// caller pushes it alone); `Some(false)` when the ring is full.
    pub(super) fn push_merged(&mut self) -> Option<bool> {
        let first = *self.op_at(*self.backlog.front()?);
        if !mergeable(&first) {
            return None;
        }
        let (mut parts, mut end, mut iovs, mut len) =
            (1, first.host_offset + first.len, first.iov_count, first.len);
        while parts < MAX_MERGE_PARTS && parts < self.backlog.len() {
            let o = self.op_at(self.backlog[parts]);
            if !mergeable(o)
                || o.kind != first.kind
                || o.file != first.file
                || o.host_offset != end
                || iovs + o.iov_count > MAX_IOVECS
                || len + o.len > MAX_MERGE_BYTES
            {
                break;
            }
            end += o.len;
            iovs += o.iov_count;
            len += o.len;
            parts += 1;
        }
        if parts < 2 {
            return None;
        }
        let id = self.merges.take();
        let mut m = std::mem::take(&mut self.merges.ops[id as usize]);
        m.parts.clear();
        m.iovs.clear();
        m.len = len;
        for &user_data in self.backlog.iter().take(parts) {
            let (slot, index) = split(user_data);
            let s = &self.slots[slot];
            let o = &s.ops[index];
            s.iovs.copy_to(o.iov_start, o.iov_count, &mut m.iovs);
            m.parts.push(user_data);
        }
        let (iov, iov_count) = (m.iovs.as_ptr(), m.iovs.len() as u32);
        let op = if first.kind == OpKind::Read {
            Op::Read {
                file: first.file,
                offset: first.host_offset,
                iov,
                iov_count,
            }
        } else {
            Op::Write {
                file: first.file,
                offset: first.host_offset,
                iov,
                iov_count,
            }
        };
        self.merges.ops[id as usize] = m;
        // SAFETY: the iovecs live in the pool's entry `id`, which is not
        // touched until this operation's completion is reaped; they point
        // into the parts' bounce buffers or caller buffers, which stay
        // valid until each part's request completes (after this operation
        // completes), as for an unmerged operation (see fill_ring).
        if !unsafe { self.ring.push(&op, MERGED | u64::from(id)) } {
            self.merges.free.push(id);
            return Some(false);
        }
        self.backlog.drain(..parts);
        if first.kind == OpKind::Read {
            self.reads_in_kernel += 1;
        }
        Some(true)
    }

    /// The kind of the kernel operation `user_data` names (merged or not).
    pub(super) fn kernel_op_kind(&self, user_data: u64) -> OpKind {
        let user_data = if user_data & MERGED != 0 {
            self.merges.ops[(user_data & 0xffff_ffff) as usize].parts[0]
        } else {
            user_data
        };
        self.op_at(user_data).kind
    }

    /// The merged operation `id` completed with `result`.
    pub(super) fn on_merged_completion(&mut self, id: u32, result: i32) {
        let m = std::mem::take(&mut self.merges.ops[id as usize]);
        if u64::try_from(result).is_ok_and(|n| n == m.len) {
            for &user_data in &m.parts {
                let part = self.op_at(user_data).len;
                // Parts are at most MAX_MERGE_BYTES.
                self.on_completion(user_data, part as i32);
            }
        } else {
            // Each part alone, first part first.
            for &user_data in m.parts.iter().rev() {
                let (slot, index) = split(user_data);
                self.slots[slot].ops[index].unmerged = true;
                self.backlog.push_front(user_data);
            }
        }
        self.merges.ops[id as usize] = m;
        self.merges.free.push(id);
    }
}
