//! What every image layer offers to the layer above it: guest-visible reads
//! and a description of where each guest range lives.
//!
//! A qcow2 image's backing file is a `dyn BlockRead`, so chains mix qcow2
//! and raw layers freely. [`RawImage`] is the raw layer.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Which of a layer's files holds an extent's bytes: an index into the
/// layer's list of files, which [`BlockRead::extent_file`] hands out.
///
/// Index 0 is always the layer's own image file. What the others are is
/// the layer's to say: a qcow2 image's external data file is
/// [`FileIndex::QCOW2_DATA_FILE`]; a vmdk names each extent in a file of
/// its own by the extent's position in the descriptor, plus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FileIndex(pub u32);

impl FileIndex {
    /// The layer's own image file.
    pub const IMAGE: FileIndex = FileIndex(0);
    /// A qcow2 image's external data file.
    pub const QCOW2_DATA_FILE: FileIndex = FileIndex(1);

    /// Whether this is the layer's own image file.
    pub fn is_image(self) -> bool {
        self == FileIndex::IMAGE
    }
}

/// One of a layer's files, as [`BlockRead::extent_file`] hands it out.
#[derive(Clone)]
pub struct LayerFile {
    /// The file's storage (a path or descriptor for io_uring comes from
    /// [`Storage::as_file`] where the storage has one).
    pub storage: Arc<dyn Storage>,
    /// Its name as qemu-img shows it (`map`'s file column), when the
    /// layer knows it.
    pub name: Option<String>,
}

impl LayerFile {
    /// The answer of a layer whose data extents are all in its own file,
    /// `storage`, stored as the guest sees them: that file for
    /// [`FileIndex::IMAGE`], nothing else.
    pub fn own(storage: &Arc<dyn Storage>, file: FileIndex) -> Option<LayerFile> {
        file.is_image().then(|| LayerFile {
            storage: storage.clone(),
            name: None,
        })
    }
}

impl std::fmt::Debug for LayerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where a guest range of one layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data stored at `host_offset` of one of this layer's files.
    Data {
        /// Byte offset in the file.
        host_offset: u64,
        /// Which of the layer's files holds the bytes.
        file: FileIndex,
    },
    /// Compressed data: the whole guest cluster decompresses from
    /// `compressed_len` bytes at `host_offset`.
    Compressed {
        /// Byte offset of the compressed data.
        host_offset: u64,
        /// Bytes to read.
        compressed_len: u64,
    },
    /// Reads as zero at this layer (a zero cluster or a hole of a raw
    /// file); `host_offset` is a preallocated cluster, if any.
    Zero {
        /// Preallocated host offset of this range, if any.
        host_offset: Option<u64>,
    },
    /// Not allocated at this layer: the backing file shows through.
    /// `host_offset` is set for an unallocated subcluster of an allocated
    /// cluster (extended L2), as QEMU reports it.
    Unallocated {
        /// Host offset reserved for this range, if any.
        host_offset: Option<u64>,
    },
}

/// A guest range of one layer and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First guest byte.
    pub guest_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where it lives.
    pub kind: ExtentKind,
}

