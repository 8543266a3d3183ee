//! VHD images ("vpc" in qemu-img): fixed disks (the data, then a footer)
//! and dynamic disks (a footer copy, a dynamic header, a block allocation
//! table, blocks each led by a sector bitmap, the footer at the end).
//!
//! Reads follow the block allocation table alone, as QEMU's do (the sector
//! bitmaps are not consulted); a new block gets an all-ones bitmap and the
//! footer moves past it, as QEMU writes them, except that the block's data
//! starts on a 4 KiB boundary of the file (the few sectors skipped before
//! its bitmap are zeroed). Differencing disks are
//! refused.

pub mod footer;

use std::sync::{Arc, Mutex, RwLock};

use byteorder::{BigEndian, ByteOrder};

use self::footer::{
    new_disk_geometry, DynHeader, Footer, NewFooter, DYN_HEADER_SIZE, FOOTER_COOKIE, FOOTER_SIZE,
    MAX_SECTORS, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED,
};
use super::{invalid, random_uuid, read_table, unix_now, CheckReport, ForeignImage};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile};
use crate::error::Result;
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "vpc";
/// Block size of new dynamic disks.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Most block allocation table entries we load (256 MiB of table; with
/// 2 MiB blocks this covers far more than the 2040 GiB QEMU allows).
pub const MAX_TABLE_ENTRIES: u64 = 1 << 26;
/// An unallocated table entry.
const UNALLOCATED: u32 = u32::MAX;
/// Where the data of a block we allocate starts: on a page of the host
/// (its bitmap just before it), so that data written into it fills whole
/// pages.
const DATA_ALIGNMENT: u64 = 4096;
/// The smallest block whose data is aligned (the padding stays under
/// 0.4% of the file; QEMU makes 2 MiB blocks).
const ALIGNED_BLOCKS: u64 = 1 << 20;

/// How a new VHD is laid out (`-o subformat=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// Blocks allocated on first write (the default).
    #[default]
    Dynamic,
    /// All data preallocated, the footer after it.
    Fixed,
}

impl Subformat {
    /// Parses `-o subformat=` as qemu-img does.
    pub fn parse(value: &str) -> Option<Subformat> {
        match value {
            "dynamic" => Some(Subformat::Dynamic),
            "fixed" => Some(Subformat::Fixed),
            _ => None,
        }
    }
}

/// Options of a new VHD.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Dynamic or fixed.
    pub subformat: Subformat,
    /// Keep the size as given instead of rounding it to a CHS geometry.
    pub force_size: bool,
}

/// The guest size a new image of `size` bytes gets.
pub fn rounded_size(size: u64, force_size: bool) -> Result<u64> {
    Ok(new_disk_geometry(size, force_size)?.0 * 512)
}

/// Writes a new, empty VHD of `size` bytes (rounded as qemu-img rounds it)
/// into empty `storage`.
pub fn create(storage: &dyn Storage, size: u64, opts: CreateOptions) -> Result<()> {
    let (sectors, geometry) = new_disk_geometry(size, opts.force_size)?;
    let size = sectors * 512;
    let disk_type = match opts.subformat {
        Subformat::Dynamic => TYPE_DYNAMIC,
        Subformat::Fixed => TYPE_FIXED,
    };
    let footer = NewFooter {
        force_size: opts.force_size,
        disk_type,
        size,
        geometry,
        now: unix_now(),
        uuid: random_uuid(),
    }
    .to_bytes();
    match opts.subformat {
        Subformat::Fixed => {
            storage.set_len(size)?;
            storage.write_at(&footer, size)?;
        }
        Subformat::Dynamic => {
            let block_sectors = u64::from(DEFAULT_BLOCK_SIZE / 512);
            let entries = sectors.div_ceil(block_sectors);
            let table_bytes = (entries * 4).div_ceil(512) * 512;
            let table_offset = 3 * 512;
            let header = DynHeader {
                table_offset,
                max_table_entries: entries as u32,
                block_size: DEFAULT_BLOCK_SIZE,
            };
            storage.write_at(&footer, 0)?;
            storage.write_at(&header.to_bytes(), FOOTER_SIZE as u64)?;
            storage.write_at(&vec![0xff; table_bytes as usize], table_offset)?;
            storage.write_at(&footer, table_offset + table_bytes)?;
        }
    }
    storage.flush()
}

/// The allocation state of a dynamic disk.
struct Dynamic {
    block_size: u64,
    bitmap_size: u64,
    table_offset: u64,
    table: RwLock<Vec<u32>>,
    /// Where the next block goes (the footer's place); held while a block
    /// is allocated.
    next_block: Mutex<u64>,
}

/// An open VHD image.
pub struct Vpc {
    storage: Arc<dyn Storage>,
    footer: [u8; FOOTER_SIZE],
    disk_type: u32,
    size: u64,
    dynamic: Option<Dynamic>,
    writable: bool,
}

