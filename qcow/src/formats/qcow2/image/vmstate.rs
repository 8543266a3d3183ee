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
//! [`Qcow2::create_snapshot_with_vm_state`] records the snapshot, with
//! `vm_state_size` and `vm_clock_nsec`, moving the area into it: the
//! snapshot's L1 table takes the area's entries, which leave the active
//! table before the snapshot table points at them, so the area's clusters
//! keep their refcounts and the active area is empty again (QEMU empties
//! it too, so that the next snapshot copies nothing). A crash in between
//! leaks clusters at worst.
//!
//! [`Qcow2::read_vm_state`] reads a snapshot's area through the snapshot's
//! own L1 table, so a state can be read and checked before the disk is
//! reverted; every table offset it follows is checked against the file.

use super::vmstate_sink::{AlignedBuffer, ClusterSink, BUFFER_BYTES, MEMORY_ALIGN};
use super::Qcow2;
use crate::entries::{
    alloc_bits, make_bitmap, table_get, L2Entry, RawL2, FLAG_COPIED, OFFSET_MASK, SUBCLUSTERS,
};
use crate::error::{Error, Result};
use crate::header::l1_entries_for;
use crate::snapshot_table::Snapshot;

/// Guest offset where the VM-state area of a disk of `disk_size` bytes
/// starts: the first byte an L1 entry past the disk covers.
pub fn vm_state_offset(disk_size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let entry_bits = if extended_l2 { 4 } else { 3 };
    let l2_bits = cluster_bits - entry_bits;
    l1_entries_for(disk_size, cluster_bits, extended_l2) << (cluster_bits + l2_bits)
}

/// Bytes of pages a [`VmStateWriter`] keeps to leave in the page cache at
/// most ([`VmStateWriter::keep_cached`]): 4,096 pages, a record header
/// per MiB of a 2 GiB state; past that, readers find the rest on disk.
const MAX_KEPT_BYTES: usize = 16 << 20;

