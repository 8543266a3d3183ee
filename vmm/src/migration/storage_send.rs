//! The source's side of a disk copy: the plan of each disk, the first
//! copy of its allocated ranges, and the blocks the guest changed since,
//! sent again pass by pass (the last pass while the VM is paused).
//!
//! A qcow2 disk is read through the running VM's own open image, so the
//! copy sees the metadata the device threads keep (no second, stale view
//! of the L2 tables); a raw disk through a read-only handle of its file.
//! A block whose write is in flight while it is read is marked again when
//! the write completes (blockdev's tracker), so a later pass sends it.

use std::io::Write;
use std::sync::Arc;

use blockdev::disk::BlockBackend;
use blockdev::virtio::disk_dirty::{DiskDirtyMap, DiskWriteTracker, MAX_BLOCK, MAX_BLOCKS};
use qcow::device::{chain_extents, BlockRead, ExtentKind};

use super::storage::{
    ChunkBody, CopiedFormat, DiskChunk, DiskPlan, StorageMode, StoragePlan, MAX_DISK_SIZE,
};
use super::stream::{self, Tag, MAX_DISK_CHUNK};
use super::{MigrationError, Result};
use crate::config::{DiskConfig, DiskFormat};
use crate::vm::Vm;

/// The dirty block of a raw disk.
const RAW_BLOCK: u64 = 64 << 10;
/// Guest bytes one extents query describes.
const SPAN: u64 = 1 << 30;

/// How one disk is read.
enum Reader {
    /// Through the VM's open qcow2 image.
    Qcow2(Arc<dyn BlockBackend>),
    /// Through a read-only handle of the raw file.
    Raw(qcow::fs::AnyImage),
}

impl Reader {
    fn image(&self) -> &dyn BlockRead {
        match self {
            Reader::Qcow2(backend) => backend.qcow2().expect("checked to be qcow2"),
            Reader::Raw(image) => image,
        }
    }
}

struct SourceDisk {
    reader: Reader,
    size: u64,
    map: Arc<DiskDirtyMap>,
}

/// The disks of a VM being copied to the destination; dirty tracking is
/// on from [`StorageSource::start`] until this is dropped.
pub struct StorageSource {
    mode: StorageMode,
    disks: Vec<SourceDisk>,
    trackers: Vec<Arc<DiskWriteTracker>>,
    buffer: Vec<u8>,
}

fn refuse(disk: &DiskConfig, index: usize, why: &str) -> MigrationError {
    MigrationError::Stream(format!(
        "copy-storage: disk {index} ({}): {why}",
        disk.path.display()
    ))
}

