//! The image locks `img` takes, as qemu-img takes them (QEMU's block.c
//! permissions, locked by blockdev's [`blockdev::lock`]): an image read
//! is locked for consistent reads and, under a format with metadata, no
//! one else may write or resize it; an image written is locked for
//! writing too; backing files are locked as read-only images. `-U`
//! (`--force-share`) is a property of each open, as in qemu-img: an image
//! opened with it ([`ImageUse::force_share`]) shares everything on its
//! files and its backing files' (QEMU's children inherit the option); an
//! image the same command opens for writing is locked as ever, and `-U`
//! on a writable open is refused as QEMU refuses it.
//!
//! There is one open file description per locked file in the process,
//! as QEMU keeps one node per file: opening a file again for more widens
//! its locks instead of conflicting with our own. The locks of an image
//! opened through [`super::open_named_for`] live as long as the image
//! (its storage holds them, [`HeldLocks`]), so a command that opens and
//! closes several images holds each one's locks while it uses it. So do
//! the commands `vm` runs in its own process (convert, create): their
//! locks are [`HeldLocks`] that end with the command. Locks taken by
//! [`lock_image`] and its kin directly last until img exits.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{anyhow, Result};
use blockdev::lock::{ImageLock, LockRequest, Perms};
use qcow::fs::{AnyImage, Format};

/// Every lock alive, one per file, to widen rather than take again.
static LIVE: Mutex<Vec<Weak<FileLock>>> = Mutex::new(Vec::new());
/// Locks kept until img exits (those not tied to an open image).
static KEPT: Mutex<Vec<Arc<FileLock>>> = Mutex::new(Vec::new());

/// The locks on one file, released when the last holder drops them.
#[derive(Debug)]
pub struct FileLock {
    lock: Mutex<ImageLock>,
    dev: u64,
    ino: u64,
}

/// The locks an open image holds (its own file's, its backing files' and
/// its side files'): released when the image drops its last reference.
#[derive(Debug, Default, Clone)]
pub struct HeldLocks(Arc<Mutex<Vec<Arc<FileLock>>>>);

impl HeldLocks {
    fn add(&self, locks: Vec<Arc<FileLock>>) {
        self.0.lock().expect("lock list poisoned").extend(locks);
    }
}

fn keep(locks: Vec<Arc<FileLock>>) {
    KEPT.lock().expect("lock table poisoned").extend(locks);
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
    /// Opened with `-U`/`force-share=on`: everything is shared, on its
    /// file and on its backing files (only for an image read).
    pub force_share: bool,
}

impl ImageUse {
    /// An image read.
    pub const READ: ImageUse = ImageUse {
        writable: false,
        resize: false,
        no_share: false,
        force_share: false,
    };
    /// An image written.
    pub const WRITE: ImageUse = ImageUse {
        writable: true,
        resize: false,
        no_share: false,
        force_share: false,
    };

    /// An image read, with `-U` if `force_share`.
    pub fn read(force_share: bool) -> ImageUse {
        ImageUse {
            force_share,
            ..ImageUse::READ
        }
    }

    /// An image read (`writable` false) or written, with `-U` if
    /// `force_share` (which a writable open refuses, see [`lock_image`]).
    pub fn new(writable: bool, force_share: bool) -> ImageUse {
        ImageUse {
            writable,
            force_share,
            ..ImageUse::READ
        }
    }

    /// How the backing files of an image used this way are used: read,
    /// with the image's `-U`.
    fn backing(self) -> ImageUse {
        ImageUse::read(self.force_share)
    }

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
        if !self.writable && self.force_share {
            request = request.force_shared();
        }
        request
    }
}

/// Locks the file at `path`, named `shown` in errors, as qemu-img locks
/// an image of `format` used as `how`. A file that does not exist is left
/// to the open that follows, which reports it.
pub fn lock_image(path: &Path, shown: &str, format: Format, how: ImageUse) -> Result<()> {
    keep(image_locks(path, shown, format, how)?);
    Ok(())
}

