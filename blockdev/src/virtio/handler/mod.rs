//! Processing of one request virtqueue: pop chains, validate them, push
//! them to the queue's [`BlockQueue`], and return them to the guest when
//! the backend completes them, signalling the guest only when it asked to
//! be signalled (event-idx suppression).
//!
//! An event loop drives a [`QueueHandler`] with
//! [`QueueHandler::handle_queue_notify`] when the queue's notify eventfd
//! (the ioeventfd the transport or KVM writes) is readable, and with
//! [`QueueHandler::handle_completion_event`] when the backend's
//! [`QueueHandler::completion_fd`] is. [`QueueHandler::run_until_idle`] is
//! the blocking form for tests and benchmarks.
//!
//! This file holds the queue side (popping, completions, notifications);
//! `chains` the chain side (starting, pushing, merging, finishing).

mod chains;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

use super::chain_merge::{ChainMerger, MERGED_CHAINS};
use super::defs::STATUS_IOERR;
use super::disk_dirty::DiskWriteTracker;
use super::interrupt::InterruptDecision;
use super::memory::GuestView;
use super::request::{parse_chain, DiskInfo, ParseScratch};
use super::ring::{RingSetupError, SplitRing};
use super::stats::{DiskStats, StatKind};
use crate::disk::{BlockQueue, Request};
use crate::{Error, Result};
use std::time::Instant;

/// The eventfd of a queue: the guest's kicks. A queue has no interrupt
/// eventfd: its interrupt decision is a flag whoever serves it takes
/// ([`QueueHandler::take_interrupt`]) and raises the device's interrupt
/// for.
#[derive(Debug)]
pub struct QueueEvents {
    /// Written by the transport (or KVM, as an ioeventfd) when the driver
    /// notifies the queue.
    pub notify: EventFd,
}

/// A chain handed to the backend and not yet returned to the guest. The
/// handler keeps one per slot for good, so that `pending` keeps its room
/// from one chain to the next.
#[derive(Default)]
struct InFlight {
    /// The slot holds a chain.
    active: bool,
    head: u16,
    status_addr: GuestAddress,
    used_len: u32,
    status: u8,
    /// Bytes a read or write must transfer; `None` for other requests.
    transfer: Option<u64>,
    /// Requests not yet accepted by the backend (it was full).
    pending: VecDeque<Request>,
    /// Requests accepted and not yet completed.
    outstanding: u32,
    /// What the counters count it as (reads, writes, flushes), with
    /// when it was taken off the ring.
    counted: Option<(StatKind, Instant)>,
    /// The disk bytes its writes, write-zeroes and discards change
    /// (first, end), marked again when it completes.
    changes: Option<(u64, u64)>,
}

/// One virtqueue of the device with its own backend queue.
pub struct QueueHandler<A: GuestAddressSpace> {
    index: u16,
    // Declared before `view` so that it is dropped (which waits for the
    // kernel to be done with guest buffers) before the memory guard the
    // view holds.
    disk: Box<dyn BlockQueue>,
    chains: Vec<InFlight>,
    free_slots: Vec<usize>,
    mem: A,
    /// The queue's setup as the driver left it at activation.
    queue: Queue,
    /// The rings, with the positions since activation.
    ring: SplitRing,
    /// Guest memory as of activation; keeps it mapped while requests use it.
    view: GuestView<A::T>,
    info: Arc<DiskInfo>,
    events: QueueEvents,
    /// Chains whose requests the backend could not all take yet, oldest
    /// first.
    waiting: VecDeque<usize>,
    /// Popping stopped for lack of room; resume when completions free some.
    blocked: bool,
    unsubmitted: u32,
    /// Used elements added, and the interrupt decided after them.
    interrupt: InterruptDecision,
    /// Leave pushed requests for the caller's `wait` to submit.
    defer_submit: bool,
    /// The event loop polls the available ring: leave the guest's
    /// notifications off until [`QueueHandler::prepare_to_sleep`].
    polling: bool,
    /// Requests the backend queue was opened to hold.
    depth: u32,
    scratch: ParseScratch,
    /// Sequential reads or writes of a batch, merged into one request.
    merger: ChainMerger,
    /// Chains refused since the last [`QueueHandler::take_refused`]
    /// (dropped, or answered IOERR/UNSUPP without reaching the backend).
    refused: u64,
    /// The device's counters.
    stats: Arc<DiskStats>,
    /// Where the guest's disk changes are marked during a migration.
    writes: Arc<DiskWriteTracker>,
}

