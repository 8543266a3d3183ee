//! What the net device's three kinds of queue (receive, transmit,
//! control) share: the split ring over the guest memory view taken at
//! activation, the queue's eventfds, walking a chain into host buffers
//! with every descriptor checked, and the interrupt decision after a
//! batch (event idx or NO_INTERRUPT).
//!
//! An interrupt the device decides on is a flag the event loop reads with
//! `take_interrupt` (and raises the transport's irqfd for)
//! ([`InterruptDecision`], shared with virtio-blk); a queue has no
//! interrupt eventfd.
//!
//! Under event idx the driver is asked not to notify while the device
//! does not need it by moving `avail_event` out of its way
//! ([`SplitRing::park_avail_event`]), not only by leaving it behind: a
//! driver that tests `avail_idx > avail_event` rather than the crossing
//! (virtio-drivers does) otherwise notifies on every buffer it adds.

use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use super::super::handler::QueueEvents;
use super::super::interrupt::InterruptDecision;
use super::super::memory::GuestView;
use super::super::ring::{RingSetupError, SplitRing};
use super::defs::MAX_CHAIN_DESCRIPTORS;
use crate::disk::IoBuf;
use crate::{Error, Result};

/// Why a chain is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The walk ended with NEXT still set (bad index, loop, bad indirect
    /// table) or went past [`MAX_CHAIN_DESCRIPTORS`].
    Broken,
    /// A descriptor of the wrong direction for the queue.
    Direction,
    /// A buffer outside guest memory.
    OutsideMemory,
}

/// A chain's buffers: host buffers for the kernel, and the guest ranges
/// they came from (to write a field at a byte offset of the chain).
#[derive(Debug, Default)]
pub(crate) struct ChainBufs {
    pub head: u16,
    /// Bytes in the chain.
    pub len: usize,
    pub host: Vec<IoBuf>,
    pub guest: Vec<(u64, u32)>,
}

impl ChainBufs {
    fn clear(&mut self) {
        self.len = 0;
        self.host.clear();
        self.guest.clear();
    }
}

/// One activated virtqueue of the net device.
pub(crate) struct ActiveQueue<A: GuestAddressSpace> {
    pub index: u16,
    pub ring: SplitRing,
    pub view: GuestView<A::T>,
    pub events: QueueEvents,
    /// Used elements added, and the interrupt decided after them.
    interrupt: InterruptDecision,
}

impl<A: GuestAddressSpace> ActiveQueue<A> {
    /// Take over `queue` on the memory `mem` holds.
    pub fn new(index: u16, mem: &A, queue: Queue, events: QueueEvents) -> Result<Self> {
        let invalid = |reason| Error::InvalidQueue { index, reason };
        let view = GuestView::new(mem.memory())
            .ok_or(invalid("guest memory behind an IOMMU is not supported"))?;
        let ring = SplitRing::new(&queue, &view).map_err(|e| {
            invalid(match e {
                RingSetupError::OutsideMemory => "a ring is not inside one guest memory region",
                RingSetupError::Misaligned => "a ring is misaligned",
            })
        })?;
        Ok(ActiveQueue {
            index,
            ring,
            view,
            events,
            interrupt: InterruptDecision::default(),
        })
    }

    /// Index of the next available-ring entry to read.
    pub fn next_avail(&self) -> u16 {
        self.ring.next_avail()
    }

    /// The queue's notify eventfd.
    pub fn notify_fd(&self) -> RawFd {
        self.events.notify.as_raw_fd()
    }

