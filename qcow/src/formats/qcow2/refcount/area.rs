//! A refcount table grown for a cluster freed past its end, as QEMU 10's
//! alloc_refcount_block grows it when update_refcount decrements such a
//! cluster (the free then fails with EAGAIN and the cluster leaks): an
//! empty refcount block at the first free cluster, meant for the freed
//! cluster's range, then a self-describing area (new refcount blocks and
//! a table half as large again as needed) placed past that range, as
//! qcow2_refcount_area builds it, the header switched to the new table
//! and the old table freed.

use byteorder::{BigEndian, ByteOrder};

use super::{
    block_set, grown_table_size, table_set, FreeFailure, Refcounts, MAX_GROWN_TABLE_ENTRIES,
    MAX_HOST_OFFSET,
};
use crate::error::Result;
use crate::storage::Storage;

impl Refcounts {
    /// Grows the table for `cluster`, which lies past what it covers.
    /// Where QEMU's growth fails (a table past
    /// [`MAX_GROWN_TABLE_ENTRIES`], or offsets past 2^56: EFBIG there),
    /// only the empty block is allocated, as QEMU allocates it before it
    /// sizes the table, and leaks; the free fails with EFBIG instead of
    /// EAGAIN. Returns how the free fails.
    pub(super) fn grow_table_for_failed_free(
        &mut self,
        storage: &dyn Storage,
        cluster: u64,
    ) -> Result<FreeFailure> {
        let epb = self.entries_per_block;
        let cluster_size = self.cluster_size();
        let per_table_cluster = cluster_size / 8;
        // Where the area goes: past the blocks the freed cluster and the
        // new block would need.
        let first_free = self.first_free_in_present_blocks(storage)?;
        let blocks_used = (cluster + 1).max(first_free + 1).div_ceil(epb);
        let area_start = blocks_used * epb;
        let (total_blocks, table_entries) = grown_table_size(area_start, cluster_size, self.order);
        let table_clusters = table_entries / per_table_cluster;
        let area_index = area_start / epb;
        let new_blocks = total_blocks.saturating_sub(area_index);
        let area_end = area_start
            .saturating_add(new_blocks)
            .saturating_add(table_clusters);
        // The empty block for the freed cluster's range, counted where
        // the first free cluster's block counts it, on disk before any
        // table points at it.
        let (new_block, _) = self.alloc_some(storage, 1)?;
        let new_block_offset = new_block << self.cluster_bits;
        storage.write_at(&vec![0u8; cluster_size as usize], new_block_offset)?;
        self.blocks.write_back_all(storage)?;
        if total_blocks > MAX_GROWN_TABLE_ENTRIES
            || table_entries > MAX_GROWN_TABLE_ENTRIES
            || area_end.saturating_mul(cluster_size) > MAX_HOST_OFFSET
            || (cluster / epb) >= total_blocks
        {
            return Ok(FreeFailure::TableTooLarge);
        }
        let mut table = self.table.clone();
        table.resize(table_entries as usize, 0);
        table[(cluster / epb) as usize] = new_block_offset;
        // The area's blocks, each counting the area's clusters in its range.
        let table_start = area_start + new_blocks;
        for i in 0..new_blocks {
            let index = area_index + i;
            let mut data = vec![0u8; cluster_size as usize];
            let covered = index * epb;
            for c in covered.max(area_start)..(covered + epb).min(area_end) {
                block_set(&mut data, c - covered, self.order, 1);
            }
            let offset = (area_start + i) << self.cluster_bits;
            storage.write_at(&data, offset)?;
            table[index as usize] = offset;
        }
        let mut raw = vec![0u8; (table_entries * 8) as usize];
        for (i, &e) in table.iter().enumerate() {
            table_set(&mut raw, i, e);
        }
        let table_offset = table_start << self.cluster_bits;
        storage.write_at(&raw, table_offset)?;
        storage.flush()?;
        let mut hdr = [0u8; 12];
        BigEndian::write_u64(&mut hdr[0..8], table_offset);
        BigEndian::write_u32(&mut hdr[8..12], table_clusters as u32);
        storage.write_at(&hdr, 48)?;
        storage.flush()?;
        let (old_offset, old_clusters) = (self.table_offset, self.table_clusters);
        self.table = table;
        self.table_offset = table_offset;
        self.table_clusters = table_clusters;
        self.table_dirty.clear();
        self.alloc_end = self.alloc_end.max(area_end);
        for c in 0..old_clusters {
            self.add(storage, (old_offset >> self.cluster_bits) + c, -1)?;
        }
        Ok(FreeFailure::NoRefcountBlock)
    }
}
