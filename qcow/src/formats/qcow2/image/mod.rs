//! An open qcow2 image.
//!
//! [`Qcow2`] offers two levels of API. The high level ([`Qcow2::read_at`],
//! [`Qcow2::write_at`], [`Qcow2::write_zeroes`], [`Qcow2::discard`],
//! [`Qcow2::flush`]) reads and writes guest bytes. The low level
//! ([`Qcow2::extents`] for reads, [`Qcow2::begin_write`] /
//! [`Qcow2::finish_write`] for writes) hands out host extents so that a
//! caller can move data itself, with several requests in flight: metadata
//! is guarded by one lock that is never held across data I/O.

mod amend;
mod areas;
mod bitmap_tracking;
mod compressed;
mod corruption;
mod crypt;
mod empty;
mod meta;
mod metadata_prealloc;
mod partial_zero;
mod read;
mod resize;
mod snapshot;
mod subcluster_zero;
mod vmstate;
mod vmstate_map;
mod vmstate_sink;
mod write;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::cache::TableCache;
use crate::device::{BlockRead, Extent, FileIndex, LayerFile};
use crate::entries::Geometry;
use crate::error::{Error, Result};
use crate::extensions::HeaderCluster;
use crate::header::{
    CompressionType, AUTOCLEAR_KNOWN, INCOMPAT_DIRTY, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
};
use crate::refcount::Refcounts;
use crate::storage::Storage;

pub use amend::{amend, amend_with_progress, AmendOptions};

pub use corruption::Notice;
pub use snapshot::MAX_SNAPSHOT_NAME;
pub use vmstate::{vm_state_offset, VmStateInfo, VmStateWriter};
pub use vmstate_map::{VmStateMap, MAX_MAP_PIECES};
pub use write::{HostPiece, WritePlan};

use meta::{Meta, L2_CACHE_BYTES};

/// Opens the files an image refers to: its backing file and its external
/// data file. Implemented for the file system by [`crate::fs::FileOpener`].
pub trait Opener {
    /// Opens the backing file `name` (as recorded in the image) read-only,
    /// with its recorded format if any.
    fn open_backing(&self, name: &str, format: Option<&str>) -> Result<Box<dyn BlockRead>>;
    /// Opens the external data file `name`.
    fn open_data_file(&self, name: &str, writable: bool) -> Result<Arc<dyn Storage>>;
}

/// An opener for images that must not refer to other files.
pub struct NoFiles;

impl Opener for NoFiles {
    fn open_backing(&self, name: &str, _format: Option<&str>) -> Result<Box<dyn BlockRead>> {
        Err(Error::Backing {
            name: name.to_string(),
            reason: "backing files are not available here".into(),
        })
    }
    fn open_data_file(&self, name: &str, _writable: bool) -> Result<Arc<dyn Storage>> {
        Err(Error::Backing {
            name: name.to_string(),
            reason: "external data files are not available here".into(),
        })
    }
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: Arc<dyn Storage>,
    data_file: Option<Arc<dyn Storage>>,
    backing: Option<Box<dyn BlockRead>>,
    geo: Geometry,
    compression: CompressionType,
    writable: bool,
    size: std::sync::atomic::AtomicU64,
    meta: Mutex<Meta>,
    inflight_done: Condvar,
    decompressed: Mutex<Option<(u64, Vec<u8>)>>,
    /// The data cipher of an encrypted image, once unlocked.
    cipher: std::sync::OnceLock<crate::crypto::ImageCipher>,
    /// Set once corruption was signalled on this writable image; it then
    /// writes nothing more ([`corruption`]).
    corruption_signaled: std::sync::atomic::AtomicBool,
    /// What operations that succeeded reported ([`corruption::Notice`]).
    notices: Mutex<corruption::Notices>,
    /// The persistent bitmaps of an image open for writing, marked by
    /// every guest write and stored on close (see [`bitmap_tracking`]).
    bitmaps: Mutex<Option<crate::bitmap::Tracking>>,
    /// Whether `bitmaps` holds anything (spares writes the lock).
    tracks_bitmaps: std::sync::atomic::AtomicBool,
    /// Whether the image looks preallocated with metadata, decided at the
    /// first ask ([`metadata_prealloc`]).
    metadata_prealloc: std::sync::OnceLock<bool>,
}

