//! Hyper-V VHDX images: the current header, the region table, the
//! metadata items QEMU requires and the block allocation table (with its
//! sector bitmap entries interleaved), checked as QEMU checks them; the
//! log replayed on open for writing (`log`), creation (`create`).
//!
//! Payload blocks read as QEMU reads them for a disk without a parent:
//! fully present blocks from the file, every other state but partially
//! present as zeros. Writes allocate a block at the end of the file, on a
//! whole MiB, as QEMU does. Differencing disks are refused, as QEMU 10
//! refuses them (it neither reads nor creates them).

pub mod create;
pub mod log;
pub mod structures;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use byteorder::{ByteOrder, LittleEndian};

use self::structures::{
    read_current_header, read_metadata, read_regions, update_headers, CurrentHeader, Guid,
    HeaderUpdate, Metadata,
};
use super::{invalid, read_table, CheckReport, ForeignImage};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "vhdx";
/// Most BAT entries we load (128 MiB of table: 16 TiB in 1 MiB blocks).
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;

/// Payload block states.
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
pub(crate) const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
pub(crate) const FULLY_PRESENT: u64 = 6;

/// Payload blocks start on whole MiB of the file.
const MIB: u64 = 1 << 20;

/// BAT entries of a disk without a parent: one per payload block, and a
/// sector bitmap entry after every `chunk_ratio` of them (QEMU's
/// `vhdx_calc_bat_entries`).
pub(crate) fn bat_entries(size: u64, block_size: u64, chunk_ratio: u64) -> u64 {
    let data_blocks = size.div_ceil(block_size);
    if data_blocks == 0 {
        0
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    }
}

/// What writers share: the header in force and whether the first
/// guest-visible write has updated it yet.
struct WriteState {
    header: CurrentHeader,
    /// This session's file write GUID.
    session: Guid,
    first_visible_write: bool,
    /// Where in the log the next entry goes.
    log_write: u64,
    /// The next entry's sequence number.
    log_sequence: u64,
}

/// An open VHDX image.
pub struct Vhdx {
    storage: Arc<dyn Storage>,
    meta: Metadata,
    chunk_ratio: u64,
    bat_offset: u64,
    bat: RwLock<Vec<u64>>,
    /// `None` when opened read-only.
    writer: Option<Mutex<WriteState>>,
    /// The data write GUID has been renewed (or needs no renewal): writes
    /// then skip the writer lock unless they allocate.
    visible_write_done: AtomicBool,
    /// The log was replayed on open.
    log_replayed: bool,
}

impl Vhdx {
    /// Opens a VHDX image. A log with entries to replay is replayed when
    /// `writable`, and refused read-only, as QEMU does.
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Vhdx> {
        let mut signature = [0u8; 8];
        storage.read_at(&mut signature, 0)?;
        if &signature != b"vhdxfile" {
            return Err(invalid(
                FORMAT,
                "file identifier",
                0,
                "Invalid VHDX signature",
            ));
        }
        let mut header = read_current_header(&*storage)?;
        let session = super::random_uuid();
        let mut log_replayed = false;
        if let Some(replay) = log::plan_replay(&*storage, &header)? {
            if !writable {
                return Err(Error::Unsupported(
                    "VHDX image opened read-only, but contains a log that needs to be \
                     replayed (open it for writing, e.g. with img check -r all, to replay it)"
                        .into(),
                ));
            }
            log::apply_replay(&*storage, &replay)?;
            let reset = HeaderUpdate {
                file_write_guid: session,
                data_write_guid: Some(super::random_uuid()),
                log_guid: Some([0; 16]),
            };
            update_headers(&*storage, &mut header, &reset)?;
            log_replayed = true;
        }
        let file_len = storage.len()?;
        let (bat_region, metadata_region) = read_regions(&*storage, file_len)?;
        let meta = read_metadata(&*storage, metadata_region)?;
        let block = u64::from(meta.block_size);
        let chunk_ratio = ((1u64 << 23) * u64::from(meta.logical_sector_size)) / block;
        let entries = bat_entries(meta.virtual_size, block, chunk_ratio);
        if entries * 8 > bat_region.length {
            return Err(invalid(
                FORMAT,
                "BAT region length",
                bat_region.length,
                "too small for the disk",
            ));
        }
        let bytes = read_table(
            &*storage,
            FORMAT,
            "BAT",
            bat_region.offset,
            entries * 8,
            MAX_BAT_ENTRIES * 8,
        )?;
        let bat: Vec<u64> = bytes.chunks_exact(8).map(LittleEndian::read_u64).collect();
        for (i, &entry) in bat.iter().enumerate() {
            let is_bitmap = (i as u64 + 1).is_multiple_of(chunk_ratio + 1);
            // A last block may be partial (QEMU made such images), and
            // QEMU measures it by the BAT index, bitmap entries included.
            let block_length = block.min(meta.virtual_size.saturating_sub(i as u64 * block));
            if !is_bitmap
                && entry & 7 == FULLY_PRESENT
                && (entry >> 20 << 20).saturating_add(block_length.max(1)) > file_len
            {
                return Err(invalid(FORMAT, "BAT entry", i as u64,
                    "a data block points after the end of file; the image has probably been truncated"));
            }
        }
        let writer = if writable {
            // QEMU stamps a new file write GUID on both headers when it
            // opens an image for writing.
            let update = HeaderUpdate {
                file_write_guid: session,
                ..Default::default()
            };
            update_headers(&*storage, &mut header, &update)?;
            Some(Mutex::new(WriteState {
                header,
                session,
                first_visible_write: !log_replayed,
                log_write: 0,
                log_sequence: 1,
            }))
        } else {
            None
        };
        Ok(Vhdx {
            storage,
            meta,
            chunk_ratio,
            bat_offset: bat_region.offset,
            bat: RwLock::new(bat),
            writer,
            visible_write_done: AtomicBool::new(log_replayed),
            log_replayed,
        })
    }

