//! The disk blocks the guest changes, for a migration that copies the
//! disks (`--copy-storage-all`).
//!
//! The migration copies a disk while the guest runs; every block the
//! guest writes, zeroes or discards meanwhile must be sent again. Each
//! virtio-blk device holds a [`DiskWriteTracker`]; while a
//! [`DiskDirtyMap`] is installed in it, the queue handlers mark the range
//! of every write, write-zeroes and discard both when it is taken off the
//! ring and when it completes. The second mark matters: a block read for
//! the copy while its write is in flight may be read before the write
//! lands, and the mark at completion makes the next pass send it again.
//! With no map installed a request costs one relaxed atomic load and one
//! increment of the tracker's change count ([`DiskWriteTracker::changes`]),
//! which tells a migration whether a disk needs another flush.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The smallest block a map tracks.
pub const MIN_BLOCK: u64 = 4096;
/// The largest block a map tracks.
pub const MAX_BLOCK: u64 = 64 << 20;
/// The most blocks one map holds (a 16 MiB bitmap at most).
pub const MAX_BLOCKS: u64 = 1 << 27;

/// Why a map cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyMapError {
    /// The disk's size.
    pub disk_size: u64,
    /// The block size asked for.
    pub block_size: u64,
}

impl std::fmt::Display for DirtyMapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "disk dirty map: block size {} (a power of two from {MIN_BLOCK} to {MAX_BLOCK}) over a disk of {} bytes is out of bounds (at most {MAX_BLOCKS} blocks)",
            self.block_size, self.disk_size
        )
    }
}

impl std::error::Error for DirtyMapError {}

/// One bit per block of a disk: set when the guest changed it.
#[derive(Debug)]
pub struct DiskDirtyMap {
    block_size: u64,
    blocks: u64,
    bits: Vec<AtomicU64>,
}

impl DiskDirtyMap {
    /// A clean map of a disk of `disk_size` bytes in blocks of
    /// `block_size` bytes.
    pub fn new(disk_size: u64, block_size: u64) -> Result<Self, DirtyMapError> {
        let blocks = disk_size.div_ceil(block_size.max(1));
        if !block_size.is_power_of_two()
            || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size)
            || blocks > MAX_BLOCKS
        {
            return Err(DirtyMapError {
                disk_size,
                block_size,
            });
        }
        Ok(DiskDirtyMap {
            block_size,
            blocks,
            bits: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Marks the blocks `len` bytes at disk byte `offset` touch (the part
    /// inside the disk).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || offset >= self.blocks * self.block_size {
            return;
        }
        let first = offset / self.block_size;
        let last = (offset.saturating_add(len - 1) / self.block_size).min(self.blocks - 1);
        for block in first..=last {
            self.bits[(block / 64) as usize].fetch_or(1 << (block % 64), Ordering::AcqRel);
        }
    }

    /// The blocks marked since the last call, in increasing order; the
    /// map is clean of them after.
    pub fn take(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (w, word) in self.bits.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                out.push(w as u64 * 64 + bit);
            }
        }
        out
    }

    /// How many blocks are marked.
    pub fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

/// A device's slot for a [`DiskDirtyMap`], shared with its queue
/// handlers.
#[derive(Debug, Default)]
pub struct DiskWriteTracker {
    active: AtomicBool,
    map: RwLock<Option<Arc<DiskDirtyMap>>>,
    /// Marks so far, map or not.
    changes: AtomicU64,
}

impl DiskWriteTracker {
    /// A tracker with no map: nothing is marked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks every change the guest makes from now on in `map`.
    pub fn install(&self, map: Arc<DiskDirtyMap>) {
        let mut slot = self.map.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(map);
        self.active.store(true, Ordering::Release);
    }

    /// Stops marking.
    pub fn uninstall(&self) {
        let mut slot = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.active.store(false, Ordering::Release);
        *slot = None;
    }

    /// Marks a change of `len` bytes at disk byte `offset`, if a map is
    /// installed, and counts it in any case.
    pub fn mark(&self, offset: u64, len: u64) {
        self.changes.fetch_add(1, Ordering::Release);
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let slot = self.map.read().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = slot.as_ref() {
            map.mark(offset, len);
        }
    }

    /// How many changes were marked since the device was made (each
    /// write, write-zeroes and discard counts when it is taken off the
    /// ring and again when it completes). Read before a flush and again
    /// once the queues are drained: an unchanged count means nothing was
    /// written since that the flush did not cover.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_blocks_and_takes_them_once() {
        let map = DiskDirtyMap::new(1 << 20, 65536).unwrap();
        assert_eq!(map.blocks(), 16);
        map.mark(65535, 2); // blocks 0 and 1
        map.mark(15 << 16, 1 << 20); // the last block, clipped at the end
        map.mark(1 << 20, 4096); // past the end: ignored
        map.mark(0, 0);
        assert_eq!(map.count(), 3);
        assert_eq!(map.take(), vec![0, 1, 15]);
        assert!(map.take().is_empty());
        // A size that is not a multiple of the block: its tail block.
        let map = DiskDirtyMap::new(65536 + 512, 65536).unwrap();
        map.mark(65536, 512);
        assert_eq!(map.take(), vec![1]);
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(DiskDirtyMap::new(1 << 20, 1000).is_err());
        assert!(DiskDirtyMap::new(1 << 20, 512).is_err());
        assert!(DiskDirtyMap::new(u64::MAX, MIN_BLOCK).is_err());
        assert!(DiskDirtyMap::new(0, MIN_BLOCK).unwrap().take().is_empty());
    }

    #[test]
    fn the_tracker_marks_only_while_a_map_is_installed() {
        let tracker = DiskWriteTracker::new();
        let map = Arc::new(DiskDirtyMap::new(1 << 20, 4096).unwrap());
        tracker.mark(0, 4096);
        assert_eq!(tracker.changes(), 1);
        tracker.install(map.clone());
        tracker.mark(8192, 4096);
        tracker.uninstall();
        tracker.mark(16384, 4096);
        assert_eq!(map.take(), vec![2]);
    }
}
