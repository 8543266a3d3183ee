//! Host cluster reference counts: the refcount table, a cache of refcount
//! blocks, cluster allocation and deferred frees.
//!
//! Ordering rules this module keeps (the image keeps the rest):
//! - a new refcount block is written (and synced by [`Refcounts::flush`])
//!   before the refcount table entry that points at it;
//! - a refcount decrement is only queued here ([`Refcounts::defer_free`])
//!   and applied by the image after the L2/L1 entries that dropped the
//!   reference are on disk, so a crash can leak a cluster but never leave a
//!   used cluster with refcount zero.

use std::collections::BTreeSet;

use byteorder::{BigEndian, ByteOrder};

use crate::cache::TableCache;
use crate::entries::{table_get, table_set, OFFSET_MASK};
use crate::error::{Error, Result};
use crate::measure::refcount_metadata_clusters;
use crate::storage::Storage;

mod area;

/// Highest host offset a table entry can hold (56 bits).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;

/// Most entries a refcount table may grow to, as QEMU 10's
/// qcow2_refcount_area bounds it: its QCOW_MAX_REFTABLE_SIZE (8 MiB)
/// compared with a count of entries, so a grown table reaches 64 MiB,
/// where opening an image takes one of at most 8 MiB
/// ([`crate::header::MAX_REFCOUNT_TABLE_BYTES`], QEMU's "Reference count
/// table too large"). Growing past it fails with EFBIG, "File too large".
pub const MAX_GROWN_TABLE_ENTRIES: u64 = 8 << 20;

/// Refcount blocks and table entries of the self-describing area QEMU's
/// alloc_refcount_block builds at `area_start` (a cluster index) when the
/// table must grow: enough blocks to cover the area itself, and a table
/// half as large again, in whole clusters.
fn grown_table_size(area_start: u64, cluster_size: u64, order: u32) -> (u64, u64) {
    let (total_blocks, _) = refcount_metadata_clusters(area_start, cluster_size, order, true);
    let per_table_cluster = cluster_size / 8;
    let entries =
        (total_blocks + total_blocks.div_ceil(2)).div_ceil(per_table_cluster) * per_table_cluster;
    (total_blocks, entries)
}

/// Refcount blocks kept in memory, in bytes.
const REFCOUNT_CACHE_BYTES: usize = 1 << 20;

/// Reads refcount number `index` of a block with `1 << order`-bit entries.
pub fn block_get(block: &[u8], index: u64, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1u64 << order;
            let bit = index * bits;
            let byte = block[(bit / 8) as usize];
            (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
        }
        3 => block[index as usize].into(),
        4 => BigEndian::read_u16(&block[index as usize * 2..]).into(),
        5 => BigEndian::read_u32(&block[index as usize * 4..]).into(),
        _ => BigEndian::read_u64(&block[index as usize * 8..]),
    }
}

/// Writes refcount number `index` of a block with `1 << order`-bit entries.
/// `value` must fit.
pub fn block_set(block: &mut [u8], index: u64, order: u32, value: u64) {
    match order {
        0..=2 => {
            let bits = 1u64 << order;
            let bit = index * bits;
            let mask = ((1u64 << bits) - 1) as u8;
            let byte = &mut block[(bit / 8) as usize];
            let shift = (bit % 8) as u32;
            *byte = (*byte & !(mask << shift)) | ((value as u8 & mask) << shift);
        }
        3 => block[index as usize] = value as u8,
        4 => BigEndian::write_u16(&mut block[index as usize * 2..], value as u16),
        5 => BigEndian::write_u32(&mut block[index as usize * 4..], value as u32),
        _ => BigEndian::write_u64(&mut block[index as usize * 8..], value),
    }
}

/// Largest refcount representable with `1 << order` bits.
pub fn max_refcount(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

/// Reference counts of an open image.
pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    entries_per_block: u64,
    /// Refcount table entries (refcount block offsets, 0 if absent).
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    table_dirty: BTreeSet<usize>,
    blocks: TableCache,
    free_hint: u64,
    /// One past the highest cluster ever allocated or present in the file.
    alloc_end: u64,
    pending_frees: Vec<u64>,
    /// Queued decrements that could not be applied (the cluster leaked,
    /// as QEMU's qcow2_free_clusters leaks it), for the image's notices.
    failed_frees: Vec<(u64, FreeFailure)>,
}

