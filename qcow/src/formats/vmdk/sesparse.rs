//! VMware's SE sparse ("seSparse") extents, read only as QEMU reads them
//! (`vmdk_open_se_sparse`): a constant header (magic 0xcafebabe), a
//! volatile header (0xcafecafe) that must not ask for a journal replay,
//! a grain directory of 64-bit entries naming grain tables by index in
//! the tables' area, and tables of 4096 64-bit entries naming grains by
//! index in the grains' area. The format is not documented; the checks
//! are QEMU's strict ones, and the bounds of every table are checked
//! before it is read or allocated.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use byteorder::{ByteOrder, LittleEndian};

use super::header::{MAX_GD_ENTRIES, MAX_GRAIN_SECTORS};
use super::sparse::Grain;
use super::FORMAT;
use crate::error::Result;
use crate::formats::{invalid, read_table};
use crate::storage::Storage;

/// The constant header's magic.
pub const CONST_MAGIC: u64 = 0xcafe_babe;
/// The volatile header's magic.
const VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// The one version QEMU reads.
const VERSION: u64 = 0x0000_0002_0000_0001;
/// The one grain size QEMU reads, in sectors (4 KiB).
const GRAIN_SECTORS: u64 = 8;
/// The one grain table size QEMU reads, in sectors (4096 entries).
const TABLE_SECTORS: u64 = 64;
/// Entries of a grain table.
const TABLE_ENTRIES: u64 = TABLE_SECTORS * 512 / 8;
/// Grain tables kept in memory before the cache is emptied (32 KiB each:
/// 8 MiB).
const TABLE_CACHE: usize = 256;
/// The top nibble of an allocated directory entry, with the 32 bits below
/// the top 32 zero as QEMU requires.
const GD_ALLOCATED: u64 = 0x1000_0000_0000_0000;

/// The fields of the constant header QEMU uses or checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Guest sectors.
    pub capacity: u64,
    /// Sector of the volatile header.
    pub volatile_header_offset: u64,
    /// Sector of the grain directory.
    pub grain_dir_offset: u64,
    /// Sectors of the grain directory.
    pub grain_dir_size: u64,
    /// Sector of the grain tables' area.
    pub grain_tables_offset: u64,
    /// Sector of the grains' area.
    pub grains_offset: u64,
}

impl SeSparseHeader {
    /// Parses and checks the constant header sector with QEMU's strict
    /// checks (`check_se_sparse_const_header`).
    pub fn parse(b: &[u8; 512]) -> Result<SeSparseHeader> {
        let field = |i: usize| LittleEndian::read_u64(&b[i * 8..i * 8 + 8]);
        if field(0) != CONST_MAGIC {
            return Err(invalid(
                FORMAT,
                "seSparse magic",
                field(0),
                "Bad const header magic",
            ));
        }
        if field(1) != VERSION {
            return Err(invalid(
                FORMAT,
                "seSparse version",
                field(1),
                "Unsupported version",
            ));
        }
        if field(3) != GRAIN_SECTORS {
            return Err(invalid(
                FORMAT,
                "seSparse grain size",
                field(3),
                "Unsupported grain size",
            ));
        }
        if field(4) != TABLE_SECTORS {
            return Err(invalid(
                FORMAT,
                "seSparse grain table size",
                field(4),
                "Unsupported grain table size",
            ));
        }
        if field(5) != 0 {
            return Err(invalid(
                FORMAT,
                "seSparse flags",
                field(5),
                "Unsupported flags",
            ));
        }
        if let Some(i) = (6..10).find(|&i| field(i) != 0) {
            return Err(invalid(
                FORMAT,
                "seSparse reserved",
                field(i),
                "Unsupported reserved bits",
            ));
        }
        if b[26 * 8..].iter().any(|&x| x != 0) {
            return Err(invalid(
                FORMAT,
                "seSparse padding",
                0,
                "Unsupported non-zero const header padding",
            ));
        }
        Ok(SeSparseHeader {
            capacity: field(2),
            volatile_header_offset: field(10),
            grain_dir_offset: field(16),
            grain_dir_size: field(17),
            grain_tables_offset: field(18),
            grains_offset: field(24),
        })
    }

