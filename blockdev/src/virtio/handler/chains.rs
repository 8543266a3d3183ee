//! The chain side of a queue handler: starting a parsed chain (alone or
//! in the batch's merge group), pushing its requests while the backend
//! has room (or queueing it to wait), and returning it to the guest with
//! its status once every request is done.

use super::super::chain_merge::{Ready, MERGED_CHAINS};
use super::super::defs::{STATUS_IOERR, STATUS_OK};
use super::super::request::{Action, ParsedChain};
use super::super::stats::StatKind;
use super::{queue_error, QueueHandler};
use crate::disk::Request;
use crate::Result;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestAddressSpace};

impl<A: GuestAddressSpace> QueueHandler<A> {
    pub(super) fn start(&mut self, parsed: ParsedChain) -> Result<()> {
        let ParsedChain {
            head,
            status,
            action,
        } = parsed;
        let Some(status_addr) = status else {
            self.refused += 1;
            return self.add_used(head, 0);
        };
        match action {
            Action::Complete { status, used_len } => {
                if status != STATUS_OK {
                    self.refused += 1;
                }
                self.finish(head, status_addr, status, used_len)
            }
            Action::Submit { used_len } => {
                let requests = &mut self.scratch.requests;
                let transfer = match requests.as_slice() {
                    [Request::Read { bufs, .. }] | [Request::Write { bufs, .. }] => {
                        Some(bufs.iter().map(|b| b.len as u64).sum())
                    }
                    _ => None,
                };
                let counted = match requests.as_slice() {
                    [Request::Read { .. }] => Some(StatKind::Read),
                    [Request::Write { .. }] => Some(StatKind::Write),
                    [Request::Flush] => Some(StatKind::Flush),
                    _ => None,
                };
                let changes = changed_span(requests);
                if let Some((first, end)) = changes {
                    self.writes.mark(first, end - first);
                }
                let Some(slot) = self.free_slots.pop() else {
                    // Checked before popping; cannot happen.
                    requests.clear();
                    return self.finish(head, status_addr, STATUS_IOERR, 1);
                };
                // A lone read or write may join the batch's merge group
                // (while the backend has room for the group's request).
                let mergeable = requests.len() == 1
                    && transfer.is_some()
                    && self.waiting.is_empty()
                    && self.disk.in_flight() < self.depth;
                let chain = &mut self.chains[slot];
                chain.active = true;
                chain.head = head;
                chain.status_addr = status_addr;
                chain.used_len = used_len;
                chain.status = STATUS_OK;
                chain.transfer = transfer;
                chain.outstanding = 0;
                chain.counted = counted.map(|kind| (kind, Instant::now()));
                chain.changes = changes;
                if mergeable {
                    if let Some(request) = requests.pop() {
                        chain.outstanding = 1;
                        let Some(request) = self.merger.offer(slot, request) else {
                            return Ok(());
                        };
                        self.push_open_group()?;
                        let Some(request) = self.merger.open(slot, request) else {
                            return Ok(());
                        };
                        let chain = &mut self.chains[slot];
                        chain.outstanding = 0;
                        chain.pending.push_back(request);
                        return self.push_or_wait(slot);
                    }
                }
                chain.pending.extend(requests.drain(..));
                // Whatever the batch merged so far goes first.
                self.push_open_group()?;
                self.push_or_wait(slot)
            }
        }
    }

    /// Push a chain's pending requests, or queue it to wait for room
    /// behind the chains already waiting.
    pub(super) fn push_or_wait(&mut self, slot: usize) -> Result<()> {
        if !self.waiting.is_empty() || !self.push_pending(slot)? {
            self.waiting.push_back(slot);
        }
        Ok(())
    }

    /// Push a chain's pending requests until the backend is full; whether
    /// none is left waiting.
    pub(super) fn push_pending(&mut self, slot: usize) -> Result<bool> {
        let Some(chain) = self.chains.get_mut(slot).filter(|c| c.active) else {
            return Ok(true);
        };
        while !chain.pending.is_empty() {
            if self.disk.in_flight() >= self.depth {
                // Full: resumed from handle_completions once some finish.
                return Ok(false);
            }
            let Some(request) = chain.pending.pop_front() else {
                break;
            };
            // SAFETY: the buffers of `request` were built by the parser from
            // the host mappings of ranges `self.view` checked lie in guest
            // memory. The mappings stay alive until the kernel is done with
            // the buffers: the view holds a guard of that memory and is
            // dropped after `disk`, whose drop waits for the kernel. The
            // device never touches those buffers itself while the request is
            // in flight;
            // the guest may, as it may with any DMA, which concerns only
            // the guest's data.
            match unsafe { self.disk.push(request, slot as u64) } {
                Ok(()) => {
                    chain.outstanding += 1;
                    self.unsubmitted += 1;
                }
                // Refused at once (out of range, read-only, or full despite
                // the check above): the chain fails.
                Err(_) => chain.status = STATUS_IOERR,
            }
        }
        if chain.outstanding == 0 {
            self.complete_slot(slot)?;
        }
        Ok(true)
    }