    /// The BAT index of the payload block holding guest byte `offset`.
    fn bat_index(&self, offset: u64) -> usize {
        let block = offset / u64::from(self.meta.block_size);
        (block + block / self.chunk_ratio) as usize
    }

    /// The BAT entry of the payload block holding guest byte `offset`.
    fn entry(&self, offset: u64) -> u64 {
        let index = self.bat_index(offset);
        self.bat
            .read()
            .expect("BAT lock poisoned")
            .get(index)
            .copied()
            .unwrap_or(NOT_PRESENT)
    }

    /// Whether the disk is fixed (blocks stay allocated).
    pub fn is_fixed(&self) -> bool {
        self.meta.leave_blocks_allocated
    }

    /// Whether opening replayed a log.
    pub fn log_replayed(&self) -> bool {
        self.log_replayed
    }

    /// The file offset of the payload block holding guest byte `offset`,
    /// allocating it at the end of the file (on a whole MiB) if it has
    /// none, as QEMU's `vhdx_allocate_block` does. The block's data is
    /// zero until written (the file grows over it); its BAT entry goes
    /// through the log ([`Self::journal`]), as in QEMU.
    fn block_for_write(&self, offset: u64) -> Result<u64> {
        let entry = self.entry(offset);
        if entry & 7 == FULLY_PRESENT {
            return Ok(entry >> 20 << 20);
        }
        let writer = self.writer.as_ref().ok_or(Error::ReadOnly)?;
        let mut state = writer.lock().expect("writer lock poisoned");
        let entry = self.entry(offset);
        match entry & 7 {
            FULLY_PRESENT => return Ok(entry >> 20 << 20),
            NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED => {}
            other => {
                return Err(invalid(
                    FORMAT,
                    "payload block state",
                    other,
                    "not valid in a disk without a parent",
                ))
            }
        }
        self.first_visible_write(&mut state)?;
        let block = u64::from(self.meta.block_size);
        let host = self.storage.len()?.next_multiple_of(MIB);
        super::grow_to(&*self.storage, host + block)?;
        let index = self.bat_index(offset);
        let value = host | FULLY_PRESENT;
        let mut bytes = [0u8; 8];
        LittleEndian::write_u64(&mut bytes, value);
        self.journal(&mut state, self.bat_offset + index as u64 * 8, &bytes)?;
        self.bat.write().expect("BAT lock poisoned")[index] = value;
        Ok(host)
    }