    /// Reset the notify eventfd (a kick may have come or not).
    pub fn drain_notify(&self) -> Result<()> {
        match self.events.notify.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(Error::Io {
                op: "read queue notify eventfd",
                source,
            }),
        }
    }

    /// The next available head, if any.
    pub fn pop(&mut self) -> Result<Option<u16>> {
        self.ring
            .pop_head(&self.view)
            .map_err(|source| queue_error("read the available ring", source))
    }

    /// Stop the driver's notifications while the device works (under
    /// event idx, `avail_event` is parked out of the driver's way).
    pub fn disable_notification(&mut self) -> Result<()> {
        let done = if self.ring.event_idx_enabled() {
            self.ring.park_avail_event(&self.view)
        } else {
            self.ring.disable_notification(&self.view)
        };
        done.map_err(|source| queue_error("disable notifications", source))
    }

    /// Ask for notifications again; whether chains came meanwhile.
    pub fn enable_notification(&mut self) -> Result<bool> {
        self.ring
            .enable_notification(&self.view)
            .map_err(|source| queue_error("enable notifications", source))
    }

    /// Ask for a notification once `batch` more chains are available
    /// ([`SplitRing::enable_notification_after`]); how many are
    /// available now.
    pub fn enable_notification_after(&mut self, batch: u16) -> Result<u16> {
        self.ring
            .enable_notification_after(&self.view, batch)
            .map_err(|source| queue_error("enable notifications", source))
    }

    /// Whether chains are available (one load).
    pub fn has_available(&self) -> bool {
        self.ring.has_available(&self.view)
    }

    /// Walk chain `head` into `out`: every descriptor must go the way
    /// `device_writes` says, lie in guest memory, and the chain must end
    /// properly within [`MAX_CHAIN_DESCRIPTORS`].
    pub fn walk(
        &self,
        head: u16,
        device_writes: bool,
        out: &mut ChainBufs,
    ) -> std::result::Result<(), ChainError> {
        out.clear();
        out.head = head;
        let mut complete = false;
        for (count, desc) in self.ring.chain(&self.view, head).enumerate() {
            if count >= MAX_CHAIN_DESCRIPTORS {
                return Err(ChainError::Broken);
            }
            if desc.is_write_only() != device_writes {
                return Err(ChainError::Direction);
            }
            let (addr, len) = (desc.addr().0, desc.len());
            if !self
                .view
                .host_bufs(addr, u64::from(len), device_writes, &mut out.host)
            {
                return Err(ChainError::OutsideMemory);
            }
            out.guest.push((addr, len));
            out.len += len as usize;
            complete = !desc.has_next();
        }
        if !complete {
            return Err(ChainError::Broken);
        }
        Ok(())
    }

    /// Copy `out.len()` bytes from byte `offset` of a chain's guest ranges.
    pub fn read_at(&self, guest: &[(u64, u32)], offset: usize, out: &mut [u8]) -> bool {
        self.each_piece(guest, offset, out.len(), |addr, from, len| {
            self.view.read(addr, &mut out[from..from + len])
        })
    }

    /// Copy `data` to byte `offset` of a chain's guest ranges.
    pub fn write_at(&self, guest: &[(u64, u32)], offset: usize, data: &[u8]) -> bool {
        self.each_piece(guest, offset, data.len(), |addr, from, len| {
            self.view.write(addr, &data[from..from + len])
        })
    }

    /// Call `piece(guest address, offset into the caller's bytes, length)`
    /// for the ranges covering `len` bytes at `offset` of the chain.
    fn each_piece(
        &self,
        guest: &[(u64, u32)],
        mut offset: usize,
        len: usize,
        mut piece: impl FnMut(u64, usize, usize) -> bool,
    ) -> bool {
        let mut done = 0;
        for &(addr, seg_len) in guest {
            let seg_len = seg_len as usize;
            if offset >= seg_len {
                offset -= seg_len;
                continue;
            }
            let take = (seg_len - offset).min(len - done);
            if !piece(addr + offset as u64, done, take) {
                return false;
            }
            done += take;
            offset = 0;
            if done == len {
                return true;
            }
        }
        done == len
    }

    /// Return chain `head` with `len` bytes written.
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<()> {
        match self.ring.add_used(&self.view, head, len) {
            Ok(()) => {
                self.interrupt.note_used();
                Ok(())
            }
            // A head past the queue came from the guest: nothing to return.
            Err(virtio_queue::Error::InvalidDescriptorIndex) => Ok(()),
            Err(source) => Err(queue_error("add to the used ring", source)),
        }
    }

    /// Interrupt the guest if it returned chains since the last call and
    /// the driver asked to hear of them.
    pub fn signal_if_needed(&mut self) -> Result<()> {
        self.interrupt.decide(&mut self.ring, &self.view)
    }

    /// Whether the device decided to interrupt the guest since the last
    /// call (resetting it); the event loop raises the interrupt.
    pub fn take_interrupt(&self) -> Result<bool> {
        Ok(self.interrupt.take())
    }
}

pub(crate) fn queue_error(op: &'static str, source: virtio_queue::Error) -> Error {
    Error::Virtqueue { op, source }
}
