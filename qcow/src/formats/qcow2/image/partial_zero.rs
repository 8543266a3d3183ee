//! Zeroing parts of clusters, as QEMU 10's qcow2_co_pwrite_zeroes does
//! for a request (or a request's head or tail) that covers no cluster
//! whole: the whole cluster becomes a zero cluster when the rest of it
//! already reads as zero through the whole backing chain and the cluster
//! holds no data at this layer; otherwise the zeros are written.

use super::Qcow2;
use crate::device::chain_reads_zero;
use crate::entries::{L2Entry, RawL2, FLAG_ZERO};
use crate::error::{Error, Result};

impl Qcow2 {
    /// Zeroes `len` bytes at `offset` that cover no cluster whole, one
    /// cluster at a time as QEMU's block layer splits them (corruption
    /// found on the way fails it as [`Error::NoMediumAfterCorruption`]):
    /// a cluster whose other bytes read as zero in the chain's block
    /// status and that is unallocated or a zero cluster here becomes, or
    /// stays, a zero cluster (a preallocated one unmapped when
    /// `may_unmap`); any other gets the zeros written (a copy-up from the
    /// backing file where it has none).
    pub(super) fn zero_parts_of_clusters(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let end = offset + len;
        let mut start = offset;
        while start < end {
            let piece_end = end.min((start / cs + 1) * cs);
            if let Err(e) = self.map_partial_clusters(start, piece_end - start) {
                // The image is marked and stops; QEMU's fallback write then
                // meets a node without a driver.
                return Err(match self.signal_corruption(e) {
                    Error::CorruptionFound {
                        event,
                        marked: true,
                        ..
                    } => Error::NoMediumAfterCorruption { event },
                    e => e,
                });
            }
            if !self.zero_cluster_if_rest_reads_zero(start, piece_end, may_unmap)? {
                self.write_zero_bytes(start, piece_end - start)?;
            }
            start = piece_end;
        }
        Ok(())
    }

    /// Makes the cluster holding guest bytes `[start, piece_end)` a zero
    /// cluster if the cluster's other bytes (up to the disk's end) read as
    /// zero through the chain and it is unallocated or a zero cluster at
    /// this layer (a version 3 image with standard L2 entries); returns
    /// whether it did. As QEMU, the chain is asked before the image is
    /// locked and the entry is looked at again under the lock.
    fn zero_cluster_if_rest_reads_zero(
        &self,
        start: u64,
        piece_end: u64,
        may_unmap: bool,
    ) -> Result<bool> {
        if self.geo.version < 3 || self.geo.extended_l2 {
            return Ok(false);
        }
        let cs = self.cluster_size();
        let guest_cluster = start / cs;
        let cluster_start = guest_cluster * cs;
        let cluster_end = (cluster_start + cs).min(self.size());
        if !chain_reads_zero(self, cluster_start, start - cluster_start)?
            || !chain_reads_zero(self, piece_end, cluster_end.saturating_sub(piece_end))?
        {
            return Ok(false);
        }
        let meta = self.lock();
        let mut meta = self.wait_not_inflight(meta, guest_cluster, guest_cluster);
        let raw = meta.l2_entry(&*self.file, guest_cluster)?;
        let zero = RawL2 {
            entry: FLAG_ZERO,
            bitmap: 0,
        };
        match self.geo.decode_l2(raw.entry) {
            L2Entry::Zero { host_offset, .. } if may_unmap && host_offset != 0 => {
                meta.set_l2_entry(&*self.file, guest_cluster, zero)?;
                self.free_entry(&mut meta, raw);
                Ok(true)
            }
            L2Entry::Zero { .. } => {
                // Unchanged, but QEMU takes its table for writing (a
                // table shared with a snapshot is copied).
                meta.prepare_l2(&*self.file, guest_cluster)?;
                Ok(true)
            }
            L2Entry::Unallocated => {
                meta.set_l2_entry(&*self.file, guest_cluster, zero)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Looks up the mapping of the clusters that `len` bytes at `offset`
    /// touch, as QEMU's pwrite_zeroes asks the block status of the rest of
    /// a cluster it zeroes only in part before it writes zeros: a bad entry
    /// there is found, and signalled, in the read path's words (`Cluster
    /// allocation offset ... unaligned (L2 offset: ..., L2 index: ...)`),
    /// not the write path's.
    fn map_partial_clusters(&self, offset: u64, len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let start = offset - offset % cs;
        let end = offset
            .saturating_add(len)
            .div_ceil(cs)
            .saturating_mul(cs)
            .min(self.size());
        let mut extents = Vec::new();
        self.extents_into(start, end - start, &mut extents)
    }
}
