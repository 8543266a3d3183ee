//! L1 and L2 table entries: decoding, encoding and the layout constants.
//!
//! An L2 entry is decoded into [`L2Entry`], which says what a guest cluster
//! is (unallocated, zero, data at a host offset, compressed) without the
//! flag arithmetic leaking into the rest of the crate. Extended L2 entries
//! carry a subcluster bitmap beside the standard descriptor.

use byteorder::{BigEndian, ByteOrder};

/// Bits 9-55 of an L1, L2 or refcount table entry: a cluster offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one (no copy-on-write needed).
pub const FLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const FLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of an L2 entry (standard, version 3): the cluster reads as zero.
pub const FLAG_ZERO: u64 = 1;
/// Reserved bits of an L1 entry.
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard L2 entry (bit 0 is handled separately).
pub const L2_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What an L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated: reads from the backing file, or zero.
    Unallocated,
    /// Reads as zero; `host_offset` is a preallocated cluster or 0.
    Zero {
        /// Preallocated host cluster, 0 if none.
        host_offset: u64,
        /// COPIED flag.
        copied: bool,
    },
    /// Data in a host cluster (subclusters decide which parts with
    /// extended L2 entries).
    Normal {
        /// Host cluster offset (in the data file with an external one).
        host_offset: u64,
        /// COPIED flag: the refcount is exactly one.
        copied: bool,
    },
    /// A compressed cluster.
    Compressed {
        /// Host byte offset of the compressed data.
        host_offset: u64,
        /// Bytes of compressed data to read (whole sectors).
        compressed_len: u64,
    },
}

/// The geometry of an image's tables, fixed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Whether L2 entries are 128 bits with a subcluster bitmap.
    pub extended_l2: bool,
    /// Whether an external data file is used (offset may be 0 when COPIED).
    pub data_file: bool,
    /// Image version (zero flag only in version 3).
    pub version: u32,
}

impl Geometry {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> usize {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size() as u64
    }
    /// Subcluster size in bytes (the cluster size without extended L2).
    pub fn subcluster_size(&self) -> u64 {
        if self.extended_l2 {
            self.cluster_size() / u64::from(SUBCLUSTERS)
        } else {
            self.cluster_size()
        }
    }
    /// Guest bytes mapped by one L2 table.
    pub fn l2_span(&self) -> u64 {
        self.l2_entries() * self.cluster_size()
    }
    /// L1 index of a guest offset.
    pub fn l1_index(&self, guest_offset: u64) -> u64 {
        guest_offset / self.l2_span()
    }
    /// L2 index of a guest offset.
    pub fn l2_index(&self, guest_offset: u64) -> usize {
        ((guest_offset >> self.cluster_bits) % self.l2_entries()) as usize
    }
    /// Bit position of the compressed sector count.
    fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }
    /// Largest host offset a compressed cluster can have.
    pub fn compressed_offset_mask(&self) -> u64 {
        (1u64 << self.csize_shift()) - 1
    }

    /// Decodes a raw standard L2 entry (first 64 bits).
    pub fn decode_l2(&self, raw: u64) -> L2Entry {
        if raw & FLAG_COMPRESSED != 0 {
            let shift = self.csize_shift();
            let host_offset = raw & self.compressed_offset_mask();
            let sectors = ((raw & !FLAG_COMPRESSED & !FLAG_COPIED) >> shift) + 1;
            let compressed_len = (sectors * 512).saturating_sub(host_offset & 511);
            return L2Entry::Compressed {
                host_offset,
                compressed_len,
            };
        }
        let host_offset = raw & OFFSET_MASK;
        let copied = raw & FLAG_COPIED != 0;
        if !self.extended_l2 && self.version >= 3 && raw & FLAG_ZERO != 0 {
            return L2Entry::Zero {
                host_offset,
                copied,
            };
        }
        if host_offset == 0 && !(self.data_file && copied) {
            return L2Entry::Unallocated;
        }
        L2Entry::Normal {
            host_offset,
            copied,
        }
    }

    /// Encodes a compressed cluster descriptor.
    pub fn encode_compressed(&self, host_offset: u64, compressed_len: u64) -> u64 {
        let sectors = ((host_offset & 511) + compressed_len).div_ceil(512);
        FLAG_COMPRESSED | ((sectors - 1) << self.csize_shift()) | host_offset
    }
}

