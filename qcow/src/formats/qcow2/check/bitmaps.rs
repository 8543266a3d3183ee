//! Persistent dirty bitmaps as the check sees them (QEMU's
//! qcow2_check_bitmaps_refcounts): the bitmaps header extension, the
//! bitmap directory and each bitmap's table are references like any other
//! metadata. Bitmaps count only while the autoclear bit says they are
//! consistent; otherwise QEMU ignores them and their clusters are leaks.

use byteorder::{BigEndian, ByteOrder};

use super::{Ctx, Flow, Stop, EINVAL};
use crate::error::{Error, Result};
use crate::extensions::{Extension, HeaderCluster, EXT_BITMAPS};
use crate::header::AUTOCLEAR_BITMAPS;

/// Most bitmaps QEMU accepts.
const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU accepts.
const MAX_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
/// Length of a directory entry before its name.
const DIR_ENTRY_LEN: usize = 24;
/// Largest bitmap table, in entries.
const MAX_TABLE_SIZE: u32 = 0x800_0000;
/// Largest bitmap data, in bytes.
const MAX_PHYS_SIZE: u64 = 0x2000_0000;
const MIN_GRANULARITY_BITS: u8 = 9;
const MAX_GRANULARITY_BITS: u8 = 31;
const MAX_NAME_SIZE: u16 = 1023;
/// Flags other than in_use and auto.
const RESERVED_FLAGS: u32 = 0xffff_fffc;
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY_TRACKING: u8 = 1;
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const TABLE_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
const TABLE_ALL_ONES: u64 = 1;

/// The bitmaps header extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BitmapsExt {
    pub(super) nb_bitmaps: u32,
    pub(super) dir_size: u64,
    pub(super) dir_offset: u64,
}

/// Whether a bitmaps extension is present but out of force (its autoclear
/// bit is clear), so that QEMU ignores it.
pub(super) fn ignored(hc: &HeaderCluster) -> bool {
    hc.header.autoclear_features & AUTOCLEAR_BITMAPS == 0
        && hc
            .extensions
            .iter()
            .any(|e| matches!(e, Extension::Other { ext_type, .. } if *ext_type == EXT_BITMAPS))
}

/// The extension, if present and in force; refuses what QEMU refuses when
/// opening the image.
pub(super) fn parse_extension(hc: &HeaderCluster) -> Result<Option<BitmapsExt>> {
    let Some(data) = hc.extensions.iter().find_map(|e| match e {
        Extension::Other { ext_type, data } if *ext_type == EXT_BITMAPS => Some(data),
        _ => None,
    }) else {
        return Ok(None);
    };
    let bad = |reason| Error::InvalidExtension {
        ext_type: EXT_BITMAPS,
        offset: 0,
        reason,
    };
    if data.len() != 24 {
        return Err(bad("bitmaps_ext: Invalid extension length"));
    }
    if hc.header.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
        return Ok(None);
    }
    let ext = BitmapsExt {
        nb_bitmaps: BigEndian::read_u32(&data[0..4]),
        dir_size: BigEndian::read_u64(&data[8..16]),
        dir_offset: BigEndian::read_u64(&data[16..24]),
    };
    if BigEndian::read_u32(&data[4..8]) != 0 {
        return Err(bad("bitmaps_ext: Reserved field is not zero"));
    }
    if ext.nb_bitmaps > MAX_BITMAPS {
        return Err(bad(
            "bitmaps_ext: Image has more bitmaps than QEMU supports (65535)",
        ));
    }
    if ext.nb_bitmaps == 0 {
        return Err(bad("found bitmaps extension with zero bitmaps"));
    }
    if ext.dir_offset & (hc.header.cluster_size() - 1) != 0 {
        return Err(bad("bitmaps_ext: invalid bitmap directory offset"));
    }
    if ext.dir_size > MAX_DIRECTORY_SIZE {
        return Err(bad(
            "bitmaps_ext: bitmap directory size exceeds the maximum supported size",
        ));
    }
    Ok(Some(ext))
}

