//! The image locks `img` takes, as qemu-img takes them (QEMU's block.c
//! permissions, locked by blockdev's [`blockdev::lock`]): an image read
//! is locked for consistent reads and, under a format with metadata, no
//! one else may write or resize it; an image written is locked for
//! writing too; backing files are locked as read-only images. `-U`
//! (`--force-share`) shares everything on the files opened read-only.
//!
//! The locks live in one table for the whole process, one open file
//! description per file, as QEMU keeps one node per file: opening a file
//! again for more widens its locks instead of conflicting with our own.
//! They end when img exits.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use blockdev::lock::{ImageLock, LockRequest, Perms};
use qcow::fs::{AnyImage, Format};

/// Every lock taken so far.
static HELD: Mutex<Vec<ImageLock>> = Mutex::new(Vec::new());
/// Whether `-U` was given.
static FORCE_SHARE: AtomicBool = AtomicBool::new(false);

/// Records the command's `-U`/`--force-share`.
pub fn set_force_share(force_share: bool) {
    FORCE_SHARE.store(force_share, Ordering::Relaxed);
}

/// Whether `-U`/`--force-share` was given.
pub fn force_share() -> bool {
    FORCE_SHARE.load(Ordering::Relaxed)
}

/// How img uses an image file it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageUse {
    /// Opened for writing.
    pub writable: bool,
    /// Opened to change its length (`resize`).
    pub resize: bool,
    /// Others may not write it either while we read it (qemu-img
    /// convert's sources, `BDRV_O_NO_SHARE`).
    pub no_share: bool,
}

impl ImageUse {
    /// An image read.
    pub const READ: ImageUse = ImageUse {
        writable: false,
        resize: false,
        no_share: false,
    };
    /// An image written.
    pub const WRITE: ImageUse = ImageUse {
        writable: true,
        resize: false,
        no_share: false,
    };

    /// The locks qemu-img takes on the file of an image of `format` used
    /// this way.
    pub fn request(self, format: Format) -> LockRequest {
        let mut request = if format == Format::Raw {
            LockRequest::data_file(self.writable, self.resize)
        } else {
            LockRequest::metadata_file(self.writable)
        };
        if self.no_share {
            request = request.sharing_only(Perms::CONSISTENT_READ.union(Perms::WRITE_UNCHANGED));
        }
        if !self.writable && force_share() {
            request = request.force_shared();
        }
        request
    }
}

/// Locks the file at `path`, named `shown` in errors, as qemu-img locks
/// an image of `format` used as `how`. A file that does not exist is left
/// to the open that follows, which reports it.
pub fn lock_image(path: &Path, shown: &str, format: Format, how: ImageUse) -> Result<()> {
    lock_file(path, how.request(format)).map_err(|e| conflict(shown, path, e))
}

/// [`lock_image`] of an image whose format may still be unknown: it is
/// probed (a file that cannot be probed is left to the open that follows).
pub fn lock_image_probed(
    path: &Path,
    shown: &str,
    format: Option<Format>,
    how: ImageUse,
) -> Result<()> {
    let format = match format {
        Some(f) => f,
        None => {
            match qcow::fs::open_storage(path, false).and_then(|s| qcow::fs::probe(&*s, path)) {
                Ok(f) => f,
                Err(_) => return Ok(()),
            }
        }
    };
    lock_image(path, shown, format, how)
}

/// Locks the backing files of an image (nearest first) as qemu-img locks
/// them: read, with others kept from writing them under a metadata format.
pub fn lock_backing_files(top_shown: &str, backing: &[std::path::PathBuf]) -> Result<()> {
    for path in backing {
        let format = probe_format(path);
        lock_file(path, ImageUse::READ.request(format)).map_err(|e| {
            let shown = path.display().to_string();
            conflict(top_shown, path, e).context(format!("Could not open backing file '{shown}'"))
        })?;
    }
    Ok(())
}

/// Locks the files an open image uses besides its own, as QEMU's block
/// layer locks them: a qcow2 external data file holds guest data only
/// (locked as a raw image used as `how`), a vmdk extent is locked as its
/// kind is (a flat extent as data, a sparse one as metadata). A conflict
/// names the image, `top_shown`, and the side file, as qemu-img does.
pub fn lock_side_files(top_shown: &str, image: &AnyImage, how: ImageUse) -> Result<()> {
    let files: Vec<(PathBuf, bool)> = match image {
        AnyImage::Qcow2(q) if q.data_file().is_some() => q
            .header_cluster()
            .data_file()
            // QEMU opens the data file by its name as recorded.
            .map(|name| vec![(PathBuf::from(name), false)])
            .unwrap_or_default(),
        AnyImage::Foreign(_, f) => f
            .side_file_roles()
            .into_iter()
            .map(|(name, metadata)| (PathBuf::from(name), metadata))
            .collect(),
        _ => Vec::new(),
    };
    for (path, metadata) in files {
        let format = if metadata { Format::Qcow2 } else { Format::Raw };
        lock_file(&path, how.request(format)).map_err(|e| conflict(top_shown, &path, e))?;
    }
    Ok(())
}

/// Locks the file `qemu-img create` is about to (re)write: it holds
/// write and resize and lets no one else resize it, and words a conflict
/// as `PREFIX: Failed to get "write" lock` (the prefix is the file's name,
/// or what `convert` says of its target).
pub fn lock_for_create(path: &Path, prefix: &str) -> Result<()> {
    let request = LockRequest {
        perm: Perms::WRITE.union(Perms::RESIZE),
        shared: Perms::ALL.without(Perms::RESIZE),
    };
    lock_file(path, request).map_err(|e| match e {
        e @ blockdev::Error::LockHeld { .. } => anyhow!(
            "{prefix}: {e}\nIs another process using the image [{}]?",
            path.display()
        ),
        e => anyhow!("{prefix}: {e}"),
    })
}

/// The format of a backing file as a probe sees it (raw when unreadable:
/// the open that follows reports the real trouble).
fn probe_format(path: &Path) -> Format {
    qcow::fs::open_storage(path, false)
        .and_then(|s| qcow::fs::probe(&*s, path))
        .unwrap_or(Format::Raw)
}

/// `Could not open 'X': Failed to get "write" lock`, and QEMU's hint.
fn conflict(shown: &str, path: &Path, e: blockdev::Error) -> anyhow::Error {
    match e {
        e @ blockdev::Error::LockHeld { .. } => anyhow!(
            "Could not open '{shown}': {e}\nIs another process using the image [{}]?",
            path.display()
        ),
        e => anyhow!("Could not open '{shown}': {e}"),
    }
}

/// Lets go of every lock taken so far: for `vm`, which runs img commands
/// in its own process and then has a VMM open the images they made.
pub fn release_all() {
    HELD.lock().expect("lock table poisoned").clear();
}

fn lock_file(path: &Path, request: LockRequest) -> Result<(), blockdev::Error> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    // Only regular files: a device node is no image file of ours.
    if !meta.is_file() {
        return Ok(());
    }
    let mut held = HELD.lock().expect("lock table poisoned");
    for lock in held.iter_mut() {
        let same = lock
            .file()
            .metadata()
            .map(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
            .unwrap_or(false);
        if same {
            return lock.extend(request);
        }
    }
    held.push(ImageLock::acquire(path, request)?);
    Ok(())
}
