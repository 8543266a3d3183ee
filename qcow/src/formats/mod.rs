//! Every image format but raw, one module each at the same depth: qcow2,
//! ours natively ([`qcow2`]), and the formats of other hypervisors (VHD
//! "vpc", VDI, VMDK, QED, VHDX, and Bochs read only) behind one interface: [`ForeignImage`]
//! (guest reads and writes, where each guest range lives, the fields
//! `img info` shows, and a check where qemu-img has one for the format).
//!
//! Like the qcow2 code, these modules do no I/O of their own: they work
//! through [`Storage`]. Every table size read from a file is bounded by the
//! file's length and by a named constant before it sizes an allocation.

pub mod bochs;
pub mod dir_files;
pub mod qcow2;
pub mod qed;
pub mod vdi;
pub mod vhdx;
pub mod vmdk;
pub mod vpc;

use std::sync::Arc;

use crate::device::BlockRead;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Most blocks, grains or clusters one `extents` call walks (callers
/// loop), so that a call on a hostile image with tiny blocks and a huge
/// disk stays short.
pub(crate) const MAX_EXTENT_STEPS: usize = 65536;

/// Appends `len` bytes at `guest_offset` of `kind` to `out`, lengthening
/// the last extent instead when this one continues it (same kind, and for
/// data the next host byte of the same file).
pub(crate) fn push_extent(
    out: &mut Vec<crate::device::Extent>,
    guest_offset: u64,
    len: u64,
    kind: crate::device::ExtentKind,
) {
    use crate::device::{Extent, ExtentKind};
    if let Some(last) = out.last_mut() {
        let continues = match (last.kind, kind) {
            (
                ExtentKind::Data {
                    host_offset: a,
                    file: fa,
                },
                ExtentKind::Data {
                    host_offset: b,
                    file: fb,
                },
            ) => fa == fb && a + last.len == b,
            (ExtentKind::Unallocated { .. }, ExtentKind::Unallocated { .. }) => true,
            (ExtentKind::Zero { host_offset: None }, ExtentKind::Zero { host_offset: None }) => {
                true
            }
            _ => false,
        };
        if continues {
            last.len += len;
            return;
        }
    }
    out.push(Extent {
        guest_offset,
        len,
        kind,
    });
}

/// What `check` found in an image of a format with a check (qemu's
/// `BdrvCheckResult`, the parts these formats fill).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Lines qemu prints to stderr as it finds problems.
    pub messages: Vec<String>,
    /// Corruptions found.
    pub corruptions: u64,
    /// Clusters in the file that nothing uses.
    pub leaks: u64,
    /// Clusters (blocks) in use (reported when `total_clusters` is set).
    pub allocated_clusters: u64,
    /// Clusters (blocks) the disk has; 0 when the format's check does not
    /// count them.
    pub total_clusters: u64,
    /// Allocated clusters not following the previous one in the file.
    pub fragmented_clusters: u64,
    /// Corruptions repaired (a vhdx log replayed on open).
    pub corruptions_fixed: u64,
    /// The errno qemu's check returns when it stops at what it found
    /// (after printing `messages`): qemu-img then prints `Check failed:`
    /// and the errno's text instead of a summary. `None`: it ran through.
    pub stopped_errno: Option<i32>,
}

impl CheckReport {
    /// Counts a corruption and keeps its message.
    pub fn corrupt(&mut self, message: String) {
        self.messages.push(message);
        self.corruptions += 1;
    }
}