/// Why a refcount decrement was not applied: QEMU's qcow2_free_clusters
/// prints the errno and leaks the cluster, and the operation that freed
/// it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeFailure {
    /// The refcount is already zero (QEMU's EINVAL).
    AlreadyZero,
    /// No refcount block covers the cluster (QEMU allocates one, growing
    /// the table if it must, and fails with EAGAIN; so does this module).
    NoRefcountBlock,
    /// No refcount block covers the cluster and the table cannot grow to
    /// cover it ([`MAX_GROWN_TABLE_ENTRIES`]): QEMU's EFBIG, after it has
    /// allocated the new block, which leaks.
    TableTooLarge,
}

impl FreeFailure {
    /// strerror's words for QEMU's errno.
    pub fn strerror(self) -> &'static str {
        match self {
            FreeFailure::AlreadyZero => "Invalid argument",
            FreeFailure::NoRefcountBlock => "Resource temporarily unavailable",
            FreeFailure::TableTooLarge => "File too large",
        }
    }
}

impl Refcounts {
    /// Loads the refcount table named by the header (already validated).
    pub fn load(
        storage: &dyn Storage,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u64,
    ) -> Result<Refcounts> {
        let cluster_size = 1usize << cluster_bits;
        let bytes = table_clusters as usize * cluster_size;
        let mut raw = vec![0u8; bytes];
        storage.read_at(&mut raw, table_offset)?;
        let table: Vec<u64> = (0..bytes / 8)
            .map(|i| table_get(&raw, i) & OFFSET_MASK)
            .collect();
        let file_len = storage.len()?;
        Ok(Refcounts {
            cluster_bits,
            order,
            entries_per_block: (cluster_size as u64 * 8) >> order,
            table,
            table_offset,
            table_clusters,
            table_dirty: BTreeSet::new(),
            blocks: TableCache::new(cluster_size, REFCOUNT_CACHE_BYTES / cluster_size),
            free_hint: 0,
            alloc_end: file_len.div_ceil(cluster_size as u64),
            pending_frees: Vec::new(),
            failed_frees: Vec::new(),
        })
    }

    /// Offset and cluster count of the refcount table.
    pub fn table_location(&self) -> (u64, u64) {
        (self.table_offset, self.table_clusters)
    }

    /// The refcount table entries.
    pub fn table(&self) -> &[u64] {
        &self.table
    }