    /// Checks the volatile header sector
    /// (`check_se_sparse_volatile_header`).
    pub fn check_volatile(b: &[u8; 512]) -> Result<()> {
        let field = |i: usize| LittleEndian::read_u64(&b[i * 8..i * 8 + 8]);
        if field(0) != VOLATILE_MAGIC {
            return Err(invalid(
                FORMAT,
                "seSparse volatile magic",
                field(0),
                "Bad volatile header magic",
            ));
        }
        if field(3) != 0 {
            return Err(invalid(
                FORMAT,
                "seSparse replay_journal",
                field(3),
                "Image is dirty, Replaying journal not supported",
            ));
        }
        if b[32..].iter().any(|&x| x != 0) {
            return Err(invalid(
                FORMAT,
                "seSparse volatile padding",
                0,
                "Unsupported non-zero volatile header padding",
            ));
        }
        Ok(())
    }
}

/// An open SE sparse extent (read only).
pub struct SeSparseExtent {
    storage: Arc<dyn Storage>,
    header: SeSparseHeader,
    /// The grain directory.
    gd: Vec<u64>,
    tables: RwLock<HashMap<u64, Arc<Vec<u64>>>>,
}

impl SeSparseExtent {
    /// Opens the SE sparse extent in `storage`.
    pub fn open(storage: Arc<dyn Storage>) -> Result<SeSparseExtent> {
        let mut raw = [0u8; 512];
        storage.read_at(&mut raw, 0)?;
        let header = SeSparseHeader::parse(&raw)?;
        let file_len = storage.len()?;
        let volatile_at = header
            .volatile_header_offset
            .checked_mul(512)
            .filter(|at| at.checked_add(512).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                invalid(
                    FORMAT,
                    "seSparse volatile header offset",
                    header.volatile_header_offset,
                    "the volatile header lies past the end of the file",
                )
            })?;
        storage.read_at(&mut raw, volatile_at)?;
        SeSparseHeader::check_volatile(&raw)?;
        if header.capacity > u64::MAX / 512 {
            return Err(invalid(
                FORMAT,
                "seSparse capacity",
                header.capacity,
                "larger than any disk",
            ));
        }
        // QEMU's bound on the directory (32 Mi entries, 256 MiB).
        let entries = header.grain_dir_size.saturating_mul(512) / 8;
        if entries > MAX_GD_ENTRIES {
            return Err(invalid(
                FORMAT,
                "seSparse grain_dir_size",
                header.grain_dir_size,
                "L1 size too big",
            ));
        }
        const { assert!(GRAIN_SECTORS <= MAX_GRAIN_SECTORS) };
        let gd_at = header.grain_dir_offset.checked_mul(512).ok_or_else(|| {
            invalid(
                FORMAT,
                "seSparse grain_dir_offset",
                header.grain_dir_offset,
                "offset overflows",
            )
        })?;
        let bytes = read_table(
            &*storage,
            FORMAT,
            "seSparse grain directory",
            gd_at,
            entries * 8,
            MAX_GD_ENTRIES * 8,
        )?;
        let gd = bytes.chunks_exact(8).map(LittleEndian::read_u64).collect();
        Ok(SeSparseExtent {
            storage,
            header,
            gd,
            tables: RwLock::new(HashMap::new()),
        })
    }

    /// The checked header.
    pub fn header(&self) -> &SeSparseHeader {
        &self.header
    }

    /// Guest bytes of the extent.
    pub fn len(&self) -> u64 {
        self.header.capacity * 512
    }

    /// Whether the extent holds no guest bytes.
    pub fn is_empty(&self) -> bool {
        self.header.capacity == 0
    }

    /// Bytes of a grain (4 KiB).
    pub fn grain_bytes(&self) -> u64 {
        GRAIN_SECTORS * 512
    }

    /// Guest bytes one grain table covers (16 MiB).
    pub fn table_span(&self) -> u64 {
        TABLE_ENTRIES * self.grain_bytes()
    }

    /// The file.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Grain table `gd_index`, `None` when the directory has none; an
    /// index past the directory or an entry QEMU refuses is an error.
    fn table(&self, gd_index: u64) -> Result<Option<Arc<Vec<u64>>>> {
        let Some(&entry) = self.gd.get(gd_index as usize) else {
            return Err(invalid(
                FORMAT,
                "seSparse grain directory index",
                gd_index,
                "the capacity reaches past the grain directory",
            ));
        };
        if entry == 0 {
            return Ok(None);
        }
        if let Some(t) = self
            .tables
            .read()
            .expect("table cache poisoned")
            .get(&gd_index)
        {
            return Ok(Some(t.clone()));
        }
        if entry & 0xffff_ffff_0000_0000 != GD_ALLOCATED {
            return Err(invalid(
                FORMAT,
                "seSparse grain directory entry",
                entry,
                "not an allocated grain table",
            ));
        }
        // The table's sector, which QEMU keeps in 32 bits.
        let sector = (entry & 0xffff_ffff)
            .checked_mul(TABLE_SECTORS)
            .and_then(|s| s.checked_add(self.header.grain_tables_offset))
            .filter(|&s| s <= u64::from(u32::MAX))
            .ok_or_else(|| {
                invalid(
                    FORMAT,
                    "seSparse grain directory entry",
                    entry,
                    "the grain table lies past 2 TiB",
                )
            })?;
        let bytes = read_table(
            &*self.storage,
            FORMAT,
            "seSparse grain table",
            sector * 512,
            TABLE_ENTRIES * 8,
            TABLE_ENTRIES * 8,
        )?;
        let table: Arc<Vec<u64>> =
            Arc::new(bytes.chunks_exact(8).map(LittleEndian::read_u64).collect());
        let mut cache = self.tables.write().expect("table cache poisoned");
        if cache.len() >= TABLE_CACHE {
            cache.clear();
        }
        Ok(Some(cache.entry(gd_index).or_insert(table).clone()))
    }

    /// Where the grain holding byte `offset` of the extent lives, and the
    /// bytes from `offset` that read alike: the rest of the grain, or the
    /// rest of a missing grain table.
    pub fn lookup(&self, offset: u64) -> Result<(Grain, u64)> {
        let grain = offset / self.grain_bytes();
        let in_grain = offset % self.grain_bytes();
        let Some(table) = self.table(grain / TABLE_ENTRIES)? else {
            return Ok((
                Grain::Unallocated,
                self.table_span() - offset % self.table_span(),
            ));
        };
        let entry = table[(grain % TABLE_ENTRIES) as usize];
        let found = match entry >> 60 {
            0 if entry == 0 => Grain::Unallocated,
            // A SCSI-unmapped grain reads as a zeroed one.
            1 | 2 => Grain::Zero,
            3 => {
                let index = ((entry & 0x0fff_0000_0000_0000) >> 48)
                    | ((entry & 0x0000_ffff_ffff_ffff) << 12);
                let host = index
                    .checked_mul(GRAIN_SECTORS)
                    .and_then(|s| s.checked_add(self.header.grains_offset))
                    .and_then(|s| s.checked_mul(512))
                    .and_then(|h| h.checked_add(in_grain))
                    .ok_or_else(|| {
                        invalid(
                            FORMAT,
                            "seSparse grain table entry",
                            entry,
                            "the grain's offset overflows",
                        )
                    })?;
                Grain::Data(host)
            }
            _ => {
                return Err(invalid(
                    FORMAT,
                    "seSparse grain table entry",
                    entry,
                    "unknown grain type",
                ))
            }
        };
        Ok((found, self.grain_bytes() - in_grain))
    }

    /// Reads `buf.len()` bytes at `offset` of the extent (within one grain).
    pub fn read_in_grain(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self.lookup(offset)?.0 {
            Grain::Data(host) => self.storage.read_at(buf, host),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Calls `f` with the extent offset and place of every grain in an
    /// allocated grain table, in order.
    pub fn for_each_grain(&self, mut f: impl FnMut(u64, Grain)) -> Result<()> {
        let grains = self.len().div_ceil(self.grain_bytes());
        for gd_index in 0..grains.div_ceil(TABLE_ENTRIES) {
            if self.table(gd_index)?.is_none() {
                continue;
            }
            let first = gd_index * TABLE_ENTRIES;
            for grain in first..(first + TABLE_ENTRIES).min(grains) {
                let offset = grain * self.grain_bytes();
                f(offset, self.lookup(offset)?.0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// A 32 MiB extent: const header, volatile header at sector 1, the
    /// directory at sector 2 (one sector, 64 entries), table area at
    /// sector 3 (one table, index 0, for guest table 1), grains at sector
    /// 67; grain 5 of table 1 is at grain index 2 (its low 12 bits stored
    /// in bits 48-59 of the entry), grain 6 is zeroed.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 67 * 512 + 3 * 4096];
        let put = |b: &mut Vec<u8>, at: usize, v: u64| {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        for (i, v) in [CONST_MAGIC, VERSION, 65536, 8, 64].iter().enumerate() {
            put(&mut b, i * 8, *v);
        }
        put(&mut b, 10 * 8, 1);
        put(&mut b, 16 * 8, 2);
        put(&mut b, 17 * 8, 1);
        put(&mut b, 18 * 8, 3);
        put(&mut b, 24 * 8, 67);
        put(&mut b, 512, VOLATILE_MAGIC);
        put(&mut b, 1024 + 8, GD_ALLOCATED);
        put(&mut b, 3 * 512 + 5 * 8, 0x3002_0000_0000_0000);
        put(&mut b, 3 * 512 + 6 * 8, 0x2000_0000_0000_0000);
        b[67 * 512 + 2 * 4096..].fill(0xab);
        b
    }

    fn open(bytes: Vec<u8>) -> Result<SeSparseExtent> {
        SeSparseExtent::open(Arc::new(MemStorage::from_bytes(bytes)))
    }

    #[test]
    fn reads_grains_as_qemu_maps_them() {
        let e = open(image()).unwrap();
        assert_eq!(e.len(), 32 << 20);
        let t1 = 16 << 20;
        assert_eq!(e.lookup(100).unwrap(), (Grain::Unallocated, t1 - 100));
        assert_eq!(
            e.lookup(t1 + 5 * 4096 + 7).unwrap(),
            (Grain::Data((67 * 512 + 2 * 4096 + 7) as u64), 4096 - 7)
        );
        assert_eq!(e.lookup(t1 + 6 * 4096).unwrap().0, Grain::Zero);
        let mut buf = [0u8; 16];
        e.read_in_grain(&mut buf, t1 + 5 * 4096).unwrap();
        assert_eq!(buf, [0xab; 16]);
        let mut seen = Vec::new();
        e.for_each_grain(|o, g| {
            if g != Grain::Unallocated {
                seen.push(o)
            }
        })
        .unwrap();
        assert_eq!(seen, [t1 + 5 * 4096, t1 + 6 * 4096]);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let patch = |at: usize, v: u64| {
            let mut b = image();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            b
        };
        for bad in [
            patch(0, 0xcafe_babf),
            patch(8, 1),
            patch(24, 16),
            patch(32, 128),
            patch(40, 1),
            patch(56, 1),
            patch(400, 1),
            patch(80, 1 << 40),
            patch(512, 0),
            patch(512 + 24, 1),
            patch(17 * 8, 1 << 40),
            patch(16 * 8, 1 << 40),
        ] {
            assert!(open(bad).is_err());
        }
        // Entries QEMU refuses fail the read that meets them.
        let e = open(patch(1024 + 8, 0x2000_0000_0000_0000)).unwrap();
        assert!(e.lookup(16 << 20).is_err());
        let e = open(patch(3 * 512 + 5 * 8, 0x4000_0000_0000_0000)).unwrap();
        assert!(e.lookup((16 << 20) + 5 * 4096).is_err());
        let e = open(patch(16, 1 << 30)).unwrap();
        assert!(e.lookup(1 << 30).is_err());
    }
}