/// An open image of one of the formats of this module.
pub trait ForeignImage: BlockRead {
    /// Writes guest bytes (allocating blocks as the format does).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// The image file.
    fn storage(&self) -> &Arc<dyn Storage>;
    /// The one file every `ExtentKind::Data` host offset of this image
    /// points into, or `None` when its data lives in several files (a
    /// vmdk with extent files of their own). Convert reads its holes as
    /// zeros without reading them.
    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        None
    }
    /// The allocation unit `img info` shows as `cluster_size`, if the
    /// format reports one.
    fn cluster_size(&self) -> Option<u64>;
    /// Whether every write is compressed (a streamOptimized vmdk, QEMU's
    /// `needs_compressed_writes`): a writer's time goes to compression,
    /// so more writers than cores only hold more memory.
    fn compresses_writes(&self) -> bool {
        false
    }
    /// Whether threads may write parts of one allocation unit
    /// ([`Self::cluster_size`]) at once: the unit is allocated once, under
    /// a lock, and no write rewrites the whole unit (no copy-on-write from
    /// a backing file). Convert then splits its work finer than a unit.
    fn concurrent_partial_unit_writes(&self) -> bool {
        false
    }
    /// Checks the image, or `None` when qemu-img has no check for the
    /// format ("This image format does not support checks").
    fn check(&self) -> Option<Result<CheckReport>>;
    /// Whether the image says it was not closed cleanly (`dirty-flag`).
    fn is_dirty(&self) -> bool {
        false
    }
    /// The `format-specific` data `img info` shows, if the format has any.
    fn format_specific(&self) -> Option<InfoValue> {
        None
    }
    /// The files the image uses besides its own (vmdk extents), as `img
    /// info` lists them: child name, file name, storage.
    fn side_files(&self) -> Vec<(String, String, Arc<dyn Storage>)> {
        Vec::new()
    }
    /// The files the image uses besides its own, as QEMU locks them:
    /// file name and whether the format keeps metadata in it (vmdk's
    /// sparse extents; its flat extents hold guest data only).
    fn side_file_roles(&self) -> Vec<(String, bool)> {
        Vec::new()
    }
    /// The backing file the image names, if any (vmdk's
    /// `parentFileNameHint`, qed's backing file name).
    fn backing_file(&self) -> Option<BackingFile> {
        None
    }
    /// Records a new backing file name (`None`: no backing file), as
    /// `rebase` does; only formats whose QEMU driver can change it (qed)
    /// support it.
    fn set_backing_name(&self, _name: Option<&str>, _format: Option<&str>) -> Result<()> {
        Err(crate::error::Error::Unsupported(
            "Operation not supported".to_string(),
        ))
    }
    /// Gives the image the backing layer it names, read where the image
    /// has no data of its own. Formats without backing files ignore it.
    fn set_backing(&mut self, _backing: Box<dyn BlockRead>) {}
}

/// A backing file named by an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    /// The name as recorded (resolved against the image's folder).
    pub name: String,
    /// The format the image records for it; `None` means probe it.
    pub format: Option<&'static str>,
}

/// Reads `buf.len()` guest bytes at `offset` from `backing`: zeros where
/// there is no backing layer or past its end (as QEMU reads an overlay
/// larger than its backing file).
pub(crate) fn read_backing(
    backing: Option<&dyn BlockRead>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let have = match backing {
        Some(b) => {
            let n = b
                .virtual_size()
                .saturating_sub(offset)
                .min(buf.len() as u64) as usize;
            if n > 0 {
                b.read_at(&mut buf[..n], offset)?;
            }
            n
        }
        None => 0,
    };
    buf[have..].fill(0);
    Ok(())
}

/// The whole allocation unit `[unit_start, unit_start + unit_len)` as it
/// must be written when a write of `part` at `offset` inside it lands on
/// an unallocated unit of an image with a backing layer: the backing
/// layer's bytes with `part` laid over them (QEMU's copy-on-write).
pub(crate) fn copy_on_write_unit(
    backing: &dyn BlockRead,
    unit_start: u64,
    unit_len: u64,
    part: &[u8],
    offset: u64,
) -> Result<Vec<u8>> {
    let mut unit = vec![0u8; unit_len as usize];
    read_backing(Some(backing), &mut unit, unit_start)?;
    let at = (offset - unit_start) as usize;
    unit[at..at + part.len()].copy_from_slice(part);
    Ok(unit)
}