    /// Push the batch's merge group, if one is open: a group of one as the
    /// chain's own request, a larger one as one merged request.
    pub(super) fn push_open_group(&mut self) -> Result<()> {
        let Some(ready) = self.merger.take_open() else {
            return Ok(());
        };
        let (user_data, request, group) = match ready {
            Ready::Single { slot, request } => (slot as u64, request, None),
            Ready::Merged { group, request } => {
                (MERGED_CHAINS | group as u64, request, Some(group))
            }
        };
        // SAFETY: as in `push_pending`: the buffers are the group's chains'
        // buffers, built by the parser from ranges `self.view` checked.
        match unsafe { self.disk.push(request, user_data) } {
            Ok(()) => {
                self.unsubmitted += 1;
                Ok(())
            }
            // Refused at once: each chain runs alone (and fails alone).
            Err(_) => match group {
                Some(group) => self.complete_group(group, None),
                None => {
                    let slot = user_data as usize;
                    if let Some(chain) = self.chains.get_mut(slot) {
                        chain.status = STATUS_IOERR;
                        chain.outstanding = 0;
                    }
                    self.complete_slot(slot)
                }
            },
        }
    }

    /// The merged request of `group` finished having moved `transferred`
    /// bytes (`None`: it failed or was refused). If it moved them all, its
    /// chains complete; otherwise each runs again alone, so that only the
    /// requests that meet the error fail.
    pub(super) fn complete_group(&mut self, group: usize, transferred: Option<u64>) -> Result<()> {
        let Some((bytes, members)) = self.merger.finish(group) else {
            return Ok(());
        };
        let ok = transferred == Some(bytes);
        let mut result = Ok(());
        for member in &members {
            let slot = member.slot;
            let alone = if ok {
                None
            } else {
                self.merger.member_request(group, member)
            };
            let Some(chain) = self.chains.get_mut(slot).filter(|c| c.active) else {
                continue;
            };
            chain.outstanding = chain.outstanding.saturating_sub(1);
            match alone {
                Some(request) => {
                    chain.pending.push_back(request);
                    result = result.and(self.push_or_wait(slot));
                }
                None => {
                    if !ok {
                        chain.status = STATUS_IOERR;
                    }
                    if chain.outstanding == 0 && chain.pending.is_empty() {
                        result = result.and(self.complete_slot(slot));
                    }
                }
            }
        }
        self.merger.release(group, members);
        result
    }

    pub(super) fn complete_slot(&mut self, slot: usize) -> Result<()> {
        let chain = &mut self.chains[slot];
        if chain.active {
            chain.active = false;
            chain.pending.clear();
            let (head, status_addr, status, used_len) =
                (chain.head, chain.status_addr, chain.status, chain.used_len);
            if let Some((first, end)) = chain.changes.take() {
                self.writes.mark(first, end - first);
            }
            if let Some((kind, started)) = chain.counted.take() {
                let bytes = chain.transfer.unwrap_or(0);
                self.stats.record(kind, bytes, started.elapsed());
            }
            self.free_slots.push(slot);
            self.finish(head, status_addr, status, used_len)?;
        }
        Ok(())
    }

    /// Write the status byte and return the chain.
    pub(super) fn finish(
        &mut self,
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        used_len: u32,
    ) -> Result<()> {
        // The parser checked the status byte is guest memory.
        let used_len = match self.view.write_u8(status_addr, status) {
            true if status == STATUS_OK => used_len,
            true => 1,
            false => 0,
        };
        self.add_used(head, used_len)
    }

    pub(super) fn add_used(&mut self, head: u16, used_len: u32) -> Result<()> {
        match self.ring.add_used(&self.view, head, used_len) {
            Ok(()) => {
                self.interrupt.note_used();
                Ok(())
            }
            // A head index past the queue came from the guest: nothing to return.
            Err(virtio_queue::Error::InvalidDescriptorIndex) => Ok(()),
            Err(source) => Err(queue_error("add to the used ring", source)),
        }
    }
}

/// The disk bytes a chain's requests change (from the first to the end of
/// the last), `None` when it only reads or flushes.
fn changed_span(requests: &[Request]) -> Option<(u64, u64)> {
    requests
        .iter()
        .filter_map(|request| match request {
            Request::Write { offset, bufs } => Some((
                *offset,
                offset.saturating_add(bufs.iter().map(|b| b.len as u64).sum()),
            )),
            Request::Discard { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                Some((*offset, offset.saturating_add(*len)))
            }
            Request::Read { .. } | Request::Flush => None,
        })
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
}
