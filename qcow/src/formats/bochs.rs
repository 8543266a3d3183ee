//! Bochs growing redolog images (read only, as QEMU's bochs driver): a
//! 512-byte little-endian header, a catalog of u32 extent numbers
//! (`0xffffffff` for an extent never written), then the extents, each a
//! sector bitmap followed by its data sectors. A sector is stored only
//! when its extent is in the catalog and its bit is set; every other
//! sector reads as zeros.

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::{invalid, read_table, CheckReport, ForeignImage};
use crate::device::{
    check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile, SECTOR_SIZE,
};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "bochs";
/// Bytes of the header.
pub const HEADER_SIZE: usize = 512;
/// The header's magic string.
const MAGIC: &[u8] = b"Bochs Virtual HD Image";
/// The header's type string.
const REDOLOG_TYPE: &[u8] = b"Redolog";
/// The header's subtype string (the only one QEMU reads).
const GROWING_TYPE: &[u8] = b"Growing";
/// Version 2 header: the disk size follows a reserved word.
const VERSION_2: u32 = 0x0002_0000;
/// Version 1 header: the disk size comes first.
const VERSION_1: u32 = 0x0001_0000;
/// Most catalog entries QEMU accepts (the largest image bximage makes).
const MAX_CATALOG: u32 = 0x10_0000;
/// Largest extent QEMU accepts.
const MAX_EXTENT: u32 = 0x80_0000;
/// A catalog entry of an extent never written.
const NOT_ALLOCATED: u32 = u32::MAX;

/// The header fields the reader uses, validated as QEMU's `bochs_open`
/// validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Disk size in bytes (whole sectors).
    pub disk_size: u64,
    /// Byte offset of the catalog.
    pub catalog_offset: u64,
    /// Catalog entries.
    pub catalog_entries: u32,
    /// Sectors of each extent's bitmap.
    pub bitmap_sectors: u64,
    /// Sectors of each extent's data.
    pub extent_sectors: u64,
    /// Bytes of data each extent covers.
    pub extent_size: u64,
}

