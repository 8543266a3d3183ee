//! The disks of an install: where each one lives (`size=` alone makes
//! `NAME.qcow2`, `NAME-1.qcow2`, ... in the store's images folder, as
//! libvirt's default pool does; `path=` uses that file or creates it with
//! `size=`), its format, and creating the new ones through the qcow
//! library (never by running qemu-img). New files are made with
//! O_EXCL, so an install never writes over a file it did not make.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::{FileStorage, Storage};

use super::error::InstallError;
use super::options::{DiskOption, ImageFormat, InstallOptions};

/// Names tried for a new image in the images folder at most.
const MAX_NAME_TRIES: usize = 1000;

/// A disk of the domain to be.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDisk {
    /// The image (absolute).
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// The size to create it with, in bytes, if it is new.
    pub create_bytes: Option<u64>,
    /// The backing file of a new qcow2.
    pub backing_store: Option<String>,
    /// Seen read-only by the guest.
    pub readonly: bool,
    /// `device=cdrom`.
    pub cdrom: bool,
    /// The cache mode.
    pub cache: Option<String>,
}

/// Decides every disk's file and format. `cwd` makes relative paths
/// absolute.
pub fn plan(
    opts: &InstallOptions,
    images_dir: &Path,
    cwd: &Path,
) -> Result<Vec<PlannedDisk>, InstallError> {
    let mut planned: Vec<PlannedDisk> = Vec::new();
    for disk in &opts.disks {
        let path = match &disk.path {
            Some(p) => cwd.join(p),
            None => free_image_name(opts, images_dir, &planned)?,
        };
        planned.push(plan_one(disk, path)?);
    }
    Ok(planned)
}

fn free_image_name(
    opts: &InstallOptions,
    images_dir: &Path,
    planned: &[PlannedDisk],
) -> Result<PathBuf, InstallError> {
    for n in 0..MAX_NAME_TRIES {
        let base = if n == 0 {
            opts.name.to_string()
        } else {
            format!("{}-{n}", opts.name)
        };
        let path = images_dir.join(format!("{base}.qcow2"));
        if !path.exists() && !planned.iter().any(|p| p.path == path) {
            return Ok(path);
        }
    }
    Err(InstallError::Storage {
        path: images_dir.display().to_string(),
        reason: format!("no free image name for '{}'", opts.name),
    })
}

fn plan_one(disk: &DiskOption, path: PathBuf) -> Result<PlannedDisk, InstallError> {
    let exists = path.exists();
    let create_bytes = if exists {
        None
    } else if let Some(gib) = disk.size_gib {
        // Whole MiB, as virt-install rounds.
        Some(((gib * 1024.0).ceil() as u64) << 20)
    } else if let Some(backing) = &disk.backing_store {
        Some(
            crate::vm::commands::disk_sizes(backing)
                .map_err(|e| InstallError::Storage {
                    path: backing.clone(),
                    reason: crate::vm::commands::define::os_reason(&e),
                })?
                .capacity,
        )
    } else {
        return Err(InstallError::Storage {
            path: path.display().to_string(),
            reason: "size is required for a disk that does not exist".to_string(),
        });
    };
    let format = match (disk.format, exists) {
        (Some(f), _) => f,
        (None, true) => probe(&path)?,
        (None, false) => ImageFormat::Qcow2,
    };
    if disk.backing_store.is_some() && format != ImageFormat::Qcow2 && create_bytes.is_some() {
        return Err(InstallError::Option {
            option: "--disk",
            reason: "backing_store= needs format=qcow2".to_string(),
        });
    }
    Ok(PlannedDisk {
        path,
        format,
        create_bytes,
        backing_store: disk.backing_store.clone(),
        readonly: disk.readonly,
        cdrom: disk.cdrom,
        cache: disk.cache.clone(),
    })
}

/// qcow2 if the file starts with qcow2's magic, else raw.
fn probe(path: &Path) -> Result<ImageFormat, InstallError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| InstallError::Storage {
        path: path.display().to_string(),
        reason: crate::vm::commands::define::os_reason(&e),
    })?;
    let qcow2 = file.read_exact(&mut magic).is_ok() && magic == *b"QFI\xfb";
    Ok(if qcow2 {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// Creates a new disk's image (its folder too); fails if the file exists.
pub fn create_image(disk: &PlannedDisk) -> Result<(), InstallError> {
    let size = disk.create_bytes.expect("only new disks are created");
    let failed = |reason: String| InstallError::Storage {
        path: disk.path.display().to_string(),
        reason,
    };
    if let Some(dir) = disk.path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&disk.path)
        .map_err(|e| failed(crate::vm::commands::define::os_reason(&e)))?;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    match disk.format {
        ImageFormat::Raw => storage.set_len(size).map_err(|e| failed(e.to_string()))?,
        ImageFormat::Qcow2 => {
            let opts = CreateOptions {
                size,
                backing_file: disk.backing_store.clone(),
                backing_format: match &disk.backing_store {
                    Some(b) => Some(probe(Path::new(b))?.name().to_string()),
                    None => None,
                },
                ..CreateOptions::default()
            };
            let image =
                create(storage.clone(), None, None, &opts).map_err(|e| failed(e.to_string()))?;
            drop(image);
        }
    }
    storage.flush().map_err(|e| failed(e.to_string()))?;
    Ok(())
}
