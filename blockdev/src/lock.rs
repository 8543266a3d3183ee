//! QEMU-compatible image locks: open file description (OFD) locks on
//! single bytes of an image file, at the offsets QEMU's file-posix driver
//! uses, so that QEMU, qemu-img, qemu-io, our `vmm` and our `img` see each
//! other's use of a file.
//!
//! QEMU describes a user of a file by two sets of permissions (block.c):
//! those it *holds* (consistent read, write, write unchanged, resize) and
//! those it *shares* with other users. A holder of permission N takes a
//! shared lock on byte 100 + N; a user that does not share permission N
//! takes a shared lock on byte 200 + N. Before that it tests, as
//! `raw_check_lock_bytes` does, that no one else locks byte 200 + N for a
//! permission it wants (`Failed to get "write" lock`) nor byte 100 + N for
//! a permission it does not share (`Failed to get shared "write" lock`).
//! All locks are read locks, so they never conflict with each other: only
//! the tests (F_OFD_GETLK with a write lock) see them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// The byte QEMU locks to say "I hold permission N" is this + N.
const PERM_LOCK_BASE: i64 = 100;
/// The byte QEMU locks to say "I do not share permission N" is this + N.
const SHARED_LOCK_BASE: i64 = 200;

/// A set of QEMU block permissions (`BLK_PERM_*`, block-common.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms(0);
    /// `BLK_PERM_CONSISTENT_READ`: reads see consistent data.
    pub const CONSISTENT_READ: Perms = Perms(0x01);
    /// `BLK_PERM_WRITE`: writes that change data.
    pub const WRITE: Perms = Perms(0x02);
    /// `BLK_PERM_WRITE_UNCHANGED`: writes that leave the data as it was.
    pub const WRITE_UNCHANGED: Perms = Perms(0x04);
    /// `BLK_PERM_RESIZE`: changing the file's length.
    pub const RESIZE: Perms = Perms(0x08);
    /// `BLK_PERM_ALL`.
    pub const ALL: Perms = Perms(0x0f);
    /// The number of permission bits QEMU locks.
    const BITS: u8 = 4;

    /// The union of two sets.
    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// This set without the permissions of `other`.
    pub const fn without(self, other: Perms) -> Perms {
        Perms(self.0 & !other.0)
    }

    /// The permissions in both sets.
    pub const fn intersection(self, other: Perms) -> Perms {
        Perms(self.0 & other.0)
    }

    /// Whether every permission of `other` is in this set.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bit numbers in the set, lowest first.
    fn bits(self) -> impl Iterator<Item = u8> {
        (0..Self::BITS).filter(move |b| self.0 & (1 << b) != 0)
    }
}

/// QEMU's name of one permission bit (`bdrv_perm_names`).
fn perm_name(bit: u8) -> &'static str {
    match bit {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        _ => "resize",
    }
}

/// What one user of a file holds and lets others hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// The permissions taken.
    pub perm: Perms,
    /// The permissions other users may take.
    pub shared: Perms,
}

impl LockRequest {
    /// The request of a file under a format driver with metadata (qcow2,
    /// vmdk, ...): the driver may rewrite metadata and needs the length to
    /// stay, so no one else may write or resize (QEMU's
    /// `bdrv_default_perms_for_storage`, metadata role).
    pub fn metadata_file(writable: bool) -> LockRequest {
        let perm = if writable {
            Perms::CONSISTENT_READ
                .union(Perms::WRITE)
                .union(Perms::RESIZE)
        } else {
            Perms::CONSISTENT_READ
        };
        LockRequest {
            perm,
            shared: Perms::ALL.without(Perms::WRITE.union(Perms::RESIZE)),
        }
    }

    /// The request of a file that holds guest data as it is (a raw image,
    /// a flat extent, an external data file): others may write it but not
    /// resize it (data role). `resize` adds the resize permission, as
    /// `qemu-img resize` asks for it.
    pub fn data_file(writable: bool, resize: bool) -> LockRequest {
        let mut perm = Perms::CONSISTENT_READ;
        if writable {
            perm = perm.union(Perms::WRITE);
        }
        if resize {
            perm = perm.union(Perms::RESIZE);
        }
        LockRequest {
            perm,
            shared: Perms::ALL.without(Perms::RESIZE),
        }
    }

