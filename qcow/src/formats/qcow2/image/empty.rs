//! Emptying an image after `commit`, as QEMU's `qcow2_make_empty` does:
//! where nothing but the active tables lives in the file, it is reset to
//! a header, a one-cluster refcount table, one refcount block and an empty
//! L1 table, and truncated there; otherwise every active cluster is
//! discarded.

use super::meta::L2_CACHE_BYTES;
use super::Qcow2;
use crate::cache::TableCache;
use crate::crypto::CRYPT_LUKS;
use crate::error::Result;
use crate::header::INCOMPAT_DIRTY;
use crate::refcount::Refcounts;

impl Qcow2 {
    /// Drops every active cluster, as qemu-img commit leaves its top.
    pub fn make_empty(&self) -> Result<()> {
        self.check_writable()?;
        if self.can_reset_completely() {
            self.flush()?;
            return self.reset_completely();
        }
        self.discard_full(0, self.size())?;
        self.flush()
    }

    /// QEMU's condition for `make_completely_empty`: a v3 image (it needs
    /// the dirty bit) with nothing but the active tables in it (no
    /// snapshots, persistent bitmaps, LUKS header or data file) whose new
    /// metadata fits under one refcount block.
    fn can_reset_completely(&self) -> bool {
        let meta = self.lock();
        let h = &meta.hc.header;
        let per_block = (h.cluster_size() * 8) >> h.refcount_order;
        h.version >= 3
            && h.nb_snapshots == 0
            && !meta.hc.has_bitmaps()
            && h.crypt_method != CRYPT_LUKS
            && !self.geo.data_file
            && 3 + self.l1_clusters(&meta) <= per_block
    }

    fn l1_clusters(&self, meta: &super::Meta) -> u64 {
        (u64::from(meta.hc.header.l1_size) * 8).div_ceil(meta.hc.header.cluster_size())
    }

    /// Rewrites a clean image as an empty one: the header stays in
    /// cluster 0, the refcount table goes to cluster 1, its one block to
    /// cluster 2 and the (zeroed) L1 table to cluster 3, and the file ends
    /// there. The dirty bit is set for the duration, so a crash between
    /// the steps leaves an image whose refcounts are rebuilt on open.
    fn reset_completely(&self) -> Result<()> {
        let file = &*self.file;
        let mut meta = self.lock();
        let cs = meta.hc.header.cluster_size();
        let l1_clusters = self.l1_clusters(&meta);
        meta.hc.header.incompatible_features |= INCOMPAT_DIRTY;
        meta.write_header(file)?;

        let zeros = vec![0u8; cs as usize];
        let old_l1 = meta.hc.header.l1_table_offset;
        for c in 0..l1_clusters {
            file.write_at(&zeros, old_l1 + c * cs)?;
        }
        for c in 1..3 + l1_clusters {
            file.write_at(&zeros, c * cs)?;
        }
        file.write_at(&(2 * cs).to_be_bytes(), cs)?;
        file.set_len((3 + l1_clusters) * cs)?;
        file.flush()?;

        let h = &meta.hc.header;
        let mut rc = Refcounts::load(file, h.cluster_bits, h.refcount_order, cs, 1)?;
        for cluster in 0..3 + l1_clusters {
            rc.set(file, cluster, 1)?;
        }
        rc.flush(file)?;
        meta.rc = rc;
        meta.l1 = vec![0; meta.l1.len()];
        meta.l1_dirty.clear();
        meta.l2 = TableCache::new(cs as usize, L2_CACHE_BYTES / cs as usize);
        meta.compressed_cursor = 0;
        meta.replaced.clear();
        meta.file_len_at_open = (3 + l1_clusters) * cs;
        meta.hc.header.l1_table_offset = 3 * cs;
        meta.hc.header.incompatible_features &= !INCOMPAT_DIRTY;
        meta.write_header(file)?;
        drop(meta);
        *self
            .decompressed
            .lock()
            .expect("decompressed cache lock poisoned") = None;
        Ok(())
    }
}
