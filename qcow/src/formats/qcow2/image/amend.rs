//! Changing an existing image's format options (`img amend`), with the
//! conditions and messages of `qemu-img amend`.
//!
//! [`amend`] checks every condition before it changes anything, so a
//! refused amendment leaves the file as it was. The steps then run in
//! QEMU's order (upgrade, refcount width, names, lazy refcounts, size,
//! downgrade), each on a freshly opened image and each leaving a
//! consistent file behind, so a crash between steps loses nothing either.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Opener, Qcow2};
use crate::check::c_alt_hex;
use crate::entries::{encode_normal, RawL2, FLAG_ZERO, OFFSET_MASK};
use crate::error::{Error, Result};
use crate::extensions::{default_feature_names, Extension, EXT_DATA_FILE};
use crate::header::{
    CompressionType, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE,
    INCOMPAT_DIRTY, V2_HEADER_LEN, V3_HEADER_LEN,
};
use crate::storage::Storage;

/// What [`amend`] changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// Format version: 2 (compat=0.10) or 3 (compat=1.1).
    pub version: Option<u32>,
    /// The lazy_refcounts compatible feature.
    pub lazy_refcounts: Option<bool>,
    /// Refcount width as a power of two (refcount_bits = 1 << order).
    pub refcount_order: Option<u32>,
    /// New backing file name.
    pub backing_file: Option<String>,
    /// New backing file format.
    pub backing_fmt: Option<String>,
    /// New external data file name (only for images that have one).
    pub data_file: Option<String>,
    /// New virtual size in bytes.
    pub size: Option<u64>,
}

fn refused(msg: impl Into<String>) -> Error {
    Error::AmendRefused(msg.into())
}

/// Applies `opts` to the qcow2 image in `file` (opened through `opener`
/// for its backing and data files).
pub fn amend(file: Arc<dyn Storage>, opener: &dyn Opener, opts: &AmendOptions) -> Result<()> {
    amend_with_progress(file, opener, opts, &mut |_, _| {})
}

/// QEMU's qcow2_amend_helper_cb: one progress figure over several
/// operations, each reporting `(done, total)` of its own; the operations
/// not yet started are projected at the size of those seen so far.
struct AmendProgress<'a> {
    status: &'a mut dyn FnMut(u64, u64),
    operations: u64,
    completed: u64,
    offset_completed: u64,
    current: u32,
    last: u32,
    last_work: u64,
}

impl AmendProgress<'_> {
    fn report(&mut self, offset: u64, work: u64) {
        if self.current != self.last {
            if self.last != 0 {
                self.offset_completed += self.last_work;
                self.completed += 1;
            }
            self.last = self.current;
        }
        self.last_work = work;
        let current_work = self.offset_completed + work;
        let projected =
            current_work * (self.operations - self.completed - 1) / (self.completed + 1);
        (self.status)(self.offset_completed + offset, current_work + projected);
    }
}

/// [`amend`], calling `status(done, total)` as QEMU's amend reports its
/// progress (the version upgrade and the refcount width change report
/// theirs; the other steps are quick).
pub fn amend_with_progress(
    file: Arc<dyn Storage>,
    opener: &dyn Opener,
    opts: &AmendOptions,
    status: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let image = Qcow2::open(file.clone(), true, opener)?;
    let hc = image.header_cluster();
    let h = &hc.header;
    let old_version = h.version;
    let new_version = opts.version.unwrap_or(old_version);
    let new_order = opts.refcount_order.unwrap_or(h.refcount_order);

    // Every condition first: a refused amendment changes nothing.
    if opts.lazy_refcounts == Some(true) && new_version < 3 {
        return Err(refused(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use \
             compat=1.1 or greater)",
        ));
    }
    if new_version < 3 && new_order != 4 {
        return Err(refused(if opts.refcount_order.is_some() {
            "Refcount widths other than 16 bits require compatibility level 1.1 or above (use \
             compat=1.1 or greater)"
        } else {
            "compat=0.10 requires refcount_bits=16"
        }));
    }
    if opts.data_file.is_some() && !h.has_data_file() {
        return Err(refused(
            "data-file can only be set for images that use an external data file",
        ));
    }
    let downgrade = new_version < old_version;
    if downgrade {
        if h.has_data_file() {
            return Err(refused("Cannot downgrade an image with a data file"));
        }
        let left = h.incompatible_features & !(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION);
        if left != 0 {
            return Err(refused(format!(
                "Cannot downgrade an image with incompatible features {left:#x} set"
            )));
        }
        if h.compression_type == CompressionType::Zstd && image.has_compressed_clusters()? {
            return Err(refused(
                "Cannot downgrade an image with zstd compression type and existing compressed \
                 clusters",
            ));
        }
        if hc.has_bitmaps() {
            return Err(refused("Cannot downgrade an image with bitmaps"));
        }
    }
    if let Some(name) = &opts.backing_file {
        if name.len() > crate::header::MAX_BACKING_NAME as usize {
            return Err(Error::InvalidOption {
                option: "backing_file",
                value: name.clone(),
                reason: "name longer than 1023 bytes",
            });
        }
    }

    let reopen = |image: Qcow2| -> Result<Qcow2> {
        image.close()?;
        Qcow2::open(file.clone(), true, opener)
    };
    let mut progress = AmendProgress {
        status,
        operations: u64::from(new_version != old_version)
            + u64::from(new_order != h.refcount_order),
        completed: 0,
        offset_completed: 0,
        current: 0,
        last: 0,
        last_work: 0,
    };
    let mut image = image;
    if new_version > old_version {
        progress.current = 1;
        progress.report(0, 2);
        image.upgrade()?;
        progress.report(1, 2);
        progress.report(2, 2);
        image = reopen(image)?;
    }
    if new_order != image.header_cluster().header.refcount_order {
        image.close()?;
        progress.current = 2;
        crate::check::change_refcount_order_with_progress(&*file, new_order, &mut |o, t| {
            progress.report(o, t)
        })?;
        image = Qcow2::open(file.clone(), true, opener)?;
    }
    if let Some(name) = &opts.data_file {
        image.set_data_file_name(name)?;
    }
    // As qcow2_amend_options: backing options may only restate the
    // current name and format (both, as given); `rebase` changes them.
    // The changes above stay, as QEMU has written them by now.
    if opts.backing_file.is_some() || opts.backing_fmt.is_some() {
        let hc = image.header_cluster();
        if opts.backing_file != hc.backing_file
            || opts.backing_fmt.as_deref() != hc.backing_format()
        {
            image.close()?;
            return Err(refused(
                "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
            ));
        }
    }
    if let Some(lazy) = opts.lazy_refcounts {
        image.set_lazy_refcounts(lazy)?;
    }
    if let Some(size) = opts.size {
        image.resize(size, crate::create::Preallocation::Off)?;
    }
    if downgrade {
        image.downgrade()?;
    }
    image.close()
}

