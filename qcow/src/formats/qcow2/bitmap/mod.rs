//! Persistent dirty bitmaps of qcow2 images: reading the directory,
//! and adding, removing, clearing, enabling, disabling and merging
//! bitmaps as `qemu-img bitmap` does, each change stored as QEMU stores
//! bitmaps on close (new tables and directory first, the header extension
//! last, old clusters freed after).

pub mod directory;
pub mod tracking;

use byteorder::{BigEndian, ByteOrder};

pub use directory::{BitmapEntry, BitmapsExtension, FLAG_AUTO, FLAG_IN_USE};
pub use tracking::{DirtyBits, Tracking};

use crate::error::{Error, Result};
use crate::extensions::{Extension, HeaderCluster, EXT_BITMAPS};
use crate::header::AUTOCLEAR_BITMAPS;
use crate::image::Qcow2;
use crate::storage::Storage;

/// Host offset bits of a bitmap table entry.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// A table entry whose cluster reads as all ones.
const TABLE_ALL_ONES: u64 = 1;

/// The bitmaps an image holds (none when the extension is absent or out
/// of force).
pub fn list(file: &dyn Storage, hc: &HeaderCluster) -> Result<Vec<BitmapEntry>> {
    let Some(ext) = directory::extension(hc)? else {
        return Ok(Vec::new());
    };
    let file_len = file.len()?;
    if ext
        .dir_offset
        .checked_add(ext.dir_size)
        .is_none_or(|e| e > file_len)
    {
        return Err(Error::Corrupt(
            "bitmap directory lies past the end of the file".into(),
        ));
    }
    let mut buf = vec![0u8; ext.dir_size as usize];
    file.read_at(&mut buf, ext.dir_offset)?;
    directory::parse(&buf, ext.nb_bitmaps)
}

/// Entries of a table for `size` guest bytes at `granularity` in
/// `cluster_size` clusters of bitmap data.
pub fn table_size(size: u64, granularity: u64, cluster_size: u64) -> u64 {
    size.div_ceil(granularity)
        .div_ceil(8)
        .div_ceil(cluster_size)
}

/// Bytes the bitmaps of an image take in a copy with `cluster_size`
/// clusters (data, tables and directory), as `qemu-img measure` counts
/// them.
pub fn measured_size(entries: &[BitmapEntry], size: u64, cluster_size: u64) -> u64 {
    let mut total = 0;
    let mut dir = 0;
    for e in entries {
        let clusters = table_size(size, e.granularity(), cluster_size);
        total += clusters * cluster_size + (clusters * 8).div_ceil(cluster_size) * cluster_size;
        dir += directory::write(std::slice::from_ref(e)).len() as u64;
    }
    total + dir.div_ceil(cluster_size) * cluster_size
}

fn op_error(reason: impl Into<String>) -> Error {
    Error::BitmapOperation {
        reason: reason.into(),
    }
}

/// A bitmap's stored table, in `image`.
#[derive(Clone, Copy)]
struct StoredTable<'a> {
    image: &'a Qcow2,
    table_offset: u64,
    table_size: u32,
}

/// Bits a bitmap holds: a stored table, or writes marked since open.
#[derive(Clone)]
enum Layer<'a> {
    Stored(StoredTable<'a>),
    Marked(DirtyBits),
}

/// The bitmaps of an image open for writing, changed in memory and
/// stored by [`Bitmaps::store`] as QEMU stores them on close: every
/// consistent bitmap gets new data clusters and a new table, then the
/// directory is written anew, and only then are the old ones freed.
pub struct Bitmaps<'a> {
    image: &'a Qcow2,
    entries: Vec<BitmapEntry>,
    /// What each bitmap holds: the OR of these tables' bits (none: all
    /// zero). `None` for an inconsistent bitmap, which is kept as it is.
    contents: Vec<Option<Vec<Layer<'a>>>>,
    /// Whether each bitmap's table is on disk (not added in memory).
    on_disk: Vec<bool>,
    old_dir: Option<(u64, u64)>,
}