/// The NUL-terminated string of a fixed-size header field.
fn c_string(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Whether the first bytes of a file are a Bochs growing redolog header
/// (QEMU's `bochs_probe`).
fn is_bochs(buf: &[u8]) -> bool {
    buf.len() >= HEADER_SIZE
        && c_string(&buf[..32]) == MAGIC
        && c_string(&buf[32..48]) == REDOLOG_TYPE
        && c_string(&buf[48..64]) == GROWING_TYPE
        && matches!(LittleEndian::read_u32(&buf[64..68]), VERSION_1 | VERSION_2)
}

impl Header {
    /// Parses and checks a header.
    pub fn parse(buf: &[u8; HEADER_SIZE]) -> Result<Header> {
        if !is_bochs(buf) {
            return Err(Error::Unsupported("Image not in Bochs format".into()));
        }
        let version = LittleEndian::read_u32(&buf[64..68]);
        let disk = if version == VERSION_1 {
            LittleEndian::read_u64(&buf[84..92])
        } else {
            LittleEndian::read_u64(&buf[88..96])
        };
        let catalog_entries = LittleEndian::read_u32(&buf[72..76]);
        if catalog_entries > MAX_CATALOG {
            return Err(invalid(
                FORMAT,
                "catalog",
                catalog_entries.into(),
                "Catalog size is too large",
            ));
        }
        let bitmap = LittleEndian::read_u32(&buf[76..80]);
        let extent = LittleEndian::read_u32(&buf[80..84]);
        if extent < SECTOR_SIZE as u32 {
            return Err(invalid(
                FORMAT,
                "extent",
                extent.into(),
                "Extent size must be at least 512",
            ));
        }
        if !extent.is_power_of_two() {
            return Err(invalid(
                FORMAT,
                "extent",
                extent.into(),
                "Extent size is not a power of two",
            ));
        }
        if extent > MAX_EXTENT {
            return Err(invalid(
                FORMAT,
                "extent",
                extent.into(),
                "Extent size is too large",
            ));
        }
        let disk_sectors = disk / SECTOR_SIZE;
        let extent_size = u64::from(extent);
        if u64::from(catalog_entries) < disk_sectors.div_ceil(extent_size / SECTOR_SIZE) {
            return Err(invalid(
                FORMAT,
                "catalog",
                catalog_entries.into(),
                "Catalog size is too small for this disk size",
            ));
        }
        // QEMU computes the bitmap's sectors in 32 bits: a zero bitmap size
        // wraps to the largest.
        let bitmap_sectors = 1 + u64::from(bitmap.wrapping_sub(1)) / SECTOR_SIZE;
        Ok(Header {
            disk_size: disk_sectors * SECTOR_SIZE,
            catalog_offset: LittleEndian::read_u32(&buf[68..72]).into(),
            catalog_entries,
            bitmap_sectors,
            extent_sectors: extent_size / SECTOR_SIZE,
            extent_size,
        })
    }
}

/// An open Bochs image.
pub struct Bochs {
    storage: Arc<dyn Storage>,
    header: Header,
    catalog: Vec<u32>,
    /// Byte offset of the first extent.
    data_offset: u64,
}

impl Bochs {
    /// Opens a Bochs image; QEMU's driver writes none, so a writable open
    /// is refused with its message.
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Bochs> {
        if writable {
            return Err(Error::DriverReadOnly);
        }
        let mut raw = [0u8; HEADER_SIZE];
        storage.read_at(&mut raw, 0)?;
        let header = Header::parse(&raw)?;
        let bytes = read_table(
            &*storage,
            FORMAT,
            "catalog",
            header.catalog_offset,
            u64::from(header.catalog_entries) * 4,
            u64::from(MAX_CATALOG) * 4,
        )?;
        let catalog = bytes.chunks_exact(4).map(LittleEndian::read_u32).collect();
        let data_offset = header.catalog_offset + u64::from(header.catalog_entries) * 4;
        Ok(Bochs {
            storage,
            header,
            catalog,
            data_offset,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Where the sector at guest byte `offset` (sector aligned) is stored,
    /// if it is (QEMU's `seek_to_sector`).
    fn sector_host_offset(&self, offset: u64) -> Result<Option<u64>> {
        let extent_index = (offset / self.header.extent_size) as usize;
        let sector_in_extent = (offset % self.header.extent_size) / SECTOR_SIZE;
        let entry = self
            .catalog
            .get(extent_index)
            .copied()
            .unwrap_or(NOT_ALLOCATED);
        if entry == NOT_ALLOCATED {
            return Ok(None);
        }
        let bitmap_offset = self.data_offset
            + SECTOR_SIZE
                * u64::from(entry)
                * (self.header.extent_sectors + self.header.bitmap_sectors);
        let mut bits = [0u8; 1];
        self.storage
            .read_at(&mut bits, bitmap_offset + sector_in_extent / 8)?;
        if bits[0] >> (sector_in_extent % 8) & 1 == 0 {
            return Ok(None);
        }
        Ok(Some(
            bitmap_offset + SECTOR_SIZE * (self.header.bitmap_sectors + sector_in_extent),
        ))
    }
}

impl BlockRead for Bochs {
    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.header.disk_size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let sector_start = pos - pos % SECTOR_SIZE;
            let in_sector = (pos - sector_start) as usize;
            let n = (SECTOR_SIZE as usize - in_sector).min(buf.len() - done);
            match self.sector_host_offset(sector_start)? {
                Some(host) => self
                    .storage
                    .read_at(&mut buf[done..done + n], host + in_sector as u64)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset + len.min(self.header.disk_size.saturating_sub(offset));
        let mut out = Vec::new();
        let mut pos = offset;
        let mut steps = 0;
        while pos < end && steps < super::MAX_EXTENT_STEPS {
            steps += 1;
            let extent_end = (pos / self.header.extent_size + 1) * self.header.extent_size;
            let extent_index = (pos / self.header.extent_size) as usize;
            let allocated = self.catalog.get(extent_index).copied() != Some(NOT_ALLOCATED)
                && extent_index < self.catalog.len();
            if !allocated {
                let n = extent_end.min(end) - pos;
                super::push_extent(&mut out, pos, n, ExtentKind::Zero { host_offset: None });
                pos += n;
                continue;
            }
            let sector_start = pos - pos % SECTOR_SIZE;
            let n = (sector_start + SECTOR_SIZE).min(end) - pos;
            let kind = match self.sector_host_offset(sector_start)? {
                Some(host) => ExtentKind::Data {
                    host_offset: host + (pos - sector_start),
                    file: FileIndex::IMAGE,
                },
                None => ExtentKind::Zero { host_offset: None },
            };
            super::push_extent(&mut out, pos, n, kind);
            pos += n;
        }
        Ok(out)
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        None
    }

    fn format_name(&self) -> &'static str {
        FORMAT
    }

    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        LayerFile::own(&self.storage, file)
    }
}

impl ForeignImage for Bochs {
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.storage)
    }

    fn cluster_size(&self) -> Option<u64> {
        None
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// A version 2 image of `disk` bytes with 4 KiB extents and a 512-byte
    /// bitmap, its catalog right after the header.
    fn image(disk: u64, catalog: &[u32]) -> MemStorage {
        let mut header = [0u8; HEADER_SIZE];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[32..32 + REDOLOG_TYPE.len()].copy_from_slice(REDOLOG_TYPE);
        header[48..48 + GROWING_TYPE.len()].copy_from_slice(GROWING_TYPE);
        LittleEndian::write_u32(&mut header[64..], VERSION_2);
        LittleEndian::write_u32(&mut header[68..], HEADER_SIZE as u32);
        LittleEndian::write_u32(&mut header[72..], catalog.len() as u32);
        LittleEndian::write_u32(&mut header[76..], 512);
        LittleEndian::write_u32(&mut header[80..], 4096);
        LittleEndian::write_u64(&mut header[88..], disk);
        let mem = MemStorage::new();
        mem.write_at(&header, 0).unwrap();
        let mut table = vec![0u8; catalog.len() * 4];
        for (entry, value) in table.chunks_exact_mut(4).zip(catalog) {
            LittleEndian::write_u32(entry, *value);
        }
        mem.write_at(&table, HEADER_SIZE as u64).unwrap();
        mem
    }

    #[test]
    fn reads_stored_sectors_and_zeros_elsewhere() {
        // Two extents of 4 KiB: the second is stored as extent 0.
        let mem = image(8192, &[NOT_ALLOCATED, 0]);
        let data_offset = HEADER_SIZE as u64 + 8;
        // Sector 1 of the extent is marked stored.
        mem.write_at(&[0b10], data_offset).unwrap();
        mem.write_at(&[9u8; 512], data_offset + 512 + 512).unwrap();
        let bochs = Bochs::open(Arc::new(mem), false).unwrap();
        assert_eq!(bochs.virtual_size(), 8192);
        let mut buf = vec![1u8; 8192];
        bochs.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096 + 512].iter().all(|&b| b == 0));
        assert!(buf[4096 + 512..4096 + 1024].iter().all(|&b| b == 9));
        assert!(buf[4096 + 1024..].iter().all(|&b| b == 0));
        let extents = bochs.extents(0, 8192).unwrap();
        assert_eq!(extents.len(), 3);
        assert_eq!(
            extents[1].kind,
            ExtentKind::Data {
                host_offset: data_offset + 1024,
                file: FileIndex::IMAGE
            }
        );
        assert!(bochs.write_at(&[0; 512], 0).is_err());
    }

    #[test]
    fn refuses_hostile_headers() {
        let mem = image(1 << 20, &[NOT_ALLOCATED]);
        let e = Bochs::open(Arc::new(mem), false).err().unwrap();
        assert!(e.to_string().contains("Catalog size is too small"), "{e}");
        let mem = image(4096, &[NOT_ALLOCATED]);
        mem.write_at(&[0xff; 4], 80).unwrap();
        let e = Bochs::open(Arc::new(mem), false).err().unwrap();
        assert!(e.to_string().contains("not a power of two"), "{e}");
        let mem = image(4096, &[NOT_ALLOCATED]);
        mem.write_at(&(MAX_CATALOG + 1).to_le_bytes(), 72).unwrap();
        let e = Bochs::open(Arc::new(mem), false).err().unwrap();
        assert!(e.to_string().contains("Catalog size is too large"), "{e}");
        let mem = image(4096, &[0]);
        assert!(Bochs::open(Arc::new(mem), true).is_err());
    }
}
