//! Opening a disk: format probing, the qcow2 image with its backing chain
//! and external data file, the host files data I/O goes through, and the
//! images of the other formats `img` reads and writes (served by
//! `foreign`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use qcow::device::BlockRead;
use qcow::formats::dir_files::DirFiles;
use qcow::fs::{probe, FileOpener, Format};
use qcow::image::{Opener, Qcow2};
use qcow::{FileStorage, Storage};

use super::foreign::{ForeignBackend, ForeignDisk};
use super::host::HostFile;
use super::{Backend, Disk, Layout};
use crate::disk::{BlockBackend, CacheMode};
use crate::error::{Error, Result};

/// How to open a disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The image format; probed from the first bytes when `None`.
    pub format: Option<Format>,
    /// Refuse writes, discards and write-zeroes (and open files read-only).
    pub read_only: bool,
    /// Host page cache use for data I/O.
    pub cache: CacheMode,
    /// Show this internal snapshot (id or name) of a qcow2 image instead
    /// of its active disk; needs `read_only`.
    pub snapshot: Option<String>,
    /// Make every write durable before completing it (qemu's
    /// `cache=writethrough` and `cache=directsync`).
    pub write_through: bool,
    /// Complete flushes without syncing anything (qemu's `cache=unsafe`).
    pub ignore_flush: bool,
    /// The longest a queue's `wait` spins on its completion ring before it
    /// sleeps (see [`crate::poll`]); `None` is the default,
    /// [`crate::poll::DEFAULT_POLL_MAX`], and zero never spins.
    pub poll_max: Option<std::time::Duration>,
}

/// Opens the disk at `path`.
///
/// ```no_run
/// use blockdev::backend::{open, OpenOptions};
/// use blockdev::disk::CacheMode;
///
/// let disk = open(
///     std::path::Path::new("disk.qcow2"),
///     &OpenOptions { cache: CacheMode::None, ..Default::default() },
/// )?;
/// let mut queue = disk.open_queue(32)?;
/// # Ok::<(), blockdev::Error>(())
/// ```
pub fn open(path: &Path, options: &OpenOptions) -> Result<Arc<dyn BlockBackend>> {
    open_with_files(path, options).map(|opened| opened.backend)
}

/// A disk opened by [`open_with_files`], with the other files it reads.
pub struct OpenedDisk {
    /// The disk.
    pub backend: Arc<dyn BlockBackend>,
    /// The backing files of a qcow2 image, nearest first, as their names
    /// resolved against the folders of the images that name them.
    pub backing_files: Vec<PathBuf>,
    /// The external data file of a qcow2 image, as its name resolves
    /// (against the working folder, as QEMU resolves it).
    pub data_file: Option<PathBuf>,
}

impl std::fmt::Debug for OpenedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedDisk")
            .field("size", &self.backend.size())
            .field("backing_files", &self.backing_files)
            .field("data_file", &self.data_file)
            .finish()
    }
}

/// Opens the disk at `path` as [`open`] does, and names every other file
/// it reads or writes (backing chain, data file) so that a caller can lock
/// them as QEMU does while a guest uses the disk.
pub fn open_with_files(path: &Path, options: &OpenOptions) -> Result<OpenedDisk> {
    let writable = !options.read_only;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
    let format = match options.format {
        Some(f) => f,
        None => probe(&FileStorage::new(clone(&file, path)?), path)?,
    };
    let mut backing_files = Vec::new();
    let mut data_file = None;
    let disk = match format {
        Format::Raw => {
            if options.snapshot.is_some() {
                return Err(Error::Unsupported {
                    what: "raw images have no internal snapshots".into(),
                });
            }
            let image = HostFile::from_buffered(file, path, writable, options.cache)?;
            let size = image.size()?;
            Disk {
                layout: Layout::Raw,
                image,
                data_file: None,
                backing: Vec::new(),
                size,
                read_only: options.read_only,
                write_through: options.write_through,
                ignore_flush: options.ignore_flush,
                wakers: Default::default(),
                poll_max: poll_max(options),
            }
        }
        Format::Qcow2 => {
            let (disk, backing, data) = open_qcow2(file, path, options)?;
            backing_files = backing;
            data_file = data;
            disk
        }
        foreign => {
            let (backend, backing_files) = open_foreign(file, path, foreign, options)?;
            return Ok(OpenedDisk {
                backend: Arc::new(backend),
                backing_files,
                data_file,
            });
        }
    };
    Ok(OpenedDisk {
        backend: Arc::new(Backend {
            disk: Arc::new(disk),
        }),
        backing_files,
        data_file,
    })
}