/// The plan of `vm`'s disks for `mode`, and the source of the copy
/// (`None` when shared). Refuses what cannot be copied (an encrypted
/// image, an external data file, a format other than qcow2 and raw).
pub fn plan(vm: &Vm, mode: StorageMode) -> Result<(StoragePlan, Option<StorageSource>)> {
    if mode == StorageMode::Shared {
        return Ok((StoragePlan::shared(), None));
    }
    let (configs, backends) = vm.disks();
    let mut plans = Vec::new();
    let mut disks = Vec::new();
    for (index, (config, backend)) in configs.iter().zip(backends).enumerate() {
        let (plan, reader, base_block) = match backend.qcow2() {
            Some(image) => {
                let header = image.header_cluster();
                if header.header.crypt_method != 0 {
                    return Err(refuse(config, index, "an encrypted image cannot be copied"));
                }
                if image.data_file().is_some() {
                    return Err(refuse(
                        config,
                        index,
                        "an image with an external data file cannot be copied",
                    ));
                }
                let geometry = image.geometry();
                let (backing_file, backing_format) = match mode {
                    StorageMode::Incremental => (
                        header.backing_file.clone(),
                        header.backing_format().map(str::to_string),
                    ),
                    _ => (None, None),
                };
                let plan = DiskPlan {
                    format: CopiedFormat::Qcow2,
                    size: image.size(),
                    cluster_size: image.cluster_size(),
                    version: geometry.version,
                    refcount_bits: 1 << header.header.refcount_order,
                    extended_l2: geometry.extended_l2,
                    backing_file,
                    backing_format,
                };
                (plan, Reader::Qcow2(backend.clone()), image.cluster_size())
            }
            None => {
                let format = match config.format {
                    Some(DiskFormat::Raw) => Some(qcow::fs::Format::Raw),
                    None => None,
                    Some(other) => {
                        return Err(refuse(
                            config,
                            index,
                            &format!("a {other:?} image cannot be copied (qcow2 and raw can)"),
                        ))
                    }
                };
                let image = qcow::fs::open_image(&config.path, format, false)
                    .map_err(|e| refuse(config, index, &e.to_string()))?;
                if image.format() != qcow::fs::Format::Raw {
                    return Err(refuse(
                        config,
                        index,
                        &format!(
                            "a {} image cannot be copied (qcow2 and raw can)",
                            image.format().name()
                        ),
                    ));
                }
                let size = image.virtual_size();
                if !size.is_multiple_of(512) || size > MAX_DISK_SIZE {
                    return Err(refuse(
                        config,
                        index,
                        &format!("a raw size of {size} bytes is not a multiple of 512 up to {MAX_DISK_SIZE}"),
                    ));
                }
                let plan = DiskPlan {
                    format: CopiedFormat::Raw,
                    size,
                    cluster_size: 0,
                    version: 0,
                    refcount_bits: 0,
                    extended_l2: false,
                    backing_file: None,
                    backing_format: None,
                };
                (plan, Reader::Raw(image), RAW_BLOCK)
            }
        };
        let mut block = base_block.max(blockdev::virtio::disk_dirty::MIN_BLOCK);
        while plan.size.div_ceil(block) > MAX_BLOCKS && block < MAX_BLOCK {
            block *= 2;
        }
        let map = DiskDirtyMap::new(plan.size, block)
            .map_err(|e| refuse(config, index, &e.to_string()))?;
        disks.push(SourceDisk {
            reader,
            size: plan.size,
            map: Arc::new(map),
        });
        plans.push(plan);
    }
    let plan = StoragePlan { mode, disks: plans };
    let source = StorageSource {
        mode,
        disks,
        trackers: vm.disk_write_trackers().to_vec(),
        buffer: vec![0u8; MAX_DISK_CHUNK as usize],
    };
    Ok((plan, Some(source)))
}

/// What the first copy does with an extent.
enum Action {
    Send,
    Zero,
    Skip,
}

impl StorageSource {
    /// Starts marking the guest's changes to every disk.
    pub fn start(&self) {
        for (tracker, disk) in self.trackers.iter().zip(&self.disks) {
            tracker.install(disk.map.clone());
        }
    }

    /// Bytes of the blocks marked and not yet sent again.
    pub fn dirty_bytes(&self) -> u64 {
        self.disks
            .iter()
            .map(|d| d.map.count() * d.map.block_size())
            .sum()
    }

    /// The first copy: every allocated range of every disk (of the whole
    /// chain with `All`, of the top image with `Incremental`, where zero
    /// ranges go as zeroes since the backing file would show through).
    /// Returns the bytes of data sent.
    pub fn full_copy<W: Write>(&mut self, out: &mut W) -> Result<u64> {
        let mut sent = 0;
        for index in 0..self.disks.len() {
            let size = self.disks[index].size;
            let mut pos = 0;
            while pos < size {
                let span = (size - pos).min(SPAN);
                let ranges = self.ranges(index, pos, span)?;
                let Some(&(last_start, last_len, _)) = ranges.last() else {
                    return Err(MigrationError::Stream(format!(
                        "copy-storage: disk {index}: no extent at byte {pos}"
                    )));
                };
                for (start, len, action) in ranges {
                    match action {
                        Action::Send => sent += self.send_range(out, index, start, len)?,
                        Action::Zero => send_zeroes(out, index as u32, start, len)?,
                        Action::Skip => {}
                    }
                }
                pos = last_start + last_len;
            }
        }
        Ok(sent)
    }

    fn ranges(&self, index: usize, pos: u64, span: u64) -> Result<Vec<(u64, u64, Action)>> {
        let image = self.disks[index].reader.image();
        let read_err =
            |e: qcow::Error| MigrationError::Stream(format!("copy-storage: disk {index}: {e}"));
        Ok(match self.mode {
            StorageMode::Incremental => image
                .extents(pos, span)
                .map_err(read_err)?
                .into_iter()
                .map(|e| {
                    let action = match e.kind {
                        ExtentKind::Data { .. } | ExtentKind::Compressed { .. } => Action::Send,
                        ExtentKind::Zero { .. } => Action::Zero,
                        ExtentKind::Unallocated { .. } => Action::Skip,
                    };
                    (e.guest_offset, e.len, action)
                })
                .collect(),
            _ => chain_extents(image, pos, span)
                .map_err(read_err)?
                .into_iter()
                .map(|e| {
                    let action = match e.kind {
                        ExtentKind::Data { .. } | ExtentKind::Compressed { .. } => Action::Send,
                        _ => Action::Skip,
                    };
                    (e.guest_offset, e.len, action)
                })
                .collect(),
        })
    }

