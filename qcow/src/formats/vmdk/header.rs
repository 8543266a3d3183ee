//! The header of a VMDK hosted sparse extent ("KDMV", little-endian, one
//! sector), validated with QEMU's bounds, and the markers of
//! stream-optimized extents.

use byteorder::{ByteOrder, LittleEndian};

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;

/// The magic "KDMV" as a little-endian u32.
pub const MAGIC: u32 = 0x564d_444b;
/// The header's bytes (one sector).
pub const HEADER_SIZE: usize = 512;
/// `gd_offset` of a stream-optimized extent whose tables are in the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: the newline check bytes are valid.
pub const FLAG_NL_DETECT: u32 = 1;
/// Flag: a redundant grain directory is kept.
pub const FLAG_RGD: u32 = 1 << 1;
/// Flag: grain table entry 1 means a zeroed grain.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESS: u32 = 1 << 16;
/// Flag: the extent has markers (stream-optimized).
pub const FLAG_MARKER: u32 = 1 << 17;
/// `compressAlgorithm` of deflate.
pub const COMPRESSION_DEFLATE: u16 = 1;
/// Largest grain QEMU accepts, in sectors (1 GiB).
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Largest compressed grain we decompress (16 MiB): its buffers are
/// allocated per read.
pub const MAX_COMPRESSED_GRAIN: u64 = 16 << 20;
/// Most grain table entries per table (QEMU's bound).
pub const MAX_GTES_PER_GT: u32 = 512;
/// Most grain directory entries (QEMU's bound, 32 Mi).
pub const MAX_GD_ENTRIES: u64 = 32 << 20;

/// A validated sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Flags.
    pub flags: u32,
    /// Sectors of guest data.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_sectors: u64,
    /// Sector of the embedded descriptor (0 if none).
    pub desc_offset: u64,
    /// Sectors of the embedded descriptor.
    pub desc_size: u64,
    /// Entries of a grain table.
    pub gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory (or [`GD_AT_END`]).
    pub gd_offset: u64,
    /// Sector of the first grain.
    pub grain_offset: u64,
    /// Compression algorithm.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses the header sector; only the magic and the version are
    /// checked here ([`SparseHeader::validate`] checks the rest).
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<SparseHeader> {
        let magic = LittleEndian::read_u32(&b[0..4]);
        if magic != MAGIC {
            return Err(invalid(
                FORMAT,
                "magic",
                magic.into(),
                "Image not in VMDK format",
            ));
        }
        let version = LittleEndian::read_u32(&b[4..8]);
        if version > 3 {
            return Err(invalid(
                FORMAT,
                "version",
                version.into(),
                "Unsupported VMDK version",
            ));
        }
        Ok(SparseHeader {
            version,
            flags: LittleEndian::read_u32(&b[8..12]),
            capacity: LittleEndian::read_u64(&b[12..20]),
            grain_sectors: LittleEndian::read_u64(&b[20..28]),
            desc_offset: LittleEndian::read_u64(&b[28..36]),
            desc_size: LittleEndian::read_u64(&b[36..44]),
            gtes_per_gt: LittleEndian::read_u32(&b[44..48]),
            rgd_offset: LittleEndian::read_u64(&b[48..56]),
            gd_offset: LittleEndian::read_u64(&b[56..64]),
            grain_offset: LittleEndian::read_u64(&b[64..72]),
            compress_algorithm: LittleEndian::read_u16(&b[77..79]),
        })
    }

    /// Checks the geometry with QEMU's bounds and ours; returns the number
    /// of grain directory entries.
    pub fn validate(&self) -> Result<u64> {
        if self.gtes_per_gt == 0 || self.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(invalid(
                FORMAT,
                "numGTEsPerGT",
                self.gtes_per_gt.into(),
                "L2 table size too big",
            ));
        }
        if self.grain_sectors == 0 || self.grain_sectors > MAX_GRAIN_SECTORS {
            return Err(invalid(
                FORMAT,
                "grainSize",
                self.grain_sectors,
                "Invalid granularity, image may be corrupt",
            ));
        }
        if self.compressed() && self.grain_sectors * 512 > MAX_COMPRESSED_GRAIN {
            return Err(invalid(
                FORMAT,
                "grainSize",
                self.grain_sectors,
                "compressed grains larger than 16 MiB are not supported",
            ));
        }
        if self.capacity > u64::MAX / 512 {
            return Err(invalid(
                FORMAT,
                "capacity",
                self.capacity,
                "larger than any disk",
            ));
        }
        let gt_span = u64::from(self.gtes_per_gt) * self.grain_sectors;
        let entries = self.capacity.div_ceil(gt_span);
        if entries > MAX_GD_ENTRIES {
            return Err(invalid(
                FORMAT,
                "capacity",
                self.capacity,
                "L1 size too big",
            ));
        }
        Ok(entries)
    }

    /// Whether grains are deflate-compressed.
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Whether grains carry markers.
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKER != 0
    }

    /// Whether grain table entry 1 means a zeroed grain.
    pub fn has_zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0
    }

    /// The header sector.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        LittleEndian::write_u32(&mut b[0..4], MAGIC);
        LittleEndian::write_u32(&mut b[4..8], self.version);
        LittleEndian::write_u32(&mut b[8..12], self.flags);
        LittleEndian::write_u64(&mut b[12..20], self.capacity);
        LittleEndian::write_u64(&mut b[20..28], self.grain_sectors);
        LittleEndian::write_u64(&mut b[28..36], self.desc_offset);
        LittleEndian::write_u64(&mut b[36..44], self.desc_size);
        LittleEndian::write_u32(&mut b[44..48], self.gtes_per_gt);
        LittleEndian::write_u64(&mut b[48..56], self.rgd_offset);
        LittleEndian::write_u64(&mut b[56..64], self.gd_offset);
        LittleEndian::write_u64(&mut b[64..72], self.grain_offset);
        b[73..77].copy_from_slice(b"\n \r\n");
        LittleEndian::write_u16(&mut b[77..79], self.compress_algorithm);
        b
    }
}

