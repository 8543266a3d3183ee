//! Merging of sequential guest requests into one backend request, as
//! QEMU's virtio-blk merges a batch of requests it pops
//! (`virtio_blk_submit_multireq`): reads (or writes) whose disk ranges
//! follow one another become a single read (or write) over all their
//! buffers, so the backend maps and tracks one request instead of many.
//!
//! The handler feeds every chain that is one read or write to
//! [`ChainMerger::offer`] while it pops a batch, and calls
//! [`ChainMerger::take_open`] before it pushes anything else and when the
//! batch ends, so requests reach the backend in the order the guest made
//! them available. A group of one is pushed as the plain request it was.
//!
//! When a merged request fails or comes up short, each of its chains runs
//! again alone ([`ChainMerger::member_request`]), so that an error reaches
//! only the requests that meet it (QEMU fails the whole merged batch).
//! Reading or writing the same bytes twice is harmless.

use std::ops::Range;

use crate::disk::{IoBuf, Request};

/// User data bit of a merged backend request (a chain slot's never has it).
pub(crate) const MERGED_CHAINS: u64 = 1 << 63;

/// Most chains one merged request serves (QEMU's VIRTIO_BLK_MAX_MERGE_REQS).
const MAX_MERGE_CHAINS: usize = 32;
/// Most bytes one merged request moves.
const MAX_MERGE_BYTES: u64 = 128 << 10;
/// Most buffers one merged request takes (the kernel's UIO_MAXIOV).
const MAX_MERGE_BUFS: usize = 1024;

/// One chain of a merged request.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The chain's slot in the handler.
    pub slot: usize,
    offset: u64,
    /// Its buffers among the group's.
    bufs: Range<usize>,
}

/// Chains merged (or being merged) into one request.
#[derive(Debug, Default)]
struct Group {
    write: bool,
    offset: u64,
    bytes: u64,
    /// The first chain's request until a second joins.
    first: Option<Request>,
    /// Every member's buffers, in order (kept to run members alone).
    bufs: Vec<IoBuf>,
    members: Vec<Member>,
}

/// What [`ChainMerger::take_open`] hands back to push.
#[derive(Debug)]
pub(crate) enum Ready {
    /// One chain: push its request as it was, under its slot.
    Single { slot: usize, request: Request },
    /// Several chains: push `request` under `MERGED_CHAINS | group`.
    Merged { group: usize, request: Request },
}

/// Merge groups, reused (with their vectors) from one to the next.
#[derive(Debug, Default)]
pub(crate) struct ChainMerger {
    groups: Vec<Group>,
    free: Vec<usize>,
    /// The group being built.
    open: Option<usize>,
}

fn into_bufs(request: Request) -> Vec<IoBuf> {
    match request {
        Request::Read { bufs, .. } | Request::Write { bufs, .. } => bufs,
        _ => Vec::new(),
    }
}

fn nbufs_of(request: &Request) -> usize {
    rw_range(request).map_or(0, |(_, _, _, n)| n)
}

fn rw_range(request: &Request) -> Option<(bool, u64, u64, usize)> {
    let (write, offset, bufs) = match request {
        Request::Read { offset, bufs } => (false, *offset, bufs),
        Request::Write { offset, bufs } => (true, *offset, bufs),
        _ => return None,
    };
    let len = bufs.iter().map(|b| b.len as u64).sum();
    Some((write, offset, len, bufs.len()))
}

impl ChainMerger {
    /// Take `request` (chain `slot`'s only request) into the open group if
    /// it continues it; otherwise hand it back, and the caller pushes the
    /// open group ([`ChainMerger::take_open`]) and then calls
    /// [`ChainMerger::open`] with it.
    pub(crate) fn offer(&mut self, slot: usize, request: Request) -> Option<Request> {
        let Some((write, offset, len, nbufs)) = rw_range(&request) else {
            return Some(request);
        };
        let Some(index) = self.open else {
            return Some(request);
        };
        let group = &mut self.groups[index];
        // The last member's buffers end where the group's do.
        let group_bufs = group.members.last().map_or(0, |m| m.bufs.end);
        let continues = group.write == write
            && group.offset.checked_add(group.bytes) == Some(offset)
            && group.members.len() < MAX_MERGE_CHAINS
            && group.bytes + len <= MAX_MERGE_BYTES
            && group_bufs + nbufs <= MAX_MERGE_BUFS;
        if !continues {
            return Some(request);
        }
        if let Some(first) = group.first.take() {
            group.bufs.extend_from_slice(&into_bufs(first));
        }
        let start = group.bufs.len();
        group.bufs.extend_from_slice(&into_bufs(request));
        group.bytes += len;
        group.members.push(Member {
            slot,
            offset,
            bufs: start..group.bufs.len(),
        });
        None
    }

