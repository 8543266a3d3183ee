//! The transmit queue of one queue pair: every chain the guest makes
//! available is checked (device-readable only, in guest memory, properly
//! ended, a frame of sane length behind a vnet header that passes
//! [`NetHeader::validate_tx`]) and written to the tap with one `writev`
//! straight from guest memory; only the 12-byte header goes from the
//! checked copy, so that the guest cannot change it between the check
//! and the kernel's read. Refused frames are counted and returned unsent.

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::GuestAddressSpace;

use super::counters::NetCounters;
use super::defs::NET_HDR_SIZE;
use super::header::NetHeader;
use super::queue::{ActiveQueue, ChainBufs};
use super::tap::Tap;
use crate::disk::IoBuf;
use crate::Result;

/// Most batches in a row whose interrupt a streaming guest's frames
/// defer (so that a driver waiting on the interrupt rather than polling
/// waits at most this many batches of the polling loop).
pub const MAX_DEFERRED_BATCHES: u32 = 16;

/// One transmit virtqueue and the tap queue its frames go to.
pub struct TxQueue<A: GuestAddressSpace> {
    queue: ActiveQueue<A>,
    tap: Arc<Tap>,
    features: u64,
    counters: Arc<NetCounters>,
    chain: ChainBufs,
    /// The frame's buffers after the header, for `writev`.
    iov: Vec<IoBuf>,
    polling: bool,
    /// The last batch sent frames: the guest is likely to send more soon,
    /// so a polling loop spins on the ring before it sleeps.
    streaming: bool,
    /// Batches in a row whose interrupt waits for the end of the stream.
    deferred: u32,
    /// Chains refused since the last [`TxQueue::take_refused`].
    refused: u64,
}

impl<A: GuestAddressSpace> TxQueue<A> {
    pub(crate) fn new(
        queue: ActiveQueue<A>,
        tap: Arc<Tap>,
        features: u64,
        counters: Arc<NetCounters>,
    ) -> Self {
        TxQueue {
            queue,
            tap,
            features,
            counters,
            chain: ChainBufs::default(),
            iov: Vec::new(),
            polling: false,
            streaming: false,
            deferred: 0,
            refused: 0,
        }
    }

    /// The queue's index in the device (2N+1 for pair N).
    pub fn index(&self) -> u16 {
        self.queue.index
    }

    /// Index of the next available-ring entry the queue will read.
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Index of the next used-ring entry the queue will write.
    pub fn next_used(&self) -> u16 {
        self.queue.ring.next_used()
    }

    /// Frames refused as malformed since the last call (they are also
    /// in the device's `tx_errors`), so that a VMM can log a misbehaving
    /// guest.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// The eventfd the transport writes when the driver notifies.
    pub fn notify_fd(&self) -> RawFd {
        self.queue.notify_fd()
    }

    /// The driver notified the queue: send what it made available.
    pub fn handle_queue_notify(&mut self) -> Result<()> {
        self.queue.drain_notify()?;
        self.process_queue()
    }

    /// Whether chains wait to be sent (one load; for a polling loop).
    pub fn has_available(&self) -> bool {
        self.queue.has_available()
    }