impl<A: GuestAddressSpace> QueueHandler<A> {
    /// A handler for the activated queue `queue` (index `index`), with a
    /// backend queue `disk` able to hold `queue.size()` requests. Fails
    /// when a ring is not wholly inside one guest memory region or the
    /// memory is behind an IOMMU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: u16,
        mem: A,
        queue: Queue,
        disk: Box<dyn BlockQueue>,
        info: Arc<DiskInfo>,
        events: QueueEvents,
        stats: Arc<DiskStats>,
        writes: Arc<DiskWriteTracker>,
    ) -> Result<Self> {
        let invalid = |reason| Error::InvalidQueue { index, reason };
        let view = GuestView::new(mem.memory())
            .ok_or(invalid("guest memory behind an IOMMU is not supported"))?;
        let ring = SplitRing::new(&queue, &view).map_err(|e| {
            invalid(match e {
                RingSetupError::OutsideMemory => "a ring is not inside one guest memory region",
                RingSetupError::Misaligned => "a ring is misaligned",
            })
        })?;
        let queue_size = ring.size();
        let slots = usize::from(queue_size);
        Ok(QueueHandler {
            index,
            disk,
            chains: (0..slots).map(|_| InFlight::default()).collect(),
            free_slots: (0..slots).rev().collect(),
            mem,
            queue,
            ring,
            view,
            info,
            events,
            waiting: VecDeque::new(),
            blocked: false,
            unsubmitted: 0,
            interrupt: InterruptDecision::default(),
            refused: 0,
            defer_submit: false,
            polling: false,
            depth: u32::from(queue_size),
            scratch: ParseScratch::default(),
            merger: ChainMerger::default(),
            stats,
            writes,
        })
    }

    /// The queue's index in the device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The virtqueue's setup as the driver left it at activation (size,
    /// ring addresses, event idx). Ring positions since then are the
    /// handler's: [`QueueHandler::next_avail`], [`QueueHandler::next_used`].
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Index of the next available-ring entry the device will read.
    pub fn next_avail(&self) -> u16 {
        self.ring.next_avail()
    }

    /// Index of the next used-ring entry the device will write.
    pub fn next_used(&self) -> u16 {
        self.ring.next_used()
    }

    /// The eventfd the transport writes when the driver notifies this queue.
    pub fn notify_fd(&self) -> RawFd {
        self.events.notify.as_raw_fd()
    }

    /// The backend's completion eventfd.
    pub fn completion_fd(&self) -> RawFd {
        self.disk.completion_fd()
    }

    /// Chains taken from the guest and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.chains.len() - self.free_slots.len()
    }

    /// Whether the backend has completions to hand back now (no system
    /// call), for an event loop that spins a little before it sleeps.
    pub fn completions_ready(&mut self) -> bool {
        self.disk.completions_ready()
    }

    /// Whether the guest made chains available that the handler has not
    /// taken yet (one load of the available index, no system call), for
    /// an event loop that polls the ring a little before it sleeps, as
    /// QEMU's iothreads do.
    pub fn has_available(&self) -> bool {
        self.ring.has_available(&self.view)
    }

    /// Whether spinning for completions is likely to pay now (the backend
    /// holds only reads; see [`BlockQueue::worth_polling`]).
    pub fn worth_polling(&self) -> bool {
        self.disk.worth_polling()
    }

    /// The driver notified the queue: reset the notify eventfd and process
    /// what the guest made available.
    pub fn handle_queue_notify(&mut self) -> Result<()> {
        match self.events.notify.read() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "read queue notify eventfd",
                    source,
                })
            }
        }
        self.process_queue()
    }

    /// The backend's completion eventfd is readable: reset it and return
    /// finished chains to the guest.
    pub fn handle_completion_event(&mut self) -> Result<()> {
        super::eventfd::drain(self.disk.completion_fd())?;
        self.handle_completions()
    }

    /// Pop every available chain (until the backend or our slots are full),
    /// hand the valid ones to the backend in one submission, complete the
    /// rest at once, and interrupt the guest if it needs to know.
    ///
    /// When the rings cannot be read partway (the driver, or the device's
    /// own writes into rings that overlap them, moved the available index
    /// out of range), the chains taken before that are still submitted and
    /// signalled before the error is returned: left pushed but unsubmitted,
    /// they would wait for a kick that a broken ring may never make good.
    pub fn process_queue(&mut self) -> Result<()> {
        let popped = self.pop_available();
        let pushed = self.push_open_group();
        let signalled = self.submit_and_signal();
        popped.and(pushed).and(signalled)
    }

    /// The popping half of [`QueueHandler::process_queue`]: start every
    /// available chain until none is left or there is no room.
    fn pop_available(&mut self) -> Result<()> {
        if !self.waiting.is_empty() {
            // Resumed from handle_completions once the backend has room.
            self.blocked = true;
            return Ok(());
        }
        self.blocked = false;
        loop {
            self.ring
                .disable_notification(&self.view)
                .map_err(|source| queue_error("disable notifications", source))?;
            let mut popped = 0usize;
            while self.waiting.is_empty() {
                if self.free_slots.is_empty() {
                    self.blocked = true;
                    break;
                }
                let head = match self.ring.pop_head(&self.view) {
                    Ok(head) => head,
                    Err(source) => return Err(queue_error("read the available ring", source)),
                };
                let Some(head) = head else { break };
                popped += 1;
                let chain = self.ring.chain(&self.view, head);
                let parsed = parse_chain(&self.view, head, chain, &self.info, &mut self.scratch);
                self.start(parsed)?;
            }
            if !self.waiting.is_empty() || self.blocked {
                // Notifications stay off: completions resume popping.
                self.blocked = true;
                return Ok(());
            }
            if self.polling {
                // The loop looks at the ring again before it sleeps.
                return Ok(());
            }
            let more = self
                .ring
                .enable_notification(&self.view)
                .map_err(|source| queue_error("enable notifications", source))?;
            // `popped == 0` with more reported means the ring cannot be
            // read; do not spin on it.
            if !more || popped == 0 {
                return Ok(());
            }
        }
    }

    /// For an event loop that polls the available ring
    /// ([`QueueHandler::has_available`]) while it runs, as QEMU's iothreads
    /// do: with `on`, processing the queue leaves the guest's notifications
    /// off (a kick costs the guest a VM exit), and the loop must call
    /// [`QueueHandler::prepare_to_sleep`] before it sleeps.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
    }

    /// Turn the guest's notifications back on before the event loop
    /// sleeps; whether chains became available meanwhile (then process
    /// the queue instead of sleeping: no kick will come for them).
    pub fn prepare_to_sleep(&mut self) -> Result<bool> {
        if !self.waiting.is_empty() || self.blocked {
            // Completions resume popping; notifications stay off.
            return Ok(false);
        }
        self.ring
            .enable_notification(&self.view)
            .map_err(|source| queue_error("enable notifications", source))
    }

    /// Return every chain the backend finished to the guest, push what was
    /// waiting for room, and resume popping if that had stopped.
    pub fn handle_completions(&mut self) -> Result<()> {
        while let Some(completion) = self.disk.pop_completion() {
            if completion.user_data & MERGED_CHAINS != 0 {
                let group = (completion.user_data & !MERGED_CHAINS) as usize;
                self.complete_group(group, completion.result.ok())?;
                continue;
            }
            let Ok(slot) = usize::try_from(completion.user_data) else {
                continue;
            };
            let Some(chain) = self.chains.get_mut(slot).filter(|c| c.active) else {
                continue;
            };
            chain.outstanding = chain.outstanding.saturating_sub(1);
            let ok = match (&completion.result, chain.transfer) {
                (Ok(done), Some(expected)) => *done == expected,
                (Ok(_), None) => true,
                (Err(_), _) => false,
            };
            if !ok {
                chain.status = STATUS_IOERR;
            }
            if chain.outstanding == 0 && chain.pending.is_empty() {
                self.complete_slot(slot)?;
            }
        }
        while let Some(&slot) = self.waiting.front() {
            if !self.push_pending(slot)? {
                break;
            }
            self.waiting.pop_front();
        }
        if self.blocked && self.waiting.is_empty() && !self.free_slots.is_empty() {
            self.blocked = false;
            return self.process_queue();
        }
        self.submit_and_signal()
    }

    /// Process the queue and wait for the backend until nothing is in
    /// flight (the blocking helper for tests and benchmarks).
    pub fn run_until_idle(&mut self) -> Result<()> {
        self.process_queue()?;
        loop {
            // Reap before looking at counts: a backend may already hold
            // finished requests it no longer counts as in flight.
            self.handle_completions()?;
            if self.in_flight() == 0 {
                return Ok(());
            }
            if self.disk.in_flight() == 0 {
                return Err(Error::DeviceState {
                    reason: "chains in flight but the backend holds no request",
                });
            }
            self.disk.wait()?;
        }
    }

    /// Block until the backend finishes at least one request, then return
    /// finished chains (for a driver polling the used ring in the same
    /// thread).
    pub fn wait_and_complete(&mut self) -> Result<()> {
        self.disk.wait()?;
        self.handle_completions()
    }

    /// Process the queue, then wait for the backend and return finished
    /// chains, letting the backend submit and wait in one system call (for
    /// a driver that polls in the same thread, as the benchmark does).
    pub fn process_queue_and_wait(&mut self) -> Result<()> {
        self.defer_submit = true;
        let processed = self.process_queue();
        self.defer_submit = false;
        processed?;
        let deferred = std::mem::take(&mut self.unsubmitted) > 0;
        self.disk.wait()?;
        self.handle_completions()?;
        if deferred {
            // The backend's wait submits what was pushed; this covers a
            // backend that does not. It comes after the completions are
            // taken, so that the backend has none left to announce on its
            // eventfd (a write nobody reads here).
            self.disk.submit()?;
        }
        Ok(())
    }

    fn submit_and_signal(&mut self) -> Result<()> {
        if self.unsubmitted > 0 && !self.defer_submit {
            self.unsubmitted = 0;
            self.disk.submit()?;
        }
        self.interrupt.decide(&mut self.ring, &self.view)
    }
}