    /// Sends `len` bytes of disk `index` at `start`, in frames of at most
    /// [`MAX_DISK_CHUNK`]; a frame's worth of zeroes goes as zeroes (or
    /// not at all with `All`: the new image reads zero). Returns the
    /// bytes of data sent.
    fn send_range<W: Write>(
        &mut self,
        out: &mut W,
        index: usize,
        start: u64,
        len: u64,
    ) -> Result<u64> {
        let mut sent = 0;
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(u64::from(MAX_DISK_CHUNK)) as usize;
            self.disks[index]
                .reader
                .image()
                .read_at(&mut self.buffer[..n], pos)
                .map_err(|e| {
                    MigrationError::Stream(format!(
                        "copy-storage: disk {index}: reading byte {pos}: {e}"
                    ))
                })?;
            if super::send::is_zero(&self.buffer[..n]) {
                if self.mode == StorageMode::Incremental {
                    send_zeroes(out, index as u32, pos, n as u64)?;
                }
            } else {
                let chunk = DiskChunk {
                    disk: index as u32,
                    offset: pos,
                    body: ChunkBody::Data(&self.buffer[..n]),
                };
                stream::write_frame(out, Tag::Disk, &[&chunk.head(), &self.buffer[..n]])
                    .map_err(super::send::write_err)?;
                sent += n as u64;
            }
            pos += n as u64;
        }
        Ok(sent)
    }

    /// Sends again every block marked since the last pass (zero blocks as
    /// zeroes: a discard or write-zeroes must reach the destination too).
    /// Returns the bytes covered.
    pub fn dirty_pass<W: Write>(&mut self, out: &mut W) -> Result<u64> {
        let mut covered = 0;
        for index in 0..self.disks.len() {
            let disk = &self.disks[index];
            let block = disk.map.block_size();
            let size = disk.size;
            let per_frame = (u64::from(MAX_DISK_CHUNK) / block).max(1);
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for b in disk.map.take() {
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == b && *count < per_frame => {
                        *count += 1
                    }
                    _ => runs.push((b, 1)),
                }
            }
            for (first, count) in runs {
                let start = first * block;
                let end = ((first + count) * block).min(size);
                let mut pos = start;
                // A block larger than a frame goes in several.
                while pos < end {
                    let n = (end - pos).min(u64::from(MAX_DISK_CHUNK));
                    self.send_dirty(out, index, pos, n)?;
                    pos += n;
                }
                covered += end - start;
            }
        }
        Ok(covered)
    }

    fn send_dirty<W: Write>(&mut self, out: &mut W, index: usize, pos: u64, n: u64) -> Result<()> {
        let n = n as usize;
        self.disks[index]
            .reader
            .image()
            .read_at(&mut self.buffer[..n], pos)
            .map_err(|e| {
                MigrationError::Stream(format!(
                    "copy-storage: disk {index}: reading byte {pos}: {e}"
                ))
            })?;
        if super::send::is_zero(&self.buffer[..n]) {
            return send_zeroes(out, index as u32, pos, n as u64);
        }
        let chunk = DiskChunk {
            disk: index as u32,
            offset: pos,
            body: ChunkBody::Data(&self.buffer[..n]),
        };
        stream::write_frame(out, Tag::Disk, &[&chunk.head(), &self.buffer[..n]])
            .map_err(super::send::write_err)
    }
}

fn send_zeroes<W: Write>(out: &mut W, disk: u32, offset: u64, len: u64) -> Result<()> {
    let chunk = DiskChunk {
        disk,
        offset,
        body: ChunkBody::Zeroes(len),
    };
    stream::write_frame(out, Tag::Disk, &[&chunk.head(), &len.to_le_bytes()])
        .map_err(super::send::write_err)
}

impl Drop for StorageSource {
    fn drop(&mut self) {
        for tracker in &self.trackers {
            tracker.uninstall();
        }
    }
}
