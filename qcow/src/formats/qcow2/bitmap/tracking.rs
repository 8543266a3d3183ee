//! Persistent bitmaps of an image open for writing, as QEMU keeps them
//! between open and close: on open every consistent bitmap is marked
//! in use in the directory (rewritten in place, as
//! `update_ext_header_and_dir_in_place` does), each enabled one records
//! the guest ranges written from then on in memory ([`DirtyBits`]), and
//! on close [`super::Bitmaps`] stores them anew with those bits set.

use std::collections::BTreeMap;

use super::directory::{self, BitmapEntry, FLAG_AUTO, FLAG_IN_USE};
use crate::error::Result;
use crate::extensions::HeaderCluster;
use crate::storage::Storage;

/// The bits set by writes since open for one enabled bitmap, kept as
/// the clusters of bitmap data they fall in (bit `i` of the bitmap is bit
/// `i % 8` of byte `i / 8`, as QEMU serialises it). Only clusters that
/// hold a set bit are allocated, so memory follows what was written and
/// never exceeds the bitmap's own size.
#[derive(Debug, Clone)]
pub struct DirtyBits {
    granularity_bits: u8,
    cluster_size: u64,
    clusters: BTreeMap<u64, Box<[u8]>>,
}

impl DirtyBits {
    /// No bits set, for a bitmap of `granularity_bits` stored in clusters
    /// of `cluster_size` bytes.
    pub fn new(granularity_bits: u8, cluster_size: u64) -> DirtyBits {
        DirtyBits {
            granularity_bits,
            cluster_size,
            clusters: BTreeMap::new(),
        }
    }

    /// Sets the bits of every granule that `len` bytes at `offset` touch.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset >> self.granularity_bits;
        let last = offset.saturating_add(len - 1) >> self.granularity_bits;
        let per_cluster = self.cluster_size * 8;
        let cs = self.cluster_size as usize;
        let mut bit = first;
        while bit <= last {
            let index = bit / per_cluster;
            let lo = bit % per_cluster;
            let hi = (last - index * per_cluster).min(per_cluster - 1);
            let data = self
                .clusters
                .entry(index)
                .or_insert_with(|| vec![0u8; cs].into_boxed_slice());
            set_bits(data, lo, hi);
            bit = (index + 1) * per_cluster;
        }
    }

    /// The bits of table entry `index` (one cluster), if any is set.
    pub fn cluster(&self, index: u64) -> Option<&[u8]> {
        self.clusters.get(&index).map(|c| &c[..])
    }

    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// Sets bits `lo..=hi` of `data`.
fn set_bits(data: &mut [u8], lo: u64, hi: u64) {
    let (lo, hi) = (lo as usize, hi as usize);
    let (first_byte, last_byte) = (lo / 8, hi / 8);
    if first_byte == last_byte {
        data[first_byte] |= mask(lo % 8, hi % 8);
        return;
    }
    data[first_byte] |= mask(lo % 8, 7);
    data[first_byte + 1..last_byte].fill(0xff);
    data[last_byte] |= mask(0, hi % 8);
}

/// Bits `lo..=hi` of a byte.
fn mask(lo: usize, hi: usize) -> u8 {
    ((0xffu16 << lo) & (0xffu16 >> (7 - hi))) as u8
}

/// The bitmaps of an image open for writing, as they were on open.
#[derive(Debug)]
pub struct Tracking {
    /// The directory as it was before open marked the bitmaps in use.
    pub entries: Vec<BitmapEntry>,
    /// Host offset and size of the directory.
    pub dir: (u64, u64),
    /// For each entry: its writes since open (enabled, consistent
    /// bitmaps), `None` for a disabled or inconsistent one.
    pub marks: Vec<Option<DirtyBits>>,
}

impl Tracking {
    /// Starts tracking the bitmaps of an image being opened for writing
    /// (`hc` its header): every consistent bitmap is marked in use in the
    /// directory, in place, as QEMU's qcow2_load_dirty_bitmaps does.
    /// `None` when the image has no bitmaps in force.
    pub fn begin(file: &dyn Storage, hc: &HeaderCluster) -> Result<Option<Tracking>> {
        let Some(ext) = directory::extension(hc)? else {
            return Ok(None);
        };
        let entries = super::list(file, hc)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let cs = hc.header.cluster_size();
        let marks = entries
            .iter()
            .map(|e| {
                (e.flags & (FLAG_IN_USE | FLAG_AUTO) == FLAG_AUTO)
                    .then(|| DirtyBits::new(e.granularity_bits, cs))
            })
            .collect();
        if entries.iter().any(|e| e.flags & FLAG_IN_USE == 0) {
            let in_use: Vec<BitmapEntry> = entries
                .iter()
                .map(|e| BitmapEntry {
                    flags: e.flags | FLAG_IN_USE,
                    ..e.clone()
                })
                .collect();
            // Only flags change: the directory keeps its length and place.
            let dir = directory::write(&in_use);
            debug_assert_eq!(dir.len() as u64, ext.dir_size);
            file.write_at(&dir, ext.dir_offset)?;
            file.flush()?;
        }
        Ok(Some(Tracking {
            entries,
            dir: (ext.dir_offset, ext.dir_size),
            marks,
        }))
    }

    /// Records a guest write of `len` bytes at `offset` in every enabled
    /// bitmap.
    pub fn mark(&mut self, offset: u64, len: u64) {
        for bits in self.marks.iter_mut().flatten() {
            bits.mark(offset, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_set_every_granule_touched_and_nothing_else() {
        // 512-byte clusters hold 4096 bits; 512-byte granules.
        let mut bits = DirtyBits::new(9, 512);
        assert!(bits.is_empty());
        bits.mark(1000, 24); // granule 1 (bytes 1000..1024)
        bits.mark(512 * 10, 512 * 7); // granules 10..=16
        let c = bits.cluster(0).unwrap();
        assert_eq!(c[0], 0b0000_0010);
        assert_eq!(c[1], 0b1111_1100);
        assert_eq!(c[2], 0b0000_0001);
        assert!(c[3..].iter().all(|&b| b == 0));
        assert!(bits.cluster(1).is_none());
    }

    #[test]
    fn a_mark_across_table_entries_fills_each_cluster_it_spans() {
        let mut bits = DirtyBits::new(9, 512);
        // From the last granule of entry 0 to the first two of entry 2.
        bits.mark(4095 * 512, 512 * (1 + 4096 + 2));
        assert_eq!(bits.cluster(0).unwrap()[511], 0x80);
        assert!(bits.cluster(1).unwrap().iter().all(|&b| b == 0xff));
        assert_eq!(bits.cluster(2).unwrap()[0], 0b11);
        assert!(bits.cluster(3).is_none());
        bits.mark(0, 0);
        assert_eq!(bits.cluster(0).unwrap()[0], 0);
    }

    #[test]
    fn masks_cover_inclusive_bit_ranges() {
        assert_eq!(mask(0, 7), 0xff);
        assert_eq!(mask(3, 3), 0b1000);
        assert_eq!(mask(1, 6), 0b0111_1110);
    }
}
