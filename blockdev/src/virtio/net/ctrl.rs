//! The control virtqueue: commands of `struct virtio_net_ctrl` (class,
//! command, data in device-readable buffers, then a device-writable ack
//! byte). The device implements the multiqueue class's VQ_PAIRS_SET,
//! attaching the tap queues of the pairs the guest uses and detaching the
//! rest, so that the kernel steers no frame to a queue nobody reads (only
//! when MQ was negotiated, as QEMU's `virtio_net_handle_mq`), and the
//! announce class's ACK, which clears a pending VIRTIO_NET_S_ANNOUNCE
//! (refused when none is pending, as QEMU does). Every other command,
//! and a command too short for its class and command bytes or its data,
//! is answered VIRTIO_NET_ERR; a chain without a writable ack byte is
//! returned unanswered (used length 0).

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::GuestAddressSpace;

use super::announce::AnnounceState;
use super::defs::{
    CTRL_ANNOUNCE_ACK, CTRL_CLASS_ANNOUNCE, CTRL_CLASS_MQ, CTRL_ERR, CTRL_MQ_VQ_PAIRS_SET, CTRL_OK,
    F_NET_GUEST_ANNOUNCE, F_NET_MQ,
};
use super::queue::{ActiveQueue, ChainBufs};
use super::tap::Tap;
use crate::Result;

/// Most bytes of command data the device reads (VQ_PAIRS_SET has 2).
const MAX_COMMAND_DATA: usize = 64;

/// The control virtqueue of a multiqueue device.
pub struct CtrlQueue<A: GuestAddressSpace> {
    queue: ActiveQueue<A>,
    taps: Vec<Arc<Tap>>,
    /// Queue pairs the guest uses now.
    active_pairs: u16,
    /// The features the driver accepted.
    features: u64,
    announce: Arc<AnnounceState>,
    readable: ChainBufs,
    refused: u64,
}

impl<A: GuestAddressSpace> CtrlQueue<A> {
    /// The control queue over `queue`, with `active_pairs` in use (1
    /// after a reset, a saved count after a restore), for a driver that
    /// accepted `features`, sharing the device's `announce` state.
    pub(crate) fn new(
        queue: ActiveQueue<A>,
        taps: Vec<Arc<Tap>>,
        active_pairs: u16,
        features: u64,
        announce: Arc<AnnounceState>,
    ) -> Self {
        CtrlQueue {
            queue,
            taps,
            active_pairs,
            features,
            announce,
            readable: ChainBufs::default(),
            refused: 0,
        }
    }

    /// The queue's index in the device (2 × max pairs).
    pub fn index(&self) -> u16 {
        self.queue.index
    }

    /// The eventfd the transport writes when the driver notifies.
    pub fn notify_fd(&self) -> RawFd {
        self.queue.notify_fd()
    }

    /// Index of the next available-ring entry the queue will read.
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Index of the next used-ring entry the queue will write.
    pub fn next_used(&self) -> u16 {
        self.queue.ring.next_used()
    }

    /// Queue pairs the guest uses (1 until it sets more).
    pub fn active_pairs(&self) -> u16 {
        self.active_pairs
    }

    /// Commands refused (malformed or unsupported) since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// The driver notified the queue: run its commands.
    pub fn handle_queue_notify(&mut self) -> Result<()> {
        self.queue.drain_notify()?;
        self.process_queue()
    }

    /// Run every available command and return it with its ack.
    pub fn process_queue(&mut self) -> Result<()> {
        let run = self.run_available();
        let signalled = self.queue.signal_if_needed();
        run.and(signalled)
    }

    fn run_available(&mut self) -> Result<()> {
        while let Some(head) = self.queue.pop()? {
            let used = self.run_command(head)?;
            self.queue.add_used(head, used)?;
        }
        Ok(())
    }

    /// Run command `head`; the used length (1 with an ack, 0 without).
    fn run_command(&mut self, head: u16) -> Result<u32> {
        // Split the chain: readable descriptors, then one writable byte.
        let mut readable = Vec::new();
        let mut ack = None;
        let mut broken = false;
        let mut complete = false;
        for (count, desc) in self.queue.ring.chain(&self.queue.view, head).enumerate() {
            if count >= super::defs::MAX_CHAIN_DESCRIPTORS || ack.is_some() {
                broken = true;
                break;
            }
            if desc.is_write_only() {
                ack = Some(desc.addr().0);
                if desc.len() == 0 {
                    broken = true;
                }
            } else {
                readable.push((desc.addr().0, desc.len()));
            }
            complete = !desc.has_next();
        }
        let Some(ack_addr) = ack.filter(|_| complete && !broken) else {
            self.refused += 1;
            return Ok(0);
        };
        let total: u64 = readable.iter().map(|(_, len)| u64::from(*len)).sum();
        let mut command = [0u8; 2 + MAX_COMMAND_DATA];
        let len = total.min(command.len() as u64) as usize;
        self.readable.guest = readable;
        let status = if total < 2
            || !self
                .queue
                .read_at(&self.readable.guest, 0, &mut command[..len])
        {
            CTRL_ERR
        } else {
            self.execute(command[0], command[1], &command[2..len])
        };
        if status != CTRL_OK {
            self.refused += 1;
        }
        Ok(if self.queue.view.write(ack_addr, &[status]) {
            1
        } else {
            0
        })
    }

    fn execute(&mut self, class: u8, command: u8, data: &[u8]) -> u8 {
        match (class, command) {
            (CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET) if self.features & F_NET_MQ != 0 => {
                self.set_pairs(data)
            }
            (CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK)
                if self.features & F_NET_GUEST_ANNOUNCE != 0 && self.announce.acknowledge() =>
            {
                CTRL_OK
            }
            _ => CTRL_ERR,
        }
    }

    /// VQ_PAIRS_SET with its data (le16 pairs, 1 to the device's pairs).
    fn set_pairs(&mut self, data: &[u8]) -> u8 {
        if data.len() != 2 {
            return CTRL_ERR;
        }
        let pairs = u16::from_le_bytes([data[0], data[1]]);
        if pairs == 0 || usize::from(pairs) > self.taps.len() {
            return CTRL_ERR;
        }
        if set_active_pairs(&self.taps, pairs).is_err() {
            return CTRL_ERR;
        }
        self.active_pairs = pairs;
        CTRL_OK
    }

    /// Whether the device signalled since the last call (tests).
    pub fn take_interrupt(&self) -> Result<bool> {
        self.queue.take_interrupt()
    }
}

/// Attach the tap queues of the first `pairs` pairs and detach the rest
/// (nothing to do for a single-queue tap).
pub(crate) fn set_active_pairs(taps: &[Arc<Tap>], pairs: u16) -> Result<()> {
    if taps.len() < 2 {
        return Ok(());
    }
    for (index, tap) in taps.iter().enumerate() {
        tap.set_queue_attached(index < usize::from(pairs))?;
    }
    Ok(())
}

impl<A: GuestAddressSpace> std::fmt::Debug for CtrlQueue<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlQueue")
            .field("index", &self.queue.index)
            .field("active_pairs", &self.active_pairs)
            .finish_non_exhaustive()
    }
}
