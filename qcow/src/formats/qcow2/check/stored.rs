//! The refcounts stored in the image, as the checker reads and repairs
//! them: the refcount table held in memory and a small write-back cache of
//! refcount blocks.

use crate::error::Result;
use crate::refcount::{block_get, block_set};
use crate::storage::Storage;

/// Offset bits of a refcount table entry (QEMU's REFT_OFFSET_MASK).
pub(super) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Reserved bits of a refcount table entry.
pub(super) const REFT_RESERVED_MASK: u64 = 0x1ff;

/// Why a stored refcount could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unreadable {
    /// The refcount table entry is not cluster aligned.
    Unaligned { block_offset: u64, table_index: u64 },
    /// The block lies beyond what a file can address.
    OutOfRange,
}

/// Refcount blocks kept in memory.
const CACHE_BLOCKS: usize = 16;

struct CachedBlock {
    offset: u64,
    data: Vec<u8>,
    dirty: bool,
    last_use: u64,
}

/// The on-disk refcount structure.
pub(super) struct Stored {
    /// Refcount table entries as stored (reserved bits included).
    pub(super) table: Vec<u64>,
    /// Offset of the refcount table.
    pub(super) table_offset: u64,
    cluster_bits: u32,
    order: u32,
    /// log2 of the refcounts per block.
    block_bits: u32,
    cache: Vec<CachedBlock>,
    tick: u64,
}

impl Stored {
    pub(super) fn new(table: Vec<u64>, table_offset: u64, cluster_bits: u32, order: u32) -> Self {
        Stored {
            table,
            table_offset,
            cluster_bits,
            order,
            block_bits: cluster_bits + 3 - order,
            cache: Vec::new(),
            tick: 0,
        }
    }

    /// log2 of the refcounts per block.
    #[cfg(test)]
    pub(super) fn block_bits(&self) -> u32 {
        self.block_bits
    }

    /// Switches to another refcount table (after a rebuild). The cache
    /// must have been written back.
    pub(super) fn reset(&mut self, table: Vec<u64>, table_offset: u64) {
        debug_assert!(self.cache.iter().all(|b| !b.dirty));
        self.table = table;
        self.table_offset = table_offset;
        self.cache.clear();
    }

    /// The offset of the block holding `cluster`'s refcount: `Ok(None)`
    /// when there is none (refcount 0), `Err` when the table entry is not
    /// aligned or not addressable (QEMU fails those reads with EIO).
    fn block_offset(&self, cluster: u64) -> std::result::Result<Option<u64>, Unreadable> {
        let index = cluster >> self.block_bits;
        let Some(&entry) = self.table.get(index as usize) else {
            return Ok(None);
        };
        let offset = entry & REFT_OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        let cluster_size = 1u64 << self.cluster_bits;
        if offset & (cluster_size - 1) != 0 {
            return Err(Unreadable::Unaligned {
                block_offset: offset,
                table_index: index,
            });
        }
        if offset > i64::MAX as u64 - cluster_size {
            return Err(Unreadable::OutOfRange);
        }
        Ok(Some(offset))
    }

    fn load(&mut self, storage: &dyn Storage, offset: u64) -> Result<usize> {
        self.tick += 1;
        if let Some(i) = self.cache.iter().position(|b| b.offset == offset) {
            self.cache[i].last_use = self.tick;
            return Ok(i);
        }
        if self.cache.len() >= CACHE_BLOCKS {
            let victim = (0..self.cache.len())
                .min_by_key(|&i| self.cache[i].last_use)
                .expect("the cache is full, so not empty");
            let b = self.cache.swap_remove(victim);
            if b.dirty {
                storage.write_at(&b.data, b.offset)?;
            }
        }
        let mut data = vec![0u8; 1 << self.cluster_bits];
        storage.read_at(&mut data, offset)?;
        self.cache.push(CachedBlock {
            offset,
            data,
            dirty: false,
            last_use: self.tick,
        });
        Ok(self.cache.len() - 1)
    }

    /// The stored refcount of `cluster`; the inner `Err` says why it
    /// cannot be read.
    pub(super) fn get(
        &mut self,
        storage: &dyn Storage,
        cluster: u64,
    ) -> Result<std::result::Result<u64, Unreadable>> {
        let offset = match self.block_offset(cluster) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(Ok(0)),
            Err(why) => return Ok(Err(why)),
        };
        let i = self.load(storage, offset)?;
        let index = cluster & ((1u64 << self.block_bits) - 1);
        Ok(Ok(block_get(&self.cache[i].data, index, self.order)))
    }

    /// Sets the stored refcount of `cluster` in the cache; false if no
    /// usable refcount block covers it.
    pub(super) fn set(&mut self, storage: &dyn Storage, cluster: u64, value: u64) -> Result<bool> {
        let offset = match self.block_offset(cluster) {
            Ok(Some(o)) => o,
            _ => return Ok(false),
        };
        let i = self.load(storage, offset)?;
        let index = cluster & ((1u64 << self.block_bits) - 1);
        block_set(&mut self.cache[i].data, index, self.order, value);
        self.cache[i].dirty = true;
        Ok(true)
    }

    /// Writes the changed blocks; returns whether there were any.
    pub(super) fn write_back(&mut self, storage: &dyn Storage) -> Result<bool> {
        let mut wrote = false;
        for b in self.cache.iter_mut().filter(|b| b.dirty) {
            storage.write_at(&b.data, b.offset)?;
            b.dirty = false;
            wrote = true;
        }
        Ok(wrote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn reads_and_writes_back() {
        let s = MemStorage::new();
        s.set_len(3 * 512).unwrap();
        let mut block = vec![0u8; 512];
        block_set(&mut block, 5, 4, 7);
        s.write_at(&block, 1024).unwrap();
        // Entry 0: block at 1024; entry 1: misaligned for 1 KiB clusters.
        let mut st = Stored::new(vec![1024, 0x600, 0], 512, 10, 4);
        assert_eq!(st.block_bits(), 9);
        assert_eq!(st.get(&s, 5).unwrap(), Ok(7));
        assert_eq!(
            st.get(&s, 512).unwrap(),
            Err(Unreadable::Unaligned {
                block_offset: 0x600,
                table_index: 1
            })
        );
        assert_eq!(st.get(&s, 1024).unwrap(), Ok(0));
        assert_eq!(st.get(&s, 1 << 20).unwrap(), Ok(0));
        assert!(st.set(&s, 6, 3).unwrap());
        assert!(!st.set(&s, 1024, 3).unwrap());
        assert!(st.write_back(&s).unwrap());
        let mut back = vec![0u8; 512];
        s.read_at(&mut back, 1024).unwrap();
        assert_eq!(block_get(&back, 6, 4), 3);
    }
}