impl<A: GuestAddressSpace> Drop for QueueHandler<A> {
    fn drop(&mut self) {
        // Nothing is returned to the guest (this is a reset). The backend
        // queue, dropped before the memory guards the chains hold, waits
        // for whatever the kernel still does with guest buffers and drops
        // the rest. Waiting for every request here instead could hang: a
        // request parked on another queue's write needs that queue, served
        // by this same thread, to move first.
        let _ = self.disk.submit();
    }
}

fn queue_error(op: &'static str, source: virtio_queue::Error) -> Error {
    Error::Virtqueue { op, source }
}

impl<A: GuestAddressSpace> std::fmt::Debug for QueueHandler<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandler")
            .field("index", &self.index)
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<A: GuestAddressSpace> QueueHandler<A> {
    /// Guest memory of this queue (for a test driver sharing the thread).
    pub fn memory(&self) -> A::T {
        self.mem.memory()
    }

    /// How many chains were refused (malformed: dropped or answered
    /// IOERR/UNSUPP before reaching the backend) since the last call, so
    /// that a VMM can log a misbehaving guest.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// Whether the device decided to interrupt the guest since the last
    /// call (resetting it): whoever serves the queue raises the interrupt
    /// (the VMM's event loop its transport's irqfd). The queue's interrupt
    /// eventfd is not written.
    pub fn take_interrupt(&self) -> Result<bool> {
        Ok(self.interrupt.take())
    }
}
