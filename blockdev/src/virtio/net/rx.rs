//! The receive queue of one queue pair: frames are read from the tap with
//! one `readv` straight into the guest's buffers (no intermediate copy),
//! the vnet header first, as many frames as the tap has and the guest has
//! room for, then one interrupt for the batch if the driver asked.
//!
//! Chains taken from the ring wait in a stash until a frame fills them;
//! with VIRTIO_NET_F_MRG_RXBUF a frame is read across as many stashed
//! chains as it needs (up to [`MAX_RX_BYTES`] of them) and the device
//! writes `num_buffers` into the first; without it each frame goes into
//! one chain. A frame larger than the buffers offered is lost (the tap
//! hands it over once) and counted as dropped; the chains stay stashed for
//! the next frame. Malformed chains (a device-readable descriptor, outside
//! memory, broken, shorter than the header) are returned empty and
//! counted as errors.
//!
//! When the guest has no buffers left the queue stops waiting on the tap
//! (which stays readable) and waits for buffers instead
//! ([`RxQueue::wait_fd`]). Under event idx it asks the driver to kick only
//! after [`RX_KICK_BATCH`] reposted buffers, so that a guest working
//! through a backlog does not exit once per buffer, and arms a timer
//! ([`RX_REFILL_WAIT`]): when it fires the queue takes whatever the guest
//! posted, so a guest that posts fewer never stalls. A timer that finds
//! nothing posted is not armed again: the queue then asks for a kick at
//! the first buffer, so an idle guest without buffers costs no wake-ups.
//! Without event idx, or without a timer, it asks for a kick at the first
//! buffer. Nothing is waited on while the pair's tap queue is detached (a
//! pair the guest does not use under MQ).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddressSpace;
use vmm_sys_util::timerfd::TimerFd;

use super::counters::NetCounters;
use super::defs::{MAX_RX_BYTES, NET_HDR_NUM_BUFFERS, NET_HDR_SIZE};
use super::queue::{ActiveQueue, ChainBufs};
use super::tap::{Tap, MAX_IOVECS};
use crate::disk::IoBuf;
use crate::{Error, Result};

/// Most frames read in one batch before the queue lets the event loop
/// serve other queues.
const RX_BATCH: usize = 256;

/// Buffers a driver with event idx reposts before it kicks a receive
/// queue that ran out (at most half the queue).
pub const RX_KICK_BATCH: u16 = 16;

/// How long a receive queue that ran out waits for the guest's batch of
/// buffers before it takes what the guest posted so far.
pub const RX_REFILL_WAIT: Duration = Duration::from_micros(500);

/// What a receive queue waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxWait {
    /// Frames on the tap (the guest gave buffers).
    Tap,
    /// Out of buffers: the kick after a batch of them, or the refill
    /// timer.
    Batch,
    /// Out of buffers: the kick at the first one.
    Kick,
}

/// One receive virtqueue and the tap queue it is filled from.
pub struct RxQueue<A: GuestAddressSpace> {
    queue: ActiveQueue<A>,
    tap: Arc<Tap>,
    mergeable: bool,
    /// GUEST_CSUM was not negotiated: the header's flags must read zero.
    clear_flags: bool,
    counters: Arc<NetCounters>,
    /// Chains taken from the ring and not yet filled, oldest first.
    stash: VecDeque<ChainBufs>,
    /// Buffers of used chains, for reuse.
    spare: Vec<ChainBufs>,
    /// Bytes the stashed chains hold.
    stashed_bytes: usize,
    iov: Vec<IoBuf>,
    /// One byte after the guest's buffers in every read: a frame that
    /// reaches it did not fit (the tap cuts frames silently).
    overflow: Box<[u8; 1]>,
    /// What the queue waits for now.
    wait: RxWait,
    /// The refill timer, made at the first starvation (`None` before, or
    /// if it could not be made: then the queue asks for a kick at the
    /// first buffer).
    refill_timer: Option<TimerFd>,
    /// A timer could not be made; not tried again.
    timer_failed: bool,
    /// Chains refused since the last [`RxQueue::take_refused`].
    refused: u64,
}