/// The magic of a VMFS sparse ("COWD", VMDK3) extent, as bytes.
pub const COWD_MAGIC: &[u8; 4] = b"COWD";
/// Grain table entries of a VMFS sparse extent (fixed, as QEMU reads it).
pub const COWD_GTES_PER_GT: u32 = 4096;

/// Parses the header of a VMFS sparse ("COWD") extent into the geometry
/// of a sparse extent, as QEMU's `vmdk_open_vmfs_sparse` reads it. The
/// layout (QEMU's `VMDK3Header`, little-endian u32s after the magic):
/// version @4, flags @8, disk_sectors @12, granularity @16,
/// l1dir_offset @20 (sectors), l1dir_size @24 (entries), file_sectors,
/// cylinders, heads, sectors_per_track. Grain tables hold 4096 entries;
/// there is no redundant directory, no compression and no zero grain.
/// Returns the header and its directory entries (`l1dir_size`, bounded
/// as QEMU bounds it).
pub fn parse_cowd(b: &[u8; HEADER_SIZE]) -> Result<(SparseHeader, u64)> {
    let word = |at: usize| LittleEndian::read_u32(&b[at..at + 4]);
    if &b[0..4] != COWD_MAGIC {
        return Err(invalid(
            FORMAT,
            "magic",
            word(0).into(),
            "Image not in VMDK3 format",
        ));
    }
    let header = SparseHeader {
        version: word(4),
        flags: 0,
        capacity: word(12).into(),
        grain_sectors: word(16).into(),
        desc_offset: 0,
        desc_size: 0,
        gtes_per_gt: COWD_GTES_PER_GT,
        rgd_offset: 0,
        gd_offset: word(20).into(),
        grain_offset: 0,
        compress_algorithm: 0,
    };
    let entries = u64::from(word(24));
    if header.grain_sectors == 0 || header.grain_sectors > MAX_GRAIN_SECTORS {
        return Err(invalid(
            FORMAT,
            "granularity",
            header.grain_sectors,
            "Invalid granularity, image may be corrupt",
        ));
    }
    if entries > MAX_GD_ENTRIES {
        return Err(invalid(FORMAT, "l1dir_size", entries, "L1 size too big"));
    }
    Ok((header, entries))
}