impl Vpc {
    /// Opens a VHD: the footer at the start means a dynamic disk, at the
    /// end a fixed one (as QEMU decides).
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Vpc> {
        let file_len = storage.len()?;
        let mut raw = [0u8; FOOTER_SIZE];
        storage.read_at(&mut raw, 0)?;
        let dynamic_layout = &raw[0..8] == FOOTER_COOKIE;
        if !dynamic_layout {
            if file_len < FOOTER_SIZE as u64 {
                return Err(invalid(
                    FORMAT,
                    "file length",
                    file_len,
                    "File too small for a VHD header",
                ));
            }
            storage.read_at(&mut raw, file_len - FOOTER_SIZE as u64)?;
        }
        let footer = Footer::parse(&raw)?;
        if footer.disk_type == TYPE_DIFFERENCING {
            return Err(invalid(
                FORMAT,
                "disk type",
                footer.disk_type.into(),
                "differencing disks are not supported",
            ));
        }
        let size = footer.guest_size();
        if size / 512 > MAX_SECTORS {
            return Err(invalid(FORMAT, "size", size, "Disk size is too large"));
        }
        let dynamic = if dynamic_layout {
            Some(Self::open_dynamic(&*storage, &footer, size, file_len)?)
        } else {
            None
        };
        Ok(Vpc {
            storage,
            footer: raw,
            disk_type: footer.disk_type,
            size,
            dynamic,
            writable,
        })
    }

    fn open_dynamic(
        storage: &dyn Storage,
        footer: &Footer,
        size: u64,
        file_len: u64,
    ) -> Result<Dynamic> {
        let header_offset = footer.data_offset;
        if header_offset
            .checked_add(DYN_HEADER_SIZE as u64)
            .is_none_or(|end| end > file_len)
        {
            return Err(invalid(
                FORMAT,
                "data offset",
                header_offset,
                "dynamic header lies past the end of the file",
            ));
        }
        let mut buf = [0u8; DYN_HEADER_SIZE];
        storage.read_at(&mut buf, header_offset)?;
        let header = DynHeader::parse(&buf)?;
        let block_size = u64::from(header.block_size);
        let entries = u64::from(header.max_table_entries);
        if entries * block_size < size {
            return Err(invalid(
                FORMAT,
                "max table entries",
                entries,
                "Page table too small",
            ));
        }
        let bytes = read_table(
            storage,
            FORMAT,
            "block allocation table",
            header.table_offset,
            entries * 4,
            MAX_TABLE_ENTRIES * 4,
        )?;
        let table: Vec<u32> = bytes.chunks_exact(4).map(BigEndian::read_u32).collect();
        let bitmap_size = (block_size / (8 * 512)).div_ceil(512) * 512;
        let mut next_block = (header.table_offset + entries * 4).div_ceil(512) * 512;
        for &entry in table.iter().filter(|&&e| e != UNALLOCATED) {
            let end = u64::from(entry) * 512 + bitmap_size + block_size;
            next_block = next_block.max(end);
        }
        if next_block > file_len {
            return Err(invalid(FORMAT, "block allocation table", next_block,
                "free_data_block_offset points after the end of file. The image has been truncated."));
        }
        Ok(Dynamic {
            block_size,
            bitmap_size,
            table_offset: header.table_offset,
            table: RwLock::new(table),
            next_block: Mutex::new(next_block),
        })
    }

    /// Whether the footer's type says fixed.
    pub fn is_fixed(&self) -> bool {
        self.disk_type == TYPE_FIXED
    }

    /// The block size of a dynamic disk.
    pub fn block_size(&self) -> Option<u64> {
        self.dynamic.as_ref().map(|d| d.block_size)
    }

    /// Host offset of a guest byte of a dynamic disk, if its block is
    /// allocated; and the bytes left in its block.
    fn lookup(d: &Dynamic, offset: u64) -> (Option<u64>, u64) {
        let index = offset / d.block_size;
        let in_block = offset % d.block_size;
        let entry = d
            .table
            .read()
            .expect("table lock poisoned")
            .get(index as usize)
            .copied()
            .unwrap_or(UNALLOCATED);
        let host =
            (entry != UNALLOCATED).then(|| u64::from(entry) * 512 + d.bitmap_size + in_block);
        (host, d.block_size - in_block)
    }