/// One bitmap's table.
struct BitmapTable {
    offset: u64,
    size: u32,
}

impl Ctx<'_> {
    /// Counts the directory, each bitmap table and each data cluster.
    pub(super) fn check_bitmaps(&mut self) -> Flow<()> {
        let Some(ext) = self.bitmaps else {
            return Ok(());
        };
        self.inc_refcounts(ext.dir_offset, ext.dir_size)?;
        let Some(tables) = self.load_bitmap_directory(ext)? else {
            self.res.corruptions += 1;
            return Err(Stop::Abort(EINVAL));
        };
        for t in tables {
            let bytes = u64::from(t.size) * 8;
            self.inc_refcounts(t.offset, bytes)?;
            // Bounded by check_dir_entry: at most 512 MiB of bitmap data,
            // so at most 8 MiB of table.
            let mut raw = vec![0u8; bytes as usize];
            self.storage.read_at(&mut raw, t.offset)?;
            let entries: Vec<u64> = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
            if entries.iter().any(|&e| !self.table_entry_valid(e)) {
                self.res.corruptions += 1;
                return Err(Stop::Abort(EINVAL));
            }
            for e in entries {
                let offset = e & TABLE_OFFSET_MASK;
                if offset != 0 {
                    self.inc_refcounts(offset, self.cluster_size)?;
                }
            }
        }
        Ok(())
    }

    fn table_entry_valid(&self, entry: u64) -> bool {
        if entry & TABLE_RESERVED_MASK != 0 {
            return false;
        }
        let offset = entry & TABLE_OFFSET_MASK;
        offset == 0 || (entry & TABLE_ALL_ONES == 0 && offset & (self.cluster_size - 1) == 0)
    }

    /// QEMU's bitmap_list_load: `None` when the directory is broken.
    fn load_bitmap_directory(&mut self, ext: BitmapsExt) -> Flow<Option<Vec<BitmapTable>>> {
        if ext.dir_size == 0 || ext.dir_size > MAX_DIRECTORY_SIZE {
            return Ok(None);
        }
        let mut dir = vec![0u8; ext.dir_size as usize];
        self.storage.read_at(&mut dir, ext.dir_offset)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < dir.len() {
            if pos + DIR_ENTRY_LEN > dir.len() || out.len() as u32 >= ext.nb_bitmaps {
                return Ok(None);
            }
            let e = &dir[pos..pos + DIR_ENTRY_LEN];
            let table_offset = BigEndian::read_u64(&e[0..8]);
            let table_size = BigEndian::read_u32(&e[8..12]);
            let flags = BigEndian::read_u32(&e[12..16]);
            let kind = e[16];
            let granularity_bits = e[17];
            let name_size = BigEndian::read_u16(&e[18..20]);
            let extra_data_size = BigEndian::read_u32(&e[20..24]);
            let entry_len =
                (DIR_ENTRY_LEN as u64 + u64::from(name_size) + u64::from(extra_data_size))
                    .next_multiple_of(8);
            if pos as u64 + entry_len > dir.len() as u64 || extra_data_size != 0 {
                return Ok(None);
            }
            let cs = self.cluster_size;
            let invalid = table_size == 0
                || table_offset == 0
                || table_offset % cs != 0
                || table_size > MAX_TABLE_SIZE
                || !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits)
                || flags & RESERVED_FLAGS != 0
                || name_size > MAX_NAME_SIZE
                || kind != TYPE_DIRTY_TRACKING;
            if invalid {
                return Ok(None);
            }
            let phys = u64::from(table_size) * cs;
            let disk_size = self.header.size & !511;
            if phys > MAX_PHYS_SIZE || disk_size > (phys * 8) << granularity_bits {
                return Ok(None);
            }
            out.push(BitmapTable {
                offset: table_offset,
                size: table_size,
            });
            pos += entry_len as usize;
        }
        if out.len() as u32 != ext.nb_bitmaps {
            return Ok(None);
        }
        Ok(Some(out))
    }
}