impl<A: GuestAddressSpace> RxQueue<A> {
    pub(crate) fn new(
        queue: ActiveQueue<A>,
        tap: Arc<Tap>,
        mergeable: bool,
        guest_csum: bool,
        counters: Arc<NetCounters>,
    ) -> Self {
        RxQueue {
            queue,
            tap,
            mergeable,
            clear_flags: !guest_csum,
            counters,
            stash: VecDeque::new(),
            spare: Vec::new(),
            stashed_bytes: 0,
            iov: Vec::new(),
            overflow: Box::new([0]),
            wait: RxWait::Tap,
            refill_timer: None,
            timer_failed: false,
            refused: 0,
        }
    }

    /// The queue's index in the device (2N for pair N).
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

    /// Chains refused as malformed since the last call (they are also in
    /// the device's `rx_errors`).
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// The eventfd the transport writes when the driver notifies.
    pub fn notify_fd(&self) -> RawFd {
        self.queue.notify_fd()
    }

    /// The tap queue's fd: readable when frames wait.
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// Whether the event loop should wait for [`RxQueue::tap_fd`]: false
    /// while the guest has given no buffers (the tap stays readable, and
    /// a level-triggered loop would spin on it).
    pub fn tap_wanted(&self) -> bool {
        self.wait == RxWait::Tap && self.tap.is_attached()
    }

    /// The fd the event loop should wait on besides the notify eventfd:
    /// the tap while the guest has given buffers, the refill timer while
    /// the queue waits for a batch of them, none while it waits for a
    /// kick or its tap queue is detached.
    pub fn wait_fd(&self) -> Option<RawFd> {
        match self.wait {
            RxWait::Tap => self.tap_wanted().then(|| self.tap_fd()),
            RxWait::Batch => self.refill_timer.as_ref().map(AsRawFd::as_raw_fd),
            RxWait::Kick => None,
        }
    }

    /// Whether the queue ran out of buffers and waits for the guest.
    pub fn starved(&self) -> bool {
        self.wait != RxWait::Tap
    }

    /// The driver gave buffers: read what the tap holds into them.
    pub fn handle_queue_notify(&mut self) -> Result<()> {
        self.queue.drain_notify()?;
        self.process_queue()
    }

    /// [`RxQueue::wait_fd`] is readable: deliver frames from the tap, or
    /// (the refill timer fired) take what the guest posted so far.
    pub fn handle_tap_event(&mut self) -> Result<()> {
        if self.wait == RxWait::Batch {
            // Disarming resets the timer's count, so it is not readable
            // any more (no read, which could block on an event meant for
            // the tap).
            if let Some(timer) = self.refill_timer.as_mut() {
                timer.clear().map_err(|e| Error::Io {
                    op: "disarm the receive refill timer",
                    source: e.into(),
                })?;
            }
            let before = self.queue.next_avail();
            self.process_queue()?;
            if self.wait == RxWait::Batch && self.queue.next_avail() == before {
                // The guest posted nothing while the timer ran: wait for
                // its first buffer instead of waking again.
                if self.wait_for_kick()? {
                    self.process_queue()?;
                }
            }
            return Ok(());
        }
        self.process_queue()
    }

    /// Chains taken from the ring and waiting for frames.
    pub fn stashed_chains(&self) -> usize {
        self.stash.len()
    }

    /// The heads of the stashed chains, oldest first (what a snapshot
    /// saves of the queue beyond its ring positions).
    pub fn stashed_heads(&self) -> Vec<u16> {
        self.stash.iter().map(|chain| chain.head).collect()
    }