/// Reads the first cluster of a qcow2 file and validates it.
pub fn read_header_cluster(file: &dyn Storage) -> Result<HeaderCluster> {
    let file_len = file.len()?;
    let mut start = [0u8; 24];
    file.read_at(&mut start, 0)?;
    if file_len < 72 {
        // Let the magic check speak first for files that are not qcow2.
        let magic = u32::from_be_bytes([start[0], start[1], start[2], start[3]]);
        if magic != crate::header::QCOW_MAGIC {
            return Err(Error::BadMagic { magic });
        }
        return Err(Error::TooShort { len: file_len });
    }
    let cluster_bits = u32::from_be_bytes([start[20], start[21], start[22], start[23]]);
    let bits = cluster_bits.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    let len = (1u64 << bits).min(file_len).max(72) as usize;
    let mut buf = vec![0u8; len];
    file.read_at(&mut buf, 0)?;
    HeaderCluster::parse(&buf, file_len)
}

impl Qcow2 {
    /// Opens an image, resolving its backing file and data file through
    /// `opener`.
    pub fn open(file: Arc<dyn Storage>, writable: bool, opener: &dyn Opener) -> Result<Qcow2> {
        let hc = read_header_cluster(&*file)?;
        let data_file = if hc.header.has_data_file() {
            let name = hc.data_file().ok_or(Error::InvalidField {
                field: "incompatible_features",
                value: hc.header.incompatible_features,
                reason: "external data file bit set without a data file name",
            })?;
            Some(opener.open_data_file(name, writable)?)
        } else {
            None
        };
        let backing = match &hc.backing_file {
            Some(name) => Some(opener.open_backing(name, hc.backing_format())?),
            None => None,
        };
        Self::open_parts(file, hc, writable, backing, data_file)
    }