/// Checks the footer of a stream-optimized extent (a footer marker, a
/// header copy, an end-of-stream marker: the last three sectors) and
/// returns the header it holds.
pub fn parse_footer(b: &[u8; 3 * HEADER_SIZE]) -> Result<SparseHeader> {
    let marker_ok = |at: usize, kind: u32| {
        LittleEndian::read_u64(&b[at..at + 8]) == 0
            && LittleEndian::read_u32(&b[at + 8..at + 12]) == 0
            && LittleEndian::read_u32(&b[at + 12..at + 16]) == kind
    };
    if !marker_ok(0, 3) || !marker_ok(1024, 0) {
        return Err(invalid(FORMAT, "footer", 0, "Invalid footer"));
    }
    let mut header = [0u8; HEADER_SIZE];
    header.copy_from_slice(&b[512..1024]);
    let parsed = SparseHeader::parse(&header)?;
    if parsed.gd_offset == GD_AT_END {
        return Err(invalid(
            FORMAT,
            "gdOffset",
            parsed.gd_offset,
            "the footer has no grain directory",
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT | FLAG_RGD,
            capacity: 10240,
            grain_sectors: 128,
            desc_offset: 1,
            desc_size: 20,
            gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 26,
            grain_offset: 128,
            compress_algorithm: 0,
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        assert_eq!(SparseHeader::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.validate().unwrap(), 1);
    }

    #[test]
    fn absurd_geometry_is_refused() {
        let bad = [
            SparseHeader {
                gtes_per_gt: 513,
                ..header()
            },
            SparseHeader {
                gtes_per_gt: 0,
                ..header()
            },
            SparseHeader {
                grain_sectors: 0,
                ..header()
            },
            SparseHeader {
                grain_sectors: 1 << 40,
                ..header()
            },
            SparseHeader {
                capacity: u64::MAX,
                ..header()
            },
            SparseHeader {
                capacity: 1 << 50,
                grain_sectors: 1,
                ..header()
            },
            SparseHeader {
                compress_algorithm: 1,
                grain_sectors: 1 << 16,
                ..header()
            },
        ];
        for h in bad {
            assert!(h.validate().is_err(), "{h:?}");
        }
    }

    /// A COWD header sector with these u32 fields after the magic.
    fn cowd(words: [u32; 10]) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(COWD_MAGIC);
        for (i, w) in words.iter().enumerate() {
            LittleEndian::write_u32(&mut b[4 + 4 * i..8 + 4 * i], *w);
        }
        b
    }

    #[test]
    fn cowd_header_reads_as_qemu_reads_it() {
        let (h, entries) = parse_cowd(&cowd([1, 3, 40960, 8, 2, 2, 0, 0, 0, 0])).unwrap();
        assert_eq!((h.capacity, h.grain_sectors, h.gd_offset), (40960, 8, 2));
        assert_eq!((h.gtes_per_gt, h.rgd_offset, entries), (4096, 0, 2));
        assert!(!h.compressed() && !h.has_zero_grain());
        for words in [
            [1, 3, 40960, 0, 2, 2, 0, 0, 0, 0],
            [1, 3, 40960, 0x20_0001, 2, 2, 0, 0, 0, 0],
            [1, 3, 40960, 8, 2, (32 << 20) + 1, 0, 0, 0, 0],
        ] {
            assert!(parse_cowd(&cowd(words)).is_err(), "{words:?}");
        }
        assert!(parse_cowd(&header().to_bytes()).is_err());
    }
}
