//! Hyper-V VHDX images, read-only: the current header, the region table,
//! the metadata items QEMU requires and the block allocation table (with
//! its sector bitmap entries interleaved), checked as QEMU checks them.
//!
//! Payload blocks read as QEMU reads them for a disk without a parent:
//! fully present blocks from the file, every other state but partially
//! present as zeros. Not yet: writing and creating, replaying a log (an
//! image whose header names a log is refused, as QEMU refuses it
//! read-only), differencing disks (refused, as QEMU 10 refuses them).

pub mod structures;

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use self::structures::{read_header, read_metadata, read_regions, Metadata};
use super::{invalid, read_table, CheckReport, ForeignImage};
use crate::device::{check_range, BlockRead, Extent, ExtentKind};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "vhdx";
/// Most BAT entries we load (128 MiB of table: 16 TiB in 1 MiB blocks).
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;

/// Payload block states.
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const FULLY_PRESENT: u64 = 6;

/// An open VHDX image.
pub struct Vhdx {
    storage: Arc<dyn Storage>,
    meta: Metadata,
    chunk_ratio: u64,
    bat: Vec<u64>,
}

impl Vhdx {
    /// Opens a VHDX image (read-only).
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Vhdx> {
        if writable {
            return Err(Error::Unsupported("writing vhdx images".into()));
        }
        let file_len = storage.len()?;
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
        let header = read_header(&*storage)?;
        if header.log_guid != [0; 16] {
            return Err(Error::Unsupported(
                "a vhdx image whose log needs to be replayed (log replay is not implemented)"
                    .into(),
            ));
        }
        let (bat_region, metadata_region) = read_regions(&*storage, file_len)?;
        let meta = read_metadata(&*storage, metadata_region)?;
        let block = u64::from(meta.block_size);
        let chunk_ratio = ((1u64 << 23) * u64::from(meta.logical_sector_size)) / block;
        let data_blocks = meta.virtual_size.div_ceil(block);
        let entries = if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
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
            if !is_bitmap
                && entry & 7 == FULLY_PRESENT
                && (entry >> 20 << 20).saturating_add(block) > file_len
            {
                return Err(invalid(FORMAT, "BAT entry", i as u64,
                    "a data block points after the end of file; the image has probably been truncated"));
            }
        }
        Ok(Vhdx {
            storage,
            meta,
            chunk_ratio,
            bat,
        })
    }

    /// The BAT entry of the payload block holding guest byte `offset`.
    fn entry(&self, offset: u64) -> u64 {
        let block = offset / u64::from(self.meta.block_size);
        let index = block + block / self.chunk_ratio;
        self.bat.get(index as usize).copied().unwrap_or(NOT_PRESENT)
    }

    /// Whether the disk is fixed (blocks stay allocated).
    pub fn is_fixed(&self) -> bool {
        self.meta.leave_blocks_allocated
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
                    in_data_file: false,
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
}

impl ForeignImage for Vhdx {
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.meta.block_size.into())
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        // qemu's vhdx check only replays the log (with -r) and reports
        // BAT entries past the end, which opening already refuses.
        Some(Ok(CheckReport::default()))
    }
}

#[cfg(test)]
mod tests;