/// Opens a disk of one of the formats of [`qcow::formats`] (vmdk, vhdx,
/// vpc, vdi, qed), with the files it names (vmdk extents) resolved
/// against its folder, and the backing chain it names (vmdk and qed)
/// opened read-only with the library's depth and cycle checks; returns
/// the backing files too, for the caller to lock.
fn open_foreign(
    file: File,
    path: &Path,
    format: Format,
    options: &OpenOptions,
) -> Result<(ForeignBackend, Vec<PathBuf>)> {
    if options.snapshot.is_some() {
        return Err(Error::Unsupported {
            what: format!("{} images have no internal snapshots", format.name()),
        });
    }
    let writable = !options.read_only;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    let files = DirFiles::for_image(path);
    let mut image =
        qcow::formats::open(format.name(), storage, writable, &files).ok_or_else(|| {
            Error::Unsupported {
                what: format!("{} disks are not served by the block engine", format.name()),
            }
        })??;
    let opener = FileOpener::for_image(path);
    if let Some(named) = image.backing_file() {
        image.set_backing(opener.open_backing(&named.name, named.format)?);
    }
    let backend = ForeignBackend::new(ForeignDisk {
        image,
        read_only: options.read_only,
        write_through: options.write_through,
        ignore_flush: options.ignore_flush,
    });
    Ok((backend, opener.opened_backing_files()))
}

fn poll_max(options: &OpenOptions) -> std::time::Duration {
    options.poll_max.unwrap_or(crate::poll::DEFAULT_POLL_MAX)
}

fn clone(file: &File, path: &Path) -> Result<File> {
    file.try_clone().map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

/// The qcow2 disk, its backing files and its data file's path.
type OpenedQcow2 = (Disk, Vec<PathBuf>, Option<PathBuf>);

fn open_qcow2(file: File, path: &Path, options: &OpenOptions) -> Result<OpenedQcow2> {
    let writable = !options.read_only;
    if options.snapshot.is_some() && writable {
        return Err(Error::Unsupported {
            what: "a snapshot can only be opened read-only".into(),
        });
    }
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(clone(&file, path)?));
    let opener = DiskOpener {
        files: FileOpener::for_image(path),
        data_file: Mutex::new(None),
    };
    let image = Qcow2::open(storage, writable, &opener)?;
    if let Some(name) = &options.snapshot {
        image.view_snapshot(name)?;
    }
    let backing_files = opener.files.opened_backing_files();
    // Data moves through the rings as stored: encrypted layers (which the
    // library decrypts only on its own read and write paths) are refused.
    let encrypted_layer = image.is_encrypted()
        || backing_files.iter().any(|p| {
            qcow::fs::open_storage(p, false)
                .and_then(|s| qcow::image::read_header_cluster(&*s))
                .is_ok_and(|hc| hc.header.crypt_method != 0)
        });
    if encrypted_layer {
        return Err(Error::Unsupported {
            what: "encrypted qcow2 images (and backing files) are not served by the block backends"
                .into(),
        });
    }
    // Our own descriptors on the backing chain, for data reads through the
    // rings (the library keeps its own for metadata).
    let backing = backing_files
        .iter()
        .map(|backing_path| {
            let file = File::open(backing_path).map_err(|source| Error::Open {
                path: backing_path.display().to_string(),
                source,
            })?;
            HostFile::from_buffered(file, backing_path, false, options.cache)
        })
        .collect::<Result<Vec<_>>>()?;
    let (data_file, data_path) = match opener.data_file.into_inner() {
        Ok(Some((data_path, data))) => (
            Some(HostFile::from_buffered(
                data,
                &data_path,
                writable,
                options.cache,
            )?),
            Some(data_path),
        ),
        _ => (None, None),
    };
    let size = image.size();
    let disk = Disk {
        layout: Layout::Qcow2(Box::new(image)),
        image: HostFile::from_buffered(file, path, writable, options.cache)?,
        data_file,
        backing,
        size,
        read_only: options.read_only,
        write_through: options.write_through,
        ignore_flush: options.ignore_flush,
        wakers: Default::default(),
        poll_max: poll_max(options),
    };
    Ok((disk, backing_files, data_path))
}

/// Opens backing files as the qcow2 library does, and the external data
/// file itself so that data I/O can go to its descriptor.
struct DiskOpener {
    files: FileOpener,
    data_file: Mutex<Option<(PathBuf, File)>>,
}

impl Opener for DiskOpener {
    fn open_backing(&self, name: &str, format: Option<&str>) -> qcow::Result<Box<dyn BlockRead>> {
        self.files.open_backing(name, format)
    }

    fn open_data_file(&self, name: &str, writable: bool) -> qcow::Result<Arc<dyn Storage>> {
        // As QEMU (and qcow's FileOpener): relative to the working folder.
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|e| qcow::Error::io(format!("Could not open '{name}'"), e))?;
        let copy = file
            .try_clone()
            .map_err(|e| qcow::Error::io(format!("Could not open '{name}'"), e))?;
        *self.data_file.lock().expect("opener lock poisoned") = Some((path, copy));
        Ok(Arc::new(FileStorage::new(file)))
    }
}
