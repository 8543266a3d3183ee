//! Opening images on the file system: format probing, backing chains with
//! names resolved against the image's folder, cycle and depth limits, and
//! external data files.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::{BlockRead, Extent, FileIndex, LayerFile, RawImage};
use crate::error::{Error, Result};
use crate::formats::{ForeignImage, ForeignLayer};
use crate::image::{Opener, Qcow2};
use crate::storage::{FileStorage, Storage};

/// Deepest backing chain accepted.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Image formats this crate opens (every format qemu-img probes is named
/// by [`crate::probe::Format`]; [`crate::probe::Format::readable`] maps the
/// readable ones here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// QCOW2.
    Qcow2,
    /// Raw.
    Raw,
    /// VHD (Virtual PC, Hyper-V's older format).
    Vpc,
    /// VirtualBox VDI.
    Vdi,
    /// VMware VMDK.
    Vmdk,
    /// QED.
    Qed,
    /// Hyper-V VHDX (read-only).
    Vhdx,
    /// A Bochs growing redolog (read only).
    Bochs,
    /// A LUKS1 volume (opened only with its password, see
    /// [`open_image_keyed`]).
    Luks,
}

impl Format {
    /// Parses a format name as qemu-img spells it.
    pub fn parse(name: &str) -> Result<Format> {
        match name {
            "qcow2" => Ok(Format::Qcow2),
            "raw" => Ok(Format::Raw),
            "vpc" => Ok(Format::Vpc),
            "vdi" => Ok(Format::Vdi),
            "vmdk" => Ok(Format::Vmdk),
            "qed" => Ok(Format::Qed),
            "vhdx" => Ok(Format::Vhdx),
            "luks" => Ok(Format::Luks),
            "bochs" => Ok(Format::Bochs),
            other => Err(Error::Unsupported(format!("Unknown driver '{other}'"))),
        }
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Vpc => "vpc",
            Format::Vdi => "vdi",
            Format::Vmdk => "vmdk",
            Format::Qed => "qed",
            Format::Vhdx => "vhdx",
            Format::Luks => "luks",
            Format::Bochs => "bochs",
        }
    }
}

/// Probes the format of the file at `path` (opened as `storage`) as
/// qemu-img does (see [`crate::probe`]) and returns the reader to open it
/// with; a format this crate cannot read is
/// [`Error::FormatNotReadable`], never raw.
pub fn probe(storage: &dyn Storage, path: &Path) -> Result<Format> {
    let name = path.to_string_lossy();
    let probed = crate::probe::probe_storage(storage, Some(&name))?;
    probed.readable().ok_or_else(|| Error::FormatNotReadable {
        path: name.into_owned(),
        format: probed,
    })
}

/// Opens a file as storage.
pub fn open_storage(path: &Path, writable: bool) -> Result<Arc<dyn Storage>> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    Ok(Arc::new(FileStorage::new(file)))
}

/// An I/O error's text without Rust's " (os error N)" suffix, as QEMU
/// prints strerror: "No such file or directory".
fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

