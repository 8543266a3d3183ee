//! The destination's side of a disk copy: each image created at the path
//! the configuration names (never over an existing file), unnamed until
//! the switch where the file system allows (`unnamed_file`), the Disk
//! frames written into it after their disk, range and length are checked,
//! and the images closed and named before the VM opens them. Until
//! [`IncomingStorage::keep`] the images are the migration's: dropping it
//! deletes every one that got a name.

use std::path::PathBuf;
use std::sync::Arc;

use qcow::device::RawImage;
use qcow::fs::FileOpener;
use qcow::image::Qcow2;
use qcow::{FileStorage, Storage};

use super::storage::{ChunkBody, CopiedFormat, DiskChunk, StorageMode, StoragePlan};
use super::unnamed_file::{self, PendingFile};
use super::{MigrationError, Result};
use crate::config::DiskConfig;

/// Zeroes written at once into a raw image.
const ZERO_CHUNK: usize = 1 << 20;

enum Target {
    Qcow2(Box<Qcow2>),
    Raw(RawImage),
}

struct TargetDisk {
    path: PathBuf,
    size: u64,
    target: Option<Target>,
    /// The file, for giving it its name at the switch.
    pending: PendingFile,
}

/// The images a migration is creating here.
pub struct IncomingStorage {
    disks: Vec<TargetDisk>,
    created: Vec<PathBuf>,
    kept: bool,
    /// Bytes written from Disk frames (zeroes included).
    pub bytes: u64,
}

fn disk_err(path: &std::path::Path, index: usize, what: String) -> MigrationError {
    MigrationError::Stream(format!(
        "copy-storage: disk {index} ({}): {what}",
        path.display()
    ))
}

impl IncomingStorage {
    /// Creates the images `plan` describes at the paths of `disks` (the
    /// checked configuration). `None` for shared storage. A file already
    /// at one of the paths is refused (and whatever this call created is
    /// removed again).
    pub fn create(plan: &StoragePlan, disks: &[DiskConfig]) -> Result<Option<IncomingStorage>> {
        if plan.mode == StorageMode::Shared {
            return Ok(None);
        }
        let mut storage = IncomingStorage {
            disks: Vec::new(),
            created: Vec::new(),
            kept: false,
            bytes: 0,
        };
        for (index, (disk, config)) in plan.disks.iter().zip(disks).enumerate() {
            let path = config.path.clone();
            let pending = unnamed_file::create(&path).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "the image already exists here; the copy creates it (remove it, or migrate without copying storage)".to_string()
                } else {
                    format!("cannot create the image: {e}")
                };
                disk_err(&path, index, why)
            })?;
            if !pending.unnamed {
                storage.created.push(path.clone());
            }
            let file = pending
                .file
                .try_clone()
                .map_err(|e| disk_err(&path, index, format!("cannot create the image: {e}")))?;
            let file: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
            let target = match disk.format {
                CopiedFormat::Raw => {
                    pending
                        .file
                        .set_len(disk.size)
                        .map_err(|e| disk_err(&path, index, format!("sizing: {e}")))?;
                    let raw =
                        RawImage::new(file).map_err(|e| disk_err(&path, index, e.to_string()))?;
                    Target::Raw(raw)
                }
                CopiedFormat::Qcow2 => {
                    let options = disk.create_options(index)?;
                    qcow::create::create(file.clone(), None, None, &options)
                        .and_then(|created| created.close())
                        .map_err(|e| disk_err(&path, index, format!("creating: {e}")))?;
                    // Opened again with its backing chain, found next to
                    // its path (an incremental copy needs it here).
                    let image = Qcow2::open(file, true, &FileOpener::for_image(&path))
                        .map_err(|e| disk_err(&path, index, e.to_string()))?;
                    Target::Qcow2(Box::new(image))
                }
            };
            storage.disks.push(TargetDisk {
                path,
                size: disk.size,
                target: Some(target),
                pending,
            });
        }
        Ok(Some(storage))
    }

    /// Writes one Disk frame's payload after checking it.
    pub fn apply(&mut self, payload: &[u8]) -> Result<u64> {
        let chunk = DiskChunk::parse(payload)?;
        let index = chunk.disk as usize;
        let Some(disk) = self.disks.get(index) else {
            return Err(MigrationError::Stream(format!(
                "a Disk frame for disk {index} of {}",
                self.disks.len()
            )));
        };
        let len = chunk.len();
        if len == 0
            || chunk
                .offset
                .checked_add(len)
                .is_none_or(|end| end > disk.size)
        {
            return Err(MigrationError::Stream(format!(
                "a Disk frame of {len} bytes at byte {} of disk {index}, outside its {} bytes",
                chunk.offset, disk.size
            )));
        }
        let target = disk.target.as_ref().ok_or_else(|| {
            MigrationError::Stream(format!("a Disk frame for disk {index} after the switch"))
        })?;
        let err = |e: qcow::Error| disk_err(&disk.path, index, format!("writing: {e}"));
        match (target, &chunk.body) {
            (Target::Qcow2(image), ChunkBody::Data(data)) => {
                image.write_at(data, chunk.offset).map_err(err)?
            }
            (Target::Qcow2(image), ChunkBody::Zeroes(n)) => {
                image.write_zeroes(chunk.offset, *n, true).map_err(err)?
            }
            (Target::Raw(image), ChunkBody::Data(data)) => {
                image.write_at(data, chunk.offset).map_err(err)?
            }
            (Target::Raw(image), ChunkBody::Zeroes(n)) => {
                let zeroes = vec![0u8; ZERO_CHUNK.min(*n as usize)];
                let mut pos = chunk.offset;
                let end = chunk.offset + n;
                while pos < end {
                    let k = (end - pos).min(zeroes.len() as u64) as usize;
                    image.write_at(&zeroes[..k], pos).map_err(err)?;
                    pos += k as u64;
                }
            }
        }
        self.bytes += len;
        Ok(len)
    }

    /// Flushes and closes every image (its data and metadata synced) and
    /// gives it its name, the name synced too, for the VM to open: called
    /// before the destination says Ready, after which the source may let
    /// go of its disks, so the copies are durable by then (they are still
    /// deleted if the migration fails after).
    pub fn close(&mut self) -> Result<()> {
        for (index, disk) in self.disks.iter_mut().enumerate() {
            let result = match disk.target.take() {
                Some(Target::Qcow2(image)) => image.close(),
                Some(Target::Raw(image)) => image.storage().flush(),
                None => continue,
            };
            result.map_err(|e| disk_err(&disk.path, index, format!("closing: {e}")))?;
            if disk.pending.unnamed {
                disk.pending
                    .link(&disk.path)
                    .map_err(|e| disk_err(&disk.path, index, format!("naming: {e}")))?;
                self.created.push(disk.path.clone());
            }
            unnamed_file::sync_parent(&disk.path)
                .map_err(|e| disk_err(&disk.path, index, format!("syncing its folder: {e}")))?;
        }
        Ok(())
    }

    /// The migration succeeded: the images stay.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for IncomingStorage {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.disks.clear();
        for path in &self.created {
            if let Err(e) = std::fs::remove_file(path) {
                eprintln!(
                    "vmm: removing {} after the failed migration: {e}",
                    path.display()
                );
            }
        }
    }
}