    /// log2 of the refcount width.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// One past the highest cluster index in use or allocated.
    pub fn alloc_end(&self) -> u64 {
        self.alloc_end
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether a refcount block covers host cluster `cluster` (an absent
    /// block means every count it would hold is zero).
    pub fn has_block(&self, cluster: u64) -> bool {
        let block_index = cluster / self.entries_per_block;
        self.table
            .get(block_index as usize)
            .is_some_and(|&offset| offset != 0)
    }

    /// The entries of the table that covering host cluster `cluster`
    /// would grow, when they are past [`MAX_GROWN_TABLE_ENTRIES`] (QEMU's
    /// EFBIG).
    pub fn beyond_table_limit(&self, cluster: u64) -> Option<u64> {
        let epb = self.entries_per_block;
        let area_start = cluster.saturating_add(1).div_ceil(epb).saturating_mul(epb);
        let (blocks, entries) = grown_table_size(area_start, self.cluster_size(), self.order);
        (blocks > MAX_GROWN_TABLE_ENTRIES || entries > MAX_GROWN_TABLE_ENTRIES)
            .then_some(entries.max(blocks))
    }

    fn load_block(&mut self, storage: &dyn Storage, block_offset: u64) -> Result<()> {
        if self.blocks.contains(block_offset) {
            return Ok(());
        }
        if self.blocks.is_full() {
            if let Some((victim, dirty)) = self.blocks.victim() {
                if dirty {
                    self.blocks.write_back(storage, victim)?;
                }
                self.blocks.remove(victim);
            }
        }
        let mut data = vec![0u8; self.cluster_size() as usize];
        storage.read_at(&mut data, block_offset)?;
        self.blocks.insert(block_offset, data, false);
        Ok(())
    }

    /// The refcount of host cluster `cluster`.
    pub fn get(&mut self, storage: &dyn Storage, cluster: u64) -> Result<u64> {
        let block_index = cluster / self.entries_per_block;
        let Some(&block_offset) = self.table.get(block_index as usize) else {
            return Ok(0);
        };
        if block_offset == 0 {
            return Ok(0);
        }
        self.load_block(storage, block_offset)?;
        let block = self
            .blocks
            .get(block_offset)
            .expect("block was just loaded");
        Ok(block_get(
            block,
            cluster % self.entries_per_block,
            self.order,
        ))
    }

    /// Makes sure a refcount block covers `cluster`, creating one (and
    /// growing the table) if needed.
    fn ensure_block(&mut self, storage: &dyn Storage, cluster: u64) -> Result<u64> {
        let block_index = cluster / self.entries_per_block;
        if block_index as usize >= self.table.len() {
            self.grow_table(storage, block_index + 1)?;
        }
        let existing = self.table[block_index as usize];
        if existing != 0 {
            self.load_block(storage, existing)?;
            return Ok(existing);
        }
        // No block: every cluster it would cover has refcount zero, so the
        // first of them is free; the block describes itself there.
        let first = block_index * self.entries_per_block;
        let block_offset = first << self.cluster_bits;
        if block_index == 0 || self.is_reserved(first) {
            // The first range holds the header, which is in use: a missing
            // block there means the refcounts cannot be trusted.
            return Err(Error::Corrupt(format!(
                "refcount block {block_index} is missing but its clusters are in use; \
                 run 'img check -r all'"
            )));
        }
        if block_offset >= MAX_HOST_OFFSET {
            return Err(Error::NoSpace("host offsets beyond 2^56"));
        }
        let mut data = vec![0u8; self.cluster_size() as usize];
        block_set(&mut data, 0, self.order, 1);
        if self.blocks.is_full() {
            if let Some((victim, dirty)) = self.blocks.victim() {
                if dirty {
                    self.blocks.write_back(storage, victim)?;
                }
                self.blocks.remove(victim);
            }
        }
        self.blocks.insert(block_offset, data, true);
        self.table[block_index as usize] = block_offset;
        self.table_dirty.insert(block_index as usize);
        self.alloc_end = self.alloc_end.max(first + 1);
        Ok(block_offset)
    }

    /// Sets the refcount of `cluster` to `value`.
    pub fn set(&mut self, storage: &dyn Storage, cluster: u64, value: u64) -> Result<()> {
        let block_offset = self.ensure_block(storage, cluster)?;
        let block = self
            .blocks
            .get_mut(block_offset)
            .expect("block was just loaded");
        block_set(block, cluster % self.entries_per_block, self.order, value);
        if value == 0 {
            self.free_hint = self.free_hint.min(cluster);
        } else {
            self.alloc_end = self.alloc_end.max(cluster + 1);
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of `cluster`; returns the new value.
    pub fn add(&mut self, storage: &dyn Storage, cluster: u64, delta: i64) -> Result<u64> {
        let old = self.get(storage, cluster)?;
        let new = if delta >= 0 {
            old.checked_add(delta as u64)
                .filter(|&v| v <= max_refcount(self.order))
                .ok_or(Error::RefcountRange {
                    cluster,
                    direction: "overflow",
                    value: old,
                })?
        } else {
            old.checked_sub(delta.unsigned_abs())
                .ok_or(Error::RefcountRange {
                    cluster,
                    direction: "drop below zero",
                    value: old,
                })?
        };
        self.set(storage, cluster, new)?;
        Ok(new)
    }

    /// Allocates `count` contiguous free clusters with refcount 1; returns
    /// the first cluster index.
    pub fn alloc(&mut self, storage: &dyn Storage, count: u64) -> Result<u64> {
        if count <= 1 {
            let (start, _) = self.alloc_some(storage, 1)?;
            return Ok(start);
        }
        // A free run below the end of the used area, within present blocks.
        let mut start = self.free_hint;
        let mut i = 0;
        while start + i < self.alloc_end && i < count {
            let c = start + i;
            if !self.block_present(c) || self.is_reserved(c) || self.get(storage, c)? != 0 {
                start = c + 1;
                i = 0;
                continue;
            }
            i += 1;
        }
        if i == count {
            for c in start..start + count {
                self.set(storage, c, 1)?;
            }
            // As QEMU's free_cluster_index: the scan goes on after the run,
            // so free gaps it skipped as too short stay unused until a free
            // below brings the hint back.
            self.free_hint = start + count;
            return Ok(start);
        }
        let start = self.alloc_area(storage, count)?;
        self.free_hint = start + count;
        Ok(start)
    }

    /// Allocates between 1 and `max` contiguous free clusters with refcount
    /// 1; returns the first cluster index and the count.
    pub fn alloc_some(&mut self, storage: &dyn Storage, max: u64) -> Result<(u64, u64)> {
        let mut c = self.free_hint;
        // The first free cluster, creating the block that covers it.
        loop {
            if (c + 1) << self.cluster_bits > MAX_HOST_OFFSET {
                return Err(Error::NoSpace("host offsets beyond 2^56"));
            }
            if !self.block_present(c) {
                // Every cluster of a missing block's range is free; the block
                // takes the first of them.
                self.ensure_block(storage, c)?;
                continue;
            }
            if !self.is_reserved(c) && (c >= self.alloc_end || self.get(storage, c)? == 0) {
                break;
            }
            c += 1;
        }
        let start = c;
        let mut n = 1;
        while n < max {
            let next = start + n;
            if (next + 1) << self.cluster_bits > MAX_HOST_OFFSET || !self.block_present(next) {
                break;
            }
            if self.is_reserved(next) || (next < self.alloc_end && self.get(storage, next)? != 0) {
                break;
            }
            n += 1;
        }
        for c in start..start + n {
            self.set(storage, c, 1)?;
        }
        // The next scan starts after this run (QEMU's free_cluster_index).
        self.free_hint = start + n;
        Ok((start, n))
    }

    /// Allocates `count` contiguous clusters at the end of the used area,
    /// preceded by whatever new refcount blocks are needed to cover them
    /// and themselves.
    fn alloc_area(&mut self, storage: &dyn Storage, count: u64) -> Result<u64> {
        let cluster_size = self.cluster_size();
        loop {
            let area_start = self.alloc_end.max(storage.len()?.div_ceil(cluster_size));
            let mut n = 0u64;
            let needed = loop {
                let end = area_start + n + count;
                let needed: Vec<u64> = (area_start / self.entries_per_block
                    ..=(end - 1) / self.entries_per_block)
                    .filter(|&b| self.table.get(b as usize).is_none_or(|&o| o == 0))
                    .collect();
                if needed.len() as u64 == n {
                    break needed;
                }
                n = needed.len() as u64;
            };
            let end = area_start + n + count;
            if end << self.cluster_bits > MAX_HOST_OFFSET {
                return Err(Error::NoSpace("host offsets beyond 2^56"));
            }
            if let Some(&max_block) = needed.last() {
                if max_block as usize >= self.table.len() {
                    self.grow_table(storage, max_block + 1)?;
                    continue;
                }
            }
            for (i, &b) in needed.iter().enumerate() {
                let offset = (area_start + i as u64) << self.cluster_bits;
                self.cache_new_block(storage, offset)?;
                self.table[b as usize] = offset;
                self.table_dirty.insert(b as usize);
            }
            for c in area_start..end {
                self.set(storage, c, 1)?;
            }
            self.alloc_end = self.alloc_end.max(end);
            return Ok(area_start + n);
        }
    }

    /// Clusters the allocator must never hand out whatever their refcount
    /// says: the header and the refcount table itself.
    fn is_reserved(&self, cluster: u64) -> bool {
        let first = self.table_offset >> self.cluster_bits;
        cluster == 0 || (first..first + self.table_clusters).contains(&cluster)
    }

    fn block_present(&self, cluster: u64) -> bool {
        let block_index = (cluster / self.entries_per_block) as usize;
        self.table.get(block_index).is_some_and(|&b| b != 0)
    }

    /// Queues a decrement to be applied once the references that were
    /// dropped are durable.
    pub fn defer_free(&mut self, cluster: u64) {
        self.pending_frees.push(cluster);
    }

    /// Number of queued decrements.
    pub fn pending_frees(&self) -> usize {
        self.pending_frees.len()
    }

    /// Applies queued decrements; returns the clusters that became free.
    /// A decrement that would drop a count below zero, or that no
    /// refcount block covers, is skipped and kept for
    /// [`Refcounts::take_failed_frees`] (the cluster stays leaked).
    pub fn apply_pending_frees(&mut self, storage: &dyn Storage) -> Result<Vec<u64>> {
        let pending = std::mem::take(&mut self.pending_frees);
        let mut freed = Vec::new();
        for c in pending {
            if !self.has_block(c) {
                let failure = self.add_block_for_failed_free(storage, c)?;
                self.failed_frees.push((c, failure));
                continue;
            }
            if self.get(storage, c)? == 0 {
                self.failed_frees.push((c, FreeFailure::AlreadyZero));
                continue;
            }
            if self.add(storage, c, -1)? == 0 {
                freed.push(c);
            }
        }
        Ok(freed)
    }

    /// What QEMU's update_refcount does before it fails to change the
    /// count of a cluster no refcount block covers (alloc_refcount_block,
    /// then EAGAIN), a decrement (a free) or an increment (`snapshot -c`)
    /// alike: an empty block is allocated where the first free cluster
    /// is, counted in the block that covers it, and hooked into the table,
    /// when that cluster lies outside the range the new block would cover
    /// (else nothing is allocated); a table too short for it grows
    /// (`area.rs`). Returns how the change fails.
    pub(crate) fn add_block_for_failed_free(
        &mut self,
        storage: &dyn Storage,
        cluster: u64,
    ) -> Result<FreeFailure> {
        let block_index = cluster / self.entries_per_block;
        if block_index as usize >= self.table.len() {
            return self.grow_table_for_failed_free(storage, cluster);
        }
        let first_free = self.first_free_in_present_blocks(storage)?;
        if first_free / self.entries_per_block == block_index || !self.has_block(first_free) {
            return Ok(FreeFailure::NoRefcountBlock);
        }
        let (new_block, _) = self.alloc_some(storage, 1)?;
        let block_offset = new_block << self.cluster_bits;
        self.cache_new_block(storage, block_offset)?;
        self.table[block_index as usize] = block_offset;
        self.table_dirty.insert(block_index as usize);
        Ok(FreeFailure::NoRefcountBlock)
    }

    /// The first free cluster, as alloc_some finds it, within present
    /// blocks only.
    fn first_free_in_present_blocks(&mut self, storage: &dyn Storage) -> Result<u64> {
        let mut first_free = self.free_hint;
        while self.is_reserved(first_free)
            || (first_free < self.alloc_end && self.get(storage, first_free)? != 0)
        {
            first_free += 1;
        }
        Ok(first_free)
    }

    /// The decrements skipped since the last call, oldest first.
    pub fn take_failed_frees(&mut self) -> Vec<(u64, FreeFailure)> {
        std::mem::take(&mut self.failed_frees)
    }

    /// Puts a new, empty refcount block at `block_offset` into the cache
    /// as dirty, writing back the cache's victim first if it is full.
    fn cache_new_block(&mut self, storage: &dyn Storage, block_offset: u64) -> Result<()> {
        if self.blocks.is_full() {
            if let Some((victim, dirty)) = self.blocks.victim() {
                if dirty {
                    self.blocks.write_back(storage, victim)?;
                }
                self.blocks.remove(victim);
            }
        }
        let cluster_size = self.cluster_size() as usize;
        self.blocks
            .insert(block_offset, vec![0u8; cluster_size], true);
        Ok(())
    }

    /// Whether anything is waiting to be written.
    pub fn is_dirty(&self) -> bool {
        self.blocks.has_dirty() || !self.table_dirty.is_empty()
    }

    /// Writes dirty refcount blocks, syncs, then writes changed refcount
    /// table entries and syncs again. Returns whether anything was written.
    pub fn flush(&mut self, storage: &dyn Storage) -> Result<bool> {
        let wrote = self.write_back(storage)?;
        if wrote {
            storage.flush()?;
        }
        Ok(wrote)
    }

    /// [`Refcounts::flush`] without its last sync, for a caller that syncs
    /// once after more writes that nothing on disk reaches yet: dirty
    /// blocks are written, and synced before changed table entries (the
    /// table on disk is live) are written. Returns whether anything was
    /// written.
    pub fn write_back(&mut self, storage: &dyn Storage) -> Result<bool> {
        let wrote_blocks = self.blocks.write_back_all(storage)?;
        if self.table_dirty.is_empty() {
            return Ok(wrote_blocks);
        }
        if wrote_blocks {
            storage.flush()?;
        }
        let dirty = std::mem::take(&mut self.table_dirty);
        for index in dirty {
            let mut buf = [0u8; 8];
            BigEndian::write_u64(&mut buf, self.table[index]);
            storage.write_at(&buf, self.table_offset + index as u64 * 8)?;
        }
        Ok(true)
    }

    /// QEMU's qcow2_shrink_reftable, after a shrink: every refcount block
    /// that counts no cluster but itself leaves the table, which is written
    /// at once, and is then freed in the block that covers it. Returns the
    /// freed clusters, for discarding.
    ///
    /// Metadata that cannot be right is an [`Error::CorruptionFound`] (for
    /// the image to signal), in QEMU's words: an unaligned block offset
    /// (before anything is written), and a freed block that no block in
    /// the table covers or that is not counted once.
    pub fn shrink_table(&mut self, storage: &dyn Storage) -> Result<Vec<u64>> {
        let mut kept = self.table.clone();
        for (index, kept_entry) in kept.iter_mut().enumerate() {
            let block_offset = self.table[index];
            if block_offset == 0 {
                continue;
            }
            let own_index = (block_offset >> self.cluster_bits) / self.entries_per_block;
            let own_entry = (block_offset >> self.cluster_bits) % self.entries_per_block;
            let order = self.order;
            let entries = self.entries_per_block;
            let block = self.cached_block(storage, block_offset)?;
            let unused = (0..entries).all(|i| {
                (own_index == index as u64 && i == own_entry) || block_get(block, i, order) == 0
            });
            if unused {
                *kept_entry = 0;
            }
        }
        if kept == self.table {
            return Ok(Vec::new());
        }
        let mut raw = vec![0u8; kept.len() * 8];
        for (i, &entry) in kept.iter().enumerate() {
            BigEndian::write_u64(&mut raw[i * 8..], entry);
        }
        storage.write_at(&raw, self.table_offset)?;
        storage.flush()?;
        let mut freed = Vec::new();
        for (index, &kept_entry) in kept.iter().enumerate() {
            let block_offset = self.table[index];
            if block_offset == 0 || kept_entry != 0 {
                continue;
            }
            let outcome = self.free_refcount_block(storage, block_offset);
            // The table on disk no longer has it, whatever happened.
            self.table[index] = 0;
            self.blocks.remove(block_offset);
            freed.push(outcome?);
        }
        Ok(freed)
    }

    /// A refcount block from the cache, loaded if needed; an unaligned
    /// offset is corruption (QEMU's qcow2_cache_get).
    fn cached_block(&mut self, storage: &dyn Storage, block_offset: u64) -> Result<&[u8]> {
        if !block_offset.is_multiple_of(self.cluster_size()) {
            return Err(Error::CorruptionFound {
                event: format!(
                    "Cannot get entry from refcount block cache: Offset {block_offset:#x} is \
                     unaligned"
                ),
                marked: false,
                during: None,
            });
        }
        self.load_block(storage, block_offset)?;
        Ok(self
            .blocks
            .get(block_offset)
            .expect("block was just loaded"))
    }

    /// Sets the refcount of the refcount block at `block_offset` from 1 to
    /// 0 in the block covering it (QEMU's qcow2_discard_refcount_block);
    /// returns its cluster.
    fn free_refcount_block(&mut self, storage: &dyn Storage, block_offset: u64) -> Result<u64> {
        let cluster = block_offset >> self.cluster_bits;
        let index = cluster / self.entries_per_block;
        let covering = self.table.get(index as usize).copied().unwrap_or(0);
        if covering == 0 {
            return Err(Error::CorruptionFound {
                event: format!(
                    "Refblock at {block_offset:#x} is not covered by the refcount structures"
                ),
                marked: false,
                during: None,
            });
        }
        let order = self.order;
        let entry = cluster % self.entries_per_block;
        let refcount = block_get(self.cached_block(storage, covering)?, entry, order);
        if refcount != 1 {
            return Err(Error::CorruptionFound {
                event: format!(
                    "Invalid refcount: refblock offset {covering:#x}, reftable index {index}, \
                     block offset {block_offset:#x}, refcount {}",
                    crate::check::c_alt_hex(refcount)
                ),
                marked: false,
                during: None,
            });
        }
        let block = self
            .blocks
            .get_mut(covering)
            .expect("block was just loaded");
        block_set(block, entry, order, 0);
        self.free_hint = self.free_hint.min(cluster);
        Ok(cluster)
    }

    /// Moves the refcount table to a larger one of at least `min_entries`
    /// entries, placed with the refcount blocks that cover it in a new
    /// self-describing area at the end of the image.
    fn grow_table(&mut self, storage: &dyn Storage, min_entries: u64) -> Result<()> {
        let cluster_size = self.cluster_size();
        let per_cluster = cluster_size / 8;
        let old_len = self.table.len() as u64;
        let area_start = self.alloc_end.max(storage.len()?.div_ceil(cluster_size));
        let mut entries =
            min_entries.max(old_len + old_len / 2).div_ceil(per_cluster) * per_cluster;
        let mut new_blocks: Vec<u64>;
        loop {
            // Refuse before sizing anything by `entries`: a hostile L2 entry
            // can name a cluster near 2^56 (found by fuzzing).
            if entries > MAX_GROWN_TABLE_ENTRIES {
                return Err(Error::RefcountTableTooLarge {
                    entries,
                    max: MAX_GROWN_TABLE_ENTRIES,
                });
            }
            let table_clusters = entries / per_cluster;
            // Blocks needed to cover the area itself.
            let mut n = 0u64;
            loop {
                let end = area_start + n + table_clusters;
                let needed: Vec<u64> = (area_start / self.entries_per_block
                    ..=(end - 1) / self.entries_per_block)
                    .filter(|&b| self.table.get(b as usize).is_none_or(|&o| o == 0))
                    .collect();
                if needed.len() as u64 == n {
                    new_blocks = needed;
                    break;
                }
                n = needed.len() as u64;
            }
            let end = area_start + n + table_clusters;
            let max_block = (end - 1) / self.entries_per_block;
            let want = entries.max((max_block + 1).div_ceil(per_cluster) * per_cluster);
            if want == entries {
                break;
            }
            entries = want;
        }
        if entries > MAX_GROWN_TABLE_ENTRIES {
            return Err(Error::RefcountTableTooLarge {
                entries,
                max: MAX_GROWN_TABLE_ENTRIES,
            });
        }
        let table_clusters = entries / per_cluster;
        let n = new_blocks.len() as u64;
        let area_end = area_start + n + table_clusters;
        if area_end << self.cluster_bits > MAX_HOST_OFFSET {
            return Err(Error::NoSpace("host offsets beyond 2^56"));
        }
        // Everything dirty goes out first so the new table can be built from
        // memory and written in one piece.
        self.blocks.write_back_all(storage)?;
        let mut table = self.table.clone();
        table.resize(entries as usize, 0);
        // Build the new blocks in memory.
        let mut block_data: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, &b) in new_blocks.iter().enumerate() {
            let offset = (area_start + i as u64) << self.cluster_bits;
            table[b as usize] = offset;
            block_data.push((b, vec![0u8; cluster_size as usize]));
        }
        for c in area_start..area_end {
            let b = c / self.entries_per_block;
            let index = c % self.entries_per_block;
            if let Some((_, data)) = block_data.iter_mut().find(|(bb, _)| *bb == b) {
                block_set(data, index, self.order, 1);
            } else {
                let block_offset = table[b as usize];
                self.load_block(storage, block_offset)?;
                let block = self.blocks.get_mut(block_offset).expect("loaded");
                block_set(block, index, self.order, 1);
                self.blocks.write_back(storage, block_offset)?;
            }
        }
        for (i, (_, data)) in block_data.iter().enumerate() {
            storage.write_at(data, (area_start + i as u64) << self.cluster_bits)?;
        }
        let mut raw = vec![0u8; (entries * 8) as usize];
        for (i, &e) in table.iter().enumerate() {
            table_set(&mut raw, i, e);
        }
        let new_table_offset = (area_start + n) << self.cluster_bits;
        storage.write_at(&raw, new_table_offset)?;
        storage.flush()?;
        // Point the header at the new table.
        let mut hdr = [0u8; 12];
        BigEndian::write_u64(&mut hdr[0..8], new_table_offset);
        BigEndian::write_u32(&mut hdr[8..12], table_clusters as u32);
        storage.write_at(&hdr, 48)?;
        storage.flush()?;
        let old_offset = self.table_offset;
        let old_clusters = self.table_clusters;
        self.table = table;
        self.table_offset = new_table_offset;
        self.table_clusters = table_clusters;
        self.table_dirty.clear();
        self.alloc_end = self.alloc_end.max(area_end);
        // The old table is unreferenced now that the header is durable.
        for c in 0..old_clusters {
            let cluster = (old_offset >> self.cluster_bits) + c;
            self.add(storage, cluster, -1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = max_refcount(order);
            let entries = (512 * 8) >> order;
            for i in 0..entries {
                block_set(&mut block, i, order, i % (max.min(1000) + 1));
            }
            for i in 0..entries {
                assert_eq!(
                    block_get(&block, i, order),
                    i % (max.min(1000) + 1),
                    "order {order} index {i}"
                );
            }
        }
    }

    fn fresh(order: u32, cluster_bits: u32) -> (crate::storage::MemStorage, Refcounts) {
        // Header at cluster 0, refcount table at 1, block at 2.
        let cs = 1u64 << cluster_bits;
        let s = crate::storage::MemStorage::new();
        let mut table = vec![0u8; cs as usize];
        table_set(&mut table, 0, 2 * cs);
        s.write_at(&table, cs).unwrap();
        let mut block = vec![0u8; cs as usize];
        for c in 0..3 {
            block_set(&mut block, c, order, 1);
        }
        s.write_at(&block, 2 * cs).unwrap();
        let r = Refcounts::load(&s, cluster_bits, order, cs, 1).unwrap();
        (s, r)
    }

    /// The event of a [`Error::CorruptionFound`], or a panic.
    fn corruption_event(e: Error) -> String {
        match e {
            Error::CorruptionFound { event, .. } => event,
            other => panic!("not a corruption: {other}"),
        }
    }

    #[test]
    fn shrinking_frees_a_block_that_counts_only_itself() {
        // 512-byte clusters, 16-bit refcounts: a block covers 256 clusters.
        let (s, mut r) = fresh(4, 9);
        // Counting cluster 256 creates block 1 there, describing itself;
        // nothing else in its range is in use.
        r.set(&s, 256, 1).unwrap();
        assert_eq!(r.table()[1], 256 * 512);
        r.flush(&s).unwrap();
        assert_eq!(r.shrink_table(&s).unwrap(), vec![256]);
        assert_eq!(r.table()[1], 0);
        assert_eq!(r.get(&s, 256).unwrap(), 0);
        let mut raw = [0u8; 16];
        s.read_at(&mut raw, 512).unwrap();
        assert_eq!(table_get(&raw, 1), 0, "the table on disk loses it first");
    }

    #[test]
    fn shrinking_reports_corrupt_refcount_blocks_in_qemus_words() {
        let (s, mut r) = fresh(4, 9);
        // Past the end of the file (reads as zeros: unused), and covered
        // by no block.
        r.table[1] = 0x10_0000;
        let e = corruption_event(r.shrink_table(&s).unwrap_err());
        assert_eq!(
            e,
            "Refblock at 0x100000 is not covered by the refcount structures"
        );
        assert_eq!(r.table()[1], 0);

        let (s, mut r) = fresh(4, 9);
        r.table[1] = 0x200 + 0x40;
        let e = corruption_event(r.shrink_table(&s).unwrap_err());
        assert_eq!(
            e,
            "Cannot get entry from refcount block cache: Offset 0x240 is unaligned"
        );
        assert_eq!(r.table()[1], 0x240, "nothing is written before");
    }

    #[test]
    fn alloc_grows_blocks_and_table() {
        // 512-byte clusters with 64-bit refcounts: a block covers 64
        // clusters and the table 64 blocks, so 10,000 clusters force both
        // new blocks and a table move.
        let (s, mut r) = fresh(6, 9);
        let mut got = Vec::new();
        for _ in 0..10_000 {
            got.push(r.alloc(&s, 1).unwrap());
        }
        r.flush(&s).unwrap();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "a cluster was handed out twice");
        assert!(r.table_location().0 != 512, "table did not move");
        // Reload from storage and compare every refcount.
        let (off, clusters) = r.table_location();
        let mut r2 = Refcounts::load(&s, 9, 6, off, clusters).unwrap();
        for &c in &got {
            assert_eq!(r2.get(&s, c).unwrap(), 1);
        }
        // Header and first block stay; the old table (cluster 1) was freed.
        assert_eq!(r2.get(&s, 0).unwrap(), 1);
        assert_eq!(r2.get(&s, 2).unwrap(), 1);
        assert_eq!(r2.get(&s, 1).unwrap(), 0);
    }

    /// A decrement below zero is skipped (the cluster leaked), as QEMU's
    /// qcow2_free_clusters skips it with EINVAL; one no block covers gets
    /// an empty block hooked in first (EAGAIN), at the first free cluster.
    #[test]
    fn failed_frees_are_kept_and_leak() {
        let (s, mut r) = fresh(4, 16);
        let a = r.alloc(&s, 1).unwrap();
        let uncovered = r.entries_per_block * 3;
        r.defer_free(a);
        r.defer_free(a);
        r.defer_free(uncovered);
        assert_eq!(r.apply_pending_frees(&s).unwrap(), vec![a]);
        assert_eq!(
            r.take_failed_frees(),
            vec![
                (a, FreeFailure::AlreadyZero),
                (uncovered, FreeFailure::NoRefcountBlock)
            ]
        );
        assert!(r.take_failed_frees().is_empty());
        // The new block took the cluster just freed and counts nothing.
        assert_eq!(r.table()[3], a << 16);
        assert_eq!(r.get(&s, a).unwrap(), 1);
        assert_eq!(r.get(&s, uncovered).unwrap(), 0);
    }

    #[test]
    fn deferred_free_and_reuse() {
        let (s, mut r) = fresh(4, 16);
        let a = r.alloc(&s, 4).unwrap();
        r.defer_free(a + 1);
        assert_eq!(r.get(&s, a + 1).unwrap(), 1);
        let freed = r.apply_pending_frees(&s).unwrap();
        assert_eq!(freed, vec![a + 1]);
        assert_eq!(r.alloc(&s, 1).unwrap(), a + 1);
        assert!(matches!(
            r.add(&s, 100, -1),
            Err(Error::RefcountRange { .. })
        ));
    }
}
