//! Metadata areas other code of this crate lays out in an image (the
//! bitmap directory and tables): clusters allocated and freed through the
//! image's refcounts, and header changes written back in order.

use super::Qcow2;
use crate::error::Result;
use crate::extensions::HeaderCluster;

impl Qcow2 {
    /// Allocates clusters for `bytes` of metadata (at least one); returns
    /// the host offset. The caller writes them before pointing at them.
    pub fn alloc_metadata(&self, bytes: u64) -> Result<u64> {
        self.check_writable()?;
        let count = bytes.div_ceil(self.cluster_size()).max(1);
        self.lock().alloc_clusters(&*self.file, count)
    }

    /// Frees the clusters of `bytes` of metadata at `offset` (once the
    /// header no longer points at them).
    pub fn free_metadata(&self, offset: u64, bytes: u64) -> Result<()> {
        self.check_writable()?;
        let cs = self.cluster_size();
        let mut meta = self.lock();
        for i in 0..bytes.div_ceil(cs).max(1) {
            meta.rc.defer_free(offset / cs + i);
        }
        Ok(())
    }

    /// Changes the header cluster with `change` and writes it, after the
    /// refcounts of what it will point at are on disk.
    pub fn update_header(&self, change: impl FnOnce(&mut HeaderCluster)) -> Result<()> {
        self.check_writable()?;
        let mut meta = self.lock();
        meta.flush(&*self.file)?;
        change(&mut meta.hc);
        meta.write_header(&*self.file)
    }
}