/// A value of a format's `img info` section (mirrors QEMU's QObjects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoValue {
    /// An unsigned number.
    UInt(u64),
    /// A string.
    Str(String),
    /// A flag.
    Bool(bool),
    /// A list.
    List(Vec<InfoValue>),
    /// Named members, in the order they are put.
    Dict(Vec<(&'static str, InfoValue)>),
}

/// A file an image names besides its own, opened.
pub struct NamedFile {
    /// Its storage.
    pub storage: Arc<dyn Storage>,
    /// Its name as `img info` shows it (resolved against the image's
    /// folder, as QEMU resolves it).
    pub name: String,
    /// What makes two names the same file (a canonical path).
    pub identity: String,
}

/// Opens and creates the files an image names (vmdk extents), where the
/// image is. Implementations refuse names outside the image's folder.
pub trait SideFiles: Send + Sync {
    /// The image's own name, as given.
    fn image_name(&self) -> String;
    /// The image's identity (see [`NamedFile::identity`]).
    fn image_identity(&self) -> String;
    /// Opens the file `name` names.
    fn open(&self, name: &str, writable: bool) -> Result<NamedFile>;
    /// Creates (or truncates) the file `name` names.
    fn create(&self, name: &str) -> Result<NamedFile>;
}

/// Builds the error for a field of a foreign image that is out of range.
pub(crate) fn invalid(
    format: &'static str,
    field: &'static str,
    value: u64,
    reason: &'static str,
) -> Error {
    Error::InvalidFormatField {
        format,
        field,
        value,
        reason,
    }
}

/// Sixteen bytes that differ from call to call (for image UUIDs; not
/// cryptographic). Seeded by the standard library's per-process random
/// keys and the clock.
pub(crate) fn random_uuid() -> [u8; 16] {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let state = std::collections::hash_map::RandomState::new();
    let a = state.hash_one(nanos);
    let b = state.hash_one(a ^ 0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    // RFC 4122 version 4, variant 1.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// Makes the file at least `len` bytes long, the rest reading as zeros.
///
/// Write paths use this rather than [`Storage::set_len`]: a byte written
/// at the end extends the file as `ftruncate` would, with the positioned
/// write a sandboxed VMM already allows its disk threads (the VMM's
/// seccomp filter has no `ftruncate`).
pub(crate) fn grow_to(storage: &dyn Storage, len: u64) -> Result<()> {
    if len > 0 && storage.len()? < len {
        storage.write_at(&[0], len - 1)?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a table of `len` bytes at `offset`, after checking that it lies
/// inside the file and under `max_len` bytes.
pub(crate) fn read_table(
    storage: &dyn Storage,
    format: &'static str,
    table: &'static str,
    offset: u64,
    len: u64,
    max_len: u64,
) -> Result<Vec<u8>> {
    if len > max_len {
        return Err(invalid(
            format,
            table,
            len,
            "table is larger than supported",
        ));
    }
    let file_len = storage.len()?;
    match offset.checked_add(len) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(invalid(
                format,
                table,
                offset,
                "table lies past the end of the file",
            ))
        }
    }
    let mut buf = vec![0u8; len as usize];
    storage.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// Opens an image of one of this module's formats, by its qemu-img name
/// ("vpc", "vdi"); `None` for a name that is not one of them.
pub fn open(
    name: &str,
    storage: Arc<dyn Storage>,
    writable: bool,
    files: &dyn SideFiles,
) -> Option<Result<Box<dyn ForeignImage>>> {
    fn boxed<T: ForeignImage + 'static>(r: Result<T>) -> Result<Box<dyn ForeignImage>> {
        r.map(|image| Box::new(image) as Box<dyn ForeignImage>)
    }
    Some(match name {
        vpc::FORMAT => boxed(vpc::Vpc::open(storage, writable)),
        vdi::FORMAT => boxed(vdi::Vdi::open(storage, writable)),
        vmdk::FORMAT => boxed(vmdk::Vmdk::open(storage, writable, files)),
        qed::FORMAT => boxed(qed::Qed::open(storage, writable)),
        vhdx::FORMAT => boxed(vhdx::Vhdx::open(storage, writable)),
        bochs::FORMAT => boxed(bochs::Bochs::open(storage, writable)),
        _ => return None,
    })
}

/// A foreign image as a backing layer (`dyn BlockRead`).
pub struct ForeignLayer(pub Box<dyn ForeignImage>);

impl BlockRead for ForeignLayer {
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read_at(buf, offset)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.0.extents(offset, len)
    }
    fn extents_for_io(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<crate::device::Extent>,
    ) -> Result<()> {
        self.0.extents_for_io(offset, len, out)
    }
    fn backing(&self) -> Option<&dyn BlockRead> {
        self.0.backing()
    }
    fn format_name(&self) -> &'static str {
        self.0.format_name()
    }
    fn extent_file(&self, file: crate::device::FileIndex) -> Option<crate::device::LayerFile> {
        self.0.extent_file(file)
    }
    fn file_holes_are_data(&self) -> bool {
        self.0.file_holes_are_data()
    }
    fn asks_file_about_data(&self, file: crate::device::FileIndex) -> bool {
        self.0.asks_file_about_data(file)
    }
}