/// Resolves a name recorded in an image against the image's folder.
pub fn resolve(dir: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Opens backing files and data files next to an image on disk.
pub struct FileOpener {
    dir: PathBuf,
    chain: Vec<PathBuf>,
    /// Every backing file opened through this opener or the openers it
    /// made for deeper layers, top first.
    opened: Arc<Mutex<Vec<PathBuf>>>,
    /// Passwords of encrypted layers by depth (0 the image itself).
    keys: Arc<Vec<Option<Vec<u8>>>>,
}

impl FileOpener {
    /// An opener for the image at `path`.
    pub fn for_image(path: &Path) -> FileOpener {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        FileOpener {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            chain: vec![canonical],
            opened: Arc::default(),
            keys: Arc::default(),
        }
    }

    /// This opener with the passwords of encrypted layers, by depth (0 the
    /// image itself, 1 its backing file, ...): backing files it opens are
    /// unlocked with theirs.
    pub fn with_keys(mut self, keys: Vec<Option<Vec<u8>>>) -> FileOpener {
        self.keys = Arc::new(keys);
        self
    }

    /// The backing files opened so far (the whole chain below the image,
    /// nearest first), as their names resolved against the folders of the
    /// images that name them. Callers that must lock every file a disk
    /// reads (as QEMU does) take the list from here.
    pub fn opened_backing_files(&self) -> Vec<PathBuf> {
        self.opened
            .lock()
            .expect("opener list lock poisoned")
            .clone()
    }
}

impl Opener for FileOpener {
    fn open_backing(&self, name: &str, format: Option<&str>) -> Result<Box<dyn BlockRead>> {
        let err = |reason: String| Error::Backing {
            name: name.to_string(),
            reason,
        };
        if self.chain.len() >= MAX_CHAIN_DEPTH {
            return Err(err(format!(
                "backing chain is deeper than {MAX_CHAIN_DEPTH}"
            )));
        }
        let target = crate::backing_name::target(&self.dir, name).map_err(|e| match e {
            e @ Error::Backing { .. } => e,
            e => err(e.to_string()),
        })?;
        let path = target.path.clone();
        let canonical = path.canonicalize().map_err(|e| {
            err(format!(
                "Could not open '{}': {}",
                path.display(),
                os_text(&e)
            ))
        })?;
        if self.chain.contains(&canonical) {
            return Err(err("backing chain contains a cycle".into()));
        }
        let storage = target.open_storage(false).map_err(|e| err(e.to_string()))?;
        self.opened
            .lock()
            .expect("opener list lock poisoned")
            .push(path.clone());
        let format = match target.format_or(format).map_err(|e| err(e.to_string()))? {
            Some(f) => f,
            None => probe(&*storage, &path)?,
        };
        let mut chain = self.chain.clone();
        chain.push(canonical);
        let opener = FileOpener {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            chain,
            opened: self.opened.clone(),
            keys: self.keys.clone(),
        };
        let keep_backing_error = |e| match e {
            e @ Error::Backing { .. } => e,
            e => err(e.to_string()),
        };
        match format {
            Format::Raw => Ok(Box::new(RawImage::new(storage)?)),
            Format::Qcow2 => {
                let image = Qcow2::open(storage, false, &opener).map_err(keep_backing_error)?;
                if let Some(Some(key)) = self.keys.get(self.chain.len()) {
                    image.unlock(key).map_err(|e| err(e.to_string()))?;
                }
                Ok(Box::new(image))
            }
            other => match open_foreign(other, storage, false, &path, Some(&opener)) {
                Ok(AnyImage::Foreign(_, image)) => Ok(Box::new(ForeignLayer(image))),
                Ok(_) => unreachable!("open_foreign opens foreign images"),
                Err(e) => Err(keep_backing_error(e)),
            },
        }
    }

    fn open_data_file(&self, name: &str, writable: bool) -> Result<Arc<dyn Storage>> {
        // QEMU opens the data file by its name as recorded, relative to the
        // working directory (not to the image's folder), and so do we.
        open_storage(Path::new(name), writable)
    }
}

/// An open image of either format.
pub enum AnyImage {
    /// A qcow2 image (boxed: it is much larger than a raw one).
    Qcow2(Box<Qcow2>),
    /// A raw image.
    Raw(RawImage),
    /// An image of another format (see [`crate::formats`]).
    Foreign(Format, Box<dyn ForeignImage>),
}

/// Opens `storage` as an image of `format`, one of [`crate::formats`],
/// and the backing file it names through `opener` (with the chain's
/// depth and cycle checks); without an opener the image reads as if it
/// had no backing file.
fn open_foreign(
    format: Format,
    storage: Arc<dyn Storage>,
    writable: bool,
    path: &Path,
    opener: Option<&FileOpener>,
) -> Result<AnyImage> {
    if format == Format::Luks {
        // A LUKS volume opens only with its key (open_image_keyed); its
        // header is checked first, as QEMU checks it.
        crate::crypto::volume::read_header(&*storage)?;
        return Err(Error::KeySecretRequired {
            option: "key-secret".into(),
        });
    }
    let files = crate::formats::dir_files::DirFiles::for_image(path);
    let mut image = crate::formats::open(format.name(), storage, writable, &files)
        .expect("every format other than qcow2 and raw is a foreign one")?;
    if let (Some(opener), Some(b)) = (opener, image.backing_file()) {
        let backing = opener.open_backing(&b.name, b.format)?;
        image.set_backing(backing);
    }
    Ok(AnyImage::Foreign(format, image))
}

impl AnyImage {
    /// The format.
    pub fn format(&self) -> Format {
        match self {
            AnyImage::Qcow2(_) => Format::Qcow2,
            AnyImage::Raw(_) => Format::Raw,
            AnyImage::Foreign(f, _) => *f,
        }
    }

    /// Writes guest bytes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        match self {
            AnyImage::Qcow2(q) => q.write_at(buf, offset),
            AnyImage::Raw(r) => r.write_at(buf, offset),
            AnyImage::Foreign(_, f) => f.write_at(buf, offset),
        }
    }

    /// The one file the image's own data extents (`ExtentKind::Data`
    /// outside an external data file) point into, when there is one (a
    /// raw image's is its storage: its extents' host offsets are guest
    /// offsets).
    pub fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        match self {
            AnyImage::Qcow2(q) => Some(q.file()),
            AnyImage::Raw(r) => Some(r.storage()),
            AnyImage::Foreign(_, f) => f.host_file(),
        }
    }

    /// Flushes.
    pub fn flush(&self) -> Result<()> {
        match self {
            AnyImage::Qcow2(q) => q.flush(),
            AnyImage::Raw(r) => r.storage().flush(),
            AnyImage::Foreign(_, f) => f.flush(),
        }
    }
}