impl<'a> Bitmaps<'a> {
    /// The bitmaps of `image`, whose header before it was opened for
    /// writing was `hc`. An image opened for writing hands over the
    /// bitmaps it tracks (the directory as it was on open and the writes
    /// marked since), so that storing them ends the tracking.
    pub fn load(image: &'a Qcow2, hc: &HeaderCluster) -> Result<Bitmaps<'a>> {
        if let Some(tracking) = image.take_bitmap_tracking() {
            return Ok(Self::from_tracking(image, tracking));
        }
        let entries = list(&**image.file(), hc)?;
        let old_dir = directory::extension(hc)?.map(|e| (e.dir_offset, e.dir_size));
        let contents = entries
            .iter()
            .map(|e| {
                (e.flags & FLAG_IN_USE == 0).then(|| {
                    vec![Layer::Stored(StoredTable {
                        image,
                        table_offset: e.table_offset,
                        table_size: e.table_size,
                    })]
                })
            })
            .collect();
        let on_disk = vec![true; entries.len()];
        Ok(Bitmaps {
            image,
            entries,
            contents,
            on_disk,
            old_dir,
        })
    }

    /// The bitmaps an image tracked since it was opened for writing: the
    /// consistent ones hold their stored bits and the writes marked.
    pub(crate) fn from_tracking(image: &'a Qcow2, tracking: Tracking) -> Bitmaps<'a> {
        let contents = tracking
            .entries
            .iter()
            .zip(tracking.marks)
            .map(|(e, marks)| {
                (e.flags & FLAG_IN_USE == 0).then(|| {
                    let mut layers = vec![Layer::Stored(StoredTable {
                        image,
                        table_offset: e.table_offset,
                        table_size: e.table_size,
                    })];
                    layers.extend(marks.filter(|m| !m.is_empty()).map(Layer::Marked));
                    layers
                })
            })
            .collect();
        let on_disk = vec![true; tracking.entries.len()];
        Bitmaps {
            image,
            entries: tracking.entries,
            contents,
            on_disk,
            old_dir: Some(tracking.dir),
        }
    }

    /// The bitmaps.
    pub fn entries(&self) -> &[BitmapEntry] {
        &self.entries
    }

    fn find(&self, name: &str) -> Result<usize> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| op_error(format!("Dirty bitmap '{name}' not found")))
    }

    /// `--add`: a new, empty bitmap (enabled unless `enabled` is false).
    pub fn add(&mut self, name: &str, granularity: Option<u64>, enabled: bool) -> Result<()> {
        if name.is_empty() {
            return Err(op_error("Bitmap name cannot be empty"));
        }
        if name.len() > directory::MAX_NAME_LEN {
            return Err(op_error("Bitmap name is too long"));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(op_error(format!("Bitmap already exists: {name}")));
        }
        let cs = self.image.cluster_size();
        let granularity = granularity.unwrap_or_else(|| cs.clamp(4096, 65536));
        if !granularity.is_power_of_two()
            || !(1 << directory::MIN_GRANULARITY_BITS..=1 << directory::MAX_GRANULARITY_BITS)
                .contains(&granularity)
        {
            return Err(op_error("Granularity must be power of 2 and at least 512"));
        }
        if self.image.header_cluster().header.version < 3 {
            return Err(op_error("Cannot store dirty bitmaps in qcow2 v2 files"));
        }
        if self.entries.len() >= directory::MAX_BITMAPS {
            return Err(op_error("Too many persistent bitmaps"));
        }
        let size = table_size(self.image.size(), granularity, cs);
        if size > u64::from(directory::MAX_TABLE_SIZE) {
            return Err(op_error(format!("Bitmap '{name}' is too big")));
        }
        self.entries.push(BitmapEntry {
            name: name.to_string(),
            table_offset: 0,
            table_size: size as u32,
            flags: if enabled { FLAG_AUTO } else { 0 },
            granularity_bits: granularity.trailing_zeros() as u8,
        });
        self.contents.push(Some(Vec::new()));
        self.on_disk.push(false);
        Ok(())
    }