    /// Allocates the block holding guest byte `offset` (if no other writer
    /// did first) and returns the host offset of that byte.
    fn allocate(&self, d: &Dynamic, offset: u64) -> Result<u64> {
        let mut next = d.next_block.lock().expect("allocation lock poisoned");
        if let (Some(host), _) = Self::lookup(d, offset) {
            return Ok(host);
        }
        let index = offset / d.block_size;
        // The block's data starts on a page boundary: QEMU puts the block
        // right at the footer's place, which leaves its data 512 bytes off
        // a page, so every run of data written into it dirtied a page of
        // zeros at each end (a 2 GiB half-data convert allocated 1,057,368
        // KiB of file that way, 1,052,780 aligned; `cp` of the source
        // 1,048,948). The sectors skipped are zeroed with the bitmap's
        // write, so no stale footer stays between blocks.
        // Blocks smaller than ALIGNED_BLOCKS keep QEMU's placement: their
        // padding would be a large share of the file.
        let gap_at = *next;
        let block_at = if d.block_size >= ALIGNED_BLOCKS {
            (gap_at + d.bitmap_size).next_multiple_of(DATA_ALIGNMENT) - d.bitmap_size
        } else {
            gap_at
        };
        if block_at / 512 >= u64::from(UNALLOCATED) {
            return Err(invalid(
                FORMAT,
                "block offset",
                block_at,
                "the image is too large for its table",
            ));
        }
        d.table
            .read()
            .expect("table lock poisoned")
            .get(index as usize)
            .ok_or_else(|| {
                invalid(
                    FORMAT,
                    "block index",
                    index,
                    "beyond the block allocation table",
                )
            })?;
        let gap = (block_at - gap_at) as usize;
        let mut head = vec![0u8; gap + d.bitmap_size as usize];
        head[gap..].fill(0xff);
        self.storage.write_at(&head, gap_at)?;
        let new_next = block_at + d.bitmap_size + d.block_size;
        self.storage.write_at(&self.footer, new_next)?;
        let mut entry = [0u8; 4];
        BigEndian::write_u32(&mut entry, (block_at / 512) as u32);
        self.storage.write_at(&entry, d.table_offset + index * 4)?;
        d.table.write().expect("table lock poisoned")[index as usize] = (block_at / 512) as u32;
        *next = new_next;
        Ok(block_at + d.bitmap_size + offset % d.block_size)
    }

    /// The guest ranges in use, for `check`-like reports: (allocated
    /// blocks, total blocks).
    pub fn block_counts(&self) -> Option<(u64, u64)> {
        let d = self.dynamic.as_ref()?;
        let table = d.table.read().expect("table lock poisoned");
        let allocated = table.iter().filter(|&&e| e != UNALLOCATED).count() as u64;
        Some((allocated, table.len() as u64))
    }
}

impl BlockRead for Vpc {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let Some(d) = &self.dynamic else {
            return self.storage.read_at(buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (host, left) = Self::lookup(d, pos);
            let n = (left.min((buf.len() - done) as u64)) as usize;
            match host {
                Some(h) => self.storage.read_at(&mut buf[done..done + n], h)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let Some(d) = &self.dynamic else {
            let (data, n) = self.storage.data_extent(offset, len)?;
            let kind = if data {
                ExtentKind::Data {
                    host_offset: offset,
                    file: FileIndex::IMAGE,
                }
            } else {
                ExtentKind::Zero {
                    host_offset: Some(offset),
                }
            };
            return Ok(vec![Extent {
                guest_offset: offset,
                len: n.clamp(1, len),
                kind,
            }]);
        };
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let mut steps = 0;
        while pos < offset + len && steps < crate::formats::MAX_EXTENT_STEPS {
            steps += 1;
            let (host, left) = Self::lookup(d, pos);
            let n = left.min(offset + len - pos);
            let kind = match host {
                Some(h) => ExtentKind::Data {
                    host_offset: h,
                    file: FileIndex::IMAGE,
                },
                // A format without backing files: QEMU reports an unallocated
                // block as present zeros.
                None => ExtentKind::Zero { host_offset: None },
            };
            super::push_extent(&mut out, pos, n, kind);
            pos += n;
        }
        Ok(out)
    }

    fn extents_for_io(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        if self.dynamic.is_some() {
            out.extend(self.extents(offset, len)?);
            return Ok(());
        }
        // A fixed VHD is its file's bytes: a read of its holes gives their
        // zeros, so the I/O path asks the file nothing (two lseeks saved
        // per request); `extents` still asks, for `img map`.
        super::push_extent(
            out,
            offset,
            len,
            ExtentKind::Data {
                host_offset: offset,
                file: FileIndex::IMAGE,
            },
        );
        Ok(())
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

    fn file_holes_are_data(&self) -> bool {
        // A fixed VHD is the file's bytes as they are: QEMU's vpc driver
        // passes its holes through as data that reads as zero.
        self.dynamic.is_none()
    }
}

impl ForeignImage for Vpc {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(crate::Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size)?;
        let Some(d) = &self.dynamic else {
            return self.storage.write_at(buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (host, left) = Self::lookup(d, pos);
            let n = (left.min((buf.len() - done) as u64)) as usize;
            let host = match host {
                Some(h) => h,
                None => self.allocate(d, pos)?,
            };
            self.storage.write_at(&buf[done..done + n], host)?;
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.storage.flush()
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.storage)
    }

    fn cluster_size(&self) -> Option<u64> {
        if self.disk_type == TYPE_FIXED {
            None
        } else {
            self.block_size()
        }
    }

    fn concurrent_partial_unit_writes(&self) -> bool {
        // A block is allocated under `next_block`, looked up again there,
        // and a write stores only its own bytes.
        true
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        None
    }
}

#[cfg(test)]
mod tests;