    /// This request with `-U`/`force-share=on`: everything is shared.
    pub fn force_shared(self) -> LockRequest {
        LockRequest {
            perm: self.perm,
            shared: Perms::ALL,
        }
    }

    /// This request with fewer permissions shared (`BDRV_O_NO_SHARE`, as
    /// qemu-img convert opens its sources).
    pub fn sharing_only(self, shared: Perms) -> LockRequest {
        LockRequest {
            perm: self.perm,
            shared: self.shared.intersection(shared),
        }
    }

    /// The request of a user holding both this and `other`.
    pub fn combined(self, other: LockRequest) -> LockRequest {
        LockRequest {
            perm: self.perm.union(other.perm),
            shared: self.shared.intersection(other.shared),
        }
    }

    /// The bytes this request locks.
    fn bytes(self) -> impl Iterator<Item = i64> {
        self.perm
            .bits()
            .map(|b| PERM_LOCK_BASE + i64::from(b))
            .chain(
                Perms::ALL
                    .without(self.shared)
                    .bits()
                    .map(|b| SHARED_LOCK_BASE + i64::from(b)),
            )
    }
}

/// What a file is to a running guest's disk, which decides the locks QEMU
/// takes on it (as QEMU 10 was seen to lock them):
///
/// | role | held | not shared |
/// | --- | --- | --- |
/// | writable image | read, write, resize | write, resize |
/// | read-only image, or a backing file | read | write, resize |
/// | writable data file | read, write, resize | resize |
/// | read-only data file | read | resize |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRole {
    /// The image the guest's disk is, opened for writing.
    WritableImage,
    /// The image opened read-only, or a file of its backing chain.
    ReadOnlyImage,
    /// An external data file the guest's writes go to.
    WritableDataFile,
    /// An external data file of a read-only disk.
    ReadOnlyDataFile,
}

impl LockRole {
    /// The permissions QEMU takes and shares on a file in this role.
    pub fn request(self) -> LockRequest {
        match self {
            LockRole::WritableImage => LockRequest::metadata_file(true),
            LockRole::ReadOnlyImage => LockRequest::metadata_file(false),
            LockRole::WritableDataFile => LockRequest::data_file(true, true),
            LockRole::ReadOnlyDataFile => LockRequest::data_file(false, false),
        }
    }
}

/// Sets (`F_RDLCK`), clears (`F_UNLCK`) or tests (`F_OFD_GETLK` with
/// `F_WRLCK`) the lock of one byte; returns the lock type found or set.
fn ofd_lock(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: i64,
) -> std::io::Result<libc::c_short> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: `fl` is a valid flock owned by this frame and the descriptor
    // is open for the call's duration; F_OFD_* take a pointer to a flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fl.l_type)
    }
}

/// Whether another open file description locks `byte`.
fn locked_by_another(file: &File, byte: i64) -> Result<bool> {
    ofd_lock(
        file,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    )
    .map(|t| t != libc::F_UNLCK as libc::c_short)
    .map_err(|source| Error::LockFailed { byte, source })
}

/// Tests `file` for locks of other users that forbid `request`, in the
/// order QEMU's `raw_check_lock_bytes` tests them.
pub fn check(file: &File, request: LockRequest) -> Result<()> {
    for bit in request.perm.bits() {
        if locked_by_another(file, SHARED_LOCK_BASE + i64::from(bit))? {
            return Err(Error::LockHeld {
                permission: perm_name(bit),
                shared: false,
            });
        }
    }
    for bit in Perms::ALL.without(request.shared).bits() {
        if locked_by_another(file, PERM_LOCK_BASE + i64::from(bit))? {
            return Err(Error::LockHeld {
                permission: perm_name(bit),
                shared: true,
            });
        }
    }
    Ok(())
}

/// Locks the bytes of `request` on `file` and unlocks those of `old` it
/// no longer needs.
fn apply(file: &File, request: LockRequest, old: Option<LockRequest>) -> Result<()> {
    for byte in request.bytes() {
        ofd_lock(
            file,
            libc::F_OFD_SETLK,
            libc::F_RDLCK as libc::c_short,
            byte,
        )
        .map_err(|source| Error::LockFailed { byte, source })?;
    }
    if let Some(old) = old {
        for byte in old.bytes().filter(|b| !request.bytes().any(|n| n == *b)) {
            ofd_lock(
                file,
                libc::F_OFD_SETLK,
                libc::F_UNLCK as libc::c_short,
                byte,
            )
            .map_err(|source| Error::LockFailed { byte, source })?;
        }
    }
    Ok(())
}