/// Guest-visible read access to one image layer.
pub trait BlockRead: Send + Sync {
    /// Virtual disk size in bytes.
    fn virtual_size(&self) -> u64;
    /// Reads guest bytes; the range must lie within the virtual size.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Describes `[offset, offset+len)` at this layer, in order, covering
    /// the whole range (at least the first extent; callers loop).
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
    /// Appends to `out` where `[offset, offset+len)` lives, for reading it
    /// (at least the first extent; callers loop): as [`BlockRead::extents`],
    /// except that a layer may skip asking its files where their holes are
    /// (a flat extent's whole range is then `Data`, its holes read as zeros
    /// from the file), which costs system calls on every request. `img map`
    /// asks [`BlockRead::extents`], as qemu-img does.
    fn extents_for_io(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        out.extend(self.extents(offset, len)?);
        Ok(())
    }
    /// The layer below, if any.
    fn backing(&self) -> Option<&dyn BlockRead>;
    /// The format name ("qcow2", "raw").
    fn format_name(&self) -> &'static str;
    /// The file `file` names in this layer's `ExtentKind::Data` extents,
    /// or `None` when the layer has no such file or does not hand it out:
    /// then its data extents must be read through the layer (an
    /// encrypted volume's bytes in its file are not the guest's).
    fn extent_file(&self, _file: FileIndex) -> Option<LayerFile> {
        None
    }
    /// Whether QEMU's driver for this layer reports its file's holes as
    /// data and then asks the file, which says zero, so that qemu-img's
    /// map shows them as `"data": true, "zero": true`: the layer's zero
    /// extents with a host offset (vmdk's flat extents) and the holes
    /// inside its data extents (a static vdi's blocks). False for a raw
    /// layer and for qcow2's preallocated zero clusters, which qemu-img
    /// shows without data.
    fn file_holes_are_data(&self) -> bool {
        false
    }
    /// Whether QEMU's driver asks file `file` where its holes are inside
    /// this layer's data extents that lie in it (`BDRV_BLOCK_RECURSE`),
    /// so that qemu-img's map shows those holes as `"data": true,
    /// "zero": true`. By default the whole layer answers alike
    /// ([`BlockRead::file_holes_are_data`]); a vmdk answers per extent,
    /// asking for its flat extents' files and not its sparse ones'.
    fn asks_file_about_data(&self, _file: FileIndex) -> bool {
        self.file_holes_are_data()
    }
    /// Where one block-status answer of QEMU's driver for this layer that
    /// starts at `offset` ends at the latest, whatever the extents: a
    /// qcow2 image answers within one L2 table. `None`: the extents alone
    /// decide.
    fn status_boundary(&self, _offset: u64) -> Option<u64> {
        None
    }
    /// Whether QEMU's driver for this layer gives no host offsets in its
    /// block status (an encrypted qcow2 image).
    fn hides_host_offsets(&self) -> bool {
        false
    }
}

/// Checks that a guest request lies within the disk.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// The unit QEMU sizes block devices in.
pub const SECTOR_SIZE: u64 = 512;

/// A raw image: guest offset equals file offset.
pub struct RawImage {
    storage: Arc<dyn Storage>,
    size: u64,
}

impl RawImage {
    /// A raw image over `storage`, sized as the storage is rounded up to
    /// whole 512-byte sectors, as QEMU sizes a raw image (the tail past
    /// the end of the file reads as zeros).
    pub fn new(storage: Arc<dyn Storage>) -> Result<RawImage> {
        let size = storage.len()?.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        Ok(RawImage { storage, size })
    }

    /// The storage beneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Writes guest bytes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.storage.write_at(buf, offset)
    }
}

impl BlockRead for RawImage {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.storage.read_at(buf, offset)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let (data, n) = self.storage.data_extent(offset, len)?;
        let n = n.clamp(1, len);
        let kind = if data {
            ExtentKind::Data {
                host_offset: offset,
                file: FileIndex::IMAGE,
            }
        } else {
            ExtentKind::Zero {
                host_offset: Some(offset),
            }
        };
        Ok(vec![Extent {
            guest_offset: offset,
            len: n,
            kind,
        }])
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        None
    }

    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        LayerFile::own(&self.storage, file)
    }
}

/// A guest range resolved through a whole backing chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainExtent {
    /// First guest byte.
    pub guest_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Layer that decides the contents: 0 is the top.
    pub depth: u32,
    /// Whether some layer allocates the range (a zero or data cluster, a
    /// raw file); false where the chain ends or a backing file is shorter.
    pub allocated: bool,
    /// What that layer has there; `Unallocated` only when no layer has it
    /// (it reads as zero).
    pub kind: ExtentKind,
}