    /// `--remove`: as QEMU's qcow2_co_remove_persistent_dirty_bitmap, a
    /// stored bitmap leaves the directory at once (a new directory of the
    /// others, the old one freed) and its clusters are freed, before
    /// anything is stored on close.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let i = self.find(name)?;
        let e = self.entries.remove(i);
        self.contents.remove(i);
        if !self.on_disk.remove(i) {
            return Ok(());
        }
        // The others stay as they are on disk, marked in use while open.
        let stored = self.on_disk_entries_in_use();
        let old_dir = self.old_dir.take();
        self.old_dir = self.write_directory(&stored)?;
        if let Some((offset, len)) = old_dir {
            self.image.free_metadata(offset, len)?;
        }
        self.free_layer(StoredTable {
            image: self.image,
            table_offset: e.table_offset,
            table_size: e.table_size,
        })?;
        // Freed clusters are free for what is stored next, as in QEMU.
        self.image.flush()
    }

    /// The directory entries of the bitmaps stored on disk, each flagged
    /// in use: what the directory holds while the image is open for
    /// writing (after a remove, or after a store that failed).
    fn on_disk_entries_in_use(&self) -> Vec<BitmapEntry> {
        self.entries
            .iter()
            .zip(&self.on_disk)
            .filter(|(_, &on_disk)| on_disk)
            .map(|(e, _)| BitmapEntry {
                flags: e.flags | FLAG_IN_USE,
                ..e.clone()
            })
            .collect()
    }

    fn usable(&self, i: usize) -> Result<()> {
        if self.contents[i].is_none() {
            return Err(op_error(format!(
                "Bitmap '{}' is inconsistent and cannot be used",
                self.entries[i].name
            )));
        }
        Ok(())
    }

    /// `--clear`: every bit zero.
    pub fn clear(&mut self, name: &str) -> Result<()> {
        let i = self.find(name)?;
        self.usable(i)?;
        self.contents[i] = Some(Vec::new());
        Ok(())
    }

    /// `--enable` / `--disable`.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<()> {
        let i = self.find(name)?;
        self.usable(i)?;
        let e = &mut self.entries[i];
        e.flags = if enabled {
            e.flags | FLAG_AUTO
        } else {
            e.flags & !FLAG_AUTO
        };
        Ok(())
    }

    /// `--merge SOURCE`: sets in bitmap `target` every bit set in bitmap
    /// `source` of `from` (another image, or this one when `None`).
    pub fn merge(&mut self, target: &str, from: Option<&Bitmaps<'a>>, source: &str) -> Result<()> {
        let t = self.find(target)?;
        self.usable(t)?;
        let (src_image, src_entry, src_layers) = match from {
            Some(other) => {
                let s = other.find(source)?;
                other.usable(s)?;
                (other.image, &other.entries[s], &other.contents[s])
            }
            None => {
                let s = self.find(source)?;
                self.usable(s)?;
                (self.image, &self.entries[s], &self.contents[s])
            }
        };
        let dst = &self.entries[t];
        if src_entry.granularity_bits != dst.granularity_bits
            || src_image.cluster_size() != self.image.cluster_size()
            || src_image.size() != self.image.size()
        {
            return Err(op_error(format!(
                "Bitmap '{source}' differs from '{target}' in size or granularity; img merges only alike bitmaps"
            )));
        }
        let added = src_layers.clone().unwrap_or_default();
        if let Some(layers) = &mut self.contents[t] {
            layers.extend(added);
        }
        Ok(())
    }

    /// Frees a stored table and the data clusters it points at.
    fn free_layer(&self, layer: StoredTable<'_>) -> Result<()> {
        let cs = self.image.cluster_size();
        for t in read_table(layer)? {
            if t & TABLE_OFFSET_MASK != 0 {
                self.image.free_metadata(t & TABLE_OFFSET_MASK, cs)?;
            }
        }
        self.image
            .free_metadata(layer.table_offset, u64::from(layer.table_size) * 8)
    }

    /// Writes a directory of `entries` where a new allocation puts it and
    /// points the header at it (no extension when there are none).
    fn write_directory(&self, entries: &[BitmapEntry]) -> Result<Option<(u64, u64)>> {
        let image = self.image;
        let ext = if entries.is_empty() {
            None
        } else {
            let dir = directory::write(entries);
            let offset = image.alloc_metadata(dir.len() as u64)?;
            if let Err(err) = image.file().write_at(&dir, offset) {
                // As QEMU's update_ext_header_and_dir: the new directory's
                // clusters go back when it cannot be written.
                image.free_metadata(offset, dir.len() as u64)?;
                return Err(err);
            }
            Some(BitmapsExtension {
                nb_bitmaps: entries.len() as u32,
                dir_size: dir.len() as u64,
                dir_offset: offset,
            })
        };
        image.update_header(|hc| {
            hc.extensions.retain(|e| e.ext_type() != EXT_BITMAPS);
            match &ext {
                Some(ext) => {
                    hc.extensions.push(Extension::Other {
                        ext_type: EXT_BITMAPS,
                        data: directory::extension_bytes(ext),
                    });
                    hc.header.autoclear_features |= AUTOCLEAR_BITMAPS;
                }
                None => hc.header.autoclear_features &= !AUTOCLEAR_BITMAPS,
            }
        })?;
        Ok(ext.map(|e| (e.dir_offset, e.dir_size)))
    }

    /// Stores a bitmap's bits as QEMU's store_bitmap does: a new cluster
    /// for each cluster of bits that is not all zero, allocated in order,
    /// then its table; returns the table's offset.
    ///
    /// Every cluster it allocates is added to `allocated` (offset, bytes),
    /// for the caller to free if the store fails; a failed write names the
    /// bitmap as QEMU does (`Failed to write bitmap 'NAME' to file`).
    fn store_bits(
        &self,
        e: &BitmapEntry,
        layers: &[Layer<'_>],
        allocated: &mut Vec<(u64, u64)>,
    ) -> Result<u64> {
        let write_error = |err: Error| match err {
            Error::Io { source, .. } => Error::io(
                format!("Failed to write bitmap '{}' to file", e.name),
                source,
            ),
            other => other,
        };
        let cs = self.image.cluster_size() as usize;
        let tables = layers
            .iter()
            .map(|l| match l {
                Layer::Stored(t) => read_table(*t),
                Layer::Marked(_) => Ok(Vec::new()),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut table = vec![0u64; e.table_size as usize];
        let (mut bits, mut scratch) = (vec![0u8; cs], vec![0u8; cs]);
        for (index, slot) in table.iter_mut().enumerate() {
            bits.fill(0);
            for (layer, t) in layers.iter().zip(&tables) {
                let part: &[u8] = match layer {
                    Layer::Stored(stored) => {
                        let entry = t.get(index).copied().unwrap_or(0);
                        read_cluster(stored.image, entry, &mut scratch)?;
                        &scratch
                    }
                    Layer::Marked(marks) => match marks.cluster(index as u64) {
                        Some(c) => c,
                        None => continue,
                    },
                };
                for (x, y) in bits.iter_mut().zip(part) {
                    *x |= y;
                }
            }
            if bits.iter().any(|&x| x != 0) {
                let offset = self.image.alloc_metadata(cs as u64)?;
                allocated.push((offset, cs as u64));
                self.image
                    .file()
                    .write_at(&bits, offset)
                    .map_err(write_error)?;
                *slot = offset;
            }
        }
        let mut raw = vec![0u8; table.len() * 8];
        for (i, t) in table.iter().enumerate() {
            BigEndian::write_u64(&mut raw[i * 8..], *t);
        }
        let offset = self.image.alloc_metadata(raw.len() as u64)?;
        allocated.push((offset, raw.len() as u64));
        self.image
            .file()
            .write_at(&raw, offset)
            .map_err(write_error)?;
        Ok(offset)
    }

    /// Stores every consistent bitmap anew, then the directory and the
    /// header extension (its autoclear bit set), then frees the old
    /// directory, tables and data clusters, as QEMU does on close.
    ///
    /// If a bitmap cannot be stored, the clusters this attempt allocated
    /// are freed again and the bitmaps and the directory on disk are left
    /// as they were, so the store may be tried again (as QEMU tries once
    /// more when it closes an image whose inactivation failed).
    pub fn store(&mut self) -> Result<()> {
        let saved = (self.entries.clone(), self.on_disk.clone(), self.old_dir);
        let mut allocated = Vec::new();
        let result = self.store_once(&mut allocated);
        if result.is_err() {
            // `allocated` is emptied once the new directory is written:
            // what it still names is referenced by nothing.
            for (offset, bytes) in allocated {
                // The store's failure is what is reported; a free that
                // fails too leaves a leak that `check` finds.
                let _ = self.image.free_metadata(offset, bytes);
            }
            (self.entries, self.on_disk, self.old_dir) = saved;
            // As QEMU leaves them (it marks them so when it opens the
            // image for writing): the bitmaps on disk stay in force but
            // in use, so nobody trusts their stale bits.
            let _ = self.mark_in_use_in_place();
        }
        result
    }

    /// Rewrites the directory on disk where it is, its bitmaps flagged
    /// in use, and puts the bitmaps back in force (the header's autoclear
    /// bit), as QEMU does when it opens an image for writing.
    fn mark_in_use_in_place(&self) -> Result<()> {
        let Some((offset, len)) = self.old_dir else {
            return Ok(());
        };
        let dir = directory::write(&self.on_disk_entries_in_use());
        if dir.len() as u64 != len {
            return Err(op_error("the bitmap directory changed size in memory"));
        }
        self.image.file().write_at(&dir, offset)?;
        self.image
            .update_header(|hc| hc.header.autoclear_features |= AUTOCLEAR_BITMAPS)
    }

    /// One attempt of [`Bitmaps::store`], adding the clusters it
    /// allocates for bitmaps to `allocated` until the directory that
    /// references them is written.
    fn store_once(&mut self, allocated: &mut Vec<(u64, u64)>) -> Result<()> {
        let image = self.image;
        if self.contents.iter().all(Option::is_none) {
            if self.old_dir.is_some() {
                image.update_header(|hc| hc.header.autoclear_features |= AUTOCLEAR_BITMAPS)?;
            }
            return image.flush();
        }
        let mut old_tables = Vec::new();
        for i in 0..self.entries.len() {
            let Some(layers) = &self.contents[i] else {
                continue;
            };
            // The table follows the image's size, should it have changed.
            let old = self.entries[i].clone();
            let size = table_size(image.size(), old.granularity(), image.cluster_size());
            let e = BitmapEntry {
                table_size: size.min(u64::from(directory::MAX_TABLE_SIZE)) as u32,
                ..old.clone()
            };
            let table_offset = self.store_bits(&e, layers, allocated)?;
            if self.on_disk[i] {
                old_tables.push(StoredTable {
                    image,
                    table_offset: old.table_offset,
                    table_size: old.table_size,
                });
            }
            let e = &mut self.entries[i];
            e.table_size = size.min(u64::from(directory::MAX_TABLE_SIZE)) as u32;
            e.table_offset = table_offset;
            e.flags &= !FLAG_IN_USE;
            self.on_disk[i] = true;
        }
        // QEMU's qcow2_store_persistent_dirty_bitmaps names a failed
        // directory or header write this way.
        self.write_directory(&self.entries)
            .map_err(|err| match err {
                Error::Io { source, .. } => Error::io("Failed to update bitmap extension", source),
                other => other,
            })?;
        let old_dir = self.old_dir.take();
        allocated.clear();
        if let Some((offset, len)) = old_dir {
            image.free_metadata(offset, len)?;
        }
        for layer in old_tables {
            self.free_layer(layer)?;
        }
        image.flush()
    }
}

fn read_table(layer: StoredTable<'_>) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; layer.table_size as usize * 8];
    layer.image.file().read_at(&mut raw, layer.table_offset)?;
    Ok(raw.chunks_exact(8).map(BigEndian::read_u64).collect())
}

fn read_cluster(image: &Qcow2, entry: u64, buf: &mut [u8]) -> Result<()> {
    let off = entry & TABLE_OFFSET_MASK;
    if off != 0 {
        image.file().read_at(buf, off)
    } else if entry & TABLE_ALL_ONES != 0 {
        buf.fill(0xff);
        Ok(())
    } else {
        buf.fill(0);
        Ok(())
    }
}
