//! Persistent dirty bitmaps of qcow2 images: reading the directory,
//! and adding, removing, clearing, enabling, disabling and merging
//! bitmaps as `qemu-img bitmap` does, each change stored as QEMU stores
//! bitmaps on close (new tables and directory first, the header extension
//! last, old clusters freed after).

pub mod directory;

use byteorder::{BigEndian, ByteOrder};

pub use directory::{BitmapEntry, BitmapsExtension, FLAG_AUTO, FLAG_IN_USE};

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

/// The bitmaps of an image open for writing, changed in memory and
/// stored by [`Bitmaps::store`].
pub struct Bitmaps<'a> {
    image: &'a Qcow2,
    entries: Vec<BitmapEntry>,
    old_dir: Option<(u64, u64)>,
    to_free: Vec<(u64, u64)>,
    changed: bool,
}

impl<'a> Bitmaps<'a> {
    /// The bitmaps of `image`, whose header before it was opened for
    /// writing was `hc` (opening for writing takes the bitmaps out of
    /// force until they are stored again).
    pub fn load(image: &'a Qcow2, hc: &HeaderCluster) -> Result<Bitmaps<'a>> {
        let entries = list(&**image.file(), hc)?;
        let old_dir = directory::extension(hc)?.map(|e| (e.dir_offset, e.dir_size));
        Ok(Bitmaps {
            image,
            entries,
            old_dir,
            to_free: Vec::new(),
            changed: false,
        })
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

    fn table(&self, e: &BitmapEntry) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; e.table_size as usize * 8];
        self.image.file().read_at(&mut raw, e.table_offset)?;
        Ok(raw.chunks_exact(8).map(BigEndian::read_u64).collect())
    }

    fn write_table(&self, table: &[u64]) -> Result<u64> {
        let mut raw = vec![0u8; table.len() * 8];
        for (i, t) in table.iter().enumerate() {
            BigEndian::write_u64(&mut raw[i * 8..], *t);
        }
        let offset = self.image.alloc_metadata(raw.len() as u64)?;
        let cs = self.image.cluster_size();
        raw.resize(
            (raw.len() as u64).div_ceil(cs).max(1) as usize * cs as usize,
            0,
        );
        self.image.file().write_at(&raw, offset)?;
        Ok(offset)
    }

    /// Frees a bitmap's table and data clusters (after the directory no
    /// longer names them).
    fn drop_storage(&mut self, e: &BitmapEntry) -> Result<()> {
        let cs = self.image.cluster_size();
        for t in self.table(e)? {
            if t & TABLE_OFFSET_MASK != 0 {
                self.to_free.push((t & TABLE_OFFSET_MASK, cs));
            }
        }
        self.to_free
            .push((e.table_offset, u64::from(e.table_size) * 8));
        Ok(())
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
        let table_offset = self.write_table(&vec![0; size as usize])?;
        self.entries.push(BitmapEntry {
            name: name.to_string(),
            table_offset,
            table_size: size as u32,
            flags: if enabled { FLAG_AUTO } else { 0 },
            granularity_bits: granularity.trailing_zeros() as u8,
        });
        self.changed = true;
        Ok(())
    }

    /// `--remove`.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let i = self.find(name)?;
        let e = self.entries.remove(i);
        self.drop_storage(&e)?;
        self.changed = true;
        Ok(())
    }

    fn usable(&self, i: usize) -> Result<()> {
        if self.entries[i].flags & FLAG_IN_USE != 0 {
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
        let old = self.entries[i].clone();
        let table_offset = self.write_table(&vec![0; old.table_size as usize])?;
        self.entries[i].table_offset = table_offset;
        self.drop_storage(&old)?;
        self.changed = true;
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
        self.changed = true;
        Ok(())
    }

    /// `--merge SOURCE`: sets in bitmap `target` every bit set in bitmap
    /// `source` of `from` (another image, or this one when `None`).
    pub fn merge(&mut self, target: &str, from: Option<&Bitmaps<'_>>, source: &str) -> Result<()> {
        let t = self.find(target)?;
        self.usable(t)?;
        let (src_image, src_entry) = match from {
            Some(other) => {
                let s = other.find(source)?;
                other.usable(s)?;
                (other.image, other.entries[s].clone())
            }
            None => {
                let s = self.find(source)?;
                self.usable(s)?;
                (self.image, self.entries[s].clone())
            }
        };
        let dst = self.entries[t].clone();
        if src_entry.granularity_bits != dst.granularity_bits
            || src_image.cluster_size() != self.image.cluster_size()
            || src_image.size() != self.image.size()
        {
            return Err(op_error(format!(
                "Bitmap '{source}' differs from '{target}' in size or granularity; img merges only alike bitmaps"
            )));
        }
        let src_table = {
            let mut raw = vec![0u8; src_entry.table_size as usize * 8];
            src_image.file().read_at(&mut raw, src_entry.table_offset)?;
            raw.chunks_exact(8)
                .map(BigEndian::read_u64)
                .collect::<Vec<_>>()
        };
        let dst_table = self.table(&dst)?;
        let cs = self.image.cluster_size() as usize;
        let mut new_table = Vec::with_capacity(dst_table.len());
        let (mut a, mut b) = (vec![0u8; cs], vec![0u8; cs]);
        for (d, s) in dst_table
            .iter()
            .zip(src_table.iter().chain(std::iter::repeat(&0)))
        {
            read_cluster(self.image, *d, &mut a)?;
            read_cluster(src_image, *s, &mut b)?;
            for (x, y) in a.iter_mut().zip(&b) {
                *x |= y;
            }
            new_table.push(if a.iter().all(|&x| x == 0) {
                0
            } else if a.iter().all(|&x| x == 0xff) {
                TABLE_ALL_ONES
            } else {
                let off = self.image.alloc_metadata(cs as u64)?;
                self.image.file().write_at(&a, off)?;
                off
            });
        }
        self.entries[t].table_offset = self.write_table(&new_table)?;
        self.drop_storage(&dst)?;
        self.changed = true;
        Ok(())
    }

    /// Stores the directory and the header extension (its autoclear bit
    /// set), then frees what the old ones used. A no-op without changes
    /// other than putting the bitmaps back in force.
    pub fn store(self) -> Result<()> {
        let image = self.image;
        if !self.changed {
            if self.old_dir.is_some() {
                image.update_header(|hc| hc.header.autoclear_features |= AUTOCLEAR_BITMAPS)?;
            }
            return Ok(());
        }
        let ext = if self.entries.is_empty() {
            None
        } else {
            let dir = directory::write(&self.entries);
            let offset = image.alloc_metadata(dir.len() as u64)?;
            image.file().write_at(&dir, offset)?;
            Some(BitmapsExtension {
                nb_bitmaps: self.entries.len() as u32,
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
        if let Some((offset, len)) = self.old_dir {
            image.free_metadata(offset, len)?;
        }
        for (offset, len) in self.to_free {
            image.free_metadata(offset, len)?;
        }
        image.flush()
    }
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