impl Qcow2 {
    /// Whether any L2 table of the active image or a snapshot holds a
    /// compressed cluster.
    fn has_compressed_clusters(&self) -> Result<bool> {
        let mut found = false;
        self.visit_l2_tables(&mut |_, table, geo| {
            let extended = geo.extended_l2;
            for i in 0..geo.l2_entries() as usize {
                if RawL2::get(table, i, extended).entry & crate::entries::FLAG_COMPRESSED != 0 {
                    found = true;
                }
            }
        })?;
        Ok(found)
    }

    /// Calls `f` once for every distinct L2 table of the active image and
    /// of every snapshot, with the table's offset and contents, after
    /// writing out all metadata.
    fn visit_l2_tables(
        &self,
        f: &mut dyn FnMut(u64, &[u8], crate::entries::Geometry),
    ) -> Result<()> {
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let mut l1s = vec![meta.l1.clone()];
        for s in self.read_snapshot_table(&meta)? {
            s.validate_l1(self.cluster_size())?;
            l1s.push(self.read_l1_table(s.l1_table_offset, s.l1_size)?);
        }
        let cs = self.cluster_size();
        let mut seen = HashSet::new();
        for l1 in l1s {
            for (index, e) in l1.into_iter().enumerate() {
                let l2_offset = e & OFFSET_MASK;
                if l2_offset == 0 || !seen.insert(l2_offset) {
                    continue;
                }
                if !l2_offset.is_multiple_of(cs) {
                    return Err(self.corruption(format!(
                        "L2 table offset {l2_offset:#x} unaligned (L1 index: {})",
                        c_alt_hex(index as u64)
                    )));
                }
                if l2_offset + cs > meta.host_limit() {
                    return Err(Error::InvalidEntry {
                        what: "L1",
                        index: index as u64,
                        offset: l2_offset,
                        reason: "L2 table is not aligned or lies beyond the end of the file",
                    });
                }
                meta.load_l2(&*self.file, l2_offset)?;
                let table = meta
                    .l2
                    .get(l2_offset)
                    .expect("table was just loaded")
                    .to_vec();
                f(l2_offset, &table, self.geo);
            }
        }
        Ok(())
    }

    /// compat=0.10 -> 1.1: a version 3 header with the feature name table;
    /// snapshot entries get the disk size version 3 requires.
    fn upgrade(&self) -> Result<()> {
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let mut snapshots = self.read_snapshot_table(&meta)?;
        let size = self.size();
        let mut rewrite = false;
        for s in &mut snapshots {
            if s.disk_size.is_none() || s.extra_data_size < 16 {
                s.disk_size.get_or_insert(size);
                rewrite = true;
            }
        }
        if rewrite {
            self.replace_snapshot_table(&mut meta, &snapshots)?;
        }
        let h = &mut meta.hc.header;
        h.version = 3;
        h.header_length = V3_HEADER_LEN;
        h.incompatible_features = 0;
        h.compatible_features = 0;
        h.autoclear_features = 0;
        h.compression_type = CompressionType::Zlib;
        h.extra_fields.clear();
        meta.hc
            .extensions
            .retain(|e| !matches!(e, Extension::FeatureNames(_)));
        meta.hc
            .extensions
            .push(Extension::FeatureNames(default_feature_names()));
        meta.write_header(&*self.file)
    }