/// Takes the locks of `request` on `file` (whose open file description
/// then holds them until it is closed), after checking that no other user
/// forbids them. Nothing is left locked when it fails.
pub fn lock(file: &File, request: LockRequest) -> Result<()> {
    check(file, request)?;
    apply(file, request, None)
}

/// A file opened only to hold QEMU-compatible locks on it: they last until
/// the value is dropped.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
    held: LockRequest,
}

impl ImageLock {
    /// Opens `path` read-only and locks it for `request`.
    pub fn acquire(path: &Path, request: LockRequest) -> Result<ImageLock> {
        let file = File::open(path).map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        lock(&file, request)?;
        Ok(ImageLock {
            file,
            held: request,
        })
    }

    /// What the locks now say.
    pub fn held(&self) -> LockRequest {
        self.held
    }

    /// Widens the locks to cover `request` as well (a file opened again
    /// for more, as QEMU reopens a node): our own locks never conflict
    /// with themselves, since they share one open file description. On
    /// failure the locks stay as they were.
    pub fn extend(&mut self, request: LockRequest) -> Result<()> {
        let wanted = self.held.combined(request);
        if wanted == self.held {
            return Ok(());
        }
        check(&self.file, wanted)?;
        apply(&self.file, wanted, Some(self.held))?;
        self.held = wanted;
        Ok(())
    }

    /// The locked file (to compare identities).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("image");
        std::fs::write(&path, [0u8; 512]).expect("write temp file");
        (dir, path)
    }

    #[test]
    fn roles_lock_the_bytes_qemu_locks() {
        let bytes = |r: LockRole| r.request().bytes().collect::<Vec<_>>();
        assert_eq!(bytes(LockRole::WritableImage), [100, 101, 103, 201, 203]);
        assert_eq!(bytes(LockRole::ReadOnlyImage), [100, 201, 203]);
        assert_eq!(bytes(LockRole::WritableDataFile), [100, 101, 103, 203]);
        assert_eq!(bytes(LockRole::ReadOnlyDataFile), [100, 203]);
        let forced = LockRequest::metadata_file(false).force_shared();
        assert_eq!(forced.bytes().collect::<Vec<_>>(), [100]);
    }

    #[test]
    fn a_writer_shuts_out_readers_that_do_not_share_writes() {
        let (_dir, path) = temp_file();
        let _writer = ImageLock::acquire(&path, LockRequest::metadata_file(true)).unwrap();
        let err = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap_err();
        assert_eq!(err.to_string(), "Failed to get shared \"write\" lock");
        let err = ImageLock::acquire(&path, LockRequest::metadata_file(true)).unwrap_err();
        assert_eq!(err.to_string(), "Failed to get \"write\" lock");
        // -U reads anyway; a raw reader shares writes but not resizes,
        // which a metadata writer holds.
        ImageLock::acquire(&path, LockRequest::metadata_file(false).force_shared()).unwrap();
        let err = ImageLock::acquire(&path, LockRequest::data_file(false, false)).unwrap_err();
        assert_eq!(err.to_string(), "Failed to get shared \"resize\" lock");
    }

    #[test]
    fn readers_share_and_locks_end_with_the_holder() {
        let (_dir, path) = temp_file();
        let reader = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap();
        let _other = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap();
        assert!(ImageLock::acquire(&path, LockRequest::metadata_file(true)).is_err());
        drop(reader);
        drop(_other);
        ImageLock::acquire(&path, LockRequest::metadata_file(true)).unwrap();
    }

    #[test]
    fn extending_our_own_lock_does_not_conflict_with_itself() {
        let (_dir, path) = temp_file();
        let mut own = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap();
        own.extend(LockRequest::metadata_file(true)).unwrap();
        assert_eq!(own.held(), LockRequest::metadata_file(true));
        let err = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap_err();
        assert_eq!(err.to_string(), "Failed to get shared \"write\" lock");
    }

    #[test]
    fn a_refused_extension_keeps_the_old_locks() {
        let (_dir, path) = temp_file();
        let mut own = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap();
        let _other = ImageLock::acquire(&path, LockRequest::metadata_file(false)).unwrap();
        assert!(own.extend(LockRequest::metadata_file(true)).is_err());
        assert_eq!(own.held(), LockRequest::metadata_file(false));
    }
}
