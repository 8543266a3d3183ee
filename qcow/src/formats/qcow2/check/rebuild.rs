//! Writing a new refcount structure from the computed reference counts
//! (QEMU's rebuild_refcount_structure): new refcount blocks and a new
//! refcount table go into clusters no metadata references, the header is
//! pointed at them last, and the old structure is left to the leak repair.

use byteorder::{BigEndian, ByteOrder};

use super::{Ctx, Flow, Stop, EFBIG, EIO};
use crate::header::MAX_REFCOUNT_TABLE_BYTES;

impl Ctx<'_> {
    /// Allocates `count` contiguous clusters in the computed table (QEMU's
    /// alloc_clusters_imrt), first fit from `*first_free`, which is left at
    /// the first gap seen. Returns the byte offset.
    fn alloc_clusters_imrt(&mut self, count: u64, first_free: &mut u64) -> Flow<u64> {
        let mut cluster = *first_free;
        let mut contiguous = 0u64;
        let mut first_gap = true;
        let entries = self.imrt().entries();
        while cluster < entries && contiguous < count {
            if self.imrt().get(cluster) == 0 {
                contiguous += 1;
                if first_gap {
                    *first_free = cluster;
                    first_gap = false;
                }
            } else {
                contiguous = 0;
            }
            cluster += 1;
        }
        if contiguous < count {
            let needed = cluster + count - contiguous;
            if let Err(bytes) = self.imrt().resize(needed) {
                return Err(self.too_big(needed, bytes));
            }
        }
        let start = cluster - contiguous;
        for c in start..start + count {
            self.imrt().set(c, 1);
        }
        Ok(start << self.cluster_bits)
    }

    /// Rebuild failed: QEMU reports the error, counts it and fails the
    /// check.
    fn rebuild_failed(&mut self, what: &str, reason: &'static str) -> Stop {
        self.msg(format!("{what}: {reason}"));
        self.res.check_errors += 1;
        Stop::Abort(reason)
    }

    /// Writes a refcount block for every block-sized range of clusters in
    /// `first..end` that has a used cluster (QEMU's
    /// rebuild_refcounts_write_refblocks). Blocks are allocated in the
    /// computed table, so they count themselves; `reftable` receives their
    /// offsets. Returns whether `reftable` grew.
    fn write_refblocks(&mut self, first: u64, end: u64, reftable: &mut Vec<u64>) -> Flow<bool> {
        let cs = self.cluster_size;
        // The blocks get the computed table's width, which a refcount
        // width change makes differ from the stored one.
        let block_bits = self.cluster_bits + 3 - self.imrt().order();
        let mut end = end;
        let mut first_free = 0u64;
        let mut grown = false;
        let mut cluster = first;
        while cluster < end {
            if self.imrt().get(cluster) == 0 {
                cluster += 1;
                continue;
            }
            let block_index = cluster >> block_bits;
            let block_start = block_index << block_bits;
            let existing = reftable.get(block_index as usize).copied().unwrap_or(0);
            let block_offset = if existing != 0 {
                existing
            } else {
                // Never inside a block already written.
                first_free = first_free.max(block_start);
                let offset = self.alloc_clusters_imrt(1, &mut first_free)?;
                let block_cluster = offset >> self.cluster_bits;
                if block_cluster >= end {
                    // The block holding this block's own count must be
                    // written too.
                    end = block_cluster + 1;
                }
                if reftable.len() as u64 <= block_index {
                    let entries = ((block_index + 1) * 8).next_multiple_of(cs) / 8;
                    if entries * 8 > MAX_REFCOUNT_TABLE_BYTES {
                        return Err(self.rebuild_failed("ERROR allocating reftable memory", EFBIG));
                    }
                    reftable.resize(entries as usize, 0);
                    grown = true;
                }
                reftable[block_index as usize] = offset;
                offset
            };
            if !self.write_allowed(block_offset, cs, 0)? {
                return Err(self.rebuild_failed("ERROR writing refblock", EIO));
            }
            let block = self.imrt().block(block_index).to_vec();
            self.storage.write_at(&block, block_offset)?;
            cluster = block_start + (1 << block_bits);
        }
        Ok(grown)
    }

    /// Writes new refcount blocks and a new refcount table from the
    /// computed counts into clusters they mark used, and makes them
    /// durable; the header still points at the old structure. Returns the
    /// table's offset, its size in clusters and its entries.
    pub(super) fn write_new_structure(&mut self) -> Flow<(u64, u64, Vec<u64>)> {
        let cs = self.cluster_size;
        self.empty_refcount_cache()?;
        let mut reftable: Vec<u64> = Vec::new();
        let entries = self.imrt().entries();
        self.write_refblocks(0, entries, &mut reftable)?;
        // Placing the table changes the counts of its clusters, whose
        // blocks are then written again; that may grow the table, which
        // then needs a new place.
        let (reftable_offset, reftable_clusters) = loop {
            let clusters = (reftable.len() as u64 * 8).div_ceil(cs);
            let mut first_free = 0;
            let offset = self.alloc_clusters_imrt(clusters, &mut first_free)?;
            let start = offset >> self.cluster_bits;
            if !self.write_refblocks(start, start + clusters, &mut reftable)? {
                break (offset, clusters);
            }
        };
        let mut raw = vec![0u8; reftable.len() * 8];
        for (chunk, &entry) in raw.chunks_exact_mut(8).zip(&reftable) {
            BigEndian::write_u64(chunk, entry);
        }
        if !self.write_allowed(reftable_offset, raw.len() as u64, 0)? {
            return Err(self.rebuild_failed("ERROR writing reftable", EIO));
        }
        self.storage.write_at(&raw, reftable_offset)?;
        // Blocks and table are durable before the header points at them.
        self.storage.flush()?;
        Ok((reftable_offset, reftable_clusters, reftable))
    }

    /// QEMU's rebuild_refcount_structure.
    pub(super) fn rebuild_refcount_structure(&mut self) -> Flow<()> {
        let (reftable_offset, reftable_clusters, reftable) = self.write_new_structure()?;
        let mut hdr = [0u8; 12];
        BigEndian::write_u64(&mut hdr[0..8], reftable_offset);
        BigEndian::write_u32(&mut hdr[8..12], reftable_clusters as u32);
        self.storage.write_at(&hdr, 48)?;
        self.storage.flush()?;
        self.header.refcount_table_offset = reftable_offset;
        self.header.refcount_table_clusters = reftable_clusters as u32;
        self.stored.reset(reftable, reftable_offset);
        self.file_len = self.storage.len()?;
        Ok(())
    }
}
