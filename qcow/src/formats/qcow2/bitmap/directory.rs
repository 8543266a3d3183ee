//! The persistent bitmaps of a qcow2 image as stored: the bitmaps header
//! extension and the bitmap directory it points at (`parse` / `write`),
//! bounded as QEMU bounds them.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::extensions::{Extension, HeaderCluster, EXT_BITMAPS};
use crate::header::AUTOCLEAR_BITMAPS;

/// Most bitmaps QEMU accepts in one image.
pub const MAX_BITMAPS: usize = 65535;
/// Longest bitmap name.
pub const MAX_NAME_LEN: usize = 1023;
/// Largest directory QEMU accepts.
pub const MAX_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
/// Smallest and largest granularity, as powers of two.
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// See [`MIN_GRANULARITY_BITS`].
pub const MAX_GRANULARITY_BITS: u8 = 31;
/// Largest bitmap table, in entries.
pub const MAX_TABLE_SIZE: u32 = 0x800_0000;

/// The bitmap is being changed by a writer (not consistent).
pub const FLAG_IN_USE: u32 = 1 << 0;
/// The bitmap tracks writes (enabled).
pub const FLAG_AUTO: u32 = 1 << 1;
const KNOWN_FLAGS: u32 = FLAG_IN_USE | FLAG_AUTO;
const TYPE_DIRTY_TRACKING: u8 = 1;
const ENTRY_HEADER: usize = 24;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapEntry {
    /// The bitmap's name.
    pub name: String,
    /// Host offset of its table.
    pub table_offset: u64,
    /// Entries of its table.
    pub table_size: u32,
    /// `in_use` and `auto` flags.
    pub flags: u32,
    /// log2 of the bytes one bit covers.
    pub granularity_bits: u8,
}

impl BitmapEntry {
    /// Bytes one bit covers.
    pub fn granularity(&self) -> u64 {
        1 << self.granularity_bits
    }

    /// Whether the bitmap is enabled (`auto`).
    pub fn enabled(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }

    fn entry_len(&self) -> usize {
        (ENTRY_HEADER + self.name.len()).div_ceil(8) * 8
    }
}

/// The bitmaps extension: count, directory size and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// Number of bitmaps.
    pub nb_bitmaps: u32,
    /// Bytes of the directory.
    pub dir_size: u64,
    /// Host offset of the directory.
    pub dir_offset: u64,
}

/// The extension of an image, if present and in force (autoclear bit
/// set); a malformed one is an error.
pub fn extension(hc: &HeaderCluster) -> Result<Option<BitmapsExtension>> {
    let Some(data) = hc.extensions.iter().find_map(|e| match e {
        Extension::Other { ext_type, data } if *ext_type == EXT_BITMAPS => Some(data),
        _ => None,
    }) else {
        return Ok(None);
    };
    if hc.header.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
        return Ok(None);
    }
    let bad = |reason| Error::InvalidExtension {
        ext_type: EXT_BITMAPS,
        offset: 0,
        reason,
    };
    if data.len() != 24 || BigEndian::read_u32(&data[4..8]) != 0 {
        return Err(bad("bitmaps_ext: Invalid extension"));
    }
    let ext = BitmapsExtension {
        nb_bitmaps: BigEndian::read_u32(&data[0..4]),
        dir_size: BigEndian::read_u64(&data[8..16]),
        dir_offset: BigEndian::read_u64(&data[16..24]),
    };
    if ext.nb_bitmaps as usize > MAX_BITMAPS || ext.nb_bitmaps == 0 {
        return Err(bad("bitmaps_ext: Invalid number of bitmaps"));
    }
    if ext.dir_size > MAX_DIRECTORY_SIZE {
        return Err(bad("bitmaps_ext: Bitmap directory is too large"));
    }
    Ok(Some(ext))
}

/// The extension's bytes.
pub fn extension_bytes(ext: &BitmapsExtension) -> Vec<u8> {
    let mut data = vec![0u8; 24];
    BigEndian::write_u32(&mut data[0..4], ext.nb_bitmaps);
    BigEndian::write_u64(&mut data[8..16], ext.dir_size);
    BigEndian::write_u64(&mut data[16..24], ext.dir_offset);
    data
}

