//! VirtualBox VDI images: a header sector, a block map of little-endian
//! u32 entries (block numbers in the data area, or unallocated), and 1 MiB
//! data blocks. Dynamic images allocate blocks at the end of the data area
//! on first write: the block reads as zero around the data (written as
//! zeros where the file already holds bytes there, left a hole past its
//! end), then the header's block count and the map entry are written, as
//! QEMU does; static images have every block from the start.

pub mod header;

use std::sync::{Arc, Mutex, RwLock};

use byteorder::{ByteOrder, LittleEndian};

use self::header::{new_header, Header, BLOCK_SIZE, HEADER_SIZE, MAX_BLOCKS};
use super::{random_uuid, read_table, CheckReport, ForeignImage};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile};
use crate::error::Result;
use crate::formats::invalid;
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "vdi";
/// Entries at or above this are not allocated (free or discarded).
const FIRST_UNALLOCATED: u32 = 0xffff_fffe;
/// A free entry.
const UNALLOCATED: u32 = u32::MAX;
const BLOCK: u64 = BLOCK_SIZE as u64;

/// Writes a new, empty VDI of `size` bytes (rounded up to a sector) into
/// empty `storage`; `is_static` preallocates every block (`-o static=on`).
pub fn create(storage: &dyn Storage, size: u64, is_static: bool) -> Result<()> {
    let size = size.div_ceil(512) * 512;
    let blocks = size.div_ceil(BLOCK);
    if blocks > u64::from(MAX_BLOCKS) {
        return Err(invalid(FORMAT, "size", size, "Unsupported VDI image size"));
    }
    let map_bytes = (blocks * 4).div_ceil(512) * 512;
    let offset_data = 0x200 + map_bytes;
    let offset_data32 = u32::try_from(offset_data)
        .map_err(|_| invalid(FORMAT, "size", size, "block map too large"))?;
    let header = new_header(
        size,
        is_static,
        blocks as u32,
        offset_data32,
        (random_uuid(), random_uuid()),
    );
    storage.write_at(&header, 0)?;
    let mut map = vec![0xffu8; map_bytes as usize];
    if is_static {
        for (i, entry) in map.chunks_exact_mut(4).take(blocks as usize).enumerate() {
            LittleEndian::write_u32(entry, i as u32);
        }
    }
    storage.write_at(&map, 0x200)?;
    if is_static {
        storage.set_len(offset_data + blocks * BLOCK)?;
    }
    storage.flush()
}

/// What allocating a block changes, kept under one lock.
struct AllocState {
    /// The header as last written.
    header: Header,
    /// Where the file ends (as opened, or past the last block allocated
    /// since): a block from here on reads as zero without being written.
    file_end: u64,
}

/// An open VDI image.
pub struct Vdi {
    storage: Arc<dyn Storage>,
    header: Header,
    map: RwLock<Vec<u32>>,
    /// Held while a block is allocated.
    alloc: Mutex<AllocState>,
    writable: bool,
}

impl Vdi {
    /// Opens a VDI image.
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Vdi> {
        let mut raw = [0u8; HEADER_SIZE];
        storage.read_at(&mut raw, 0)?;
        let header = Header::parse(&raw)?;
        let entries = u64::from(header.blocks_in_image);
        let bytes = read_table(
            &*storage,
            FORMAT,
            "block map",
            header.offset_bmap.into(),
            entries * 4,
            u64::from(MAX_BLOCKS) * 4,
        )?;
        let map: Vec<u32> = bytes.chunks_exact(4).map(LittleEndian::read_u32).collect();
        let file_end = storage.len()?;
        Ok(Vdi {
            storage,
            alloc: Mutex::new(AllocState {
                header: header.clone(),
                file_end,
            }),
            header,
            map: RwLock::new(map),
            writable,
        })
    }

    /// Whether the header says static.
    pub fn is_static(&self) -> bool {
        self.header.image_type == header::TYPE_STATIC
    }

    fn lookup(&self, offset: u64) -> (Option<u64>, u64) {
        let index = (offset / BLOCK) as usize;
        let in_block = offset % BLOCK;
        let entry = self
            .map
            .read()
            .expect("map lock poisoned")
            .get(index)
            .copied()
            .unwrap_or(UNALLOCATED);
        let host = (entry < FIRST_UNALLOCATED)
            .then(|| u64::from(self.header.offset_data) + u64::from(entry) * BLOCK + in_block);
        (host, BLOCK - in_block)
    }

