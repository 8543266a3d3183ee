//! Where an installer's files are read from: an ISO 9660 image (through
//! the `iso9660` crate) or an install tree on the host (a folder laid out
//! as a disc is: `install.amd/`, `casper/`, `images/pxeboot/`, `boot/`),
//! as virt-install's `--location` takes either. [`BootTree`] is what the
//! kernel search in [`super::disc`] needs of both.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use iso9660::{Entry, IsoImage, ReadAt};

use super::error::InstallError;

/// The files of an installer, by `/`-separated paths from its root.
pub trait BootTree {
    /// A file found in the tree.
    type File: Clone;

    /// The regular file at `path`, if there is one.
    fn find_file(&self, path: &str) -> Result<Option<Self::File>, InstallError>;

    /// A whole file of at most `max_bytes` as text (invalid UTF-8
    /// replaced).
    fn read_text(&self, file: &Self::File, max_bytes: u64) -> Result<String, InstallError>;

    /// Copies a file of at most `max_bytes` into `out`.
    fn copy(
        &self,
        file: &Self::File,
        out: &mut dyn Write,
        max_bytes: u64,
    ) -> Result<(), InstallError>;

    /// The volume label (`LABEL=` on installers' command lines).
    fn volume_id(&self) -> String;
}

/// An ISO 9660 image and the name messages give it.
#[derive(Debug)]
pub struct IsoTree<R> {
    /// The opened image.
    pub iso: IsoImage<R>,
    /// The image's path, for messages.
    pub name: String,
}

impl<R: ReadAt> IsoTree<R> {
    fn bad(&self, e: iso9660::IsoError) -> InstallError {
        InstallError::Disc {
            disc: self.name.clone(),
            reason: e.to_string(),
        }
    }
}

impl<R: ReadAt> BootTree for IsoTree<R> {
    type File = Entry;

    fn find_file(&self, path: &str) -> Result<Option<Entry>, InstallError> {
        Ok(self
            .iso
            .lookup(path)
            .map_err(|e| self.bad(e))?
            .filter(|e| !e.is_dir))
    }

    fn read_text(&self, file: &Entry, max_bytes: u64) -> Result<String, InstallError> {
        let bytes = self
            .iso
            .read_file(file, max_bytes)
            .map_err(|e| self.bad(e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn copy(&self, file: &Entry, out: &mut dyn Write, max_bytes: u64) -> Result<(), InstallError> {
        self.iso
            .copy_file(file, &mut WriteRef(out), max_bytes)
            .map(|_| ())
            .map_err(|e| self.bad(e))
    }

    fn volume_id(&self) -> String {
        self.iso.volume_id().to_string()
    }
}

/// `&mut dyn Write` as a sized writer.
struct WriteRef<'a>(&'a mut dyn Write);

impl Write for WriteRef<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// An install tree on the host. Paths stay inside it: `..` components
/// are refused, and a file must be a regular file (symbolic links are
/// followed, as a copied-out disc's would be).
#[derive(Debug, Clone)]
pub struct FolderTree {
    /// The tree's root.
    pub root: PathBuf,
}

/// A file of a [`FolderTree`]: its host path and size when found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderFile {
    /// Its path on the host.
    pub path: PathBuf,
    /// Its size when it was found.
    pub size: u64,
}

impl FolderTree {
    fn io(path: &Path, e: &std::io::Error) -> InstallError {
        InstallError::Io {
            path: path.display().to_string(),
            reason: crate::vm::commands::define::os_reason(e),
        }
    }

    fn open_bounded(
        &self,
        file: &FolderFile,
        max_bytes: u64,
    ) -> Result<std::io::Take<std::fs::File>, InstallError> {
        let opened = std::fs::File::open(&file.path).map_err(|e| Self::io(&file.path, &e))?;
        let size = opened
            .metadata()
            .map_err(|e| Self::io(&file.path, &e))?
            .len();
        if size > max_bytes {
            return Err(InstallError::Io {
                path: file.path.display().to_string(),
                reason: format!("{size} bytes is over the limit of {max_bytes}"),
            });
        }
        // The file may grow while it is read: read no more than allowed.
        Ok(opened.take(max_bytes))
    }
}

impl BootTree for FolderTree {
    type File = FolderFile;

    fn find_file(&self, path: &str) -> Result<Option<FolderFile>, InstallError> {
        let relative = Path::new(path.trim_start_matches('/'));
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(InstallError::Option {
                option: "--location",
                reason: format!("'{}' leaves the install tree", path.escape_debug()),
            });
        }
        let full = self.root.join(relative);
        match std::fs::metadata(&full) {
            Ok(meta) if meta.is_file() => Ok(Some(FolderFile {
                path: full,
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(20) => Ok(None), // ENOTDIR
            Err(e) => Err(Self::io(&full, &e)),
        }
    }

    fn read_text(&self, file: &FolderFile, max_bytes: u64) -> Result<String, InstallError> {
        let mut bytes = Vec::new();
        self.open_bounded(file, max_bytes)?
            .read_to_end(&mut bytes)
            .map_err(|e| Self::io(&file.path, &e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn copy(
        &self,
        file: &FolderFile,
        out: &mut dyn Write,
        max_bytes: u64,
    ) -> Result<(), InstallError> {
        let mut reader = self.open_bounded(file, max_bytes)?;
        std::io::copy(&mut reader, out).map_err(|e| Self::io(&file.path, &e))?;
        Ok(())
    }

    /// A folder has no label: its name stands in for one.
    fn volume_id(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_tree_finds_files_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("casper")).unwrap();
        std::fs::write(dir.path().join("casper/vmlinuz"), b"kernel").unwrap();
        let tree = FolderTree {
            root: dir.path().to_path_buf(),
        };
        let kernel = tree.find_file("/casper/vmlinuz").unwrap().unwrap();
        assert_eq!(kernel.size, 6);
        assert_eq!(tree.read_text(&kernel, 6).unwrap(), "kernel");
        assert!(tree
            .read_text(&kernel, 5)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        assert_eq!(tree.find_file("/casper").unwrap(), None);
        assert_eq!(tree.find_file("/casper/vmlinuz/x").unwrap(), None);
        assert_eq!(tree.find_file("/missing").unwrap(), None);
        let err = tree.find_file("/../etc/passwd").unwrap_err().to_string();
        assert!(err.contains("leaves the install tree"), "{err}");
        let mut out = Vec::new();
        tree.copy(&kernel, &mut out, 100).unwrap();
        assert_eq!(out, b"kernel");
    }
}
