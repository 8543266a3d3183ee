//! Writing compressed clusters: compressed data is packed byte by byte into
//! host clusters, each host cluster counting one reference per compressed
//! cluster that touches it.

use super::Qcow2;
use crate::compress;
use crate::entries::RawL2;
use crate::error::{Error, Result};

impl Qcow2 {
    /// Writes one whole guest cluster, compressed when that makes it smaller
    /// and stored normally otherwise. Returns whether it was compressed.
    /// The disk's last cluster may be given short when the disk ends inside
    /// it: it is padded with zeros, as QEMU pads it.
    pub fn write_compressed(&self, guest_cluster: u64, data: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let cs = self.cluster_size();
        let len = data.len() as u64;
        let ends_disk = guest_cluster
            .checked_mul(cs)
            .and_then(|start| start.checked_add(len))
            == Some(self.size());
        if len > cs || (len < cs && !ends_disk) || len == 0 {
            return Err(Error::Unsupported(format!(
                "compressed writes need whole clusters ({} bytes, got {})",
                cs,
                data.len()
            )));
        }
        let written = if len < cs {
            let mut padded = vec![0u8; cs as usize];
            padded[..data.len()].copy_from_slice(data);
            self.write_compressed_cluster(guest_cluster, &padded, len)?
        } else {
            self.write_compressed_cluster(guest_cluster, data, cs)?
        };
        self.mark_bitmaps_dirty(guest_cluster * cs, len);
        Ok(written)
    }

    /// Writes a whole cluster's bytes (`data`), of which the first
    /// `guest_len` lie inside the disk.
    fn write_compressed_cluster(
        &self,
        guest_cluster: u64,
        data: &[u8],
        guest_len: u64,
    ) -> Result<bool> {
        let cs = self.cluster_size();
        if self.data_file.is_some() {
            return Err(Error::Unsupported(
                "compressed clusters in an image with an external data file".into(),
            ));
        }
        let guest_offset = guest_cluster * cs;
        crate::device::check_range(guest_offset, guest_len, self.size())?;
        // Leave room so that the sector count never exceeds one cluster.
        let Some(compressed) = compress::compress(self.compression, data, cs as usize - 512)?
        else {
            self.write_at(&data[..guest_len as usize], guest_offset)?;
            return Ok(false);
        };
        let len = compressed.len() as u64;
        let (host_offset, old) = {
            let meta = self.lock();
            let mut meta = self.wait_not_inflight(meta, guest_cluster, guest_cluster);
            let old = meta.l2_entry(&*self.file, guest_cluster)?;
            // The table first, then the bytes (QEMU's order).
            meta.prepare_l2(&*self.file, guest_cluster)?;
            let cursor = meta.compressed_cursor;
            // Pack after the previous compressed cluster when its host
            // cluster's refcount can count one more user (1-bit refcounts
            // cannot); spill into the next host cluster when that one is
            // free and comes next, as QEMU packs them.
            let shareable = cursor != 0
                && !cursor.is_multiple_of(cs)
                && meta.rc.get(&*self.file, cursor / cs)?
                    < crate::refcount::max_refcount(meta.rc.order());
            let host_offset = if shareable && cursor % cs + len <= cs {
                meta.rc.add(&*self.file, cursor / cs, 1)?;
                cursor
            } else if shareable {
                let (next, _) = meta.alloc_some(&*self.file, 1)?;
                if next == (cursor / cs + 1) * cs {
                    meta.rc.add(&*self.file, cursor / cs, 1)?;
                    cursor
                } else {
                    next
                }
            } else {
                meta.alloc_clusters(&*self.file, 1)?
            };
            meta.compressed_cursor = host_offset + len;
            meta.inflight.insert(guest_cluster);
            (host_offset, old)
        };
        // A cached decompression of whatever used this offset before is
        // stale from now on.
        *self.decompressed.lock().expect("lock poisoned") = None;
        let result = self.file.write_at(&compressed, host_offset);
        let mut meta = self.lock();
        meta.inflight.remove(&guest_cluster);
        self.inflight_done.notify_all();
        result?;
        let entry = self.geo.encode_compressed(host_offset, len);
        meta.set_l2_entry(&*self.file, guest_cluster, RawL2 { entry, bitmap: 0 })?;
        self.free_entry(&mut meta, old);
        Ok(true)
    }
}