    /// With `on`, leave the driver's notifications off after a batch (the
    /// loop polls [`TxQueue::has_available`] and calls
    /// [`TxQueue::prepare_to_sleep`] before it sleeps).
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
    }

    /// Whether a polling loop should spin on [`TxQueue::has_available`]
    /// before it sleeps: the last batch sent frames (a guest sending a
    /// stream sends its next frame soon, and a frame found by the spin
    /// costs the guest no notification and the loop no wake-up).
    pub fn worth_polling(&self) -> bool {
        self.polling && self.streaming
    }

    /// Turn notifications back on; whether chains came meanwhile. If
    /// none did, the interrupt the stream's batches deferred is decided
    /// now (see [`TxQueue::process_queue`]).
    pub fn prepare_to_sleep(&mut self) -> Result<bool> {
        let more = self.queue.enable_notification()?;
        if !more {
            self.deferred = 0;
            self.queue.signal_if_needed()?;
        }
        Ok(more)
    }

    /// Send every available frame, return the chains, and interrupt the
    /// guest once for the batch if it asked. In a polling loop, while the
    /// guest streams (the batch sent frames), the interrupt waits for the
    /// end of the stream ([`TxQueue::prepare_to_sleep`]) or for
    /// [`MAX_DEFERRED_BATCHES`] batches, whichever comes first: one
    /// interrupt then covers them all (the driver's `used_event` is read
    /// then, over every element returned since), and a driver that polls
    /// its used ring meanwhile is not interrupted once per frame.
    pub fn process_queue(&mut self) -> Result<()> {
        let sent = self.send_available();
        if self.polling && self.streaming && self.deferred < MAX_DEFERRED_BATCHES {
            self.deferred += 1;
            return sent;
        }
        self.deferred = 0;
        let signalled = self.queue.signal_if_needed();
        sent.and(signalled)
    }

    fn send_available(&mut self) -> Result<()> {
        loop {
            self.queue.disable_notification()?;
            let mut popped = 0usize;
            while let Some(head) = self.queue.pop()? {
                popped += 1;
                self.send_chain(head);
                self.queue.add_used(head, 0)?;
            }
            self.streaming = popped > 0;
            if self.polling {
                return Ok(());
            }
            let more = self.queue.enable_notification()?;
            if !more || popped == 0 {
                return Ok(());
            }
        }
    }

    /// Check chain `head` and write its frame to the tap; count the
    /// outcome.
    fn send_chain(&mut self, head: u16) {
        if self.queue.walk(head, false, &mut self.chain).is_err() || self.chain.len < NET_HDR_SIZE {
            self.refuse();
            return;
        }
        let frame = self.chain.len - NET_HDR_SIZE;
        let mut raw = [0u8; NET_HDR_SIZE];
        if !self.queue.read_at(&self.chain.guest, 0, &mut raw) {
            self.refuse();
            return;
        }
        let Ok(header) = NetHeader::from_bytes(&raw).validate_tx(frame, self.features) else {
            self.refuse();
            return;
        };
        let mut checked = header.to_bytes();
        self.iov.clear();
        self.iov.push(IoBuf {
            addr: checked.as_mut_ptr(),
            len: NET_HDR_SIZE,
        });
        skip_bytes(&self.chain.host, NET_HDR_SIZE, &mut self.iov);
        if self.iov.len() > super::tap::MAX_IOVECS {
            self.refuse();
            return;
        }
        // SAFETY: the first buffer is `checked`, alive until the call
        // returns; the others are host mappings of guest ranges the walk
        // checked, kept mapped by the queue's memory view for the call.
        match unsafe { self.tap.write_frame(&self.iov) } {
            Ok(written) if written == self.chain.len => {
                self.counters.tx_frame(self.queue.index / 2, frame)
            }
            Ok(_) | Err(_) => self.counters.tx_drop(),
        }
    }

    fn refuse(&mut self) {
        self.refused += 1;
        self.counters.tx_error();
    }

    /// Whether the device signalled since the last call (resetting it).
    pub fn take_interrupt(&self) -> Result<bool> {
        self.queue.take_interrupt()
    }
}

/// Append to `out` the buffers of `bufs` after their first `skip` bytes.
fn skip_bytes(bufs: &[IoBuf], mut skip: usize, out: &mut Vec<IoBuf>) {
    for buf in bufs {
        if skip >= buf.len {
            skip -= buf.len;
            continue;
        }
        out.push(IoBuf {
            addr: buf.addr.wrapping_add(skip),
            len: buf.len - skip,
        });
        skip = 0;
    }
}

impl<A: GuestAddressSpace> std::fmt::Debug for TxQueue<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("index", &self.queue.index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_the_header_splits_the_buffer_that_holds_its_end() {
        let mut a = [0u8; 8];
        let mut b = [0u8; 20];
        let bufs = [
            IoBuf {
                addr: a.as_mut_ptr(),
                len: 8,
            },
            IoBuf {
                addr: b.as_mut_ptr(),
                len: 20,
            },
        ];
        let mut out = Vec::new();
        skip_bytes(&bufs, 12, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len, 16);
        assert_eq!(out[0].addr, b.as_mut_ptr().wrapping_add(4));
        out.clear();
        skip_bytes(&bufs, 8, &mut out);
        assert_eq!(out, vec![bufs[1]]);
    }
}
