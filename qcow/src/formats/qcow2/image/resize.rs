//! Changing the virtual size, and preallocating guest ranges.

use super::Qcow2;
use crate::create::Preallocation;
use crate::entries::{make_bitmap, L2Entry, RawL2, FLAG_COPIED};
use crate::error::{Error, Result};
use crate::header::l1_entries_for;

impl Qcow2 {
    /// Allocates every unallocated cluster of `[offset, offset+len)` (which
    /// must be cluster aligned at the start) as `mode` asks. As in QEMU
    /// (qcow2_alloc_cluster_link_l2 with `prealloc`), subcluster bitmaps
    /// are left as they were: preallocated subclusters stay unallocated.
    pub fn preallocate(&self, offset: u64, len: u64, mode: Preallocation) -> Result<()> {
        self.preallocate_clusters(offset, len, mode, false)
    }

    /// [`Self::preallocate`] of a new image.
    pub(crate) fn preallocate_new(&self, len: u64, mode: Preallocation) -> Result<()> {
        self.preallocate_clusters(0, len, mode, false)
    }

    /// Preallocates; with `zeroed_and_allocated` every new cluster is
    /// marked allocated in full (all subclusters) and reads as zero,
    /// which is how QEMU's falloc and full growth hide a longer backing
    /// file.
    fn preallocate_clusters(
        &self,
        offset: u64,
        len: u64,
        mode: Preallocation,
        zeroed_and_allocated: bool,
    ) -> Result<()> {
        self.check_writable()?;
        if mode == Preallocation::Off || len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let first = offset / cs;
        let end = (offset + len).div_ceil(cs);
        let target = self.data_file.as_ref().unwrap_or(&self.file);
        let old_target_len = target.len()?;
        let mut max_end = 0u64;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        {
            let mut meta = self.lock();
            let mut gc = first;
            while gc < end {
                // Collect a run of unallocated clusters.
                let mut run = 0u64;
                let mut bitmaps = Vec::new();
                while gc + run < end && run < 65536 {
                    let raw = meta.l2_entry(&*self.file, gc + run)?;
                    let entry = self.geo.decode_l2(raw.entry);
                    if !matches!(
                        entry,
                        L2Entry::Unallocated | L2Entry::Zero { host_offset: 0, .. }
                    ) {
                        break;
                    }
                    bitmaps.push(raw.bitmap);
                    run += 1;
                }
                if run == 0 {
                    gc += 1;
                    continue;
                }
                let host = if self.data_file.is_some() {
                    gc * cs
                } else {
                    meta.alloc_clusters(&*self.file, run)?
                };
                for (k, old_bitmap) in (0..run).zip(bitmaps) {
                    let bitmap = if !self.geo.extended_l2 {
                        0
                    } else if zeroed_and_allocated {
                        make_bitmap(u32::MAX, 0)
                    } else {
                        old_bitmap
                    };
                    meta.set_l2_entry(
                        &*self.file,
                        gc + k,
                        RawL2 {
                            entry: (host + k * cs) | FLAG_COPIED,
                            bitmap,
                        },
                    )?;
                }
                runs.push((host, run * cs));
                max_end = max_end.max(host + run * cs);
                gc += run;
            }
        }
        for &(host, bytes) in &runs {
            // Clusters reused from inside the file may hold old data.
            let must_zero =
                mode == Preallocation::Full || (zeroed_and_allocated && host < old_target_len);
            if mode == Preallocation::Falloc {
                target.allocate(host, bytes)?;
            }
            if must_zero {
                let zeros = vec![0u8; bytes.min(1 << 20) as usize];
                let mut pos = host;
                while pos < host + bytes {
                    let n = (host + bytes - pos).min(zeros.len() as u64);
                    target.write_at(&zeros[..n as usize], pos)?;
                    pos += n;
                }
            }
        }
        if target.len()? < max_end {
            target.set_len(max_end)?;
        }
        self.flush()
    }