impl BlockRead for AnyImage {
    fn virtual_size(&self) -> u64 {
        match self {
            AnyImage::Qcow2(q) => q.size(),
            AnyImage::Raw(r) => r.virtual_size(),
            AnyImage::Foreign(_, f) => f.virtual_size(),
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            AnyImage::Qcow2(q) => q.read_at(buf, offset),
            AnyImage::Raw(r) => r.read_at(buf, offset),
            AnyImage::Foreign(_, f) => f.read_at(buf, offset),
        }
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        match self {
            AnyImage::Qcow2(q) => q.extents(offset, len),
            AnyImage::Raw(r) => r.extents(offset, len),
            AnyImage::Foreign(_, f) => f.extents(offset, len),
        }
    }
    fn extents_for_io(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        match self {
            AnyImage::Qcow2(q) => q.extents_for_io(offset, len, out),
            AnyImage::Raw(r) => r.extents_for_io(offset, len, out),
            AnyImage::Foreign(_, f) => f.extents_for_io(offset, len, out),
        }
    }
    fn backing(&self) -> Option<&dyn BlockRead> {
        match self {
            AnyImage::Qcow2(q) => q.backing_image(),
            AnyImage::Raw(_) => None,
            AnyImage::Foreign(_, f) => f.backing(),
        }
    }
    fn format_name(&self) -> &'static str {
        self.format().name()
    }
    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        match self {
            AnyImage::Qcow2(q) => q.extent_file(file),
            AnyImage::Raw(r) => r.extent_file(file),
            AnyImage::Foreign(_, f) => f.extent_file(file),
        }
    }
    fn file_holes_are_data(&self) -> bool {
        match self {
            AnyImage::Foreign(_, f) => f.file_holes_are_data(),
            AnyImage::Qcow2(_) | AnyImage::Raw(_) => false,
        }
    }
    fn asks_file_about_data(&self, file: FileIndex) -> bool {
        match self {
            AnyImage::Foreign(_, f) => f.asks_file_about_data(file),
            AnyImage::Qcow2(q) => q.asks_file_about_data(file),
            AnyImage::Raw(_) => false,
        }
    }
    fn status_boundary(&self, offset: u64) -> Option<u64> {
        match self {
            AnyImage::Qcow2(q) => q.status_boundary(offset),
            AnyImage::Raw(_) | AnyImage::Foreign(..) => None,
        }
    }
    fn hides_host_offsets(&self) -> bool {
        match self {
            AnyImage::Qcow2(q) => q.hides_host_offsets(),
            // QEMU's luks driver answers block status as a format without
            // its own: data, no offset.
            AnyImage::Foreign(Format::Luks, _) => true,
            AnyImage::Raw(_) | AnyImage::Foreign(..) => false,
        }
    }
}

/// Opens the image at `path` with the given format (probed if `None`).
pub fn open_image(path: &Path, format: Option<Format>, writable: bool) -> Result<AnyImage> {
    let storage = open_storage(path, writable)?;
    let format = match format {
        Some(f) => f,
        None => probe(&*storage, path)?,
    };
    match format {
        Format::Raw => Ok(AnyImage::Raw(RawImage::new(storage)?)),
        Format::Qcow2 => Ok(AnyImage::Qcow2(Box::new(Qcow2::open(
            storage,
            writable,
            &FileOpener::for_image(path),
        )?))),
        other => open_foreign(
            other,
            storage,
            writable,
            path,
            Some(&FileOpener::for_image(path)),
        ),
    }
}

