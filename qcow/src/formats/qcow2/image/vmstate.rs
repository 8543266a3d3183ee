//! The VM-state area: the guest RAM and device state a full snapshot keeps
//! beside its disk, stored past the virtual disk as QEMU's savevm stores it.
//!
//! The area starts at the first L1 entry past the virtual size (QEMU's
//! `l1_vm_state_index`), so its L2 tables are never shared with disk data.
//! A full snapshot is taken in three steps:
//! [`Qcow2::vm_state_writer`] empties the area of the active image and
//! hands out a [`VmStateWriter`] that appends the state in contiguous,
//! newly allocated clusters; [`VmStateWriter::finish`] points the active L1
//! table at them (refcounts, data and L2 tables reach the disk first);
//! [`Qcow2::create_snapshot_with_vm_state`] records the snapshot, whose L1
//! table then holds the area, with `vm_state_size` and `vm_clock_nsec`, and
//! empties the active area again (QEMU does the same, so that the next
//! snapshot copies nothing). A crash in between leaks clusters at worst.
//!
//! [`Qcow2::read_vm_state`] reads a snapshot's area through the snapshot's
//! own L1 table, so a state can be read and checked before the disk is
//! reverted; every table offset it follows is checked against the file.

use super::Qcow2;
use crate::entries::{
    alloc_bits, make_bitmap, table_get, L2Entry, RawL2, FLAG_COPIED, OFFSET_MASK, SUBCLUSTERS,
};
use crate::error::{Error, Result};
use crate::header::l1_entries_for;
use crate::snapshot_table::Snapshot;

/// Data buffered by a [`VmStateWriter`] before it is written out.
const WRITE_CHUNK: usize = 8 << 20;

/// Guest offset where the VM-state area of a disk of `disk_size` bytes
/// starts: the first byte an L1 entry past the disk covers.
pub fn vm_state_offset(disk_size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let entry_bits = if extended_l2 { 4 } else { 3 };
    let l2_bits = cluster_bits - entry_bits;
    l1_entries_for(disk_size, cluster_bits, extended_l2) << (cluster_bits + l2_bits)
}

/// What a full snapshot records about the VM beside its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmStateInfo {
    /// Bytes of VM state in the area (from [`VmStateWriter::finish`]).
    pub vm_state_size: u64,
    /// The guest clock at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
}

/// Appends a VM state to the active image's VM-state area. Nothing points
/// at the data until [`VmStateWriter::finish`]; dropping the writer leaks
/// the clusters it allocated (a check with `-r leaks` reclaims them).
pub struct VmStateWriter<'a> {
    image: &'a Qcow2,
    /// Host offset of each cluster of the area written so far.
    host_clusters: Vec<u64>,
    /// Bytes not yet written out (less than [`WRITE_CHUNK`]).
    pending: Vec<u8>,
    /// Bytes appended so far.
    len: u64,
}

impl Qcow2 {
    /// Where the VM-state area of the active image starts.
    pub fn vm_state_offset(&self) -> u64 {
        vm_state_offset(self.size(), self.geo.cluster_bits, self.geo.extended_l2)
    }

    /// L1 index of the first entry of the VM-state area for a disk of
    /// `disk_size` bytes.
    fn vm_state_l1_index(&self, disk_size: u64) -> usize {
        l1_entries_for(disk_size, self.geo.cluster_bits, self.geo.extended_l2) as usize
    }

    /// Drops every active L1 entry of the VM-state area: the entries are
    /// cleared on disk first, the refcounts decremented afterwards, so a
    /// crash leaks clusters at worst.
    pub(super) fn clear_active_vm_state(&self, meta: &mut super::meta::Meta) -> Result<()> {
        let start = self.vm_state_l1_index(self.size());
        if start >= meta.l1.len() || meta.l1[start..].iter().all(|&e| e & OFFSET_MASK == 0) {
            return Ok(());
        }
        let old: Vec<u64> = meta.l1[start..].to_vec();
        for index in start..meta.l1.len() {
            if meta.l1[index] != 0 {
                meta.l1[index] = 0;
                meta.l1_dirty.insert(index);
            }
        }
        let freed = meta.flush(&*self.file)?;
        meta.forget_freed_tables(&freed);
        self.apply_tree_refcounts(meta, &old, -1)?;
        meta.flush(&*self.file)?;
        Ok(())
    }