    /// Changes the virtual size. Shrinking discards the clusters past the
    /// new end; growing makes the new range read as zero, even where a
    /// longer backing file lies beneath it (QEMU's BDRV_REQ_ZERO_WRITE
    /// growth).
    pub fn resize(&self, new_size: u64, prealloc: Preallocation) -> Result<()> {
        self.check_writable()?;
        let new_size = new_size.div_ceil(512) * 512;
        let old_size = self.size();
        let cs = self.cluster_size();
        if new_size == old_size {
            return Ok(());
        }
        let entries = l1_entries_for(new_size, self.geo.cluster_bits, self.geo.extended_l2);
        if entries * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::InvalidOption {
                option: "size",
                value: new_size.to_string(),
                reason: "Image size is too large for this cluster size",
            });
        }
        if new_size < old_size {
            // Drop every cluster wholly past the new end, then any data in
            // the partial cluster past it.
            let from = new_size.div_ceil(cs) * cs;
            if from < old_size {
                // QEMU's discard takes each L2 table it passes as a write
                // does (qcow2's get_cluster_table allocates a missing one
                // and copies a shared one). Those past the new end are
                // freed again; the one holding the new end stays, so the
                // file ends where QEMU's does.
                if !from.is_multiple_of(cs * self.geo.l2_entries()) {
                    self.lock().prepare_l2(&*self.file, from / cs)?;
                }
                self.discard_full(from, old_size - from)?;
            }
            self.free_l2_tables_from(entries as usize)?;
            // The size changes last, as in qcow2_co_truncate: a failure
            // before leaves the image as large as it was.
            self.flush()?;
            self.shrink_refcount_table()
                .map_err(|e| e.during("Failed to discard unused refblocks"))?;
            self.set_size(new_size)?;
            self.flush()?;
            return self.truncate_free_tail();
        }
        {
            let mut meta = self.lock();
            meta.grow_l1(&*self.file, entries)?;
        }
        self.set_size(new_size)?;
        // A backing file longer than the old size would show through the
        // new range: QEMU then zeroes all of it.
        let hides_backing = self
            .backing
            .as_ref()
            .is_some_and(|b| b.virtual_size() > old_size);
        let old_cluster_end = (old_size.div_ceil(cs) * cs).min(new_size);
        let mut zero_end = if hides_backing && self.geo.version >= 3 {
            new_size
        } else if hides_backing {
            // Version 2 has no zero clusters, so zeros are written, and
            // only as far as the backing file reaches (QEMU refuses).
            self.backing
                .as_ref()
                .map_or(new_size, |b| b.virtual_size().min(new_size))
        } else if crate::device::chain_reads_zero(self, old_size, old_cluster_end - old_size)? {
            // QEMU zeroes nothing when no backing file shows through: a
            // tail that reads as zero already (unallocated subclusters)
            // stays as it is.
            old_size
        } else {
            // The old last cluster's tail may hold data from before a
            // shrink.
            old_cluster_end
        };
        match prealloc {
            Preallocation::Off => {}
            Preallocation::Metadata => {
                let start = old_size / cs * cs;
                self.preallocate_clusters(start, new_size - start, prealloc, false)?;
            }
            Preallocation::Falloc | Preallocation::Full => {
                if hides_backing && self.data_file.is_none() {
                    // QEMU's new file area reads as zero, so the new
                    // clusters are allocated in full; only the old last
                    // cluster's tail is left to zero.
                    let start = old_cluster_end;
                    self.preallocate_clusters(start, new_size - start, prealloc, true)?;
                    zero_end = old_cluster_end;
                } else {
                    let start = old_size / cs * cs;
                    self.preallocate_clusters(start, new_size - start, prealloc, false)?;
                }
            }
        }
        if zero_end > old_size {
            self.write_zeroes(old_size, zero_end - old_size, false)?;
        }
        self.flush()
    }

    /// Drops refcount blocks that count nothing but themselves any more
    /// (QEMU's qcow2_shrink_reftable), and discards their clusters.
    fn shrink_refcount_table(&self) -> Result<()> {
        let freed = {
            let mut meta = self.lock();
            meta.rc
                .shrink_table(&*self.file)
                .map_err(|e| self.signal_corruption(e))?
        };
        let cs = self.cluster_size();
        for cluster in freed {
            self.file.discard(cluster * cs, cs)?;
        }
        Ok(())
    }

    /// Frees the L2 tables of L1 entries `first..` and clears the entries,
    /// as QEMU's qcow2_shrink_l1_table does (the L1 table keeps its size).
    fn free_l2_tables_from(&self, first: usize) -> Result<()> {
        let mut meta = self.lock();
        for l1_index in first..meta.l1.len() {
            let l2 = meta.l2_offset(l1_index)?;
            if l2 == 0 {
                continue;
            }
            // Its entries are all clear by now: nothing is left to write.
            meta.l2.remove(l2);
            meta.l1[l1_index] = 0;
            meta.l1_dirty.insert(l1_index);
            meta.rc.defer_free(l2 >> self.geo.cluster_bits);
        }
        Ok(())
    }

    /// Cuts the file after its last cluster in use, as QEMU's shrink
    /// does (qcow2_get_last_cluster, then a truncate of the file).
    fn truncate_free_tail(&self) -> Result<()> {
        let cs = self.cluster_size();
        let file_len = self.file.len()?;
        let mut meta = self.lock();
        let mut end = file_len.div_ceil(cs);
        while end > 0 && meta.rc.get(&*self.file, end - 1)? == 0 {
            end -= 1;
        }
        if end * cs < file_len {
            self.file.set_len(end * cs)?;
        }
        Ok(())
    }

    fn set_size(&self, new_size: u64) -> Result<()> {
        let mut meta = self.lock();
        meta.flush(&*self.file)?;
        meta.hc.header.size = new_size;
        meta.write_header(&*self.file)?;
        self.size
            .store(new_size, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Deallocates whole clusters outright (no zero flag), for shrinking.
    pub(super) fn discard_full(&self, offset: u64, len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let first = offset / cs;
        let end = (offset + len).div_ceil(cs);
        let mut meta = self.lock();
        for gc in first..end {
            let raw = meta.l2_entry(&*self.file, gc)?;
            if raw == RawL2::default() {
                continue;
            }
            meta.set_l2_entry(&*self.file, gc, RawL2::default())?;
            self.free_entry(&mut meta, raw);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::create::{create, CreateOptions, Preallocation};
    use crate::device::{BlockRead, ExtentKind};
    use crate::image::Opener;
    use crate::storage::{MemStorage, Storage};

    #[test]
    fn preallocated_subclusters_stay_unallocated() {
        // As qemu-img create -o extended_l2=on,preallocation=...: the
        // clusters are allocated but no subcluster is, with or without a
        // backing file (checked against qemu-img 10).
        for backing in [Some("base.raw"), None] {
            let opts = CreateOptions {
                size: 512 << 10,
                extended_l2: true,
                preallocation: Preallocation::Metadata,
                backing_file: backing.map(str::to_owned),
                backing_format: backing.map(|_| "raw".to_owned()),
                ..CreateOptions::default()
            };
            let image = create(Arc::new(MemStorage::new()), None, None, &opts).unwrap();
            let extents = image.extents(0, 512 << 10).unwrap();
            assert!(!extents.is_empty());
            for e in extents {
                let unallocated = matches!(e.kind, ExtentKind::Unallocated { .. });
                assert!(unallocated, "{backing:?}: {e:?}");
            }
            let raw = image.lock().l2_entry(&**image.file(), 0).unwrap();
            assert_ne!(raw.entry, 0, "{backing:?}: the cluster is preallocated");
        }
    }

    /// Opens one in-memory raw file as every backing file.
    struct MemBacking(Arc<MemStorage>);
    impl Opener for MemBacking {
        fn open_backing(
            &self,
            _name: &str,
            _format: Option<&str>,
        ) -> crate::error::Result<Box<dyn BlockRead>> {
            Ok(Box::new(crate::device::RawImage::new(self.0.clone())?))
        }
        fn open_data_file(
            &self,
            name: &str,
            _writable: bool,
        ) -> crate::error::Result<Arc<dyn Storage>> {
            panic!("no data file: {name}")
        }
    }

    #[test]
    fn growing_over_a_longer_backing_file_reads_zero_in_every_mode() {
        let base = Arc::new(MemStorage::new());
        base.write_at(&[0xff; 1 << 20], 0).unwrap();
        for mode in [
            Preallocation::Off,
            Preallocation::Metadata,
            Preallocation::Falloc,
            Preallocation::Full,
        ] {
            let file = Arc::new(MemStorage::new());
            let opts = CreateOptions {
                size: 503 << 10,
                extended_l2: true,
                backing_file: Some("base".to_owned()),
                backing_format: Some("raw".to_owned()),
                ..CreateOptions::default()
            };
            create(file.clone(), None, None, &opts).unwrap();
            let image = crate::image::Qcow2::open(file, true, &MemBacking(base.clone())).unwrap();
            image.resize(1013 << 10, mode).unwrap();
            let mut buf = vec![0u8; 1013 << 10];
            image.read_at(&mut buf, 0).unwrap();
            assert!(buf[..503 << 10].iter().all(|&b| b == 0xff), "{mode:?}");
            let zeros = &buf[503 << 10..];
            assert!(zeros.iter().all(|&b| b == 0), "{mode:?}");
        }
    }

    #[test]
    fn a_version_2_image_is_zeroed_only_as_far_as_its_backing_file_reaches() {
        let base = Arc::new(MemStorage::new());
        base.write_at(&[0xff; 2 << 20], 0).unwrap();
        let file = Arc::new(MemStorage::new());
        let opts = CreateOptions {
            size: 1 << 20,
            version: 2,
            backing_file: Some("base".to_owned()),
            backing_format: Some("raw".to_owned()),
            ..CreateOptions::default()
        };
        create(file.clone(), None, None, &opts).unwrap();
        let image =
            crate::image::Qcow2::open(file.clone(), true, &MemBacking(base.clone())).unwrap();
        image.resize(1 << 30, Preallocation::Off).unwrap();
        // Zeros written over the backing file's second MiB, not 1 GiB.
        assert!(file.len().unwrap() < 4 << 20, "{}", file.len().unwrap());
        let mut buf = vec![1u8; 4 << 20];
        image.read_at(&mut buf, 1 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