/// [`open_image`] of an encrypted image or chain: `keys` holds the
/// passwords of its layers by depth (0 the image itself).
pub fn open_image_keyed(
    path: &Path,
    format: Option<Format>,
    writable: bool,
    keys: Vec<Option<Vec<u8>>>,
) -> Result<AnyImage> {
    let storage = open_storage(path, writable)?;
    let format = match format {
        Some(f) => f,
        None => probe(&*storage, path)?,
    };
    match format {
        Format::Qcow2 => {
            let top = keys.first().cloned().flatten();
            let opener = FileOpener::for_image(path).with_keys(keys);
            let image = Qcow2::open(storage, writable, &opener)?;
            if let Some(key) = top {
                image.unlock(&key)?;
            }
            Ok(AnyImage::Qcow2(Box::new(image)))
        }
        Format::Luks => match keys.first().cloned().flatten() {
            Some(key) => Ok(AnyImage::Foreign(
                Format::Luks,
                Box::new(crate::crypto::LuksVolume::open(storage, &key)?),
            )),
            None => open_image(path, Some(format), writable),
        },
        _ => open_image(path, Some(format), writable),
    }
}

/// [`open_image_keyed`] that also names the backing files it opened (the
/// whole chain below the image, nearest first), for callers that lock
/// every file an image reads, as QEMU does.
pub fn open_image_listing_backing(
    path: &Path,
    format: Option<Format>,
    writable: bool,
    keys: Vec<Option<Vec<u8>>>,
) -> Result<(AnyImage, Vec<PathBuf>)> {
    let storage = open_storage(path, writable)?;
    open_listing_backing_on(storage, path, format, writable, keys)
}

/// [`open_image_listing_backing`] of the file at `path` opened as
/// `storage` already (a file under a layer such as blkdebug): backing and
/// data files are found next to `path`.
pub fn open_listing_backing_on(
    storage: Arc<dyn Storage>,
    path: &Path,
    format: Option<Format>,
    writable: bool,
    keys: Vec<Option<Vec<u8>>>,
) -> Result<(AnyImage, Vec<PathBuf>)> {
    let format = match format {
        Some(f) => f,
        None => probe(&*storage, path)?,
    };
    let top = keys.first().cloned().flatten();
    let opener = FileOpener::for_image(path).with_keys(keys);
    let image = match format {
        Format::Raw => AnyImage::Raw(RawImage::new(storage)?),
        Format::Qcow2 => {
            let image = Qcow2::open(storage, writable, &opener)?;
            if let Some(key) = top {
                image.unlock(&key)?;
            }
            AnyImage::Qcow2(Box::new(image))
        }
        other => open_foreign(other, storage, writable, path, Some(&opener))?,
    };
    Ok((image, opener.opened_backing_files()))
}

/// Opens the image at `path` read-only without its backing file (which
/// reads as absent), as qemu-img info opens each image of a chain
/// (`BDRV_O_NO_BACKING`): for what an image's own metadata says.
pub fn open_image_no_backing(path: &Path, format: Option<Format>) -> Result<AnyImage> {
    open_image_without_backing(path, format, false)
}

/// [`open_image_no_backing`], for writing too when `writable`: what
/// `rebase -u` changes needs only the image's own metadata, so a backing
/// file that is missing or unreadable does not matter.
pub fn open_image_without_backing(
    path: &Path,
    format: Option<Format>,
    writable: bool,
) -> Result<AnyImage> {
    let storage = open_storage(path, writable)?;
    let format = match format {
        Some(f) => f,
        None => probe(&*storage, path)?,
    };
    match format {
        Format::Raw => Ok(AnyImage::Raw(RawImage::new(storage)?)),
        Format::Qcow2 => {
            let hc = crate::image::read_header_cluster(&*storage)?;
            let data_file = match hc.data_file() {
                Some(name) if hc.header.has_data_file() => {
                    Some(FileOpener::for_image(path).open_data_file(name, writable)?)
                }
                _ => None,
            };
            Ok(AnyImage::Qcow2(Box::new(Qcow2::open_parts(
                storage, hc, writable, None, data_file,
            )?)))
        }
        other => open_foreign(other, storage, writable, path, None),
    }
}

/// Opens an image for writing with qemu's `cache=unsafe`: its flushes
/// skip waiting for the disk (the default for `qemu-img convert` targets).
pub fn open_image_unsafe_cache(path: &Path, format: Format) -> Result<AnyImage> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::unsafe_cache(file));
    match format {
        Format::Raw => Ok(AnyImage::Raw(RawImage::new(storage)?)),
        Format::Qcow2 => Ok(AnyImage::Qcow2(Box::new(Qcow2::open(
            storage,
            true,
            &FileOpener::for_image(path),
        )?))),
        other => open_foreign(
            other,
            storage,
            true,
            path,
            Some(&FileOpener::for_image(path)),
        ),
    }
}