/// Describes `[offset, offset+len)` of `top` through its backing chain (at
/// least the first extent; callers loop).
pub fn chain_extents(top: &dyn BlockRead, offset: u64, len: u64) -> Result<Vec<ChainExtent>> {
    let mut out = Vec::new();
    chain_extents_at(top, offset, len, 0, &mut out)?;
    Ok(out)
}

fn chain_extents_at(
    layer: &dyn BlockRead,
    offset: u64,
    len: u64,
    depth: u32,
    out: &mut Vec<ChainExtent>,
) -> Result<()> {
    for e in layer.extents(offset, len)? {
        match (e.kind, layer.backing()) {
            (ExtentKind::Unallocated { .. }, Some(backing)) => {
                let bsize = backing.virtual_size();
                let mut pos = e.guest_offset;
                let end = e.guest_offset + e.len;
                while pos < end.min(bsize) {
                    let before = out.len();
                    chain_extents_at(backing, pos, end.min(bsize) - pos, depth + 1, out)?;
                    let Some(last) = out.last() else { break };
                    if out.len() == before {
                        break;
                    }
                    pos = last.guest_offset + last.len;
                }
                if end > bsize && pos < end {
                    // Past the end of the backing file: zeros, decided here.
                    let start = pos.max(bsize);
                    out.push(ChainExtent {
                        guest_offset: start,
                        len: end - start,
                        depth,
                        allocated: false,
                        kind: ExtentKind::Zero { host_offset: None },
                    });
                }
            }
            (kind, _) => out.push(ChainExtent {
                guest_offset: e.guest_offset,
                len: e.len,
                depth,
                allocated: !matches!(kind, ExtentKind::Unallocated { .. }),
                kind,
            }),
        }
    }
    Ok(())
}

/// Whether `[offset, offset+len)` of `top` reads as zero by the chain's
/// block status, as QEMU's qcow2 `is_zero` asks it before zeroing a whole
/// cluster for part of one: zero clusters, raw holes, ranges no layer
/// allocates and ranges past a shorter backing file's end are zero; data
/// is not, even where it holds zero bytes, unless its layer asks its file
/// about holes there ([`BlockRead::asks_file_about_data`]) and the file
/// has one. The range is clamped to the disk's size; an empty one is zero.
pub fn chain_reads_zero(top: &dyn BlockRead, offset: u64, len: u64) -> Result<bool> {
    let end = offset.saturating_add(len).min(top.virtual_size());
    let mut pos = offset;
    while pos < end {
        let extents = chain_extents(top, pos, end - pos)?;
        let Some(last) = extents.last() else {
            return Ok(false);
        };
        let next = last.guest_offset + last.len;
        for e in &extents {
            if !chain_extent_reads_zero(top, e)? {
                return Ok(false);
            }
        }
        if next <= pos {
            return Ok(false);
        }
        pos = next;
    }
    Ok(true)
}

fn chain_extent_reads_zero(top: &dyn BlockRead, e: &ChainExtent) -> Result<bool> {
    match e.kind {
        ExtentKind::Zero { .. } | ExtentKind::Unallocated { .. } => Ok(true),
        ExtentKind::Compressed { .. } => Ok(false),
        ExtentKind::Data { host_offset, file } => {
            let mut layer = top;
            for _ in 0..e.depth {
                match layer.backing() {
                    Some(below) => layer = below,
                    None => return Ok(false),
                }
            }
            if !layer.asks_file_about_data(file) {
                return Ok(false);
            }
            let Some(layer_file) = layer.extent_file(file) else {
                return Ok(false);
            };
            let mut done = 0;
            while done < e.len {
                let (data, n) = layer_file
                    .storage
                    .data_extent(host_offset + done, e.len - done)?;
                if data || n == 0 {
                    return Ok(false);
                }
                done += n;
            }
            Ok(true)
        }
    }
}
