//! Guarding the checker's own writes: QEMU's metadata overlap check and
//! its corruption signal, and reading stored refcounts with the same
//! signal for misaligned refcount blocks.

use byteorder::{BigEndian, ByteOrder};

use super::stored::{self, Unreadable};
use super::{Ctx, Repair};
use crate::entries::OFFSET_MASK;
use crate::error::Result;
use crate::header::INCOMPAT_CORRUPT;

/// Metadata kinds for the overlap check (QEMU's QCow2MetadataOverlap).
pub(super) mod ol {
    pub(in crate::formats::qcow2::check) const HEADER: u32 = 1 << 0;
    pub(in crate::formats::qcow2::check) const ACTIVE_L1: u32 = 1 << 1;
    pub(in crate::formats::qcow2::check) const ACTIVE_L2: u32 = 1 << 2;
    pub(in crate::formats::qcow2::check) const REFTABLE: u32 = 1 << 3;
    pub(in crate::formats::qcow2::check) const REFBLOCK: u32 = 1 << 4;
    pub(in crate::formats::qcow2::check) const SNAPSHOT_TABLE: u32 = 1 << 5;
    pub(in crate::formats::qcow2::check) const INACTIVE_L1: u32 = 1 << 6;
    pub(in crate::formats::qcow2::check) const INACTIVE_L2: u32 = 1 << 7;
}

impl Ctx<'_> {
    /// Reports corruption found while working, once, as QEMU's
    /// qcow2_signal_corruption does: on an image opened for writing (a
    /// repair) it is fatal and sets the corrupt bit.
    pub(super) fn signal_corruption(&mut self, message: &str) -> Result<()> {
        if self.signaled_corruption {
            return Ok(());
        }
        self.signaled_corruption = true;
        if self.fix == Repair::None {
            self.msg(format!(
                "qcow2: Image is corrupt: {message}; further non-fatal corruption events will \
                 be suppressed"
            ));
            return Ok(());
        }
        self.msg(format!(
            "qcow2: Marking image as corrupt: {message}; further corruption events will be \
             suppressed"
        ));
        if self.header.version >= 3 {
            let mut raw = [0u8; 8];
            self.storage.read_at(&mut raw, 72)?;
            let features = BigEndian::read_u64(&raw) | INCOMPAT_CORRUPT;
            BigEndian::write_u64(&mut raw, features);
            self.storage.write_at(&raw, 72)?;
            self.storage.flush()?;
        }
        Ok(())
    }

    /// The stored refcount of `cluster`, `None` when QEMU could not read
    /// it (EIO); a misaligned refcount block is signalled as corruption.
    pub(super) fn stored_refcount(&mut self, cluster: u64) -> Result<Option<u64>> {
        match self.stored.get(self.storage, cluster)? {
            Ok(r) => Ok(Some(r)),
            Err(Unreadable::Unaligned {
                block_offset,
                table_index,
            }) => {
                self.signal_corruption(&format!(
                    "Refblock offset {} unaligned (reftable index: {})",
                    super::c_alt_hex(block_offset),
                    super::c_alt_hex(table_index)
                ))?;
                Ok(None)
            }
            Err(Unreadable::OutOfRange) => Ok(None),
        }
    }

    /// QEMU's qcow2_check_metadata_overlap with the default ("cached")
    /// checks minus `ignore`: the name of the metadata that
    /// `offset..offset+size` would overwrite, if any.
    pub(super) fn overlap(&self, offset: u64, size: u64, ignore: u32) -> Option<&'static str> {
        if size == 0 {
            return None;
        }
        let cs = self.cluster_size;
        if ignore & ol::HEADER == 0 && offset < cs {
            return Some("qcow2_header");
        }
        let start = offset & !(cs - 1);
        let len = u128::from((offset & (cs - 1)) + size).next_multiple_of(u128::from(cs));
        let hits = |o: u64, l: u64| {
            let (a, b) = (u128::from(start), u128::from(o));
            a < b + u128::from(l) && b < a + len
        };
        let h = &self.header;
        if ignore & ol::ACTIVE_L1 == 0
            && h.l1_size > 0
            && hits(h.l1_table_offset, u64::from(h.l1_size) * 8)
        {
            return Some("active L1 table");
        }
        let rt_bytes = self.stored.table.len() as u64 * 8;
        if ignore & ol::REFTABLE == 0 && rt_bytes > 0 && hits(self.stored.table_offset, rt_bytes) {
            return Some("refcount table");
        }
        if ignore & ol::SNAPSHOT_TABLE == 0
            && self.snapshots_size > 0
            && hits(self.snapshots_offset, self.snapshots_size)
        {
            return Some("snapshot table");
        }
        if ignore & ol::INACTIVE_L1 == 0
            && self
                .snapshots
                .iter()
                .any(|s| s.l1_size > 0 && hits(s.l1_table_offset, u64::from(s.l1_size) * 8))
        {
            return Some("inactive L1 table");
        }
        if ignore & ol::ACTIVE_L2 == 0
            && self
                .l1_table
                .iter()
                .any(|&e| e & OFFSET_MASK != 0 && hits(e & OFFSET_MASK, cs))
        {
            return Some("active L2 table");
        }
        if ignore & ol::REFBLOCK == 0
            && self.stored.table.iter().any(|&e| {
                let o = e & stored::REFT_OFFSET_MASK;
                o != 0 && hits(o, cs)
            })
        {
            return Some("refcount block");
        }
        if let Some(b) = &self.bitmaps {
            if hits(b.dir_offset, b.dir_size) {
                return Some("bitmap directory");
            }
        }
        None
    }

    /// Refuses a metadata write that would overwrite other metadata (QEMU's
    /// qcow2_pre_write_overlap_check): marks the image corrupt and returns
    /// false.
    pub(super) fn write_allowed(&mut self, offset: u64, size: u64, ignore: u32) -> Result<bool> {
        match self.overlap(offset, size, ignore) {
            None => Ok(true),
            Some(what) => {
                self.signal_corruption(&format!(
                    "Preventing invalid write on metadata (overlaps with {what})"
                ))?;
                Ok(false)
            }
        }
    }
}
