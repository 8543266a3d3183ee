//! Per-device request counters: what the guest asked for and how long it
//! took, counted when each request (descriptor chain) is returned to the
//! guest. Shared by all of a device's queues and kept across resets, so
//! that a VMM can report them (Cloud Hypervisor's names, libvirt's
//! rd/wr/fl figures).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The kind of a counted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
}

/// Counters of one kind.
#[derive(Debug)]
struct KindCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    time_ns: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for KindCounters {
    fn default() -> Self {
        KindCounters {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            time_ns: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
        }
    }
}

/// A snapshot of one kind's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Requests completed.
    pub ops: u64,
    /// Bytes they moved (0 for flushes).
    pub bytes: u64,
    /// Their total time from being taken off the ring to being returned (ns).
    pub time_ns: u64,
    /// The shortest (µs; 0 before the first).
    pub min_us: u64,
    /// The longest (µs).
    pub max_us: u64,
}

impl KindStats {
    /// The mean time (µs; 0 before the first).
    pub fn avg_us(&self) -> u64 {
        (self.time_ns / 1000).checked_div(self.ops).unwrap_or(0)
    }
}

/// A device's counters.
#[derive(Debug, Default)]
pub struct DiskStats {
    read: KindCounters,
    write: KindCounters,
    flush: KindCounters,
}

impl DiskStats {
    fn kind(&self, kind: StatKind) -> &KindCounters {
        match kind {
            StatKind::Read => &self.read,
            StatKind::Write => &self.write,
            StatKind::Flush => &self.flush,
        }
    }

    /// Counts one completed request of `kind` that moved `bytes` in `elapsed`.
    pub fn record(&self, kind: StatKind, bytes: u64, elapsed: Duration) {
        let c = self.kind(kind);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1000;
        c.ops.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.time_ns.fetch_add(ns, Ordering::Relaxed);
        c.min_us.fetch_min(us, Ordering::Relaxed);
        c.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The counters of `kind` now.
    pub fn get(&self, kind: StatKind) -> KindStats {
        let c = self.kind(kind);
        let ops = c.ops.load(Ordering::Relaxed);
        KindStats {
            ops,
            bytes: c.bytes.load(Ordering::Relaxed),
            time_ns: c.time_ns.load(Ordering::Relaxed),
            min_us: if ops == 0 {
                0
            } else {
                c.min_us.load(Ordering::Relaxed)
            },
            max_us: c.max_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times() {
        let stats = DiskStats::default();
        assert_eq!(stats.get(StatKind::Read), KindStats::default());
        stats.record(StatKind::Read, 4096, Duration::from_micros(10));
        stats.record(StatKind::Read, 512, Duration::from_micros(30));
        stats.record(StatKind::Flush, 0, Duration::from_micros(5));
        let read = stats.get(StatKind::Read);
        assert_eq!(
            (read.ops, read.bytes, read.min_us, read.max_us),
            (2, 4608, 10, 30)
        );
        assert_eq!((read.time_ns, read.avg_us()), (40_000, 20));
        assert_eq!(stats.get(StatKind::Flush).ops, 1);
        assert_eq!(stats.get(StatKind::Write).ops, 0);
    }
}
