//! The VHDX structures read before any data: the two headers, the region
//! table, the metadata table and the items QEMU reads from it, each
//! validated (CRC-32C checksums, signatures, bounds) as QEMU validates them.

use byteorder::{ByteOrder, LittleEndian};

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;
use crate::storage::Storage;

/// Offsets of the two headers.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Offsets of the two region tables.
pub const REGION_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// Bytes of a header.
pub const HEADER_BYTES: usize = 4 << 10;
/// Bytes of a region table.
pub const REGION_BYTES: usize = 64 << 10;
/// Most entries of a region or metadata table.
const MAX_TABLE_ENTRIES: usize = 2047;
/// Bytes of the metadata table.
const METADATA_TABLE_BYTES: usize = 64 << 10;

/// A GUID as stored (the first three fields little-endian).
pub type Guid = [u8; 16];

/// Builds a stored GUID from its text form's fields.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The BAT region.
pub const BAT_GUID: Guid = guid(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
/// The metadata region.
pub const METADATA_GUID: Guid = guid(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);
pub(super) const FILE_PARAMETERS: Guid = guid(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
pub(super) const VIRTUAL_DISK_SIZE: Guid = guid(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
pub(super) const PAGE83: Guid = guid(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
pub(super) const LOGICAL_SECTOR: Guid = guid(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);
pub(super) const PHYSICAL_SECTOR: Guid = guid(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
const PARENT_LOCATOR: Guid = guid(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);

/// CRC-32C (Castagnoli), as VHDX checksums use it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Whether `buf` carries a valid checksum at bytes 4..8.
pub fn checksum_ok(buf: &[u8]) -> bool {
    let stored = LittleEndian::read_u32(&buf[4..8]);
    let mut copy = buf.to_vec();
    copy[4..8].fill(0);
    crc32c(&copy) == stored
}

/// The header in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxHeader {
    /// Sequence number.
    pub sequence: u64,
    /// The log's GUID (all zero: no log to replay).
    pub log_guid: Guid,
    /// Log length.
    pub log_length: u32,
    /// Log offset.
    pub log_offset: u64,
    /// Log version (only 0 is defined).
    pub log_version: u16,
}

/// The header in force with the slot it came from (0 or 1) and its bytes,
/// which header updates start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentHeader {
    /// Its fields.
    pub header: VhdxHeader,
    /// Its slot: at `HEADER_OFFSETS[slot]`.
    pub slot: usize,
    /// Its 4 KiB as stored.
    pub bytes: Vec<u8>,
}

/// Parses a header's fields.
fn parse_header(buf: &[u8]) -> VhdxHeader {
    let mut log_guid = [0u8; 16];
    log_guid.copy_from_slice(&buf[48..64]);
    VhdxHeader {
        sequence: LittleEndian::read_u64(&buf[8..16]),
        log_guid,
        log_version: LittleEndian::read_u16(&buf[64..66]),
        log_length: LittleEndian::read_u32(&buf[68..72]),
        log_offset: LittleEndian::read_u64(&buf[72..80]),
    }
}

/// Reads both headers and returns the valid one with the higher
/// sequence number.
pub fn read_header(storage: &dyn Storage) -> Result<VhdxHeader> {
    read_current_header(storage).map(|c| c.header)
}

/// Reads both headers and returns the valid one with the higher sequence
/// number, with its slot and bytes.
pub fn read_current_header(storage: &dyn Storage) -> Result<CurrentHeader> {
    let mut best: Option<CurrentHeader> = None;
    for (slot, offset) in HEADER_OFFSETS.into_iter().enumerate() {
        let mut buf = vec![0u8; HEADER_BYTES];
        storage.read_at(&mut buf, offset)?;
        if &buf[0..4] != b"head" || !checksum_ok(&buf) {
            continue;
        }
        let version = LittleEndian::read_u16(&buf[66..68]);
        if version != 1 {
            continue;
        }
        let header = parse_header(&buf);
        if best
            .as_ref()
            .is_none_or(|b| header.sequence > b.header.sequence)
        {
            best = Some(CurrentHeader {
                header,
                slot,
                bytes: buf,
            });
        }
    }
    best.ok_or_else(|| invalid(FORMAT, "header", 0, "No valid VHDX header found"))
}

/// What a header update changes (QEMU's `vhdx_update_header`).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderUpdate {
    /// The new file write GUID (QEMU's session GUID).
    pub file_write_guid: Guid,
    /// A new data write GUID, before the first guest-visible write.
    pub data_write_guid: Option<Guid>,
    /// A new log GUID (all zero: the log is empty).
    pub log_guid: Option<Guid>,
}

/// Writes the header not in force with the next sequence number and
/// `update` applied, syncs it, and makes it the one in force.
pub fn update_header(
    storage: &dyn Storage,
    current: &mut CurrentHeader,
    update: &HeaderUpdate,
) -> Result<()> {
    let mut buf = current.bytes.clone();
    let sequence = current.header.sequence.wrapping_add(1);
    LittleEndian::write_u64(&mut buf[8..16], sequence);
    buf[16..32].copy_from_slice(&update.file_write_guid);
    if let Some(g) = update.data_write_guid {
        buf[32..48].copy_from_slice(&g);
    }
    if let Some(g) = update.log_guid {
        buf[48..64].copy_from_slice(&g);
    }
    set_checksum(&mut buf);
    let slot = 1 - current.slot;
    storage.write_at(&buf, HEADER_OFFSETS[slot])?;
    storage.flush()?;
    *current = CurrentHeader {
        header: parse_header(&buf),
        slot,
        bytes: buf,
    };
    Ok(())
}

/// Updates both headers (the spec's procedure, and QEMU's
/// `vhdx_update_headers`), so that both carry the change.
pub fn update_headers(
    storage: &dyn Storage,
    current: &mut CurrentHeader,
    update: &HeaderUpdate,
) -> Result<()> {
    update_header(storage, current, update)?;
    update_header(storage, current, update)
}

/// Stores the CRC-32C of `buf` (computed with the field zeroed) at bytes
/// 4..8.
pub fn set_checksum(buf: &mut [u8]) {
    buf[4..8].fill(0);
    let crc = crc32c(buf);
    LittleEndian::write_u32(&mut buf[4..8], crc);
}

/// A region: where and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// Reads the region table (the first valid copy): the BAT and metadata
/// regions; an unknown region marked required is refused, as are regions
/// that are unaligned, overlap or lie past `file_len`.
pub fn read_regions(storage: &dyn Storage, file_len: u64) -> Result<(Region, Region)> {
    for offset in REGION_OFFSETS {
        let mut buf = vec![0u8; REGION_BYTES];
        storage.read_at(&mut buf, offset)?;
        if &buf[0..4] != b"regi" || !checksum_ok(&buf) {
            continue;
        }
        let count = LittleEndian::read_u32(&buf[8..12]) as usize;
        if count > MAX_TABLE_ENTRIES {
            return Err(invalid(
                FORMAT,
                "region entry count",
                count as u64,
                "too many regions",
            ));
        }
        let (mut bat, mut metadata) = (None, None);
        let mut seen: Vec<Region> = vec![Region {
            offset: 0,
            length: 1 << 20,
        }];
        for e in buf[16..16 + count * 32].chunks_exact(32) {
            let r = Region {
                offset: LittleEndian::read_u64(&e[16..24]),
                length: u64::from(LittleEndian::read_u32(&e[24..28])),
            };
            let required = LittleEndian::read_u32(&e[28..32]) & 1 != 0;
            if !r.offset.is_multiple_of(1 << 20)
                || !r.length.is_multiple_of(1 << 20)
                || r.offset.saturating_add(r.length) > file_len
            {
                return Err(invalid(
                    FORMAT,
                    "region offset",
                    r.offset,
                    "unaligned or past the end of the file",
                ));
            }
            if seen
                .iter()
                .any(|s| r.offset < s.offset + s.length && s.offset < r.offset + r.length)
            {
                return Err(invalid(
                    FORMAT,
                    "region offset",
                    r.offset,
                    "regions overlap",
                ));
            }
            seen.push(r);
            match e[0..16].try_into().expect("16 bytes") {
                BAT_GUID => bat = Some(r),
                METADATA_GUID => metadata = Some(r),
                _ if required => {
                    return Err(invalid(
                        FORMAT,
                        "region",
                        r.offset,
                        "unknown required region",
                    ))
                }
                _ => {}
            }
        }
        return match (bat, metadata) {
            (Some(b), Some(m)) => Ok((b, m)),
            _ => Err(invalid(
                FORMAT,
                "region table",
                count as u64,
                "no BAT or metadata region",
            )),
        };
    }
    Err(invalid(
        FORMAT,
        "region table",
        0,
        "No valid VHDX region table found",
    ))
}

/// What the metadata region says about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Bytes per payload block.
    pub block_size: u32,
    /// Blocks stay allocated (a fixed disk).
    pub leave_blocks_allocated: bool,
    /// Guest size in bytes.
    pub virtual_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
}

/// Reads and checks the metadata items QEMU requires.
pub fn read_metadata(storage: &dyn Storage, region: Region) -> Result<Metadata> {
    let mut buf = vec![0u8; METADATA_TABLE_BYTES];
    storage.read_at(&mut buf, region.offset)?;
    if &buf[0..8] != b"metadata" {
        return Err(invalid(
            FORMAT,
            "metadata signature",
            0,
            "invalid metadata table",
        ));
    }
    let count = usize::from(LittleEndian::read_u16(&buf[10..12]));
    if count > MAX_TABLE_ENTRIES {
        return Err(invalid(
            FORMAT,
            "metadata entry count",
            count as u64,
            "too many entries",
        ));
    }
    let mut items: Vec<(Guid, u64, u32)> = Vec::new();
    for e in buf[32..32 + count * 32].chunks_exact(32) {
        let id: Guid = e[0..16].try_into().expect("16 bytes");
        let offset = u64::from(LittleEndian::read_u32(&e[16..20]));
        let length = LittleEndian::read_u32(&e[20..24]);
        let required = LittleEndian::read_u32(&e[24..28]) & 4 != 0;
        if offset.saturating_add(u64::from(length)) > region.length {
            return Err(invalid(
                FORMAT,
                "metadata item offset",
                offset,
                "past the metadata region",
            ));
        }
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE83,
            LOGICAL_SECTOR,
            PHYSICAL_SECTOR,
            PARENT_LOCATOR,
        ];
        if required && !known.contains(&id) {
            return Err(invalid(
                FORMAT,
                "metadata item",
                offset,
                "unknown required metadata item",
            ));
        }
        items.push((id, region.offset + offset, length));
    }
    let read = |id: Guid, len: usize| -> Result<Vec<u8>> {
        let (_, at, length) = items
            .iter()
            .find(|i| i.0 == id)
            .ok_or_else(|| invalid(FORMAT, "metadata", 0, "a required metadata item is missing"))?;
        if (*length as usize) < len {
            return Err(invalid(
                FORMAT,
                "metadata item length",
                u64::from(*length),
                "too short",
            ));
        }
        let mut b = vec![0u8; len];
        storage.read_at(&mut b, *at)?;
        Ok(b)
    };
    let params = read(FILE_PARAMETERS, 8)?;
    let block_size = LittleEndian::read_u32(&params[0..4]);
    let flags = LittleEndian::read_u32(&params[4..8]);
    if flags & 2 != 0 {
        return Err(crate::Error::Unsupported(
            "differencing vhdx images (with a parent)".into(),
        ));
    }
    if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
        return Err(invalid(
            FORMAT,
            "block size",
            block_size.into(),
            "must be a power of two from 1 MiB to 256 MiB",
        ));
    }
    let virtual_size = LittleEndian::read_u64(&read(VIRTUAL_DISK_SIZE, 8)?);
    let logical_sector_size = LittleEndian::read_u32(&read(LOGICAL_SECTOR, 4)?);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(invalid(
            FORMAT,
            "logical sector size",
            logical_sector_size.into(),
            "must be 512 or 4096",
        ));
    }
    if virtual_size > 64 << 40 || virtual_size % u64::from(logical_sector_size) != 0 {
        return Err(invalid(
            FORMAT,
            "virtual disk size",
            virtual_size,
            "over 64 TiB or not whole sectors",
        ));
    }
    Ok(Metadata {
        block_size,
        leave_blocks_allocated: flags & 1 != 0,
        virtual_size,
        logical_sector_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn guid_layout() {
        assert_eq!(&BAT_GUID[..4], &[0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(
            &BAT_GUID[8..],
            &[0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]
        );
    }
}
