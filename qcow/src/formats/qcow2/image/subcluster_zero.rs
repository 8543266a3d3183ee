//! Zeroing guest ranges of images with extended L2 entries, as QEMU's
//! qcow2_subcluster_zeroize does: every subcluster the range covers gets
//! its "reads as zero" bit, in place, without writing data; only the
//! unaligned head and tail of the range are written as zero bytes.

use super::meta::MAX_PENDING_FREES;
use super::Qcow2;
use crate::entries::{alloc_bits, make_bitmap, subcluster_mask, zero_bits, L2Entry, RawL2};
use crate::error::Result;

impl Qcow2 {
    /// [`Qcow2::write_zeroes`] of an image with subclusters. A whole
    /// cluster keeps its host cluster unless `may_unmap` (or it is
    /// compressed); a partial one keeps its entry and gets zero bits for
    /// the subclusters in range (a compressed one is written instead, as
    /// QEMU falls back to writing zeros there).
    pub(super) fn write_zeroes_subclusters(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<()> {
        let sc = self.geo.subcluster_size();
        let cs = self.cluster_size();
        let end = offset + len;
        let zero_start = offset.div_ceil(sc) * sc;
        // The end may be unaligned where it is the end of the image.
        let zero_end = if end >= self.size() {
            end.div_ceil(sc) * sc
        } else {
            end / sc * sc
        };
        if zero_start >= zero_end {
            return self.write_zero_bytes(offset, len);
        }
        if offset < zero_start {
            self.write_zero_bytes(offset, zero_start - offset)?;
        }
        let first = zero_start / cs;
        let last = (zero_end - 1) / cs;
        let mut as_bytes = Vec::new();
        {
            let meta = self.lock();
            let mut meta = self.wait_not_inflight(meta, first, last);
            for gc in first..=last {
                let cluster_start = gc * cs;
                let from = zero_start.max(cluster_start);
                let to = zero_end.min(cluster_start + cs);
                let raw = meta.l2_entry(&*self.file, gc)?;
                let entry = self.geo.decode_l2(raw.entry);
                let compressed = matches!(entry, L2Entry::Compressed { .. });
                let (new, release) = if from == cluster_start && to == cluster_start + cs {
                    let unmap = compressed || (may_unmap && !matches!(entry, L2Entry::Unallocated));
                    let new = RawL2 {
                        entry: if unmap { 0 } else { raw.entry },
                        bitmap: make_bitmap(0, u32::MAX),
                    };
                    (new, unmap)
                } else if compressed {
                    as_bytes.push((from, to.min(end) - from));
                    continue;
                } else {
                    let first_sc = ((from - cluster_start) / sc) as u32;
                    let count = (to - from).div_ceil(sc) as u32;
                    let mask = subcluster_mask(first_sc, count);
                    let new = RawL2 {
                        entry: raw.entry,
                        bitmap: make_bitmap(
                            alloc_bits(raw.bitmap) & !mask,
                            zero_bits(raw.bitmap) | mask,
                        ),
                    };
                    (new, false)
                };
                if new == raw {
                    continue;
                }
                meta.set_l2_entry(&*self.file, gc, new)?;
                if release {
                    self.free_entry(&mut meta, raw);
                }
            }
            if meta.rc.pending_frees() > MAX_PENDING_FREES {
                self.flush_locked(&mut meta)?;
            }
        }
        for (start, bytes) in as_bytes {
            self.write_zero_bytes(start, bytes)?;
        }
        if zero_end < end {
            self.write_zero_bytes(zero_end, end - zero_end)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::create::{create, CreateOptions};
    use crate::entries::{alloc_bits, zero_bits, L2Entry};
    use crate::image::Qcow2;
    use crate::storage::MemStorage;

    fn image() -> Qcow2 {
        let opts = CreateOptions {
            size: 1 << 20,
            extended_l2: true,
            ..CreateOptions::default()
        };
        create(Arc::new(MemStorage::new()), None, None, &opts).unwrap()
    }

    fn entry(image: &Qcow2, guest_cluster: u64) -> crate::entries::RawL2 {
        image
            .lock()
            .l2_entry(&**image.file(), guest_cluster)
            .unwrap()
    }

    #[test]
    fn aligned_zeroing_sets_zero_bits_in_place() {
        let image = image();
        image.write_at(&[0xaa; 64 << 10], 0).unwrap();
        let before = entry(&image, 0);
        // Subclusters 2..=5 (2 KiB each), with an unaligned head byte.
        image
            .write_zeroes((4 << 10) - 1, 8 << 10 | 1, false)
            .unwrap();
        let after = entry(&image, 0);
        assert_eq!(after.entry, before.entry, "the host cluster stays");
        assert_eq!(zero_bits(after.bitmap), 0b11_1100);
        assert_eq!(alloc_bits(after.bitmap), !0b11_1100);
        let mut buf = vec![0u8; 64 << 10];
        image.read_at(&mut buf, 0).unwrap();
        assert!(buf[..(4 << 10) - 1].iter().all(|&b| b == 0xaa));
        assert!(buf[(4 << 10) - 1..12 << 10].iter().all(|&b| b == 0));
        assert!(buf[12 << 10..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn whole_clusters_keep_their_host_cluster_unless_unmapped() {
        let image = image();
        image.write_at(&[0xaa; 128 << 10], 0).unwrap();
        image.write_zeroes(0, 64 << 10, false).unwrap();
        image.write_zeroes(64 << 10, 64 << 10, true).unwrap();
        let kept = entry(&image, 0);
        assert!(matches!(
            image.geo.decode_l2(kept.entry),
            L2Entry::Normal { .. }
        ));
        assert_eq!(kept.bitmap, 0xffff_ffff_0000_0000);
        let unmapped = entry(&image, 1);
        assert_eq!(unmapped.entry, 0);
        assert_eq!(unmapped.bitmap, 0xffff_ffff_0000_0000);
        let mut buf = vec![1u8; 128 << 10];
        image.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
