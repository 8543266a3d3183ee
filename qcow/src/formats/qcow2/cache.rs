//! A bounded cache of one-cluster metadata tables (L2 tables, refcount
//! blocks), keyed by host offset.
//!
//! The cache only holds bytes and dirty flags; the ordering of write-back
//! (refcount blocks before the L2 tables that depend on them) is decided by
//! the image, which asks for victims and writes them itself.

use std::collections::HashMap;

use crate::error::Result;
use crate::offset_hash::OffsetHashBuilder;
use crate::storage::Storage;

struct Slot {
    data: Vec<u8>,
    dirty: bool,
    last_used: u64,
}

/// A bounded set of cached tables with least-recently-used eviction.
pub struct TableCache {
    table_size: usize,
    capacity: usize,
    slots: HashMap<u64, Slot, OffsetHashBuilder>,
    clock: u64,
}

impl TableCache {
    /// A cache of at most `capacity` tables of `table_size` bytes.
    pub fn new(table_size: usize, capacity: usize) -> Self {
        TableCache {
            table_size,
            capacity: capacity.max(2),
            slots: HashMap::default(),
            clock: 0,
        }
    }

    /// Whether a table is cached.
    pub fn contains(&self, host_offset: u64) -> bool {
        self.slots.contains_key(&host_offset)
    }

    /// Whether the cache is full, so the next insert needs an eviction.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// The least recently used table, to evict; `(offset, dirty)`.
    pub fn victim(&self) -> Option<(u64, bool)> {
        self.slots
            .iter()
            .min_by_key(|(_, s)| s.last_used)
            .map(|(&k, s)| (k, s.dirty))
    }

    /// Removes a table (which must be clean or already written).
    pub fn remove(&mut self, host_offset: u64) {
        self.slots.remove(&host_offset);
    }

    /// Inserts a table read from storage or freshly made.
    pub fn insert(&mut self, host_offset: u64, data: Vec<u8>, dirty: bool) {
        debug_assert_eq!(data.len(), self.table_size);
        self.clock += 1;
        self.slots.insert(
            host_offset,
            Slot {
                data,
                dirty,
                last_used: self.clock,
            },
        );
    }

    /// Read access to a cached table.
    pub fn get(&mut self, host_offset: u64) -> Option<&[u8]> {
        self.clock += 1;
        let clock = self.clock;
        self.slots.get_mut(&host_offset).map(|s| {
            s.last_used = clock;
            &s.data[..]
        })
    }

    /// Write access to a cached table; marks it dirty.
    pub fn get_mut(&mut self, host_offset: u64) -> Option<&mut [u8]> {
        self.clock += 1;
        let clock = self.clock;
        self.slots.get_mut(&host_offset).map(|s| {
            s.last_used = clock;
            s.dirty = true;
            &mut s.data[..]
        })
    }

    /// Offsets of every dirty table, in ascending order.
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether any table is dirty.
    pub fn has_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }

    /// Writes one dirty table to storage and marks it clean.
    pub fn write_back(&mut self, storage: &dyn Storage, host_offset: u64) -> Result<()> {
        if let Some(s) = self.slots.get_mut(&host_offset) {
            if s.dirty {
                storage.write_at(&s.data, host_offset)?;
                s.dirty = false;
            }
        }
        Ok(())
    }

    /// Writes every dirty table (ascending offsets); the caller syncs.
    pub fn write_back_all(&mut self, storage: &dyn Storage) -> Result<bool> {
        let dirty = self.dirty_offsets();
        for off in &dirty {
            self.write_back(storage, *off)?;
        }
        Ok(!dirty.is_empty())
    }

    /// Drops every table (after the image changed under the cache).
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn lru_and_write_back() {
        let mut c = TableCache::new(8, 2);
        c.insert(0, vec![0; 8], false);
        c.insert(8, vec![1; 8], false);
        assert!(c.is_full());
        c.get(0);
        assert_eq!(c.victim(), Some((8, false)));
        c.get_mut(0).unwrap()[0] = 5;
        assert_eq!(c.dirty_offsets(), vec![0]);
        let s = MemStorage::new();
        assert!(c.write_back_all(&s).unwrap());
        assert!(!c.has_dirty());
        assert_eq!(s.to_bytes()[0], 5);
    }
}
