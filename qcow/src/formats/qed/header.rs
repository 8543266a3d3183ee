//! The QED header (little-endian, at the start of the first cluster),
//! validated as QEMU's qed driver validates it, with our bound on table
//! sizes.

use byteorder::{ByteOrder, LittleEndian};

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;

/// "QED\0" as a little-endian u32.
pub const MAGIC: u32 = 0x0044_4551;
/// Bytes of the header fields.
pub const HEADER_LEN: usize = 64;
/// Feature: the image has a backing file.
pub const F_BACKING_FILE: u64 = 1;
/// Feature: the image needs a check (it was not closed cleanly).
pub const F_NEED_CHECK: u64 = 2;
/// Feature: the backing file is raw (no probing).
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 4;
/// Every feature QEMU knows.
pub const FEATURE_MASK: u64 = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
/// Smallest and largest cluster sizes.
pub const MIN_CLUSTER_SIZE: u32 = 4 << 10;
/// Largest cluster size.
pub const MAX_CLUSTER_SIZE: u32 = 64 << 20;
/// Largest table size in clusters.
pub const MAX_TABLE_SIZE: u32 = 16;
/// Largest table we load (16 MiB: two million entries); QEMU's own
/// bound, 16 clusters of 64 MiB, would be a 1 GiB table per read.
pub const MAX_TABLE_BYTES: u64 = 16 << 20;
/// Longest backing file name QEMU reads.
pub const MAX_BACKING_NAME: u32 = 1023;

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Clusters per table.
    pub table_size: u32,
    /// Clusters of the header.
    pub header_size: u32,
    /// Feature bits.
    pub features: u64,
    /// Compatible feature bits.
    pub compat_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Guest size in bytes.
    pub image_size: u64,
    /// Offset of the backing file name.
    pub backing_filename_offset: u32,
    /// Bytes of the backing file name.
    pub backing_filename_size: u32,
}

impl Header {
    /// Parses and checks the header.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header> {
        let u32_at = |at: usize| LittleEndian::read_u32(&b[at..at + 4]);
        let u64_at = |at: usize| LittleEndian::read_u64(&b[at..at + 8]);
        if u32_at(0) != MAGIC {
            return Err(invalid(
                FORMAT,
                "magic",
                u32_at(0).into(),
                "Image not in QED format",
            ));
        }
        let h = Header {
            cluster_size: u32_at(4),
            table_size: u32_at(8),
            header_size: u32_at(12),
            features: u64_at(16),
            compat_features: u64_at(24),
            autoclear_features: u64_at(32),
            l1_table_offset: u64_at(40),
            image_size: u64_at(48),
            backing_filename_offset: u32_at(56),
            backing_filename_size: u32_at(60),
        };
        if h.features & !FEATURE_MASK != 0 {
            return Err(invalid(
                FORMAT,
                "features",
                h.features & !FEATURE_MASK,
                "Unsupported QED features",
            ));
        }
        if !h.cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&h.cluster_size)
        {
            return Err(invalid(
                FORMAT,
                "cluster_size",
                h.cluster_size.into(),
                "must be a power of two from 4 KiB to 64 MiB",
            ));
        }
        if !h.table_size.is_power_of_two() || h.table_size > MAX_TABLE_SIZE {
            return Err(invalid(
                FORMAT,
                "table_size",
                h.table_size.into(),
                "must be a power of two from 1 to 16",
            ));
        }
        if h.table_bytes() > MAX_TABLE_BYTES {
            return Err(invalid(
                FORMAT,
                "table_size",
                h.table_size.into(),
                "tables larger than 16 MiB are not supported",
            ));
        }
        if h.header_size == 0
            || u64::from(h.header_size) * u64::from(h.cluster_size) > u64::from(u32::MAX)
        {
            return Err(invalid(
                FORMAT,
                "header_size",
                h.header_size.into(),
                "out of range",
            ));
        }
        if !h.image_size.is_multiple_of(512) || h.image_size > h.max_image_size() {
            return Err(invalid(
                FORMAT,
                "image_size",
                h.image_size,
                "not a multiple of 512 or larger than the tables can map",
            ));
        }
        if !h.l1_table_offset.is_multiple_of(u64::from(h.cluster_size))
            || h.l1_table_offset < h.header_bytes()
        {
            return Err(invalid(
                FORMAT,
                "l1_table_offset",
                h.l1_table_offset,
                "not a cluster after the header",
            ));
        }
        if h.features & F_BACKING_FILE != 0 {
            let end = u64::from(h.backing_filename_offset) + u64::from(h.backing_filename_size);
            if h.backing_filename_size > MAX_BACKING_NAME || end > h.header_bytes() {
                return Err(invalid(
                    FORMAT,
                    "backing_filename_size",
                    h.backing_filename_size.into(),
                    "the name does not fit in the header",
                ));
            }
        }
        Ok(h)
    }

    /// Refuses what QEMU's open refuses on top of [`Header::parse`]: its
    /// qed_check_table_offset takes the L1 table's last cluster to lie
    /// past its first, and a table of one cluster fails that as an
    /// overflow, so qemu-img 10 creates table_size=1 images (as
    /// [`super::create`] does) but opens none.
    pub fn check_open(&self) -> Result<()> {
        let span = u64::from(self.table_size - 1) * u64::from(self.cluster_size);
        if self
            .l1_table_offset
            .checked_add(span)
            .is_none_or(|last| last <= self.l1_table_offset)
        {
            return Err(invalid(
                FORMAT,
                "l1_table_offset",
                self.l1_table_offset,
                "QED table offset is invalid",
            ));
        }
        Ok(())
    }

    /// Bytes of a table.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.table_size) * u64::from(self.cluster_size)
    }

    /// Entries of a table.
    pub fn table_entries(&self) -> u64 {
        self.table_bytes() / 8
    }

    /// Bytes of the header clusters.
    pub fn header_bytes(&self) -> u64 {
        u64::from(self.header_size) * u64::from(self.cluster_size)
    }

    /// The largest guest size the tables map.
    pub fn max_image_size(&self) -> u64 {
        let entries = self.table_entries();
        entries
            .saturating_mul(entries)
            .saturating_mul(u64::from(self.cluster_size))
    }

    /// The header fields.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        LittleEndian::write_u32(&mut b[0..4], MAGIC);
        LittleEndian::write_u32(&mut b[4..8], self.cluster_size);
        LittleEndian::write_u32(&mut b[8..12], self.table_size);
        LittleEndian::write_u32(&mut b[12..16], self.header_size);
        LittleEndian::write_u64(&mut b[16..24], self.features);
        LittleEndian::write_u64(&mut b[24..32], self.compat_features);
        LittleEndian::write_u64(&mut b[32..40], self.autoclear_features);
        LittleEndian::write_u64(&mut b[40..48], self.l1_table_offset);
        LittleEndian::write_u64(&mut b[48..56], self.image_size);
        LittleEndian::write_u32(&mut b[56..60], self.backing_filename_offset);
        LittleEndian::write_u32(&mut b[60..64], self.backing_filename_size);
        b
    }
}
