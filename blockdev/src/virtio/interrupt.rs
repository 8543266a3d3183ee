//! The interrupt decision a queue makes after a batch, shared by
//! virtio-blk's [`QueueHandler`](super::handler::QueueHandler) and
//! virtio-net's queues: whether chains were returned since the last
//! decision, and whether the driver asked to hear of them (event idx's
//! `used_event`, or `VRING_AVAIL_F_NO_INTERRUPT` without it).
//!
//! The decision is a flag that whoever serves the queue takes
//! ([`InterruptDecision::take`]) and raises the transport's interrupt
//! for; a queue has no interrupt eventfd of its own: the event loop
//! serves the queue on its own thread, so a flag saves a write, a poll
//! and a read per batch. A flag set and not yet taken stays set, as an
//! eventfd's counter would, so no decided interrupt is lost between two
//! takes.

use std::cell::Cell;

use super::memory::RingMemory;
use super::ring::SplitRing;
use crate::{Error, Result};

/// Available ring flag: the driver does not want interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether a queue returned chains, and whether it decided to interrupt.
#[derive(Debug, Default)]
pub(crate) struct InterruptDecision {
    /// Used elements added since the last [`InterruptDecision::decide`].
    used_added: bool,
    /// Decided and not yet taken.
    due: Cell<bool>,
}

impl InterruptDecision {
    /// A used element was added to the ring.
    pub(crate) fn note_used(&mut self) {
        self.used_added = true;
    }

    /// If chains were returned since the last call, decide whether the
    /// driver wants an interrupt for them and remember it.
    pub(crate) fn decide<V: RingMemory>(&mut self, ring: &mut SplitRing, view: &V) -> Result<()> {
        if !std::mem::take(&mut self.used_added) {
            return Ok(());
        }
        let mut needed = ring
            .needs_notification(view)
            .map_err(|source| ring_error("read used_event", source))?;
        if needed && !ring.event_idx_enabled() {
            // Without event idx the driver suppresses interrupts with
            // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags
            // (read after needs_notification's fence).
            let flags = ring
                .avail_flags(view)
                .map_err(|source| ring_error("read the available ring flags", source))?;
            needed = flags & AVAIL_F_NO_INTERRUPT == 0;
        }
        if needed {
            self.due.set(true);
        }
        Ok(())
    }

    /// Whether an interrupt was decided since the last call (resetting it).
    pub(crate) fn take(&self) -> bool {
        self.due.replace(false)
    }
}

fn ring_error(op: &'static str, source: virtio_queue::Error) -> Error {
    Error::Virtqueue { op, source }
}