    /// Starts writing a VM state: empties the active VM-state area (a
    /// state left by an interrupted snapshot included) and returns a writer
    /// that appends from its first byte.
    pub fn vm_state_writer(&self) -> Result<VmStateWriter<'_>> {
        self.snapshot_preconditions()?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        self.clear_active_vm_state(&mut meta)?;
        Ok(VmStateWriter {
            image: self,
            host_clusters: Vec::new(),
            pending: Vec::with_capacity(WRITE_CHUNK),
            len: 0,
        })
    }

    /// Creates a snapshot of the disk that also holds the VM state written
    /// with [`Qcow2::vm_state_writer`] (`info.vm_state_size` bytes of it),
    /// then empties the active VM-state area.
    pub fn create_snapshot_with_vm_state(&self, name: &str, info: VmStateInfo) -> Result<Snapshot> {
        let snapshot = self.create_snapshot_recording(name, info)?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        self.clear_active_vm_state(&mut meta)?;
        self.fix_copied_flags(&mut meta)?;
        meta.flush(&*self.file)?;
        Ok(snapshot)
    }

    /// Reads `buf.len()` bytes of the VM state of snapshot `id_or_name`
    /// from byte `pos`, through the snapshot's own tables. Refuses a range
    /// past the recorded `vm_state_size`; clusters never written read as
    /// zero.
    pub fn read_vm_state(&self, id_or_name: &str, pos: u64, buf: &mut [u8]) -> Result<()> {
        let snapshot = self.find_snapshot_entry(id_or_name)?;
        snapshot.validate_l1(self.cluster_size())?;
        crate::device::check_range(pos, buf.len() as u64, snapshot.vm_state_size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let cs = self.cluster_size();
        let l2_entries = self.geo.l2_entries();
        let disk_size = snapshot.disk_size.unwrap_or(self.size());
        let area = vm_state_offset(disk_size, self.geo.cluster_bits, self.geo.extended_l2);
        let file_len = self.file.len()?;
        let start = area.checked_add(pos).ok_or(Error::OutOfRange {
            offset: pos,
            len: buf.len() as u64,
            size: snapshot.vm_state_size,
        })?;
        let end = start + buf.len() as u64;
        let first_l1 = start / cs / l2_entries;
        let last_l1 = (end - 1) / cs / l2_entries;
        if last_l1 >= u64::from(snapshot.l1_size) {
            // The table does not reach the area: it reads as zero.
            if first_l1 >= u64::from(snapshot.l1_size) {
                buf.fill(0);
                return Ok(());
            }
        }
        let l1_count = (last_l1.min(u64::from(snapshot.l1_size).saturating_sub(1)) - first_l1) + 1;
        let mut l1_raw = vec![0u8; l1_count as usize * 8];
        self.file
            .read_at(&mut l1_raw, snapshot.l1_table_offset + first_l1 * 8)?;
        let mut table = vec![0u8; cs as usize];
        let mut loaded_l2 = 0u64;
        let mut guest = start;
        while guest < end {
            let cluster = guest / cs;
            let in_cluster = guest % cs;
            let n = (cs - in_cluster).min(end - guest);
            let out_start = (guest - start) as usize;
            let out = &mut buf[out_start..out_start + n as usize];
            let l1_index = cluster / l2_entries;
            let l1_entry = if l1_index - first_l1 < l1_count {
                table_get(&l1_raw, (l1_index - first_l1) as usize)
            } else {
                0
            };
            let l2_offset = l1_entry & OFFSET_MASK;
            if l2_offset == 0 {
                out.fill(0);
                guest += n;
                continue;
            }
            self.check_vm_state_l2_table(l1_index, l2_offset, file_len)?;
            if loaded_l2 != l2_offset {
                self.file.read_at(&mut table, l2_offset)?;
                loaded_l2 = l2_offset;
            }
            let raw = RawL2::get(
                &table,
                (cluster % l2_entries) as usize,
                self.geo.extended_l2,
            );
            self.read_vm_state_cluster(raw, cluster, in_cluster, out, file_len)?;
            guest += n;
        }
        Ok(())
    }

    /// Fills `out` from byte `in_cluster` of the cluster `raw` describes.
    fn read_vm_state_cluster(
        &self,
        raw: RawL2,
        cluster: u64,
        in_cluster: u64,
        out: &mut [u8],
        file_len: u64,
    ) -> Result<()> {
        let cs = self.cluster_size();
        match self.geo.decode_l2(raw.entry) {
            L2Entry::Unallocated | L2Entry::Zero { .. } => out.fill(0),
            L2Entry::Compressed { .. } => {
                return Err(Error::Unsupported(
                    "a compressed cluster in a snapshot's VM state".into(),
                ))
            }
            L2Entry::Normal { host_offset, .. } => {
                self.check_vm_state_data_cluster(cluster, host_offset, file_len)?;
                if !self.geo.extended_l2 {
                    return self.file.read_at(out, host_offset + in_cluster);
                }
                // Subclusters not marked allocated read as zero.
                let sc = cs / u64::from(SUBCLUSTERS);
                let alloc = alloc_bits(raw.bitmap);
                let mut at = in_cluster;
                let end = in_cluster + out.len() as u64;
                while at < end {
                    let sub = at / sc;
                    let n = ((sub + 1) * sc).min(end) - at;
                    let o = &mut out[(at - in_cluster) as usize..(at - in_cluster + n) as usize];
                    if alloc & (1 << sub) != 0 {
                        self.file.read_at(o, host_offset + at)?;
                    } else {
                        o.fill(0);
                    }
                    at += n;
                }
            }
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Checks an L1 entry of a snapshot's VM-state area (untrusted: the
    /// image may come from anyone): its L2 table must be cluster-aligned
    /// and inside the file. Shared by the reader and [`Self::vm_state_map`].
    pub(super) fn check_vm_state_l2_table(
        &self,
        l1_index: u64,
        l2_offset: u64,
        file_len: u64,
    ) -> Result<()> {
        let cs = self.cluster_size();
        if !l2_offset.is_multiple_of(cs) || l2_offset.saturating_add(cs) > file_len {
            return Err(Error::InvalidEntry {
                what: "snapshot L1",
                index: l1_index,
                offset: l2_offset,
                reason: "L2 table is not aligned or lies beyond the end of the file",
            });
        }
        Ok(())
    }

    /// Checks a data cluster of a snapshot's VM-state area: cluster-aligned
    /// and inside the file. Shared by the reader and [`Self::vm_state_map`].
    pub(super) fn check_vm_state_data_cluster(
        &self,
        cluster: u64,
        host_offset: u64,
        file_len: u64,
    ) -> Result<()> {
        let cs = self.cluster_size();
        if !host_offset.is_multiple_of(cs) || host_offset.saturating_add(cs) > file_len {
            return Err(Error::InvalidEntry {
                what: "snapshot L2",
                index: cluster,
                offset: host_offset,
                reason: "data cluster is not aligned or lies beyond the end of the file",
            });
        }
        Ok(())
    }
}

impl VmStateWriter<'_> {
    /// Appends `data` to the state.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = WRITE_CHUNK - self.pending.len();
            let n = room.min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.len += n as u64;
            if self.pending.len() == WRITE_CHUNK {
                self.write_pending()?;
            }
        }
        Ok(())
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the buffered bytes, padded to whole clusters, into newly
    /// allocated contiguous clusters.
    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let image = self.image;
        let cs = image.cluster_size();
        let clusters = (self.pending.len() as u64).div_ceil(cs);
        self.pending.resize((clusters * cs) as usize, 0);
        let host = image.lock().alloc_clusters(&*image.file, clusters)?;
        image.file.write_at(&self.pending, host)?;
        self.host_clusters
            .extend((0..clusters).map(|i| host + i * cs));
        self.pending.clear();
        Ok(())
    }

    /// Writes out what is buffered and points the active L1 table at the
    /// state: refcounts, data and L2 tables are durable before the L1
    /// entries. Returns the state's length, the snapshot's
    /// `vm_state_size`.
    pub fn finish(mut self) -> Result<u64> {
        self.write_pending()?;
        let image = self.image;
        if self.host_clusters.is_empty() {
            return Ok(0);
        }
        let cs = image.cluster_size();
        let l2_entries = image.geo.l2_entries() as usize;
        let extended = image.geo.extended_l2;
        let start = image.vm_state_l1_index(image.size());
        let tables = self.host_clusters.len().div_ceil(l2_entries);
        let mut meta = image.lock();
        meta.grow_l1(&*image.file, (start + tables) as u64)?;
        let table_host = meta.alloc_clusters(&*image.file, tables as u64)?;
        let mut raw = vec![0u8; tables * cs as usize];
        for (i, &host) in self.host_clusters.iter().enumerate() {
            let entry = RawL2 {
                entry: host | FLAG_COPIED,
                bitmap: if extended {
                    make_bitmap(u32::MAX, 0)
                } else {
                    0
                },
            };
            let table = &mut raw[(i / l2_entries) * cs as usize..][..cs as usize];
            entry.set(table, i % l2_entries, extended);
        }
        image.file.write_at(&raw, table_host)?;
        meta.rc.flush(&*image.file)?;
        image.file.flush()?;
        for t in 0..tables {
            let index = start + t;
            meta.l1[index] = (table_host + t as u64 * cs) | FLAG_COPIED;
            meta.l1_dirty.insert(index);
        }
        meta.flush(&*image.file)?;
        Ok(self.len)
    }
}