    /// compat=1.1 -> 0.10, after [`amend`] checked the conditions: zero
    /// clusters (which version 2 lacks) are expanded, then the header is
    /// rewritten as version 2.
    fn downgrade(&self) -> Result<()> {
        self.expand_zero_clusters()
            .map_err(|e| e.during("Failed to turn zero into data clusters"))?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let h = &mut meta.hc.header;
        h.version = 2;
        h.header_length = V2_HEADER_LEN;
        h.incompatible_features = 0;
        h.compatible_features = 0;
        h.autoclear_features = 0;
        h.compression_type = CompressionType::Zlib;
        h.extra_fields.clear();
        meta.hc
            .extensions
            .retain(|e| e.ext_type() == crate::extensions::EXT_BACKING_FORMAT);
        meta.write_header(&*self.file)
    }

    /// Replaces every zero cluster, in the active image and in snapshots:
    /// one that owns its host cluster alone keeps it, zero-filled; any
    /// other becomes unallocated when there is no backing file to show
    /// through, else a newly allocated zero-filled cluster.
    fn expand_zero_clusters(&self) -> Result<()> {
        let cs = self.cluster_size();
        let file = self.file.clone();
        let has_backing = self.backing.is_some();
        let zeros = vec![0u8; cs as usize];
        // Refcounts and allocation go through the metadata, which the visit
        // holds locked; collect what to do first.
        let mut plans: Vec<(u64, usize, u64, u64)> = Vec::new();
        // The first zero cluster whose preallocated offset is unaligned,
        // which QEMU reports as corruption before writing anything to it.
        let mut unaligned: Option<(u64, u64, usize)> = None;
        self.visit_l2_tables(&mut |l2_offset, table, geo| {
            for i in 0..geo.l2_entries() as usize {
                let entry = RawL2::get(table, i, geo.extended_l2).entry;
                if entry & crate::entries::FLAG_COMPRESSED == 0 && entry & FLAG_ZERO != 0 {
                    let host = entry & OFFSET_MASK;
                    if !host.is_multiple_of(cs) && unaligned.is_none() {
                        unaligned = Some((host, l2_offset, i));
                    }
                    plans.push((l2_offset, i, entry, host));
                }
            }
        })?;
        if let Some((host, l2_offset, index)) = unaligned {
            return Err(self.corruption(format!(
                "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                c_alt_hex(host),
                c_alt_hex(l2_offset),
                c_alt_hex(index as u64)
            )));
        }
        if plans.is_empty() {
            return Ok(());
        }
        {
            let meta = self.lock();
            let mut meta = self.quiesce(meta)?;
            let mut replacements: Vec<(u64, usize, u64)> = Vec::new();
            for (l2_offset, index, entry, host) in plans {
                let owned = host != 0 && meta.rc.get(&*file, host / cs)? == 1;
                let new = if owned {
                    file.write_at(&zeros, host)?;
                    entry & !FLAG_ZERO
                } else {
                    if host != 0 {
                        meta.rc.defer_free(host / cs);
                    }
                    if has_backing {
                        let offset = meta.alloc_clusters(&*file, 1)?;
                        file.write_at(&zeros, offset)?;
                        encode_normal(offset, true)
                    } else {
                        0
                    }
                };
                replacements.push((l2_offset, index, new));
            }
            // The zeroes reach the disk before any table points at them.
            file.flush()?;
            for (l2_offset, index, new) in replacements {
                meta.load_l2(&*file, l2_offset)?;
                let t = meta.l2.get_mut(l2_offset).expect("table was just loaded");
                let raw = RawL2::get(t, index, self.geo.extended_l2);
                RawL2 { entry: new, ..raw }.set(t, index, self.geo.extended_l2);
            }
            let freed = meta.flush(&*file)?;
            meta.forget_freed_tables(&freed);
            // A freed reference may leave another owner alone with its
            // cluster.
            self.fix_copied_flags(&mut meta)?;
            meta.flush(&*file)?;
        }
        self.flush()
    }

    /// Turns the lazy_refcounts feature on or off. Refcounts are always
    /// kept exact here, so the image is clean either way.
    fn set_lazy_refcounts(&self, on: bool) -> Result<()> {
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let h = &mut meta.hc.header;
        if on {
            h.compatible_features |= COMPAT_LAZY_REFCOUNTS;
        } else {
            h.compatible_features &= !COMPAT_LAZY_REFCOUNTS;
        }
        h.incompatible_features &= !INCOMPAT_DIRTY;
        meta.write_header(&*self.file)
    }

    /// Records a new name for the external data file.
    fn set_data_file_name(&self, name: &str) -> Result<()> {
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        debug_assert!(meta.hc.header.incompatible_features & INCOMPAT_DATA_FILE != 0);
        meta.hc.set_string_extension(EXT_DATA_FILE, Some(name));
        meta.write_header(&*self.file)
    }
}