/// A page of the file.
const PAGE: u64 = MEMORY_ALIGN as u64;

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
/// The data goes out in buffers of whole clusters
/// (`vmstate_sink`: O_DIRECT writes in the background where the
/// file takes them).
pub struct VmStateWriter<'a> {
    image: &'a Qcow2,
    /// Host offset of each cluster of the area written so far.
    host_clusters: Vec<u64>,
    /// Where full buffers go.
    sink: ClusterSink,
    /// The buffer being filled, if any.
    buffer: Option<AlignedBuffer>,
    /// Bytes of `buffer` filled (less than its length).
    filled: usize,
    /// Ranges of the state (from, to) whose pages should end up in the
    /// page cache, ascending, not yet reached by a written buffer.
    cache_wanted: std::collections::VecDeque<(u64, u64)>,
    /// Pages written around the page cache that are to be written through
    /// it again once every direct write is done: (host offset, bytes).
    kept: Vec<(u64, Vec<u8>)>,
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
    pub(super) fn vm_state_l1_index(&self, disk_size: u64) -> usize {
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
            sink: ClusterSink::new(self.file.clone(), self.cluster_size()),
            buffer: None,
            filled: 0,
            cache_wanted: std::collections::VecDeque::new(),
            kept: Vec::new(),
            len: 0,
        })
    }

    /// Creates a snapshot of the disk that also holds the VM state written
    /// with [`Qcow2::vm_state_writer`] (`info.vm_state_size` bytes of it),
    /// then empties the active VM-state area.
    pub fn create_snapshot_with_vm_state(&self, name: &str, info: VmStateInfo) -> Result<Snapshot> {
        let snapshot = self.create_snapshot_recording(name, info, true)?;
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
            let buffer = match &mut self.buffer {
                Some(buffer) => buffer,
                None => self.buffer.insert(self.sink.buffer()?),
            };
            let n = (BUFFER_BYTES - self.filled).min(data.len());
            buffer.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            self.len += n as u64;
            if self.filled == BUFFER_BYTES {
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

    /// Asks that the pages holding the next `len` bytes appended end up in
    /// the host's page cache as well, where a reader looks first (a record
    /// header that an index reads before anything else). Writes around
    /// the page cache ([`VmStateWriter::is_direct`]) leave nothing there:
    /// these pages are written through it again, after the direct writes,
    /// up to `MAX_KEPT_BYTES` (16 MiB) of them.
    pub fn keep_cached(&mut self, len: u64) {
        if self.sink.is_direct() && len > 0 {
            self.cache_wanted.push_back((self.len, self.len + len));
        }
    }

    /// Copies the pages [`Self::keep_cached`] asked for out of `buffer`,
    /// which holds the state from `start` and goes to host offset `host`
    /// with `len` bytes (whole clusters, so whole pages).
    fn keep_pages(&mut self, buffer: &mut AlignedBuffer, start: u64, len: u64, host: u64) {
        let end = start + len;
        while let Some(&(from, to)) = self.cache_wanted.front() {
            if from >= end {
                break;
            }
            let first = from.max(start) - start;
            let last = to.min(end) - start;
            let mut page = first / PAGE * PAGE;
            while page < last {
                let at = host + page;
                let room = self.kept.len() * MEMORY_ALIGN < MAX_KEPT_BYTES;
                if room && self.kept.last().is_none_or(|&(h, _)| h != at) {
                    let bytes = &buffer.as_mut_slice()[page as usize..(page + PAGE) as usize];
                    self.kept.push((at, bytes.to_vec()));
                }
                page += PAGE;
            }
            if to > end {
                break;
            }
            self.cache_wanted.pop_front();
        }
    }

    /// Whether the data goes out through O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.sink.is_direct()
    }

    /// Writes the buffered bytes, padded to whole clusters, into newly
    /// allocated contiguous clusters (a full buffer is whole clusters: its
    /// length is a multiple of every cluster size).
    fn write_pending(&mut self) -> Result<()> {
        let Some(mut buffer) = self.buffer.take() else {
            return Ok(());
        };
        if self.filled == 0 {
            self.buffer = Some(buffer);
            return Ok(());
        }
        let image = self.image;
        let cs = image.cluster_size();
        debug_assert!((BUFFER_BYTES as u64).is_multiple_of(cs));
        let clusters = (self.filled as u64).div_ceil(cs);
        let len = (clusters * cs) as usize;
        buffer.as_mut_slice()[self.filled..len].fill(0);
        let start = self.len - self.filled as u64;
        self.filled = 0;
        let host = image.lock().alloc_clusters(&*image.file, clusters)?;
        if !self.cache_wanted.is_empty() {
            self.keep_pages(&mut buffer, start, len as u64, host);
        }
        self.sink.write(buffer, len, host)?;
        self.host_clusters
            .extend((0..clusters).map(|i| host + i * cs));
        Ok(())
    }

    /// Writes out what is buffered and points the active L1 table at the
    /// state: refcounts, data and L2 tables are durable before the L1
    /// entries. Returns the state's length, the snapshot's
    /// `vm_state_size`.
    pub fn finish(mut self) -> Result<u64> {
        self.write_pending()?;
        self.sink.finish()?;
        // After the direct writes, so that the cached pages are the ones
        // written.
        for (host, page) in std::mem::take(&mut self.kept) {
            self.image.file.write_at(&page, host)?;
        }
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
        // The refcounts' sync, when there is one, makes the data and the
        // tables durable too.
        if !meta.rc.flush(&*image.file)? {
            image.file.flush()?;
        }
        for t in 0..tables {
            let index = start + t;
            meta.l1[index] = (table_host + t as u64 * cs) | FLAG_COPIED;
            meta.l1_dirty.insert(index);
        }
        meta.flush(&*image.file)?;
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::formats::qcow2::create::{create, CreateOptions};
    use crate::storage::FileStorage;

    /// A state of `len` bytes that differs in every page.
    fn state(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    #[test]
    fn a_state_written_around_the_page_cache_reads_back_with_its_kept_pages() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("vm.qcow2"))
            .unwrap();
        let opts = CreateOptions {
            size: 4 << 20,
            ..CreateOptions::default()
        };
        let image = create(Arc::new(FileStorage::new(file)), None, None, &opts).unwrap();
        // Three buffers and a part; kept ranges inside a page, across two
        // pages, and across the first buffer's end.
        let data = state(3 * BUFFER_BYTES + 12_345);
        let marks = [0, 4090, 100_000, BUFFER_BYTES - 10, 2 * BUFFER_BYTES + 7];
        let mut w = image.vm_state_writer().unwrap();
        let mut at = 0;
        for &mark in &marks {
            w.write_all(&data[at..mark]).unwrap();
            w.keep_cached(28);
            at = mark;
        }
        w.write_all(&data[at..]).unwrap();
        if w.is_direct() {
            // The three full buffers went out with the marked pages kept,
            // once each: pages 0 and 1, page 24, the first buffer's last
            // page and the second's first, the third's first.
            assert_eq!(w.kept.len(), 6);
        }
        let size = w.finish().unwrap();
        assert_eq!(size, data.len() as u64);
        image
            .create_snapshot_with_vm_state(
                "s",
                VmStateInfo {
                    vm_state_size: size,
                    vm_clock_nsec: 0,
                },
            )
            .unwrap();
        let mut back = vec![0u8; data.len()];
        image.read_vm_state("s", 0, &mut back).unwrap();
        assert!(back == data, "the state read back differs");
    }

    #[test]
    fn kept_pages_are_those_asked_for() {
        let opts = CreateOptions {
            size: 1 << 20,
            ..CreateOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("vm.qcow2"))
            .unwrap();
        let image = create(Arc::new(FileStorage::new(file)), None, None, &opts).unwrap();
        let mut w = image.vm_state_writer().unwrap();
        if !w.is_direct() {
            eprintln!("no O_DIRECT here: nothing is kept");
            return;
        }
        let data = state(BUFFER_BYTES + 8192);
        w.write_all(&data[..4094]).unwrap();
        w.keep_cached(28); // pages 0 and 1
        w.write_all(&data[4094..BUFFER_BYTES - 4]).unwrap();
        w.keep_cached(28); // the first buffer's last page, the next one's first
        w.write_all(&data[BUFFER_BYTES - 4..]).unwrap();
        w.write_pending().unwrap();
        let first = w.host_clusters[0];
        let second = w.host_clusters[BUFFER_BYTES / 65536];
        let kept: Vec<u64> = w.kept.iter().map(|&(host, _)| host).collect();
        assert_eq!(
            kept,
            [
                first,
                first + 4096,
                first + BUFFER_BYTES as u64 - 4096,
                second
            ]
        );
        for (host, page) in &w.kept {
            let i = w
                .host_clusters
                .iter()
                .position(|&c| c == host / 65536 * 65536);
            let pos = i.unwrap() * 65536 + (host % 65536) as usize;
            assert!(page[..] == data[pos..pos + 4096], "page at {host}");
        }
        w.finish().unwrap();
    }
}
