//! The VHD footer and dynamic disk header (big-endian, checksummed), and
//! the CHS geometry the footer records, as the VHD specification and
//! QEMU's vpc driver compute it.

use byteorder::{BigEndian, ByteOrder};

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;

/// Bytes of a footer.
pub const FOOTER_SIZE: usize = 512;
/// Bytes of a dynamic disk header.
pub const DYN_HEADER_SIZE: usize = 1024;
/// The footer's cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The dynamic header's cookie.
pub const DYN_COOKIE: &[u8; 8] = b"cxsparse";
/// Disk type of a fixed disk.
pub const TYPE_FIXED: u32 = 2;
/// Disk type of a dynamic disk.
pub const TYPE_DYNAMIC: u32 = 3;
/// Disk type of a differencing disk.
pub const TYPE_DIFFERENCING: u32 = 4;
/// Largest CHS geometry in sectors (65535 x 16 x 255).
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;
/// Largest disk QEMU opens or creates: 2040 GiB in sectors.
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// Seconds from the Unix epoch to 2000-01-01, the VHD time base.
pub const TIMESTAMP_BASE: u64 = 946_684_800;

/// The one's complement of the byte sum, with the checksum field (bytes
/// `skip..skip+4`) counted as zero.
pub fn checksum(bytes: &[u8], skip: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// A validated footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Creator application ("qemu", "qem2", "win ", ...).
    pub creator_app: [u8; 4],
    /// Offset of the dynamic header (all ones for fixed disks).
    pub data_offset: u64,
    /// Size the footer records.
    pub current_size: u64,
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
    /// Disk type field.
    pub disk_type: u32,
}

impl Footer {
    /// Parses and checks a footer.
    pub fn parse(buf: &[u8; FOOTER_SIZE]) -> Result<Footer> {
        if &buf[0..8] != FOOTER_COOKIE {
            return Err(invalid(
                FORMAT,
                "cookie",
                BigEndian::read_u64(&buf[0..8]),
                "not a VHD footer",
            ));
        }
        let stored = BigEndian::read_u32(&buf[64..68]);
        if checksum(buf, 64) != stored {
            return Err(invalid(
                FORMAT,
                "checksum",
                stored.into(),
                "Incorrect header checksum",
            ));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&buf[28..32]);
        Ok(Footer {
            creator_app,
            data_offset: BigEndian::read_u64(&buf[16..24]),
            current_size: BigEndian::read_u64(&buf[48..56]),
            cylinders: BigEndian::read_u16(&buf[56..58]),
            heads: buf[58],
            sectors_per_track: buf[59],
            disk_type: BigEndian::read_u32(&buf[60..64]),
        })
    }

    /// The guest size in bytes as QEMU decides it: from the CHS geometry,
    /// unless the creator is one that sizes by `current_size` or the
    /// geometry is the largest there is.
    pub fn guest_size(&self) -> u64 {
        let chs =
            u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track);
        let by_size = matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
        );
        let sectors = if by_size || chs == MAX_GEOMETRY_SECTORS {
            self.current_size / 512
        } else {
            chs
        };
        sectors * 512
    }
}

/// Everything a new footer records.
#[derive(Debug, Clone, Copy)]
pub struct NewFooter {
    /// Whether the size was forced (creator "qem2") rather than rounded to
    /// the geometry (creator "qemu").
    pub force_size: bool,
    /// Fixed or dynamic.
    pub disk_type: u32,
    /// Guest size in bytes.
    pub size: u64,
    /// Geometry (cylinders, heads, sectors per track).
    pub geometry: (u16, u8, u8),
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// The disk's UUID.
    pub uuid: [u8; 16],
}

impl NewFooter {
    /// The footer bytes, checksummed.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(FOOTER_COOKIE);
        BigEndian::write_u32(&mut b[8..12], 2);
        BigEndian::write_u32(&mut b[12..16], 0x0001_0000);
        let data_offset = if self.disk_type == TYPE_DYNAMIC {
            FOOTER_SIZE as u64
        } else {
            u64::MAX
        };
        BigEndian::write_u64(&mut b[16..24], data_offset);
        BigEndian::write_u32(
            &mut b[24..28],
            self.now.saturating_sub(TIMESTAMP_BASE) as u32,
        );
        b[28..32].copy_from_slice(if self.force_size { b"qem2" } else { b"qemu" });
        BigEndian::write_u32(&mut b[32..36], 0x0005_0003);
        b[36..40].copy_from_slice(b"Wi2k");
        BigEndian::write_u64(&mut b[40..48], self.size);
        BigEndian::write_u64(&mut b[48..56], self.size);
        BigEndian::write_u16(&mut b[56..58], self.geometry.0);
        b[58] = self.geometry.1;
        b[59] = self.geometry.2;
        BigEndian::write_u32(&mut b[60..64], self.disk_type);
        b[68..84].copy_from_slice(&self.uuid);
        let sum = checksum(&b, 64);
        BigEndian::write_u32(&mut b[64..68], sum);
        b
    }
}

/// A validated dynamic disk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynHeader {
    /// Offset of the block allocation table.
    pub table_offset: u64,
    /// Entries of the table.
    pub max_table_entries: u32,
    /// Bytes of a block (a power of two, at least 512).
    pub block_size: u32,
}