    /// Opens an image whose header was already read, with its backing and
    /// data file supplied by the caller.
    pub fn open_parts(
        file: Arc<dyn Storage>,
        mut hc: HeaderCluster,
        writable: bool,
        backing: Option<Box<dyn BlockRead>>,
        data_file: Option<Arc<dyn Storage>>,
    ) -> Result<Qcow2> {
        let h = &hc.header;
        if writable && h.is_corrupt() {
            return Err(Error::CorruptImage);
        }
        if h.has_data_file() && data_file.is_none() {
            return Err(Error::Unsupported(
                "image needs its external data file".into(),
            ));
        }
        crypt::validate(&*file, &hc)?;
        let file_len = file.len()?;
        let geo = Geometry {
            cluster_bits: h.cluster_bits,
            extended_l2: h.extended_l2(),
            data_file: h.has_data_file(),
            version: h.version,
        };
        if writable && h.is_dirty() {
            // Refcounts may be stale (lazy refcounts): repair before use.
            repair_dirty(&*file, data_file.as_deref())?;
            hc = read_header_cluster(&*file)?;
            hc.header.incompatible_features &= !INCOMPAT_DIRTY;
        }
        let h = &hc.header;
        let l1 = Meta::read_l1(&*file, h.l1_table_offset, h.l1_size)?;
        let rc = Refcounts::load(
            &*file,
            h.cluster_bits,
            h.refcount_order,
            h.refcount_table_offset,
            h.refcount_table_clusters.into(),
        )?;
        let cs = h.cluster_size() as usize;
        let size = h.size;
        let compression = h.compression_type;
        let mut header_dirty = false;
        let mut tracking = None;
        if writable {
            // Bitmaps in force are kept up to date as QEMU keeps them; a
            // directory that cannot be read is dropped as below.
            tracking = crate::bitmap::Tracking::begin(&*file, &hc).ok().flatten();
            let kept = if tracking.is_some() {
                AUTOCLEAR_KNOWN | crate::header::AUTOCLEAR_BITMAPS
            } else {
                AUTOCLEAR_KNOWN
            };
            let autoclear = hc.header.autoclear_features;
            if autoclear & !kept != 0 {
                // We do not maintain these: clear them before the first
                // write so their owners know our writes went untracked.
                hc.header.autoclear_features = autoclear & kept;
                header_dirty = true;
            }
            if hc.header.incompatible_features & INCOMPAT_DIRTY != 0 {
                hc.header.incompatible_features &= !INCOMPAT_DIRTY;
                header_dirty = true;
            }
        }
        let mut meta = Meta {
            hc,
            geo,
            l1,
            l1_dirty: BTreeSet::new(),
            l2: TableCache::new(cs, L2_CACHE_BYTES / cs),
            rc,
            inflight: HashSet::new(),
            header_dirty: false,
            file_len_at_open: file_len,
            compressed_cursor: 0,
            data_file: data_file.clone(),
            replaced: Vec::new(),
            l1_unsynced: false,
            l1_unreferenced: false,
        };
        if header_dirty {
            meta.write_header(&*file)?;
        }
        Ok(Qcow2 {
            file,
            data_file,
            backing,
            geo,
            compression,
            writable,
            size: size.into(),
            meta: Mutex::new(meta),
            inflight_done: Condvar::new(),
            decompressed: Mutex::new(None),
            cipher: std::sync::OnceLock::new(),
            corruption_signaled: std::sync::atomic::AtomicBool::new(false),
            notices: Mutex::new(corruption::Notices::default()),
            tracks_bitmaps: tracking.is_some().into(),
            metadata_prealloc: std::sync::OnceLock::new(),
            bitmaps: Mutex::new(tracking),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().expect("metadata lock poisoned")
    }

    /// The table geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    /// A copy of the current header cluster.
    pub fn header_cluster(&self) -> HeaderCluster {
        self.lock().hc.clone()
    }

    /// The image file's storage.
    pub fn file(&self) -> &Arc<dyn Storage> {
        &self.file
    }

    /// The external data file's storage, if any.
    pub fn data_file(&self) -> Option<&Arc<dyn Storage>> {
        self.data_file.as_ref()
    }

    /// The file this image's data clusters are in: the external data file
    /// when there is one, else the image file.
    pub(crate) fn data_file_index(&self) -> FileIndex {
        if self.data_file.is_some() {
            FileIndex::QCOW2_DATA_FILE
        } else {
            FileIndex::IMAGE
        }
    }

    /// The storage of one of this image's files (see [`FileIndex`]): the
    /// image file, or the external data file.
    pub fn file_storage(&self, file: FileIndex) -> Option<&Arc<dyn Storage>> {
        match file {
            FileIndex::IMAGE => Some(&self.file),
            FileIndex::QCOW2_DATA_FILE => self.data_file.as_ref(),
            _ => None,
        }
    }

    /// The backing image, if any.
    pub fn backing_image(&self) -> Option<&dyn BlockRead> {
        self.backing.as_deref()
    }

    /// Whether the image was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Compression type of compressed clusters.
    pub fn compression_type(&self) -> CompressionType {
        self.compression
    }

    /// Virtual disk size.
    pub fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly)
        }
    }

    /// Makes every completed write durable, metadata in dependency order.
    pub fn flush(&self) -> Result<()> {
        if !self.writable || self.is_dead() {
            return Ok(());
        }
        if let Some(df) = &self.data_file {
            df.flush()?;
        }
        let freed = {
            let mut meta = self.lock();
            // A revert's old tree, if one was left, is freed in the same
            // flush.
            self.free_replaced(&mut meta)?;
            let freed = meta.flush(&*self.file)?;
            self.file.flush()?;
            freed
        };
        let cs = self.cluster_size();
        for c in freed {
            self.file.discard(c * cs, cs)?;
        }
        Ok(())
    }

    /// A flush that leaves the data to the caller when that is all there
    /// is: with no metadata to write back it does no I/O and returns
    /// `Ok(false)`, and the caller makes the data durable itself (syncing
    /// the image file and the data file, for example asynchronously);
    /// otherwise it flushes as [`Qcow2::flush`] does, data included, and
    /// returns `Ok(true)`. Read-only images have nothing to flush
    /// (`Ok(true)`).
    ///
    /// The first such flush after a deferred revert
    /// ([`Qcow2::apply_snapshot_deferring_free`]) writes the revert's
    /// refcounts and header with the guest's own metadata (two syncs in
    /// all) and leaves the replaced tree to free for later
    /// ([`Qcow2::free_replaced_trees`] or the next flush: a crash before
    /// leaks it), so the guest's flush waits for no more than its own
    /// data needs.
    pub fn flush_metadata(&self) -> Result<bool> {
        if !self.writable {
            return Ok(true);
        }
        let mut meta = self.lock();
        if meta.is_clean() {
            return Ok(false);
        }
        if !meta.l1_unreferenced || self.is_dead() {
            drop(meta);
            return self.flush().map(|()| true);
        }
        let flushed = meta.flush_with(&*self.file, false)?;
        meta.forget_freed_tables(&flushed.freed);
        if !flushed.synced {
            self.file.flush()?;
        }
        drop(meta);
        let cs = self.cluster_size();
        for c in flushed.freed {
            self.file.discard(c * cs, cs)?;
        }
        Ok(true)
    }

    /// Stores the tracked bitmaps (if any), flushes and consumes the
    /// image.
    pub fn close(self) -> Result<()> {
        self.store_tracked_bitmaps()?;
        self.flush()
    }

    /// Sets the backing file name and format recorded in the header (the
    /// contents are not touched: this is `rebase -u`).
    pub fn set_backing_name(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        self.check_writable()?;
        let mut meta = self.lock();
        meta.hc.backing_file = name.map(str::to_owned);
        meta.hc.set_string_extension(
            crate::extensions::EXT_BACKING_FORMAT,
            format.filter(|_| name.is_some()),
        );
        meta.write_header(&*self.file)
    }
}

