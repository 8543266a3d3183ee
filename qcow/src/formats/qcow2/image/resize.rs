//! Changing the virtual size, and preallocating guest ranges.

use super::Qcow2;
use crate::create::Preallocation;
use crate::entries::{make_bitmap, L2Entry, RawL2, FLAG_COPIED};
use crate::error::{Error, Result};
use crate::header::l1_entries_for;

impl Qcow2 {
    /// Allocates every unallocated cluster of `[offset, offset+len)` (which
    /// must be cluster aligned at the start) as `mode` asks.
    pub fn preallocate(&self, offset: u64, len: u64, mode: Preallocation) -> Result<()> {
        self.preallocate_subclusters(offset, len, mode, self.backing.is_some())
    }

    /// [`Self::preallocate`] of a new image: one that names a backing file
    /// leaves its preallocated subclusters unallocated, so that they read
    /// from it (qcow2_alloc_cluster_link_l2 sets no bits for preallocation),
    /// even though the backing file is not open yet.
    pub(crate) fn preallocate_new(&self, len: u64, mode: Preallocation) -> Result<()> {
        let named_backing = self.header_cluster().backing_file.is_some();
        self.preallocate_subclusters(0, len, mode, named_backing)
    }

    /// Preallocates; with extended L2 entries and `has_backing` the new
    /// subclusters are left unallocated, else marked allocated.
    fn preallocate_subclusters(
        &self,
        offset: u64,
        len: u64,
        mode: Preallocation,
        has_backing: bool,
    ) -> Result<()> {
        self.check_writable()?;
        if mode == Preallocation::Off || len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let first = offset / cs;
        let end = (offset + len).div_ceil(cs);
        let mut max_end = 0u64;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        {
            let mut meta = self.lock();
            let mut gc = first;
            while gc < end {
                // Collect a run of unallocated clusters.
                let mut run = 0u64;
                while gc + run < end && run < 65536 {
                    let raw = meta.l2_entry(&*self.file, gc + run)?;
                    let entry = self.geo.decode_l2(raw.entry);
                    if !matches!(
                        entry,
                        L2Entry::Unallocated | L2Entry::Zero { host_offset: 0, .. }
                    ) {
                        break;
                    }
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
                for k in 0..run {
                    let bitmap = if !self.geo.extended_l2 {
                        0
                    } else if has_backing {
                        make_bitmap(0, 0)
                    } else {
                        make_bitmap(u32::MAX, 0)
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
        let target = self.data_file.as_ref().unwrap_or(&self.file);
        for &(host, bytes) in &runs {
            match mode {
                Preallocation::Falloc => target.allocate(host, bytes)?,
                Preallocation::Full => {
                    let zeros = vec![0u8; bytes.min(1 << 20) as usize];
                    let mut pos = host;
                    while pos < host + bytes {
                        let n = (host + bytes - pos).min(zeros.len() as u64);
                        target.write_at(&zeros[..n as usize], pos)?;
                        pos += n;
                    }
                }
                _ => {}
            }
        }
        if target.len()? < max_end {
            target.set_len(max_end)?;
        }
        self.flush()
    }

    /// Changes the virtual size. Shrinking discards the clusters past the
    /// new end; growing makes the new range read as zero.
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
                self.discard_full(from, old_size - from)?;
            }
            self.set_size(new_size)?;
            return self.flush();
        }
        {
            let mut meta = self.lock();
            meta.grow_l1(&*self.file, entries)?;
        }
        self.set_size(new_size)?;
        // Whatever lies past the old end (an old cluster's tail, a longer
        // backing file) must read as zero.
        let visible_end = match &self.backing {
            Some(b) => b.virtual_size().min(new_size).max(old_size),
            None => old_size,
        };
        let tail_end = (old_size.div_ceil(cs) * cs).min(new_size).max(visible_end);
        if tail_end > old_size {
            self.write_zeroes(old_size, tail_end - old_size, true)?;
        }
        if prealloc != Preallocation::Off {
            let start = old_size.div_ceil(cs) * cs;
            if new_size > start {
                self.preallocate(start, new_size - start, prealloc)?;
            }
        }
        self.flush()
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

    /// Deallocates every cluster, so that the backing file shows through
    /// everywhere (what `commit` leaves behind without `-d`).
    pub fn make_empty(&self) -> Result<()> {
        self.check_writable()?;
        self.discard_full(0, self.size())?;
        self.flush()
    }

    /// Deallocates whole clusters outright (no zero flag), for shrinking.
    fn discard_full(&self, offset: u64, len: u64) -> Result<()> {
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
            for c in self.entry_refs(raw) {
                meta.rc.defer_free(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::create::{create, CreateOptions, Preallocation};
    use crate::device::ExtentKind;
    use crate::storage::MemStorage;

    #[test]
    fn preallocated_subclusters_over_a_named_backing_file_stay_unallocated() {
        // As at `create -b`: the backing file is named but not opened.
        for (backing, expect_unallocated) in [(Some("base.raw"), true), (None, false)] {
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
                // The clusters are allocated either way; only the
                // subcluster bitmap differs.
                let unallocated = matches!(e.kind, ExtentKind::Unallocated { .. });
                assert_eq!(unallocated, expect_unallocated, "{backing:?}: {e:?}");
            }
        }
    }
}