    /// Start a group with chain `slot`'s only request, if it is a read or
    /// a write (the open group must have been taken); hands back any other.
    pub(crate) fn open(&mut self, slot: usize, request: Request) -> Option<Request> {
        let Some((write, offset, len, _)) = rw_range(&request) else {
            return Some(request);
        };
        if len > MAX_MERGE_BYTES || self.open.is_some() {
            return Some(request);
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.groups.push(Group::default());
            self.groups.len() - 1
        });
        let group = &mut self.groups[index];
        group.write = write;
        group.offset = offset;
        group.bytes = len;
        group.bufs.clear();
        group.members.clear();
        group.members.push(Member {
            slot,
            offset,
            bufs: 0..nbufs_of(&request),
        });
        group.first = Some(request);
        self.open = Some(index);
        None
    }

    /// The open group, ready to push.
    pub(crate) fn take_open(&mut self) -> Option<Ready> {
        let index = self.open.take()?;
        let group = &mut self.groups[index];
        if let Some(request) = group.first.take() {
            let slot = group.members.first().map_or(0, |m| m.slot);
            group.members.clear();
            self.free.push(index);
            return Some(Ready::Single { slot, request });
        }
        let bufs = group.bufs.clone();
        let request = if group.write {
            Request::Write {
                offset: group.offset,
                bufs,
            }
        } else {
            Request::Read {
                offset: group.offset,
                bufs,
            }
        };
        Some(Ready::Merged {
            group: index,
            request,
        })
    }

    /// The merged request of `group` is done (or was refused): the bytes
    /// it had to move and its members, for the caller to complete. Give
    /// them back with [`ChainMerger::release`].
    pub(crate) fn finish(&mut self, group: usize) -> Option<(u64, Vec<Member>)> {
        let group_state = self.groups.get_mut(group)?;
        if group_state.members.is_empty() {
            return None;
        }
        Some((group_state.bytes, std::mem::take(&mut group_state.members)))
    }

    /// `member`'s own request, to run it alone (before `release`).
    pub(crate) fn member_request(&self, group: usize, member: &Member) -> Option<Request> {
        let group_state = self.groups.get(group)?;
        let bufs = group_state.bufs.get(member.bufs.clone())?.to_vec();
        Some(if group_state.write {
            Request::Write {
                offset: member.offset,
                bufs,
            }
        } else {
            Request::Read {
                offset: member.offset,
                bufs,
            }
        })
    }

    /// Return `group` to the pool with its member vector (emptied),
    /// keeping the vector's room.
    pub(crate) fn release(&mut self, group: usize, mut members: Vec<Member>) {
        if let Some(group_state) = self.groups.get_mut(group) {
            members.clear();
            group_state.members = members;
            group_state.bufs.clear();
            self.free.push(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(offset: u64, len: usize) -> Request {
        Request::Read {
            offset,
            bufs: vec![IoBuf {
                addr: std::ptr::null_mut(),
                len,
            }],
        }
    }

    fn write(offset: u64, len: usize) -> Request {
        Request::Write {
            offset,
            bufs: vec![IoBuf {
                addr: std::ptr::null_mut(),
                len,
            }],
        }
    }

    #[test]
    fn sequential_reads_merge_and_a_lone_one_stays_itself() {
        let mut merger = ChainMerger::default();
        assert!(merger.open(0, read(0, 4096)).is_none());
        assert!(merger.offer(1, read(4096, 4096)).is_none());
        assert!(merger.offer(2, read(8192, 512)).is_none());
        // Not contiguous, then another kind: handed back.
        let back = merger.offer(3, read(4096, 4096)).expect("a gap");
        assert!(merger.offer(3, write(8704, 4096)).is_some());
        let Some(Ready::Merged { group, request }) = merger.take_open() else {
            panic!("three reads merge");
        };
        let Request::Read { offset, bufs } = request else {
            panic!("a read");
        };
        assert_eq!((offset, bufs.len()), (0, 3));
        let (bytes, members) = merger.finish(group).expect("in flight");
        let slots: Vec<usize> = members.iter().map(|m| m.slot).collect();
        assert_eq!((bytes, slots.as_slice()), (8704, &[0, 1, 2][..]));
        // Run alone, each member is its own request again.
        match merger.member_request(group, &members[2]) {
            Some(Request::Read { offset: 8192, bufs }) => assert_eq!(bufs[0].len, 512),
            other => panic!("member 2 alone: {other:?}"),
        }
        merger.release(group, members);
        assert!(merger.open(3, back).is_none());
        match merger.take_open() {
            Some(Ready::Single {
                slot: 3,
                request: Request::Read { offset: 4096, .. },
            }) => {}
            other => panic!("a group of one is the plain request: {other:?}"),
        }
        assert!(merger.take_open().is_none());
    }

    #[test]
    fn groups_stop_at_their_limits_and_flushes_never_merge() {
        let mut merger = ChainMerger::default();
        assert!(merger.open(0, Request::Flush).is_some());
        assert!(merger.open(0, write(0, 4096)).is_none());
        for slot in 1..MAX_MERGE_CHAINS {
            assert!(merger
                .offer(slot, write(slot as u64 * 4096, 4096))
                .is_none());
        }
        assert!(
            merger
                .offer(99, write(MAX_MERGE_CHAINS as u64 * 4096, 4096))
                .is_some(),
            "32 chains at most"
        );
        assert!(matches!(merger.take_open(), Some(Ready::Merged { .. })));
        assert!(merger.open(0, read(0, 64 << 10)).is_none());
        assert!(merger.offer(1, read(64 << 10, 64 << 10)).is_none());
        assert!(
            merger.offer(2, read(128 << 10, 512)).is_some(),
            "128 KiB at most"
        );
        assert!(merger.open(5, read(0, 4096)).is_some(), "one open group");
        assert!(merger.offer(1, Request::Flush).is_some());
        assert!(matches!(merger.take_open(), Some(Ready::Merged { .. })));
        assert!(
            merger.open(1, read(0, 256 << 10)).is_some(),
            "too big to start a group"
        );
        assert!(merger.take_open().is_none());
    }
}
