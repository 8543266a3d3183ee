//! Whether an image looks made with `preallocation=metadata`, as QEMU 10's
//! qcow2_detect_metadata_preallocation decides it: more clusters counted
//! in use than the host file has allocated. QEMU's block status then asks
//! the host file about the data clusters' host ranges
//! (`BDRV_BLOCK_RECURSE`), so that clusters in the file's holes read as
//! zero for `map`, `convert` and `compare`
//! ([`crate::device::BlockRead::asks_file_about_data`]).

use super::Qcow2;
use crate::error::Result;

impl Qcow2 {
    /// Whether the image looks made with `preallocation=metadata`: at least
    /// `max(allocated * 10 / 9, allocated + 2)` clusters of the file have a
    /// non-zero refcount, where `allocated` is the clusters the host file
    /// has allocated. Decided once per open image, as QEMU decides it at
    /// the first block status; false where the host cannot say what it
    /// allocated, or where a refcount cannot be read.
    pub fn metadata_preallocation(&self) -> bool {
        *self
            .metadata_prealloc
            .get_or_init(|| self.detect_metadata_preallocation().unwrap_or(false))
    }

    fn detect_metadata_preallocation(&self) -> Result<bool> {
        let Some(allocated) = self.file.allocated_bytes() else {
            return Ok(false);
        };
        let cluster_size = self.geo.cluster_size();
        let allocated_clusters = allocated / cluster_size;
        let threshold = (allocated_clusters * 10 / 9).max(allocated_clusters + 2);
        let end_cluster = self.file.len()?.div_ceil(cluster_size);
        let mut meta = self.lock();
        // Clusters no refcount block covers are free: the walk skips
        // them, so it visits only the ranges of present blocks.
        let per_block = (cluster_size * 8) >> meta.rc.order();
        let end_cluster = end_cluster.min((meta.rc.table().len() as u64).saturating_mul(per_block));
        let mut in_use = 0u64;
        let mut cluster = 0u64;
        while cluster < end_cluster && in_use < threshold {
            if !meta.rc.has_block(cluster) {
                cluster = (cluster / per_block + 1) * per_block;
                continue;
            }
            if meta.rc.get(&*self.file, cluster)? != 0 {
                in_use += 1;
            }
            cluster += 1;
        }
        Ok(in_use >= threshold)
    }
}