impl DynHeader {
    /// Parses and checks a dynamic disk header.
    pub fn parse(buf: &[u8; DYN_HEADER_SIZE]) -> Result<DynHeader> {
        if &buf[0..8] != DYN_COOKIE {
            return Err(invalid(
                FORMAT,
                "dynamic header cookie",
                BigEndian::read_u64(&buf[0..8]),
                "invalid VPC image",
            ));
        }
        let block_size = BigEndian::read_u32(&buf[32..36]);
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(invalid(
                FORMAT,
                "block size",
                block_size.into(),
                "Invalid block size",
            ));
        }
        Ok(DynHeader {
            table_offset: BigEndian::read_u64(&buf[16..24]),
            max_table_entries: BigEndian::read_u32(&buf[28..32]),
            block_size,
        })
    }

    /// The header bytes, checksummed.
    pub fn to_bytes(&self) -> [u8; DYN_HEADER_SIZE] {
        let mut b = [0u8; DYN_HEADER_SIZE];
        b[0..8].copy_from_slice(DYN_COOKIE);
        BigEndian::write_u64(&mut b[8..16], u64::MAX);
        BigEndian::write_u64(&mut b[16..24], self.table_offset);
        BigEndian::write_u32(&mut b[24..28], 0x0001_0000);
        BigEndian::write_u32(&mut b[28..32], self.max_table_entries);
        BigEndian::write_u32(&mut b[32..36], self.block_size);
        let sum = checksum(&b, 36);
        BigEndian::write_u32(&mut b[36..40], sum);
        b
    }
}

/// The VHD specification's geometry for `total_sectors` (capped at the
/// largest geometry): (cylinders, heads, sectors per track).
pub fn geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(MAX_GEOMETRY_SECTORS);
    let (sectors, heads, cyl_heads) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut sectors = 17u64;
        let mut cyl_heads = total / sectors;
        let mut heads = cyl_heads.div_ceil(1024).max(4);
        if cyl_heads >= heads * 1024 || heads > 16 {
            sectors = 31;
            heads = 16;
            cyl_heads = total / sectors;
        }
        if cyl_heads >= heads * 1024 {
            sectors = 63;
            heads = 16;
            cyl_heads = total / sectors;
        }
        (sectors, heads, cyl_heads)
    };
    ((cyl_heads / heads) as u16, heads as u8, sectors as u8)
}

/// The guest size in sectors and the geometry a new image of `size` bytes
/// gets: rounded up to a whole geometry, unless `force_size` keeps the
/// size (with the largest geometry) or the size needs the largest geometry.
pub fn new_disk_geometry(size: u64, force_size: bool) -> Result<(u64, (u16, u8, u8))> {
    let chs = |g: (u16, u8, u8)| u64::from(g.0) * u64::from(g.1) * u64::from(g.2);
    let geometry = if force_size {
        (65535, 16, 255)
    } else {
        let total = (size / 512).min(MAX_GEOMETRY_SECTORS);
        let mut g = (0u16, 0u8, 0u8);
        let mut i = 0;
        while total > chs(g) {
            g = geometry(total + i);
            i += 1;
        }
        g
    };
    let sectors = if chs(geometry) == MAX_GEOMETRY_SECTORS {
        let sectors = size / 512;
        if sectors > MAX_SECTORS {
            return Err(invalid(
                FORMAT,
                "size",
                size,
                "Disk size is too large, max size is 2040 GiB",
            ));
        }
        sectors
    } else {
        chs(geometry)
    };
    Ok((sectors, geometry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_up_as_qemu() {
        // qemu-img create -f vpc x 10M: 10514432 bytes.
        let (sectors, g) = new_disk_geometry(10 << 20, false).unwrap();
        assert_eq!(sectors * 512, 10_514_432);
        assert_eq!(u64::from(g.0) * u64::from(g.1) * u64::from(g.2), sectors);
        let (sectors, g) = new_disk_geometry(10 << 20, true).unwrap();
        assert_eq!((sectors, g), (20480, (65535, 16, 255)));
        assert!(new_disk_geometry(3 << 40, true).is_err());
    }

    #[test]
    fn footer_round_trip_and_checksum() {
        let f = NewFooter {
            force_size: false,
            disk_type: TYPE_DYNAMIC,
            size: 10_514_432,
            geometry: (604, 4, 17),
            now: 1_000_000_000,
            uuid: [7; 16],
        };
        let mut bytes = f.to_bytes();
        let parsed = Footer::parse(&bytes).unwrap();
        assert_eq!(parsed.guest_size(), 604 * 4 * 17 * 512);
        assert_eq!(parsed.data_offset, 512);
        bytes[100] ^= 1;
        assert!(Footer::parse(&bytes).is_err());
    }

    #[test]
    fn dyn_header_rejects_bad_block_size() {
        let h = DynHeader {
            table_offset: 1536,
            max_table_entries: 5,
            block_size: 3 << 20,
        };
        assert!(DynHeader::parse(&h.to_bytes()).is_err());
        let h = DynHeader {
            block_size: 1 << 21,
            ..h
        };
        assert_eq!(DynHeader::parse(&h.to_bytes()).unwrap(), h);
    }
}