    /// Writes metadata `bytes` at `file_offset` through the log, as QEMU's
    /// `vhdx_log_write_and_flush` does: both headers get a new log GUID,
    /// an entry holding the whole 4 KiB sectors the write touches goes
    /// into the log, a flush, the sectors in place, a flush, and the log
    /// is emptied again (log GUID zero). Killed at any point, the file
    /// holds either the old sectors or an entry that a replay (ours or
    /// qemu-img's) completes; stale entries never match a new GUID.
    fn journal(&self, state: &mut WriteState, file_offset: u64, bytes: &[u8]) -> Result<()> {
        let first = file_offset / log::LOG_SECTOR * log::LOG_SECTOR;
        let end = (file_offset + bytes.len() as u64).next_multiple_of(log::LOG_SECTOR);
        let mut sectors = vec![0u8; (end - first) as usize];
        self.storage.read_at(&mut sectors, first)?;
        let at = (file_offset - first) as usize;
        sectors[at..at + bytes.len()].copy_from_slice(bytes);
        let list: Vec<(u64, &[u8])> = sectors
            .chunks(log::LOG_SECTOR as usize)
            .enumerate()
            .map(|(i, s)| (first + i as u64 * log::LOG_SECTOR, s))
            .collect();
        let log_offset = state.header.header.log_offset;
        let log_length = u64::from(state.header.header.log_length);
        let guid = super::random_uuid();
        let file_len = self.storage.len()?;
        let mut index = state.log_write;
        let mut entry = log::build_entry(&guid, state.log_sequence, index as u32, file_len, &list);
        let entry_len = entry.len() as u64;
        if entry_len > log_length {
            return Err(invalid(
                FORMAT,
                "log length",
                log_length,
                "too short for one log entry",
            ));
        }
        if index + entry_len > log_length {
            index = 0;
            entry = log::build_entry(&guid, state.log_sequence, 0, file_len, &list);
        }
        let session = state.session;
        let with_log = |log_guid| HeaderUpdate {
            file_write_guid: session,
            data_write_guid: None,
            log_guid: Some(log_guid),
        };
        update_headers(&*self.storage, &mut state.header, &with_log(guid))?;
        self.storage.write_at(&entry, log_offset + index)?;
        self.storage.flush()?;
        for (offset, sector) in &list {
            self.storage.write_at(sector, *offset)?;
        }
        self.storage.flush()?;
        update_headers(&*self.storage, &mut state.header, &with_log([0; 16]))?;
        state.log_write = (index + entry_len) % log_length;
        state.log_sequence += 1;
        Ok(())
    }

    /// Before the first guest-visible write, both headers get a new data
    /// write GUID (the spec's rule, and QEMU's).
    fn first_visible_write(&self, state: &mut WriteState) -> Result<()> {
        if state.first_visible_write {
            state.first_visible_write = false;
            let update = HeaderUpdate {
                file_write_guid: state.session,
                data_write_guid: Some(super::random_uuid()),
                log_guid: None,
            };
            update_headers(&*self.storage, &mut state.header, &update)?;
        }
        self.visible_write_done.store(true, Ordering::Release);
        Ok(())
    }
}

impl BlockRead for Vhdx {
    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.meta.virtual_size)?;
        let block = u64::from(self.meta.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = (block - pos % block).min((buf.len() - done) as u64) as usize;
            let entry = self.entry(pos);
            match entry & 7 {
                FULLY_PRESENT => self
                    .storage
                    .read_at(&mut buf[done..done + n], (entry >> 20 << 20) + pos % block)?,
                NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED => buf[done..done + n].fill(0),
                state => {
                    return Err(invalid(
                        FORMAT,
                        "payload block state",
                        state,
                        "not valid in a disk without a parent",
                    ))
                }
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset
            + len
                .min(self.meta.virtual_size.saturating_sub(offset))
                .min(1 << 34);
        let block = u64::from(self.meta.block_size);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let mut steps = 0;
        while pos < end && steps < crate::formats::MAX_EXTENT_STEPS {
            steps += 1;
            let n = (block - pos % block).min(end - pos);
            let entry = self.entry(pos);
            let kind = match entry & 7 {
                FULLY_PRESENT => ExtentKind::Data {
                    host_offset: (entry >> 20 << 20) + pos % block,
                    file: FileIndex::IMAGE,
                },
                ZERO => ExtentKind::Zero { host_offset: None },
                // A format without backing files: QEMU reports an unallocated
                // block as present zeros.
                _ => ExtentKind::Zero { host_offset: None },
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

impl ForeignImage for Vhdx {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let writer = self.writer.as_ref().ok_or(Error::ReadOnly)?;
        check_range(offset, buf.len() as u64, self.meta.virtual_size)?;
        if !self.visible_write_done.load(Ordering::Acquire) {
            let mut state = writer.lock().expect("writer lock poisoned");
            self.first_visible_write(&mut state)?;
        }
        let block = u64::from(self.meta.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = (block - pos % block).min((buf.len() - done) as u64) as usize;
            let host = self.block_for_write(pos)?;
            if host < MIB {
                return Err(invalid(
                    FORMAT,
                    "BAT entry",
                    host,
                    "a payload block lies in the header section",
                ));
            }
            self.storage
                .write_at(&buf[done..done + n], host + pos % block)?;
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.writer.is_some() {
            self.storage.flush()?;
        }
        Ok(())
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.storage)
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.meta.block_size.into())
    }

    fn concurrent_partial_unit_writes(&self) -> bool {
        // A block is allocated under the writer lock, which is taken again
        // before allocating, and a write stores only its own bytes.
        true
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        // qemu's vhdx check counts a log replayed on open as a repaired
        // corruption, and reports BAT entries past the end, which opening
        // already refuses.
        Some(Ok(CheckReport {
            corruptions_fixed: u64::from(self.log_replayed),
            ..CheckReport::default()
        }))
    }
}

#[cfg(test)]
mod tests;