fn invalid(reason: String) -> Error {
    Error::Corrupt(format!("bitmap directory: {reason}"))
}

/// Parses `count` directory entries from `buf` (the whole directory).
pub fn parse(buf: &[u8], count: u32) -> Result<Vec<BitmapEntry>> {
    let mut entries = Vec::with_capacity((count as usize).min(MAX_BITMAPS));
    let mut pos = 0usize;
    for _ in 0..count {
        if pos + ENTRY_HEADER > buf.len() {
            return Err(invalid("entry past the directory's end".into()));
        }
        let e = &buf[pos..];
        let name_len = BigEndian::read_u16(&e[18..20]) as usize;
        let extra = BigEndian::read_u32(&e[20..24]) as usize;
        if extra != 0 {
            return Err(invalid("extra data is not supported".into()));
        }
        if name_len == 0 || name_len > MAX_NAME_LEN || pos + ENTRY_HEADER + name_len > buf.len() {
            return Err(invalid(format!("invalid name length {name_len}")));
        }
        let name = String::from_utf8(e[ENTRY_HEADER..ENTRY_HEADER + name_len].to_vec())
            .map_err(|_| invalid("name is not UTF-8".into()))?;
        let entry = BitmapEntry {
            name,
            table_offset: BigEndian::read_u64(&e[0..8]),
            table_size: BigEndian::read_u32(&e[8..12]),
            flags: BigEndian::read_u32(&e[12..16]),
            granularity_bits: e[17],
        };
        if e[16] != TYPE_DIRTY_TRACKING {
            return Err(invalid(format!(
                "bitmap '{}' has type {}",
                entry.name, e[16]
            )));
        }
        if entry.flags & !KNOWN_FLAGS != 0 {
            return Err(invalid(format!(
                "bitmap '{}' has unknown flags",
                entry.name
            )));
        }
        if !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&entry.granularity_bits) {
            return Err(invalid(format!(
                "bitmap '{}' has an invalid granularity",
                entry.name
            )));
        }
        if entry.table_size > MAX_TABLE_SIZE {
            return Err(invalid(format!(
                "bitmap '{}' has a too large table",
                entry.name
            )));
        }
        pos += entry.entry_len();
        entries.push(entry);
    }
    Ok(entries)
}

/// The directory's bytes.
pub fn write(entries: &[BitmapEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let start = out.len();
        out.resize(start + e.entry_len(), 0);
        let b = &mut out[start..];
        BigEndian::write_u64(&mut b[0..8], e.table_offset);
        BigEndian::write_u32(&mut b[8..12], e.table_size);
        BigEndian::write_u32(&mut b[12..16], e.flags);
        b[16] = TYPE_DIRTY_TRACKING;
        b[17] = e.granularity_bits;
        BigEndian::write_u16(&mut b[18..20], e.name.len() as u16);
        b[ENTRY_HEADER..ENTRY_HEADER + e.name.len()].copy_from_slice(e.name.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_padding() {
        let entries = vec![
            BitmapEntry {
                name: "b1".into(),
                table_offset: 0x30000,
                table_size: 4,
                flags: FLAG_AUTO,
                granularity_bits: 16,
            },
            BitmapEntry {
                name: "a-longer-name".into(),
                table_offset: 0x40000,
                table_size: 1,
                flags: 0,
                granularity_bits: 9,
            },
        ];
        let buf = write(&entries);
        assert_eq!(buf.len(), 32 + 40);
        assert_eq!(parse(&buf, 2).unwrap(), entries);
    }

    #[test]
    fn bad_entries_are_refused() {
        let e = BitmapEntry {
            name: "x".into(),
            table_offset: 0,
            table_size: 0,
            flags: 0,
            granularity_bits: 16,
        };
        let mut buf = write(&[e]);
        buf[17] = 40;
        assert!(parse(&buf, 1).is_err());
        assert!(parse(&buf, 2).is_err());
    }
}