fn image_locks(
    path: &Path,
    shown: &str,
    format: Format,
    how: ImageUse,
) -> Result<Vec<Arc<FileLock>>> {
    if how.writable && how.force_share {
        // QEMU's bdrv_open_common.
        return Err(anyhow!(
            "Could not open '{shown}': force-share=on can only be used with read-only images"
        ));
    }
    lock_file(path, how.request(format))
        .map(|l| l.into_iter().collect())
        .map_err(|e| conflict(shown, path, e))
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

/// Locks the backing files of an image used as `how` (nearest first) as
/// qemu-img locks them: read, with others kept from writing them under a
/// metadata format unless the image was opened with `-U`.
pub fn lock_backing_files(
    top_shown: &str,
    backing: &[std::path::PathBuf],
    how: ImageUse,
) -> Result<()> {
    keep(backing_locks(top_shown, backing, how)?);
    Ok(())
}

fn backing_locks(
    top_shown: &str,
    backing: &[std::path::PathBuf],
    how: ImageUse,
) -> Result<Vec<Arc<FileLock>>> {
    let mut locks = Vec::new();
    for (depth, path) in backing.iter().enumerate() {
        let format = probe_format(path);
        let lock = lock_file(path, how.backing().request(format)).map_err(|e| {
            // QEMU's words: each backing level below the image adds its
            // prefix to the open's error.
            let levels = "Could not open backing file: ".repeat(depth + 1);
            match e {
                e @ blockdev::Error::LockHeld { .. } => anyhow!(
                    "Could not open '{top_shown}': {levels}{e}\nIs another process using the \
                     image [{}]?",
                    path.display()
                ),
                e => anyhow!("Could not open '{top_shown}': {levels}{e}"),
            }
        })?;
        locks.extend(lock);
    }
    Ok(locks)
}

/// Locks the chain of the new backing file `rebase` opens on its own
/// (`chain`, its files nearest first, the first named `name`): read, with
/// the command's `-U`, as qemu-img opens it; a conflict is worded as
/// qemu-img words it (`Could not open new backing file 'NAME': ...`).
pub fn lock_new_backing(name: &str, chain: &[PathBuf], force_share: bool) -> Result<()> {
    let how = ImageUse::read(force_share);
    let mut locks = Vec::new();
    for path in chain {
        let lock = lock_file(path, how.request(probe_format(path))).map_err(|e| match e {
            e @ blockdev::Error::LockHeld { .. } => anyhow!(
                "Could not open new backing file '{name}': {e}\nIs another process using the \
                 image [{}]?",
                path.display()
            ),
            e => anyhow!("Could not open new backing file '{name}': {e}"),
        })?;
        locks.extend(lock);
    }
    keep(locks);
    Ok(())
}

/// Locks the files an open image uses besides its own, as QEMU's block
/// layer locks them: a qcow2 external data file holds guest data only
/// (locked as a raw image used as `how`), a vmdk extent is locked as its
/// kind is (a flat extent as data, a sparse one as metadata). A conflict
/// names the image, `top_shown`, and the side file, as qemu-img does.
pub fn lock_side_files(top_shown: &str, image: &AnyImage, how: ImageUse) -> Result<()> {
    keep(side_file_locks(top_shown, image, how)?);
    Ok(())
}

fn side_file_locks(top_shown: &str, image: &AnyImage, how: ImageUse) -> Result<Vec<Arc<FileLock>>> {
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
    let mut locks = Vec::new();
    for (path, metadata) in files {
        let format = if metadata { Format::Qcow2 } else { Format::Raw };
        let lock =
            lock_file(&path, how.request(format)).map_err(|e| conflict(top_shown, &path, e))?;
        locks.extend(lock);
    }
    Ok(locks)
}

/// The locks of an image being opened: its own file's first (`path`,
/// named `shown`, used as `how`), then, with [`HeldLocks::open_done`],
/// those of its backing and side files. The image's storage holds them
/// (see [`LockedStorage`]).
pub fn lock_opening(path: &Path, shown: &str, format: Format, how: ImageUse) -> Result<HeldLocks> {
    let held = HeldLocks::default();
    held.add(image_locks(path, shown, format, how)?);
    Ok(held)
}

impl HeldLocks {
    /// Adds the locks of the opened image's backing files and side files,
    /// as [`lock_backing_files`] and [`lock_side_files`] take them.
    pub fn open_done(
        &self,
        shown: &str,
        backing: &[PathBuf],
        image: &AnyImage,
        how: ImageUse,
    ) -> Result<()> {
        self.add(backing_locks(shown, backing, how)?);
        self.add(side_file_locks(shown, image, how)?);
        Ok(())
    }
}

/// Locks the file `qemu-img create` is about to (re)write: it holds
/// write and resize and lets no one else resize it, and words a conflict
/// as `PREFIX: Failed to get "write" lock` (the prefix is the file's name,
/// or what `convert` says of its target).
///
/// The locks last as long as the [`HeldLocks`] returned.
pub fn lock_for_create(path: &Path, prefix: &str) -> Result<HeldLocks> {
    let request = LockRequest {
        perm: Perms::WRITE.union(Perms::RESIZE),
        shared: Perms::ALL.without(Perms::RESIZE),
    };
    let held = HeldLocks::default();
    lock_file(path, request)
        .map(|l| held.add(l.into_iter().collect()))
        .map(|()| held)
        .map_err(|e| match e {
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

/// Locks `path` for `request`, widening the process's lock on the same
/// file if one is alive. `None` for a file that is not there or not a
/// regular file (the open that follows reports it; a device node is no
/// image file of ours).
fn lock_file(path: &Path, request: LockRequest) -> Result<Option<Arc<FileLock>>, blockdev::Error> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let mut live = LIVE.lock().expect("lock table poisoned");
    live.retain(|w| w.strong_count() > 0);
    for lock in live.iter().filter_map(Weak::upgrade) {
        if lock.dev == meta.dev() && lock.ino == meta.ino() {
            lock.lock
                .lock()
                .expect("file lock poisoned")
                .extend(request)?;
            return Ok(Some(lock));
        }
    }
    let lock = Arc::new(FileLock {
        lock: Mutex::new(ImageLock::acquire(path, request)?),
        dev: meta.dev(),
        ino: meta.ino(),
    });
    live.push(Arc::downgrade(&lock));
    Ok(Some(lock))
}

/// An image's file, holding the image's locks for as long as the image
/// holds it.
pub struct LockedStorage {
    inner: Arc<dyn qcow::Storage>,
    _locks: HeldLocks,
}

impl LockedStorage {
    /// `inner`, holding `locks`.
    pub fn wrap(inner: Arc<dyn qcow::Storage>, locks: HeldLocks) -> Arc<dyn qcow::Storage> {
        Arc::new(LockedStorage {
            inner,
            _locks: locks,
        })
    }
}

impl qcow::Storage for LockedStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> qcow::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> qcow::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> qcow::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> qcow::Result<u64> {
        self.inner.len()
    }
    fn is_empty(&self) -> qcow::Result<bool> {
        self.inner.is_empty()
    }
    fn set_len(&self, len: u64) -> qcow::Result<()> {
        self.inner.set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> qcow::Result<()> {
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> qcow::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
    fn start_writeback(&self) -> qcow::Result<()> {
        self.inner.start_writeback()
    }
    fn data_extent(&self, offset: u64, len: u64) -> qcow::Result<(bool, u64)> {
        self.inner.data_extent(offset, len)
    }
    fn as_file(&self) -> Option<&std::fs::File> {
        self.inner.as_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether another open file description could take `request` on
    /// `path` now (as another process would).
    fn others_may(path: &Path, request: LockRequest) -> bool {
        ImageLock::acquire(path, request).is_ok()
    }

    #[test]
    fn an_opened_images_locks_end_with_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        for p in [&a, &b] {
            std::fs::write(p, vec![0u8; 1 << 16]).unwrap();
        }
        let name = |p: &Path| p.to_str().unwrap().to_string();
        // A writer that shares no writes: what a writable open refuses.
        let writer = LockRequest::metadata_file(true);
        let first = super::super::open_named(&name(&a), Some("raw"), true, false).unwrap();
        assert!(!others_may(&a, writer));
        {
            let second = super::super::open_named(&name(&b), Some("raw"), true, false).unwrap();
            assert!(!others_may(&b, writer));
            // The same file opened again widens the one lock it has.
            let again = super::super::open_named(&name(&a), Some("raw"), false, false).unwrap();
            drop((second, again));
        }
        assert!(others_may(&b, writer), "b's locks outlived its image");
        assert!(
            !others_may(&a, writer),
            "a's locks ended with another image"
        );
        drop(first);
        assert!(others_may(&a, writer), "a's locks outlived its image");
    }

    #[test]
    fn convert_and_create_hold_their_locks_only_while_they_run() {
        // As `vm clone --from-snapshot` runs them, in a process that goes
        // on (and then has a VMM open what they made).
        let dir = tempfile::tempdir().unwrap();
        let name = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        std::fs::write(dir.path().join("src.raw"), vec![7u8; 1 << 20]).unwrap();
        let run = |argv: &[&str]| {
            let cli = crate::cli::parse_args(argv).unwrap();
            match &cli.command {
                crate::cli::Command::Convert(a) => super::super::convert::run(a).unwrap(),
                crate::cli::Command::Create(a) => super::super::create::run(a).unwrap(),
                _ => unreachable!("only convert and create here"),
            }
        };
        let (src, base, overlay) = (name("src.raw"), name("base.qcow2"), name("new.qcow2"));
        let convert = [
            "img", "convert", "-U", "-f", "raw", "-O", "qcow2", &src, &base,
        ];
        assert_eq!(run(&convert), 0);
        let create = [
            "img", "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &overlay,
        ];
        assert_eq!(run(&create), 0);
        let writer = LockRequest::metadata_file(true);
        for file in [&src, &base, &overlay] {
            assert!(
                others_may(Path::new(file), writer),
                "{file} is still locked after the command"
            );
        }
    }
}
