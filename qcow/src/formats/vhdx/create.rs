//! Creating VHDX images laid out as QEMU lays them out (block/vhdx.c,
//! `vhdx_co_create`): the file identifier, two headers, two region
//! tables, then from 1 MiB the log, the BAT and the metadata region, and
//! the payload from 5 MiB after the BAT.

use byteorder::{ByteOrder, LittleEndian};

use super::structures::{
    set_checksum, BAT_GUID, FILE_PARAMETERS, HEADER_BYTES, HEADER_OFFSETS, LOGICAL_SECTOR,
    METADATA_GUID, PAGE83, PHYSICAL_SECTOR, REGION_BYTES, REGION_OFFSETS, VIRTUAL_DISK_SIZE,
};
use super::{bat_entries, FULLY_PRESENT, ZERO};
use crate::error::{Error, Result};
use crate::formats::random_uuid;
use crate::storage::Storage;

const MIB: u64 = 1 << 20;
/// The largest disk (64 TiB).
pub const MAX_SIZE: u64 = 64 << 40;
/// The largest payload block.
pub const MAX_BLOCK_SIZE: u64 = 256 << 20;
/// QEMU's default log size.
pub const DEFAULT_LOG_SIZE: u64 = MIB;
/// Logical and physical sector size of the images QEMU makes.
const SECTOR: u64 = 512;

/// The two kinds of image QEMU creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Subformat {
    /// Blocks allocated as written.
    #[default]
    Dynamic,
    /// Every block in the file from the start.
    Fixed,
}

impl Subformat {
    /// Parses `subformat=` as qemu-img spells it.
    pub fn parse(name: &str) -> Option<Subformat> {
        match name {
            "dynamic" => Some(Subformat::Dynamic),
            "fixed" => Some(Subformat::Fixed),
            _ => None,
        }
    }
}

/// Options of a new VHDX image (`-o subformat=,block_size=,log_size=,
/// block_state_zero=`), as qemu-img takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// Dynamic or fixed.
    pub subformat: Subformat,
    /// Payload block size; 0 chooses one from the disk size.
    pub block_size: u64,
    /// Log size.
    pub log_size: u64,
    /// Mark blocks `ZERO` in the BAT (QEMU's non-standard default).
    pub block_state_zero: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            subformat: Subformat::Dynamic,
            block_size: 0,
            log_size: DEFAULT_LOG_SIZE,
            block_state_zero: true,
        }
    }
}

/// The block size QEMU picks for a disk of `size` bytes.
fn auto_block_size(size: u64) -> u64 {
    if size > 32 << 40 {
        64 * MIB
    } else if size > 100 << 30 {
        32 * MIB
    } else if size > 1 << 30 {
        16 * MIB
    } else {
        8 * MIB
    }
}

fn refuse(what: &str) -> Error {
    Error::Unsupported(what.to_string())
}

