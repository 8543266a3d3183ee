//! [`SideFiles`] on the file system: the files an image names (vmdk
//! extents) resolved against the image's folder, as QEMU resolves them,
//! and refused when they lie outside it (an absolute name, a `..`
//! component, or a symbolic link leading out).

use std::path::{Component, Path, PathBuf};

use super::{invalid, NamedFile, SideFiles};
use crate::error::{Error, Result};
use crate::fs::open_storage;

/// The files next to the image at a path.
pub struct DirFiles {
    image: PathBuf,
    dir: PathBuf,
}

impl DirFiles {
    /// The side files of the image at `image`.
    pub fn for_image(image: &Path) -> DirFiles {
        DirFiles {
            image: image.to_path_buf(),
            dir: image.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn canonical_dir(&self) -> Result<PathBuf> {
        let dir = if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.dir
        };
        dir.canonicalize()
            .map_err(|e| Error::io(format!("Could not open '{}'", dir.display()), e))
    }

    /// The path `name` names, refused outside the image's folder.
    fn resolve(&self, name: &str) -> Result<PathBuf> {
        let relative = Path::new(name);
        let inside = !name.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(invalid(
                "vmdk",
                "extent file name",
                name.len() as u64,
                "names a file outside the descriptor's folder",
            ));
        }
        Ok(self.dir.join(relative))
    }

    fn named(
        &self,
        path: PathBuf,
        storage: std::sync::Arc<dyn crate::storage::Storage>,
    ) -> Result<NamedFile> {
        let canonical = path
            .canonicalize()
            .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
        if !canonical.starts_with(self.canonical_dir()?) {
            return Err(invalid(
                "vmdk",
                "extent file name",
                0,
                "leads outside the descriptor's folder",
            ));
        }
        Ok(NamedFile {
            storage,
            name: path.display().to_string(),
            identity: canonical.display().to_string(),
        })
    }
}

impl SideFiles for DirFiles {
    fn image_name(&self) -> String {
        self.image.display().to_string()
    }

    fn image_identity(&self) -> String {
        self.image
            .canonicalize()
            .unwrap_or_else(|_| self.image.clone())
            .display()
            .to_string()
    }

    fn open(&self, name: &str, writable: bool) -> Result<NamedFile> {
        let path = self.resolve(name)?;
        let storage = open_storage(&path, writable)?;
        self.named(path, storage)
    }

    fn create(&self, name: &str) -> Result<NamedFile> {
        let path = self.resolve(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(format!("Could not create '{}'", path.display()), e))?;
        self.named(
            path,
            std::sync::Arc::new(crate::storage::FileStorage::new(file)),
        )
    }
}