    /// Takes back the chains a saved queue had stashed (`heads`, oldest
    /// first; the ring's next_avail is already past them), each walked
    /// and checked again as [`RxQueue::process_queue`] does when it
    /// takes one: more chains than the queue holds, a head repeated or
    /// out of range, or a chain that no longer walks is refused, as a
    /// saved state that does not match the queue or guest memory.
    pub fn restore_stash(&mut self, heads: &[u16]) -> Result<()> {
        let size = usize::from(self.queue.ring.size());
        let invalid = |reason| Error::InvalidQueue {
            index: self.queue.index,
            reason,
        };
        if heads.len() > size {
            return Err(invalid("more saved receive chains than the queue holds"));
        }
        let mut seen = vec![false; size];
        for &head in heads {
            match seen.get_mut(usize::from(head)) {
                Some(taken) if !*taken => *taken = true,
                _ => {
                    return Err(invalid(
                        "a saved receive chain head is repeated or out of range",
                    ))
                }
            }
        }
        for &head in heads {
            let mut chain = ChainBufs::default();
            let walked = self.queue.walk(head, true, &mut chain);
            if walked.is_err() || chain.len < NET_HDR_SIZE || chain.host.len() > MAX_IOVECS {
                return Err(Error::InvalidQueue {
                    index: self.queue.index,
                    reason: "a saved receive chain does not walk in guest memory",
                });
            }
            self.stashed_bytes += chain.len;
            self.stash.push_back(chain);
        }
        Ok(())
    }

    /// Deliver frames from the tap until it is empty, the guest has no
    /// room, or a batch is done; interrupt the guest once if it asked.
    pub fn process_queue(&mut self) -> Result<()> {
        let delivered = self.deliver();
        let signalled = self.queue.signal_if_needed();
        delivered.and(signalled)
    }

    fn deliver(&mut self) -> Result<()> {
        if !self.tap.is_attached() {
            // A pair the guest does not use (MQ): its queue is detached
            // and has no frames; keep the buffers for when it is used.
            return Ok(());
        }
        self.wait = RxWait::Tap;
        self.queue.disable_notification()?;
        for _ in 0..RX_BATCH {
            self.fill_stash()?;
            if self.stash.is_empty() {
                if self.ask_for_buffers()? {
                    self.queue.disable_notification()?;
                    self.fill_stash()?;
                }
                if self.stash.is_empty() {
                    return Ok(());
                }
                self.wait = RxWait::Tap;
            }
            if !self.read_one()? {
                break;
            }
        }
        Ok(())
    }

    /// Out of buffers: ask the guest for a batch of them (a kick after
    /// [`RX_KICK_BATCH`], the refill timer armed) or, without event idx or
    /// a timer, for a kick at the first. `true` when the guest posted
    /// enough meanwhile (take them now instead).
    fn ask_for_buffers(&mut self) -> Result<bool> {
        let batch = RX_KICK_BATCH.min(self.queue.ring.size() / 2);
        if batch <= 1 || !self.queue.ring.event_idx_enabled() || !self.have_timer() {
            return self.wait_for_kick();
        }
        let available = self.queue.enable_notification_after(batch)?;
        if available >= batch {
            return Ok(true);
        }
        let armed = match self.refill_timer.as_mut() {
            Some(timer) => timer.reset(RX_REFILL_WAIT, None).is_ok(),
            None => false,
        };
        if !armed {
            return self.wait_for_kick();
        }
        self.wait = RxWait::Batch;
        Ok(false)
    }

    /// Ask for a kick at the first buffer the guest posts; `true` when
    /// some came meanwhile.
    fn wait_for_kick(&mut self) -> Result<bool> {
        if self.queue.enable_notification()? {
            return Ok(true);
        }
        self.wait = RxWait::Kick;
        Ok(false)
    }

    /// Whether the refill timer exists (made now if it was not).
    fn have_timer(&mut self) -> bool {
        if self.refill_timer.is_none() && !self.timer_failed {
            match TimerFd::new() {
                Ok(timer) => self.refill_timer = Some(timer),
                Err(_) => self.timer_failed = true,
            }
        }
        self.refill_timer.is_some()
    }

