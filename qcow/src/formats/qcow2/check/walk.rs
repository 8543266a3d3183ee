//! Computing the reference count of every host cluster from the metadata
//! (QEMU's calculate_refcounts and the table walks under it), with the
//! checks QEMU makes on the way and the repairs it makes there (misaligned
//! preallocated zero clusters, refcount blocks beyond the end of the file).

use byteorder::{BigEndian, ByteOrder};

use super::stored::{REFT_OFFSET_MASK, REFT_RESERVED_MASK};
use super::{c_alt_hex, ol, Ctx, Flow, Repair, Stop, EINVAL, EIO, ENOMEM};
use crate::entries::{
    FLAG_COMPRESSED, FLAG_COPIED, FLAG_ZERO, L1_RESERVED, L2_STD_RESERVED, OFFSET_MASK,
};
use crate::header::MAX_L1_BYTES;

/// Allocation bits of an extended L2 bitmap.
const BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
/// Zero bits of an extended L2 bitmap.
const BITMAP_ALL_ZEROES: u64 = 0xffff_ffff_0000_0000;

/// QEMU's QCow2ClusterType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClusterType {
    Unallocated,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Compressed,
}

impl Ctx<'_> {
    /// QEMU's qcow2_get_cluster_type (the zero flag counts in version 2
    /// images too, as in QEMU).
    pub(super) fn cluster_type(&self, entry: u64) -> ClusterType {
        if entry & FLAG_COMPRESSED != 0 {
            ClusterType::Compressed
        } else if entry & FLAG_ZERO != 0 && !self.header.extended_l2() {
            if entry & OFFSET_MASK != 0 {
                ClusterType::ZeroAlloc
            } else {
                ClusterType::ZeroPlain
            }
        } else if entry & OFFSET_MASK == 0 {
            if self.data_file && entry & FLAG_COPIED != 0 {
                ClusterType::Normal
            } else {
                ClusterType::Unallocated
            }
        } else {
            ClusterType::Normal
        }
    }

    /// Host offset and length of a compressed cluster (QEMU's
    /// qcow2_parse_compressed_l2_entry).
    fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let csize_shift = 62 - (self.cluster_bits - 8);
        let csize_mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let coffset = entry & ((1u64 << csize_shift) - 1);
        let sectors = ((entry >> csize_shift) & csize_mask) + 1;
        (coffset, sectors * 512 - (coffset & 511))
    }

    /// Counts one more reference to every cluster `offset..offset+size`
    /// touches (QEMU's qcow2_inc_refcounts_imrt).
    pub(super) fn inc_refcounts(&mut self, offset: u64, size: u64) -> Flow<()> {
        if size == 0 {
            return Ok(());
        }
        let cs = self.cluster_size;
        // The last cluster may be partly allocated: up to (not including) a
        // cluster past the end of the file is fine.
        if i128::from(offset) + i128::from(size) - i128::from(self.file_len) >= i128::from(cs) {
            self.msg(format!(
                "ERROR: counting reference for region exceeding the end of the file by one \
                 cluster or more: offset 0x{offset:x} size 0x{size:x}"
            ));
            self.res.corruptions += 1;
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + size - 1) >> self.cluster_bits;
        for k in first..=last {
            if k >= self.imrt().entries() {
                if let Err(bytes) = self.imrt().resize(k + 1) {
                    return Err(self.too_big(k + 1, bytes));
                }
            }
            let refcount = self.imrt().get(k);
            if refcount == self.imrt().max() {
                self.msg(format!(
                    "ERROR: overflow cluster offset=0x{:x}",
                    k << self.cluster_bits
                ));
                self.msg(
                    "Use qemu-img amend to increase the refcount entry width or qemu-img \
                     convert to create a clean copy if the image cannot be opened for writing"
                        .to_string(),
                );
                self.res.corruptions += 1;
                continue;
            }
            self.imrt().set(k, refcount + 1);
        }
        Ok(())
    }

    /// The computed table cannot grow: QEMU fails with ENOMEM.
    pub(super) fn too_big(&mut self, clusters: u64, bytes: u64) -> Stop {
        self.msg(format!(
            "ERROR: reference counts for {clusters} clusters would need {bytes} bytes of memory, \
             more than the limit of {}",
            super::imrt::MAX_IMRT_BYTES
        ));
        self.res.check_errors += 1;
        Stop::Abort(ENOMEM)
    }

    /// QEMU's calculate_refcounts.
    pub(super) fn calculate_refcounts(&mut self, fix: Repair, rebuild: &mut bool) -> Flow<()> {
        // Header.
        self.inc_refcounts(0, self.cluster_size)?;
        // Active L1 table.
        let (l1_offset, l1_size) = (self.header.l1_table_offset, self.header.l1_size);
        self.check_refcounts_l1(l1_offset, l1_size, true, fix, true)?;
        // Snapshots.
        if self.data_file && !self.snapshots.is_empty() {
            self.msg(format!(
                "ERROR {} snapshots in image with data file",
                self.snapshots.len()
            ));
            self.res.corruptions += 1;
        }
        for i in 0..self.snapshots.len() {
            let sn = &self.snapshots[i];
            let (offset, size) = (sn.l1_table_offset, sn.l1_size);
            if offset & (self.cluster_size - 1) != 0 {
                let line = format!(
                    "ERROR snapshot {} ({}) l1_offset={}: L1 table is not cluster aligned; \
                     snapshot table entry corrupted",
                    sn.id,
                    sn.name,
                    c_alt_hex(offset)
                );
                self.msg(line);
                self.res.corruptions += 1;
                continue;
            }
            if u64::from(size) > MAX_L1_BYTES / 8 {
                let line = format!(
                    "ERROR snapshot {} ({}) l1_size={}: L1 table is too large; snapshot table \
                     entry corrupted",
                    sn.id,
                    sn.name,
                    c_alt_hex(size.into())
                );
                self.msg(line);
                self.res.corruptions += 1;
                continue;
            }
            self.check_refcounts_l1(offset, size, false, fix, false)?;
        }
        self.inc_refcounts(self.snapshots_offset, self.snapshots_size)?;
        // Refcount table and (below) blocks.
        let rt_bytes = self.stored.table.len() as u64 * 8;
        self.inc_refcounts(self.stored.table_offset, rt_bytes)?;
        // Encryption header (QEMU counts it between the two).
        if let Some((offset, len)) = self.crypto_header {
            self.inc_refcounts(offset, len)?;
        }
        self.check_bitmaps()?;
        self.check_refblocks(fix, rebuild)
    }

    /// QEMU's check_refcounts_l1.
    fn check_refcounts_l1(
        &mut self,
        l1_offset: u64,
        l1_size: u32,
        frag: bool,
        fix: Repair,
        active: bool,
    ) -> Flow<()> {
        if l1_size == 0 {
            return Ok(());
        }
        let bytes = u64::from(l1_size) * 8;
        self.inc_refcounts(l1_offset, bytes)?;
        if l1_offset
            .checked_add(bytes)
            .is_none_or(|e| e > i64::MAX as u64)
        {
            self.msg("ERROR: I/O error in check_refcounts_l1".to_string());
            self.res.check_errors += 1;
            return Err(Stop::Abort(EIO));
        }
        // At most 32 MiB: the caller checked l1_size.
        let mut raw = vec![0u8; bytes as usize];
        self.storage.read_at(&mut raw, l1_offset)?;
        for chunk in raw.chunks_exact(8) {
            let entry = BigEndian::read_u64(chunk);
            if entry == 0 {
                continue;
            }
            if entry & L1_RESERVED != 0 {
                self.msg(format!(
                    "ERROR found L1 entry with reserved bits set: {entry:x}"
                ));
                self.res.corruptions += 1;
            }
            let l2_offset = entry & OFFSET_MASK;
            self.inc_refcounts(l2_offset, self.cluster_size)?;
            if l2_offset & (self.cluster_size - 1) != 0 {
                self.msg(format!(
                    "ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry \
                     corrupted"
                ));
                self.res.corruptions += 1;
            }
            self.check_refcounts_l2(l2_offset, frag, fix, active)?;
        }
        Ok(())
    }

    /// QEMU's check_refcounts_l2.
    fn check_refcounts_l2(
        &mut self,
        l2_offset: u64,
        frag: bool,
        fix: Repair,
        active: bool,
    ) -> Flow<()> {
        let cs = self.cluster_size;
        let mut table = vec![0u8; cs as usize];
        self.storage.read_at(&mut table, l2_offset)?;
        let extended = self.header.extended_l2();
        let entries = if extended { cs / 16 } else { cs / 8 } as usize;
        let mut next_contiguous_offset = 0u64;
        for i in 0..entries {
            let (entry, bitmap) = l2_get(&table, i, extended);
            let kind = self.cluster_type(entry);
            if kind != ClusterType::Compressed && entry & L2_STD_RESERVED != 0 {
                self.msg(format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
                self.res.corruptions += 1;
            }
            match kind {
                ClusterType::Compressed => {
                    let mut entry = entry;
                    if entry & FLAG_COPIED != 0 {
                        let (coffset, _) = self.compressed_range(entry);
                        self.msg(format!(
                            "ERROR: coffset=0x{coffset:x}: copied flag must never be set for \
                             compressed clusters"
                        ));
                        entry &= !FLAG_COPIED;
                        self.res.corruptions += 1;
                    }
                    if self.data_file {
                        self.msg(format!(
                            "ERROR compressed cluster {i} with data file, entry=0x{entry:x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.msg(format!(
                            "ERROR compressed cluster {i} with non-zero subcluster allocation \
                             bitmap, entry=0x{entry:x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    let (coffset, csize) = self.compressed_range(entry);
                    self.inc_refcounts(coffset, csize)?;
                    if frag {
                        self.frag.allocated += 1;
                        self.frag.compressed += 1;
                        // Compressed clusters are fragmented by nature.
                        self.frag.fragmented += 1;
                    }
                }
                ClusterType::ZeroAlloc | ClusterType::Normal => {
                    let offset = entry & OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.res.corruptions += 1;
                        self.msg(format!(
                            "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster \
                             allocation bitmap"
                        ));
                    }
                    if offset & (cs - 1) != 0 {
                        self.res.corruptions += 1;
                        let contains_data = if extended {
                            bitmap & BITMAP_ALL_ALLOC != 0
                        } else {
                            entry & FLAG_ZERO == 0
                        };
                        if !contains_data {
                            let verb = self.verb(fix.errors());
                            self.msg(format!(
                                "{verb} offset={offset:x}: Preallocated cluster is not properly \
                                 aligned; L2 entry corrupted."
                            ));
                            if fix.errors()
                                && self.fix_l2_entry_by_zero(
                                    l2_offset, &mut table, i, bitmap, active,
                                )?
                            {
                                // Unused now: not counted.
                                continue;
                            }
                        } else {
                            self.msg(format!(
                                "ERROR offset={offset:x}: Data cluster is not properly aligned; \
                                 L2 entry corrupted."
                            ));
                        }
                    }
                    if frag {
                        self.frag.allocated += 1;
                        if next_contiguous_offset != 0 && offset != next_contiguous_offset {
                            self.frag.fragmented += 1;
                        }
                        next_contiguous_offset = offset + cs;
                    }
                    if !self.data_file {
                        self.inc_refcounts(offset, cs)?;
                    }
                }
                ClusterType::ZeroPlain => {}
                ClusterType::Unallocated => {
                    if bitmap & BITMAP_ALL_ALLOC != 0 {
                        self.res.corruptions += 1;
                        self.msg(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .to_string(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns a misaligned preallocated zero cluster into a plain zero
    /// cluster on disk (QEMU's fix_l2_entry_by_zero). Returns whether it
    /// was fixed; an overlap with other metadata stops the check.
    fn fix_l2_entry_by_zero(
        &mut self,
        l2_offset: u64,
        table: &mut [u8],
        index: usize,
        bitmap: u64,
        active: bool,
    ) -> Flow<bool> {
        let extended = self.header.extended_l2();
        let entry_size: u64 = if extended { 16 } else { 8 };
        let start = index * entry_size as usize;
        if extended {
            let bitmap = (bitmap | (bitmap << 32)) & BITMAP_ALL_ZEROES;
            BigEndian::write_u64(&mut table[start..start + 8], 0);
            BigEndian::write_u64(&mut table[start + 8..start + 16], bitmap);
        } else {
            BigEndian::write_u64(&mut table[start..start + 8], FLAG_ZERO);
        }
        let entry_offset = l2_offset + start as u64;
        let ignore = if active {
            ol::ACTIVE_L2
        } else {
            ol::INACTIVE_L2
        };
        if !self.write_allowed(entry_offset, entry_size, ignore)? {
            self.msg("ERROR: Overlap check failed".to_string());
            self.res.check_errors += 1;
            return Err(Stop::Abort(EIO));
        }
        let bytes = &table[start..start + entry_size as usize];
        let written = self
            .storage
            .write_at(bytes, entry_offset)
            .and_then(|()| self.storage.flush());
        if let Err(e) = written {
            self.msg(format!("ERROR: Failed to overwrite L2 table entry: {e}"));
            self.res.check_errors += 1;
            return Ok(false);
        }
        self.res.fixed_corruptions(1);
        Ok(true)
    }

    /// QEMU's check_refblocks: counts each refcount block, and with
    /// `Repair::All` grows the file over blocks that lie beyond its end.
    fn check_refblocks(&mut self, fix: Repair, rebuild: &mut bool) -> Flow<()> {
        let cs = self.cluster_size;
        for i in 0..self.stored.table.len() {
            let raw = self.stored.table[i];
            let offset = raw & REFT_OFFSET_MASK;
            let cluster = offset >> self.cluster_bits;
            if raw & REFT_RESERVED_MASK != 0 {
                self.msg(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if offset & (cs - 1) != 0 {
                self.msg(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry \
                     corrupted"
                ));
                self.res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= self.imrt().entries() {
                self.res.corruptions += 1;
                let verb = self.verb(fix.errors());
                self.msg(format!("{verb} refcount block {i} is outside image"));
                if fix.errors() {
                    match self.grow_file_over(offset)? {
                        Ok(()) => {
                            self.res.fixed_corruptions(1);
                            // Freshly zeroed: its count can only be 1.
                            self.inc_refcounts(offset, cs)?;
                        }
                        Err(reason) => {
                            *rebuild = true;
                            self.msg(format!("ERROR could not resize image: {reason}"));
                        }
                    }
                }
                continue;
            }
            if offset != 0 {
                self.inc_refcounts(offset, cs)?;
                let count = self.imrt().get(cluster);
                if count != 1 {
                    self.msg(format!("ERROR refcount block {i} refcount={count}"));
                    self.res.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }

    /// Extends the file to cover the cluster at `offset`; the inner `Err`
    /// is the reason it could not, as QEMU's strerror text.
    fn grow_file_over(&mut self, offset: u64) -> Flow<std::result::Result<(), String>> {
        let cs = self.cluster_size;
        if offset > i64::MAX as u64 - cs {
            return Ok(Err(EINVAL.to_string()));
        }
        let new_len = offset + cs;
        let new_clusters = new_len.div_ceil(cs).max(self.imrt().entries());
        // Refuse before touching the file if the counts would not fit.
        if super::imrt::byte_size(new_clusters, self.header.refcount_order, cs)
            .is_none_or(|b| b > super::imrt::MAX_IMRT_BYTES)
            || new_clusters > i32::MAX as u64
        {
            return Ok(Err(super::EFBIG.to_string()));
        }
        if let Err(e) = self.storage.set_len(new_len) {
            return Ok(Err(e.to_string()));
        }
        self.file_len = self.storage.len()?;
        let new_clusters = self.file_len.div_ceil(cs).max(self.imrt().entries());
        if let Err(bytes) = self.imrt().resize(new_clusters) {
            return Err(self.too_big(new_clusters, bytes));
        }
        if offset >> self.cluster_bits >= self.imrt().entries() {
            return Ok(Err(EINVAL.to_string()));
        }
        Ok(Ok(()))
    }
}

/// L2 entry `index` and its subcluster bitmap (0 without extended L2).
pub(super) fn l2_get(table: &[u8], index: usize, extended: bool) -> (u64, u64) {
    if extended {
        let s = index * 16;
        (
            BigEndian::read_u64(&table[s..s + 8]),
            BigEndian::read_u64(&table[s + 8..s + 16]),
        )
    } else {
        (BigEndian::read_u64(&table[index * 8..index * 8 + 8]), 0)
    }
}