/// Writes a new, empty VHDX of `size` bytes (rounded up to a sector) into
/// empty `storage`; `creator` goes into the file identifier.
pub fn create(storage: &dyn Storage, size: u64, opts: &CreateOptions, creator: &str) -> Result<()> {
    let size = size.div_ceil(SECTOR) * SECTOR;
    if size > MAX_SIZE {
        return Err(refuse("Image size too large; max of 64TB"));
    }
    // qemu-img rounds the log and block sizes up to whole MiB first.
    let log_size = opts.log_size.div_ceil(MIB) * MIB;
    if log_size > u64::from(u32::MAX) {
        return Err(refuse("Log size must be smaller than 4 GB"));
    }
    if log_size < MIB {
        return Err(refuse("Log size must be a multiple of 1 MB"));
    }
    let block_size = match opts.block_size.div_ceil(MIB) * MIB {
        0 => auto_block_size(size),
        b => b.min(MAX_BLOCK_SIZE),
    };
    if !block_size.is_power_of_two() {
        return Err(refuse("Block size must be a power of two"));
    }

    // (A) the file identifier.
    let mut id = b"vhdxfile".to_vec();
    for unit in creator.encode_utf16() {
        id.extend_from_slice(&unit.to_le_bytes());
    }
    storage.write_at(&id, 0)?;

    // (B), (C) the headers.
    let mut header = vec![0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(b"head");
    let sequence = u64::from(LittleEndian::read_u32(&random_uuid()[..4]));
    header[16..32].copy_from_slice(&random_uuid());
    header[32..48].copy_from_slice(&random_uuid());
    LittleEndian::write_u16(&mut header[66..68], 1);
    LittleEndian::write_u32(&mut header[68..72], log_size as u32);
    LittleEndian::write_u64(&mut header[72..80], MIB);
    for (i, offset) in HEADER_OFFSETS.into_iter().enumerate() {
        LittleEndian::write_u64(&mut header[8..16], sequence + i as u64);
        set_checksum(&mut header);
        storage.write_at(&header, offset)?;
    }

    // The BAT, then (D), (E) the region tables.
    let chunk_ratio = (1u64 << 23) * SECTOR / block_size;
    let entries = bat_entries(size, block_size, chunk_ratio);
    let bat_offset = (MIB + log_size).next_multiple_of(MIB);
    let bat_length = (entries * 8).next_multiple_of(MIB);
    let metadata_offset = (bat_offset + bat_length).next_multiple_of(MIB);
    let data_offset = bat_offset + bat_length + 5 * MIB;
    let fixed = opts.subformat == Subformat::Fixed;
    let file_len = if fixed {
        data_offset + size
    } else {
        data_offset
    };
    storage.set_len(file_len)?;
    if fixed || opts.block_state_zero {
        let mut bat = vec![0u8; bat_length as usize];
        let blocks = size.div_ceil(block_size);
        for block in 0..blocks {
            let index = block + block / chunk_ratio;
            let entry = if opts.block_state_zero {
                ZERO
            } else {
                (data_offset + block * block_size).next_multiple_of(MIB) | FULLY_PRESENT
            };
            LittleEndian::write_u64(&mut bat[index as usize * 8..index as usize * 8 + 8], entry);
        }
        storage.write_at(&bat, bat_offset)?;
    }
    let mut regions = vec![0u8; REGION_BYTES];
    regions[0..4].copy_from_slice(b"regi");
    LittleEndian::write_u32(&mut regions[8..12], 2);
    for (i, (guid, offset, length)) in [
        (BAT_GUID, bat_offset, bat_length),
        (METADATA_GUID, metadata_offset, MIB),
    ]
    .into_iter()
    .enumerate()
    {
        let e = &mut regions[16 + i * 32..16 + (i + 1) * 32];
        e[0..16].copy_from_slice(&guid);
        LittleEndian::write_u64(&mut e[16..24], offset);
        LittleEndian::write_u32(&mut e[24..28], length as u32);
    }
    set_checksum(&mut regions);
    for offset in REGION_OFFSETS {
        storage.write_at(&regions, offset)?;
    }

    // (H) the metadata table and its items.
    let mut items = [0u8; 40];
    LittleEndian::write_u32(&mut items[0..4], block_size as u32);
    if fixed {
        LittleEndian::write_u32(&mut items[4..8], 1);
    }
    LittleEndian::write_u64(&mut items[8..16], size);
    items[16..32].copy_from_slice(&random_uuid());
    LittleEndian::write_u32(&mut items[32..36], SECTOR as u32);
    LittleEndian::write_u32(&mut items[36..40], SECTOR as u32);
    let mut table = vec![0u8; 64 << 10];
    table[0..8].copy_from_slice(b"metadata");
    LittleEndian::write_u16(&mut table[10..12], 5);
    let mut offset = 64u32 << 10;
    for (i, (guid, length, flags)) in [
        (FILE_PARAMETERS, 8u32, 4u32),
        (VIRTUAL_DISK_SIZE, 8, 6),
        (PAGE83, 16, 6),
        (LOGICAL_SECTOR, 4, 6),
        (PHYSICAL_SECTOR, 4, 6),
    ]
    .into_iter()
    .enumerate()
    {
        let e = &mut table[32 + i * 32..32 + (i + 1) * 32];
        e[0..16].copy_from_slice(&guid);
        LittleEndian::write_u32(&mut e[16..20], offset);
        LittleEndian::write_u32(&mut e[20..24], length);
        LittleEndian::write_u32(&mut e[24..28], flags);
        offset += length;
    }
    storage.write_at(&table, metadata_offset)?;
    storage.write_at(&items, metadata_offset + (64 << 10))?;
    storage.flush()
}
