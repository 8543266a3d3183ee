//! The device's traffic counters, shared between its queue handlers (on
//! the device thread) and whoever reports them (the VMM's API thread).
//! Names follow Cloud Hypervisor's (`rx_bytes`, `rx_frames`, `tx_bytes`,
//! `tx_frames`); drops and errors are what libvirt's domifstat shows as
//! `rx_drop`, `rx_errs`, `tx_drop`, `tx_errs`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::defs::MAX_QUEUE_PAIRS;

/// Live counters of one device (all queue pairs), and frames per pair.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Queue pairs of the device (0 reads as 1).
    pairs: u16,
    /// Frames delivered to the guest, per pair.
    pair_rx_frames: [AtomicU64; MAX_QUEUE_PAIRS as usize],
    /// Frames sent to the tap, per pair.
    pair_tx_frames: [AtomicU64; MAX_QUEUE_PAIRS as usize],
    rx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    rx_errors: AtomicU64,
    tx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    tx_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frame bytes (without the vnet header) delivered to the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames read from the tap that did not fit the guest's buffers.
    pub rx_dropped: u64,
    /// Malformed rx chains (returned empty) and tap read failures.
    pub rx_errors: u64,
    /// Frame bytes (without the vnet header) sent to the tap.
    pub tx_bytes: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Well-formed frames the tap refused.
    pub tx_dropped: u64,
    /// Malformed tx chains or vnet headers, dropped unsent.
    pub tx_errors: u64,
}

impl NetCounters {
    /// Zeroed counters of a device with `pairs` queue pairs (at most
    /// [`MAX_QUEUE_PAIRS`] are counted apart).
    pub fn new(pairs: u16) -> Self {
        NetCounters {
            pairs: pairs.clamp(1, MAX_QUEUE_PAIRS),
            ..NetCounters::default()
        }
    }

    /// Queue pairs of the device.
    pub fn pairs(&self) -> u16 {
        self.pairs.max(1)
    }

    /// Frames (received by the guest, sent by it) on queue pair `pair`;
    /// zeros past the device's pairs.
    pub fn pair_frames(&self, pair: u16) -> (u64, u64) {
        let index = usize::from(pair);
        if pair >= self.pairs() {
            return (0, 0);
        }
        let get = |c: &[AtomicU64]| c.get(index).map_or(0, |c| c.load(Ordering::Relaxed));
        (get(&self.pair_rx_frames), get(&self.pair_tx_frames))
    }

    /// Read every counter.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_bytes: get(&self.rx_bytes),
            rx_frames: get(&self.rx_frames),
            rx_dropped: get(&self.rx_dropped),
            rx_errors: get(&self.rx_errors),
            tx_bytes: get(&self.tx_bytes),
            tx_frames: get(&self.tx_frames),
            tx_dropped: get(&self.tx_dropped),
            tx_errors: get(&self.tx_errors),
        }
    }

    pub(crate) fn rx_frame(&self, pair: u16, bytes: usize) {
        if let Some(count) = self.pair_rx_frames.get(usize::from(pair)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn tx_frame(&self, pair: u16, bytes: usize) {
        if let Some(count) = self.pair_tx_frames.get(usize::from(pair)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rx_drop(&self) {
        self.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rx_error(&self) {
        self.rx_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tx_drop(&self) {
        self.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tx_error(&self) {
        self.tx_errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_per_pair_and_in_total() {
        let counters = NetCounters::new(2);
        counters.rx_frame(0, 100);
        counters.rx_frame(1, 60);
        counters.tx_frame(1, 60);
        assert_eq!(counters.pair_frames(0), (1, 0));
        assert_eq!(counters.pair_frames(1), (1, 1));
        assert_eq!(counters.pair_frames(2), (0, 0), "past the pairs");
        let total = counters.snapshot();
        assert_eq!((total.rx_frames, total.rx_bytes), (2, 160));
        assert_eq!(NetCounters::default().pairs(), 1);
    }
}