/// Rebuilds the refcounts of an image left dirty by lazy refcounts, as
/// QEMU does on open for writing.
fn repair_dirty(file: &dyn Storage, data_file: Option<&dyn Storage>) -> Result<()> {
    let report = crate::check::check(file, data_file, crate::check::Repair::All)?;
    if let Some(reason) = report.aborted {
        return Err(Error::Corrupt(format!(
            "repairing the dirty image failed: {reason}"
        )));
    }
    if report.corruptions > report.corruptions_fixed {
        return Err(Error::Corrupt(
            "the dirty image has corruptions that repair could not fix".into(),
        ));
    }
    Ok(())
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.store_tracked_bitmaps();
            let _ = self.flush();
        }
    }
}

impl BlockRead for Qcow2 {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Qcow2::read_at(self, buf, offset)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Qcow2::extents(self, offset, len)
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        self.backing.as_deref()
    }

    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        let name = match file {
            FileIndex::QCOW2_DATA_FILE => self.lock().hc.data_file().map(str::to_string),
            _ => None,
        };
        self.file_storage(file).map(|storage| LayerFile {
            storage: storage.clone(),
            name,
        })
    }

    /// QEMU's qcow2 driver asks the file about its data clusters' host
    /// ranges only in an image it finds preallocated with metadata
    /// ([`Qcow2::metadata_preallocation`]), and never in an encrypted one
    /// (no host offset is given out).
    fn asks_file_about_data(&self, _file: FileIndex) -> bool {
        !self.is_encrypted() && self.metadata_preallocation()
    }

    /// QEMU's qcow2 driver answers from one L2 table (its cache's slice,
    /// a whole table by default): its answer ends with the table.
    fn status_boundary(&self, offset: u64) -> Option<u64> {
        let table_span = self.geo.cluster_size() * self.geo.l2_entries();
        Some((offset / table_span + 1).saturating_mul(table_span))
    }

    /// QEMU's qcow2 driver gives no host offset for an encrypted image.
    fn hides_host_offsets(&self) -> bool {
        self.is_encrypted()
    }
}