/// Encodes a standard data entry.
pub fn encode_normal(host_offset: u64, copied: bool) -> u64 {
    host_offset | if copied { FLAG_COPIED } else { 0 }
}

/// Reads big-endian u64 number `index` of a table held as bytes.
pub fn table_get(table: &[u8], index: usize) -> u64 {
    BigEndian::read_u64(&table[index * 8..index * 8 + 8])
}

/// Writes big-endian u64 number `index` of a table held as bytes.
pub fn table_set(table: &mut [u8], index: usize, value: u64) {
    BigEndian::write_u64(&mut table[index * 8..index * 8 + 8], value);
}

/// An L2 entry as stored: the descriptor and, with extended L2, the
/// subcluster bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawL2 {
    /// The standard 64-bit entry.
    pub entry: u64,
    /// The subcluster bitmap (0 without extended L2).
    pub bitmap: u64,
}

impl RawL2 {
    /// Reads L2 entry `index` of a table.
    pub fn get(table: &[u8], index: usize, extended: bool) -> RawL2 {
        if extended {
            RawL2 {
                entry: table_get(table, index * 2),
                bitmap: table_get(table, index * 2 + 1),
            }
        } else {
            RawL2 {
                entry: table_get(table, index),
                bitmap: 0,
            }
        }
    }

    /// Writes L2 entry `index` of a table.
    pub fn set(self, table: &mut [u8], index: usize, extended: bool) {
        if extended {
            table_set(table, index * 2, self.entry);
            table_set(table, index * 2 + 1, self.bitmap);
        } else {
            table_set(table, index, self.entry);
        }
    }
}

/// The allocation bits of a subcluster bitmap.
pub fn alloc_bits(bitmap: u64) -> u32 {
    bitmap as u32
}

/// The reads-as-zero bits of a subcluster bitmap.
pub fn zero_bits(bitmap: u64) -> u32 {
    (bitmap >> 32) as u32
}

/// Builds a bitmap from allocation and zero bits.
pub fn make_bitmap(alloc: u32, zero: u32) -> u64 {
    u64::from(alloc) | (u64::from(zero) << 32)
}

/// Mask of subclusters `first..first+count`.
pub fn subcluster_mask(first: u32, count: u32) -> u32 {
    if count >= 32 {
        u32::MAX
    } else {
        ((1u32 << count) - 1) << first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            cluster_bits: 16,
            extended_l2: false,
            data_file: false,
            version: 3,
        }
    }

    #[test]
    fn compressed_round_trip() {
        let g = geo();
        let raw = g.encode_compressed(0x12_3456, 1000);
        match g.decode_l2(raw) {
            L2Entry::Compressed {
                host_offset,
                compressed_len,
            } => {
                assert_eq!(host_offset, 0x12_3456);
                assert!(compressed_len >= 1000);
                assert_eq!((host_offset + compressed_len) % 512, 0);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn decode_kinds() {
        let g = geo();
        assert_eq!(g.decode_l2(0), L2Entry::Unallocated);
        assert_eq!(
            g.decode_l2(FLAG_ZERO),
            L2Entry::Zero {
                host_offset: 0,
                copied: false
            }
        );
        assert_eq!(
            g.decode_l2(0x50000 | FLAG_COPIED),
            L2Entry::Normal {
                host_offset: 0x50000,
                copied: true
            }
        );
        let v2 = Geometry { version: 2, ..g };
        assert_eq!(v2.decode_l2(FLAG_ZERO), L2Entry::Unallocated);
    }

    #[test]
    fn indices() {
        let g = geo();
        assert_eq!(g.l2_entries(), 8192);
        assert_eq!(g.l1_index(512 << 20), 1);
        assert_eq!(g.l2_index((512 << 20) + 0x10000), 1);
        let e = Geometry {
            extended_l2: true,
            ..g
        };
        assert_eq!(e.l2_entries(), 4096);
        assert_eq!(e.subcluster_size(), 2048);
        assert_eq!(subcluster_mask(0, 32), u32::MAX);
        assert_eq!(subcluster_mask(2, 3), 0b11100);
    }
}