    /// Allocates the block of guest byte `offset` with `data` (which starts
    /// at that byte and stays in its block) written into it, unless another
    /// writer allocated it first; returns whether this call wrote the data.
    ///
    /// A block past the end of the file is reserved under the lock and its
    /// data written outside it, so that writers of other new blocks do not
    /// wait for this one's data; the header and the map entry follow the
    /// data on disk, as before.
    fn allocate_with(&self, offset: u64, data: &[u8]) -> Result<bool> {
        let index = offset / BLOCK;
        let in_block = (offset % BLOCK) as usize;
        let (number, host) = {
            let mut state = self.alloc.lock().expect("allocation lock poisoned");
            let AllocState { header, file_end } = &mut *state;
            if self.lookup(offset).0.is_some() {
                return Ok(false);
            }
            let number = header.blocks_allocated;
            if number >= FIRST_UNALLOCATED || number >= header.blocks_in_image {
                return Err(invalid(
                    FORMAT,
                    "blocks allocated",
                    number.into(),
                    "no block left to allocate",
                ));
            }
            let host = u64::from(self.header.offset_data) + u64::from(number) * BLOCK;
            if host < *file_end {
                // Bytes already there (a file longer than its blocks) are
                // overwritten with zeros around the data, as QEMU does,
                // before any other writer may write into the block.
                let mut block = vec![0u8; BLOCK as usize];
                block[in_block..in_block + data.len()].copy_from_slice(data);
                self.storage.write_at(&block, host)?;
                *file_end = (*file_end).max(host + BLOCK);
                header.blocks_allocated = number + 1;
                self.publish(header, index, number)?;
                return Ok(true);
            }
            // Past the end of the file the block reads as zero already:
            // its last byte makes the file cover it, before another writer
            // may write there.
            if in_block + data.len() < BLOCK as usize {
                self.storage.write_at(&[0], host + BLOCK - 1)?;
            }
            *file_end = host + BLOCK;
            header.blocks_allocated = number + 1;
            self.map.write().expect("map lock poisoned")[index as usize] = number;
            (number, host)
        };
        self.storage.write_at(data, host + in_block as u64)?;
        let state = self.alloc.lock().expect("allocation lock poisoned");
        self.publish(&state.header, index, number)?;
        Ok(true)
    }

    /// Writes the header (its block count) and the map entry of guest
    /// block `index`, now data block `number`, and sets the entry in memory.
    fn publish(&self, header: &Header, index: u64, number: u32) -> Result<()> {
        self.storage.write_at(&header.to_bytes(), 0)?;
        let mut entry = [0u8; 4];
        LittleEndian::write_u32(&mut entry, number);
        self.storage
            .write_at(&entry, u64::from(self.header.offset_bmap) + index * 4)?;
        self.map.write().expect("map lock poisoned")[index as usize] = number;
        Ok(())
    }
}

impl BlockRead for Vdi {
    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.header.disk_size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let (host, left) = self.lookup(offset + done as u64);
            let n = left.min((buf.len() - done) as u64) as usize;
            match host {
                Some(h) => self.storage.read_at(&mut buf[done..done + n], h)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset + len.min(self.header.disk_size.saturating_sub(offset));
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let mut steps = 0;
        while pos < end && steps < crate::formats::MAX_EXTENT_STEPS {
            steps += 1;
            let (host, left) = self.lookup(pos);
            let n = left.min(end - pos);
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
        // QEMU's vdi driver asks the file about a static image's blocks.
        self.is_static()
    }
}

impl ForeignImage for Vdi {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(crate::Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.header.disk_size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (host, left) = self.lookup(pos);
            let n = left.min((buf.len() - done) as u64) as usize;
            let part = &buf[done..done + n];
            match host {
                Some(h) => self.storage.write_at(part, h)?,
                None => {
                    if !self.allocate_with(pos, part)? {
                        let (Some(h), _) = self.lookup(pos) else {
                            unreachable!("a block another writer allocated stays allocated")
                        };
                        self.storage.write_at(part, h)?;
                    }
                }
            }
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
        Some(BLOCK)
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        let map = self.map.read().expect("map lock poisoned");
        let blocks = self.header.blocks_in_image;
        let allocated_count = self
            .alloc
            .lock()
            .expect("allocation lock poisoned")
            .header
            .blocks_allocated;
        // qemu's vdi check counts no clusters (total stays 0).
        let mut report = CheckReport::default();
        // Which guest block uses each data block number.
        let mut owner: Vec<u32> = vec![UNALLOCATED; map.len()];
        let mut allocated = 0u32;
        for (block, &entry) in map.iter().enumerate() {
            if entry >= FIRST_UNALLOCATED {
                continue;
            }
            if entry < blocks {
                allocated += 1;
                let slot = &mut owner[entry as usize];
                if *slot == UNALLOCATED {
                    *slot = entry;
                } else {
                    report.corrupt(format!("ERROR: block index {slot} also used by {entry}"));
                }
            } else {
                report.corrupt(format!("ERROR: block index {block} too large, is {entry}"));
            }
        }
        if allocated != allocated_count {
            report.corrupt(format!(
                "ERROR: allocated blocks mismatch, is {allocated}, should be {allocated_count}"
            ));
        }
        report.allocated_clusters = allocated.into();
        Some(Ok(report))
    }
}

#[cfg(test)]
mod tests;