    /// Take chains from the ring until the stash holds room for the
    /// largest frame (one chain without mergeable buffers), or the ring
    /// is empty.
    fn fill_stash(&mut self) -> Result<()> {
        loop {
            let enough = if self.mergeable {
                self.stashed_bytes >= MAX_RX_BYTES
            } else {
                !self.stash.is_empty()
            };
            if enough {
                return Ok(());
            }
            let Some(head) = self.queue.pop()? else {
                return Ok(());
            };
            let mut chain = self.spare.pop().unwrap_or_default();
            let walked = self.queue.walk(head, true, &mut chain);
            if walked.is_err() || chain.len < NET_HDR_SIZE || chain.host.len() > MAX_IOVECS {
                self.counters.rx_error();
                self.refused += 1;
                self.queue.add_used(head, 0)?;
                self.spare.push(chain);
                continue;
            }
            self.stashed_bytes += chain.len;
            self.stash.push_back(chain);
        }
    }

    /// Read one frame into the stashed chains; `false` when the tap had
    /// none.
    fn read_one(&mut self) -> Result<bool> {
        self.iov.clear();
        let mut room = 0usize;
        for chain in &self.stash {
            if self.iov.len() + chain.host.len() > MAX_IOVECS {
                break;
            }
            self.iov.extend_from_slice(&chain.host);
            room += chain.len;
            if !self.mergeable || room >= MAX_RX_BYTES {
                break;
            }
        }
        if self.iov.len() == MAX_IOVECS {
            // Make room for the overflow byte.
            if let Some(last) = self.iov.pop() {
                room -= last.len;
            }
        }
        self.iov.push(IoBuf {
            addr: self.overflow.as_mut_ptr(),
            len: 1,
        });
        // SAFETY: the buffers are host mappings of guest ranges the walk
        // checked (device-writable, marked dirty), kept mapped by the
        // queue's memory view for the call (the chains are the device's
        // until returned), and the overflow byte, which we own.
        let read = match unsafe { self.tap.read_frame(&self.iov) } {
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(source) => {
                self.counters.rx_error();
                return Err(Error::Io {
                    op: "read a frame from the tap",
                    source,
                });
            }
        };
        if read < NET_HDR_SIZE {
            self.counters.rx_error();
            return Ok(true);
        }
        if read > room {
            // Cut short: lost. The chains hold garbage and stay stashed.
            self.counters.rx_drop();
            return Ok(true);
        }
        self.complete_frame(read)?;
        self.counters
            .rx_frame(self.queue.index / 2, read - NET_HDR_SIZE);
        Ok(true)
    }

    /// Return the chains `read` bytes filled, `num_buffers` first.
    fn complete_frame(&mut self, read: usize) -> Result<()> {
        let mut chains = 0usize;
        let mut left = read;
        for chain in &self.stash {
            chains += 1;
            left = left.saturating_sub(chain.len);
            if left == 0 {
                break;
            }
        }
        let num_buffers = (chains as u16).to_le_bytes();
        let first = &self.stash[0];
        // The walk checked these bytes are in guest memory.
        self.queue
            .write_at(&first.guest, NET_HDR_NUM_BUFFERS as usize, &num_buffers);
        if self.clear_flags {
            // Without GUEST_CSUM the flags must be zero (virtio 1.2,
            // 5.1.6.4.1); the tap may set DATA_VALID.
            self.queue.write_at(&first.guest, 0, &[0]);
        }
        let mut left = read;
        for _ in 0..chains {
            let Some(chain) = self.stash.pop_front() else {
                break;
            };
            let used = left.min(chain.len);
            left -= used;
            self.stashed_bytes -= chain.len;
            self.queue.add_used(chain.head, used as u32)?;
            self.spare.push(chain);
        }
        Ok(())
    }

    /// Whether the device signalled since the last call (resetting it).
    pub fn take_interrupt(&self) -> Result<bool> {
        self.queue.take_interrupt()
    }
}

impl<A: GuestAddressSpace> std::fmt::Debug for RxQueue<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxQueue")
            .field("index", &self.queue.index)
            .field("stashed", &self.stash.len())
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}
