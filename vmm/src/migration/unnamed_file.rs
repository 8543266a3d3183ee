//! Files that get their name only once complete: a copied image is
//! created unnamed in its folder (O_TMPFILE) and linked to its path at
//! the switch, so a destination killed during the copy leaves nothing
//! behind. Where the file system has no O_TMPFILE the file is created
//! under its path at once (and removed by the caller on failure).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A file being written for `path`.
pub struct PendingFile {
    /// The open file.
    pub file: File,
    /// Whether it has no name yet ([`PendingFile::link`] gives it one).
    pub unnamed: bool,
}

/// Creates the file for `path`, unnamed if the file system can; fails
/// with `AlreadyExists` when something is at `path` already.
pub fn create(path: &Path) -> io::Result<PendingFile> {
    if path.symlink_metadata().is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
    {
        Ok(file) => Ok(PendingFile {
            file,
            unnamed: true,
        }),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
            ) =>
        {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)?;
            Ok(PendingFile {
                file,
                unnamed: false,
            })
        }
        Err(e) => Err(e),
    }
}

impl PendingFile {
    /// Gives an unnamed file its name `path` (never replacing anything:
    /// `AlreadyExists` if something took the path meanwhile).
    pub fn link(&self, path: &Path) -> io::Result<()> {
        if !self.unnamed {
            return Ok(());
        }
        let source = std::ffi::CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .map_err(io::Error::other)?;
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("a path holding NUL"))?;
        // SAFETY: both pointers are to NUL-terminated strings that live
        // across the call; linkat reads them and keeps nothing.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                source.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Makes the name of `path` durable: syncs the folder holding it (a
/// new file's name, or a link, is on stable storage only once its folder
/// is).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_name_is_synced_through_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        sync_parent(&dir.path().join("image.qcow2")).expect("sync the folder");
        let missing = dir.path().join("gone").join("image.qcow2");
        assert!(sync_parent(&missing).is_err(), "no such folder");
    }

    #[test]
    fn an_unnamed_file_appears_only_when_linked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut pending = create(&path).unwrap();
        pending.file.write_all(b"data").unwrap();
        assert_eq!(path.exists(), !pending.unnamed);
        pending.link(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert_eq!(
            create(&path).err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        if pending.unnamed {
            assert_eq!(
                pending.link(&path).unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
        }
        let gone = dir.path().join("never-linked");
        let never = create(&gone).unwrap();
        let unnamed = never.unnamed;
        drop(never);
        assert_eq!(gone.exists(), !unnamed);
    }
}
