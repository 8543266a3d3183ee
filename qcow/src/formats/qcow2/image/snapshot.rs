//! Internal snapshots: create, list, apply (revert) and delete.
//!
//! Every operation keeps the image consistent at each step on disk:
//! refcounts go up and reach the disk before any table that relies on them
//! is referenced (a new snapshot table, a new active L1 table); references
//! are dropped from the header first and refcounts go down afterwards, so
//! a crash leaks clusters at worst.

use std::time::{SystemTime, UNIX_EPOCH};

use byteorder::{BigEndian, ByteOrder};

use super::meta::{Meta, ReplacedTree};
use super::vmstate::VmStateInfo;
use super::Qcow2;
use crate::entries::{table_get, L2Entry, RawL2, FLAG_COPIED, OFFSET_MASK};
use crate::error::{Error, Result};
use crate::header::l1_entries_for;
use crate::snapshot_table::{Snapshot, SnapshotTable, KNOWN_EXTRA_DATA};

/// Longest snapshot name accepted (the on-disk length field is 16 bits).
pub const MAX_SNAPSHOT_NAME: usize = 65535;

impl Qcow2 {
    /// The snapshots in the image's snapshot table.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let meta = self.lock();
        self.read_snapshot_table(&meta)
    }

    pub(super) fn read_snapshot_table(&self, meta: &Meta) -> Result<Vec<Snapshot>> {
        let h = &meta.hc.header;
        if h.nb_snapshots == 0 {
            return Ok(Vec::new());
        }
        SnapshotTable::parse(
            &*self.file,
            h.snapshots_offset,
            h.nb_snapshots,
            h.cluster_size(),
        )
    }

    pub(super) fn snapshot_preconditions(&self) -> Result<()> {
        self.check_writable()?;
        if self.data_file.is_some() {
            return Err(Error::Unsupported(
                "internal snapshots in an image with an external data file".into(),
            ));
        }
        Ok(())
    }

    /// Waits for writes in flight and writes out all metadata.
    pub(super) fn quiesce<'a>(
        &'a self,
        mut meta: std::sync::MutexGuard<'a, Meta>,
    ) -> Result<std::sync::MutexGuard<'a, Meta>> {
        while !meta.inflight.is_empty() {
            meta = self
                .inflight_done
                .wait(meta)
                .expect("metadata lock poisoned");
        }
        // A revert's old tree is freed before the next one touches the
        // refcounts.
        self.free_replaced(&mut meta)?;
        let freed = meta.flush(&*self.file)?;
        meta.forget_freed_tables(&freed);
        // Snapshot operations free clusters outside the deferred frees.
        meta.compressed_cursor = 0;
        *self.decompressed.lock().expect("lock poisoned") = None;
        Ok(meta)
    }

    pub(super) fn read_l1_table(&self, offset: u64, entries: u32) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; entries as usize * 8];
        self.file.read_at(&mut raw, offset)?;
        Ok((0..entries as usize).map(|i| table_get(&raw, i)).collect())
    }

    /// Adds `addend` to the refcount of every cluster reachable from `l1`:
    /// its L2 tables and the data clusters they point at.
    fn tree_refcounts(&self, meta: &mut Meta, l1: &[u64], addend: i64) -> Result<()> {
        if addend > 0 {
            // Refuse before changing anything if a refcount would overflow
            // (narrow refcount widths), so a failed snapshot leaves no trace.
            let mut wanted: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
            let mut order = Vec::new();
            self.visit_tree(meta, l1, &mut |c| {
                let n = wanted.entry(c).or_insert(0);
                if *n == 0 {
                    order.push(c);
                }
                *n += 1;
            })?;
            // A referenced cluster no refcount block covers (a corrupt
            // image): QEMU, raising the counts in tree order, meets it in
            // alloc_refcount_block, which adds an empty block for it
            // (growing the table past it, as for a free) and fails with
            // EAGAIN; or with EFBIG when the table cannot grow that far,
            // the block allocated and leaked. (The counts QEMU raised
            // before that cluster in tree order are not raised here.)
            if let Some(&c) = order.iter().find(|&&c| !meta.rc.has_block(c)) {
                let limit = meta.rc.beyond_table_limit(c);
                let failure = meta.rc.add_block_for_failed_free(&*self.file, c)?;
                if failure == crate::refcount::FreeFailure::TableTooLarge {
                    return Err(Error::RefcountTableTooLarge {
                        entries: limit.unwrap_or(crate::refcount::MAX_GROWN_TABLE_ENTRIES + 1),
                        max: crate::refcount::MAX_GROWN_TABLE_ENTRIES,
                    });
                }
                return Err(Error::RefcountBlockMissing { cluster: c });
            }
            let max = crate::refcount::max_refcount(meta.rc.order());
            for (&c, &n) in &wanted {
                let current = meta.rc.get(&*self.file, c)?;
                if current.saturating_add(n * addend as u64) > max {
                    return Err(Error::RefcountRange {
                        cluster: c,
                        direction: "overflow",
                        value: current,
                    });
                }
            }
        }
        self.apply_tree_refcounts(meta, l1, addend)
    }

    /// The host clusters one L1 entry references: its L2 table's cluster
    /// (last) and every data cluster the table points at, once per
    /// reference. `None` for an empty entry.
    fn table_refs(&self, meta: &mut Meta, index: usize, e: u64) -> Result<Option<Vec<u64>>> {
        let cs = self.cluster_size();
        let l2_offset = e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(None);
        }
        if !l2_offset.is_multiple_of(cs) || l2_offset + cs > meta.host_limit() {
            return Err(Error::InvalidEntry {
                what: "L1",
                index: index as u64,
                offset: l2_offset,
                reason: "L2 table is not aligned or lies beyond the end of the file",
            });
        }
        meta.load_l2(&*self.file, l2_offset)?;
        let table = meta.l2.get(l2_offset).expect("table was just loaded");
        let mut refs = Vec::new();
        for i in 0..self.geo.l2_entries() as usize {
            refs.extend(self.entry_refs(RawL2::get(table, i, self.geo.extended_l2)));
        }
        refs.push(l2_offset / cs);
        Ok(Some(refs))
    }

    /// Calls `f` with every host cluster a tree references, once per
    /// reference.
    fn visit_tree(&self, meta: &mut Meta, l1: &[u64], f: &mut dyn FnMut(u64)) -> Result<()> {
        for (index, &e) in l1.iter().enumerate() {
            for c in self.table_refs(meta, index, e)?.unwrap_or_default() {
                f(c);
            }
        }
        Ok(())
    }

    pub(super) fn apply_tree_refcounts(
        &self,
        meta: &mut Meta,
        l1: &[u64],
        addend: i64,
    ) -> Result<()> {
        for (index, &e) in l1.iter().enumerate() {
            for c in self.table_refs(meta, index, e)?.unwrap_or_default() {
                if meta.rc.add(&*self.file, c, addend)? == 0 {
                    meta.forget_freed_tables(&[c]);
                }
            }
        }
        Ok(())
    }

    /// Sets the COPIED flag of every active L1 and L2 entry exactly where
    /// the refcount is one.
    pub(super) fn fix_copied_flags(&self, meta: &mut Meta) -> Result<()> {
        let file = &*self.file;
        let cs = self.cluster_size();
        let entries = self.geo.l2_entries() as usize;
        for l1_index in 0..meta.l1.len() {
            let e = meta.l1[l1_index];
            let l2_offset = e & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let want = if meta.rc.get(file, l2_offset / cs)? == 1 {
                l2_offset | FLAG_COPIED
            } else {
                l2_offset
            };
            if want != e {
                meta.l1[l1_index] = want;
                meta.l1_dirty.insert(l1_index);
            }
            meta.load_l2(file, l2_offset)?;
            let table = meta
                .l2
                .get(l2_offset)
                .expect("table was just loaded")
                .to_vec();
            let mut changed = Vec::new();
            for i in 0..entries {
                let raw = RawL2::get(&table, i, self.geo.extended_l2);
                let host = match self.geo.decode_l2(raw.entry) {
                    L2Entry::Normal { host_offset, .. } | L2Entry::Zero { host_offset, .. }
                        if host_offset != 0 =>
                    {
                        host_offset
                    }
                    _ => continue,
                };
                let entry = if meta.rc.get(file, host / cs)? == 1 {
                    raw.entry | FLAG_COPIED
                } else {
                    raw.entry & !FLAG_COPIED
                };
                if entry != raw.entry {
                    changed.push((i, RawL2 { entry, ..raw }));
                }
            }
            if !changed.is_empty() {
                let t = meta.l2.get_mut(l2_offset).expect("table is cached");
                for (i, raw) in changed {
                    raw.set(t, i, self.geo.extended_l2);
                }
            }
        }
        Ok(())
    }

    /// Clears the COPIED flags in the L2 tables of `l1[moved..]`, entries
    /// that leave the active table for a snapshot's only (a moved
    /// VM-state area): an inactive table's flags must not say "written in
    /// place" once a revert shares it again (QEMU leaves a savevm's state
    /// without them too). The tables are changed in the cache, so they
    /// reach the disk in the flush that also drops them from the active
    /// table, before it (a crash between leaves flags cleared on clusters
    /// of refcount 1: harmless, and repaired by `check -r all`).
    fn clear_moved_copied_flags(&self, meta: &mut Meta, l1: &[u64], moved: usize) -> Result<()> {
        let cs = self.cluster_size();
        let extended = self.geo.extended_l2;
        for (index, &e) in l1.iter().enumerate().skip(moved) {
            let l2_offset = e & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            if !l2_offset.is_multiple_of(cs) || l2_offset + cs > meta.host_limit() {
                return Err(Error::InvalidEntry {
                    what: "L1",
                    index: index as u64,
                    offset: l2_offset,
                    reason: "L2 table is not aligned or lies beyond the end of the file",
                });
            }
            meta.load_l2(&*self.file, l2_offset)?;
            let entries = self.geo.l2_entries() as usize;
            let table = meta.l2.get(l2_offset).expect("table was just loaded");
            if (0..entries).all(|i| RawL2::get(table, i, extended).entry & FLAG_COPIED == 0) {
                continue;
            }
            let table = meta.l2.get_mut(l2_offset).expect("table is cached");
            for i in 0..entries {
                let raw = RawL2::get(table, i, extended);
                if raw.entry & FLAG_COPIED != 0 {
                    RawL2 {
                        entry: raw.entry & !FLAG_COPIED,
                        ..raw
                    }
                    .set(table, i, extended);
                }
            }
        }
        Ok(())
    }

    /// Writes `l1` into newly allocated clusters; returns their offset.
    fn write_new_l1(&self, meta: &mut Meta, l1: &[u64]) -> Result<u64> {
        let offset = self.alloc_l1(meta, l1.len())?;
        self.write_l1_at(offset, l1)?;
        Ok(offset)
    }

    /// Allocates the clusters of an L1 table of `entries` entries (offset 0
    /// for none).
    fn alloc_l1(&self, meta: &mut Meta, entries: usize) -> Result<u64> {
        if entries == 0 {
            return Ok(0);
        }
        let clusters = (entries as u64 * 8).div_ceil(self.cluster_size());
        meta.alloc_clusters(&*self.file, clusters)
    }

    /// Writes L1 table `l1` into the clusters [`Self::alloc_l1`] gave.
    fn write_l1_at(&self, offset: u64, l1: &[u64]) -> Result<()> {
        if l1.is_empty() {
            return Ok(());
        }
        let cs = self.cluster_size();
        let clusters = (l1.len() as u64 * 8).div_ceil(cs);
        let mut raw = vec![0u8; (clusters * cs) as usize];
        for (i, &e) in l1.iter().enumerate() {
            BigEndian::write_u64(&mut raw[i * 8..], e);
        }
        self.file.write_at(&raw, offset)
    }

    fn free_range(&self, meta: &mut Meta, offset: u64, len: u64) -> Result<()> {
        if offset == 0 || len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        for c in offset / cs..(offset + len).div_ceil(cs) {
            meta.rc.add(&*self.file, c, -1)?;
        }
        Ok(())
    }

    /// Bytes the stored snapshot table takes, refused when it runs past
    /// the end of the file: entries there read as zero (as QEMU reads
    /// them), but the clusters they claim are not the table's, so it may
    /// not be freed or rewritten (QEMU's overlap check marks such an image
    /// corrupt when it tries).
    fn stored_table_size(&self, meta: &Meta) -> Result<u64> {
        let h = &meta.hc.header;
        if h.nb_snapshots == 0 {
            return Ok(0);
        }
        let size =
            SnapshotTable::read_for_check(&*self.file, h.snapshots_offset, h.nb_snapshots, false)?
                .table_size;
        if h.snapshots_offset.saturating_add(size) > self.file.len()? {
            return Err(Error::InvalidTable {
                table: "snapshot table",
                offset: h.snapshots_offset,
                entries: h.nb_snapshots.into(),
                reason: "extends beyond the end of the file, so it cannot be rewritten",
            });
        }
        Ok(size)
    }

    /// Replaces the snapshot table: the new one is written and everything
    /// it relies on made durable before the header points at it; the old
    /// one is freed afterwards.
    pub(super) fn replace_snapshot_table(
        &self,
        meta: &mut Meta,
        snapshots: &[Snapshot],
    ) -> Result<()> {
        self.replace_snapshot_table_with(meta, snapshots, false)
    }

    /// [`Self::replace_snapshot_table`]; with `taking`, for a snapshot
    /// being taken, the metadata goes out under one sync before the
    /// header ([`Meta::flush_for_snapshot_header`] says when that is safe)
    /// instead of one per step.
    fn replace_snapshot_table_with(
        &self,
        meta: &mut Meta,
        snapshots: &[Snapshot],
        taking: bool,
    ) -> Result<()> {
        let file = &*self.file;
        let cs = self.cluster_size();
        let old_offset = meta.hc.header.snapshots_offset;
        let old_size = self.stored_table_size(meta)?;
        let bytes = SnapshotTable::write(snapshots);
        let new_offset = if snapshots.is_empty() {
            0
        } else {
            let clusters = (bytes.len() as u64).div_ceil(cs);
            let offset = meta.alloc_clusters(file, clusters)?;
            file.write_at(&bytes, offset)?;
            offset
        };
        if taking {
            meta.flush_for_snapshot_header(file)?;
        } else {
            meta.flush(file)?;
        }
        meta.hc.header.nb_snapshots = snapshots.len() as u32;
        meta.hc.header.snapshots_offset = new_offset;
        meta.write_header(file)?;
        self.free_range(meta, old_offset, old_size)
    }

    /// The snapshot's virtual size and the L1 entries it needs, refused
    /// over 32 MiB: the disk size comes from the file (viewing a snapshot
    /// sized 2^49 bytes wanted a 2^52-byte table; found by fuzzing).
    fn snapshot_l1_entries(&self, s: &Snapshot) -> Result<(u64, u64)> {
        let size = s.disk_size.unwrap_or(self.size());
        let needed = l1_entries_for(size, self.geo.cluster_bits, self.geo.extended_l2);
        if needed.saturating_mul(8) > crate::header::MAX_L1_BYTES {
            return Err(Error::InvalidTable {
                table: "L1 table",
                offset: s.l1_table_offset,
                entries: needed,
                reason: "larger than 32 MiB",
            });
        }
        Ok((size, needed))
    }

    fn find_snapshot(snapshots: &[Snapshot], id_or_name: &str) -> Result<usize> {
        snapshots
            .iter()
            .position(|s| s.id == id_or_name)
            .or_else(|| snapshots.iter().position(|s| s.name == id_or_name))
            .ok_or_else(|| Error::SnapshotNotFound {
                name: id_or_name.to_string(),
            })
    }

    /// Makes a read-only image show snapshot `id_or_name` instead of the
    /// active disk (for `convert -l`); nothing is written.
    pub fn view_snapshot(&self, id_or_name: &str) -> Result<()> {
        if self.writable {
            return Err(Error::Unsupported(
                "viewing a snapshot needs an image opened read-only".into(),
            ));
        }
        let mut meta = self.lock();
        let snapshots = self.read_snapshot_table(&meta)?;
        let s = &snapshots[Self::find_snapshot(&snapshots, id_or_name)?];
        s.validate_l1(self.cluster_size())?;
        let (size, needed) = self.snapshot_l1_entries(s)?;
        let mut l1 = self.read_l1_table(s.l1_table_offset, s.l1_size)?;
        if (l1.len() as u64) < needed {
            l1.resize(needed as usize, 0);
        }
        meta.l1 = l1;
        self.size.store(size, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The snapshot table entry with ID or name `id_or_name`.
    pub fn find_snapshot_entry(&self, id_or_name: &str) -> Result<Snapshot> {
        let meta = self.lock();
        let mut snapshots = self.read_snapshot_table(&meta)?;
        let index = Self::find_snapshot(&snapshots, id_or_name)?;
        Ok(snapshots.swap_remove(index))
    }

    /// Creates a disk-only snapshot of the current contents named `name`.
    pub fn create_snapshot(&self, name: &str) -> Result<Snapshot> {
        self.create_snapshot_recording(name, VmStateInfo::default(), false)
    }

    /// Creates a snapshot of the current contents (the active VM-state
    /// area included) recording `info`'s VM-state size and clock. With
    /// `move_vm_state`, the active VM-state area moves into the snapshot
    /// instead of being shared with it: its L1 entries leave the active
    /// table in the same flush that writes the snapshot's refcounts and
    /// flags, before the snapshot table points at them, so its clusters
    /// keep their counts (one reference moved, none added) and a crash in
    /// between leaks the area at worst. A VM state needs no copy in the
    /// active image (QEMU empties it there after its savevm too).
    pub(super) fn create_snapshot_recording(
        &self,
        name: &str,
        info: VmStateInfo,
        move_vm_state: bool,
    ) -> Result<Snapshot> {
        self.snapshot_preconditions()?;
        if name.is_empty() || name.len() > MAX_SNAPSHOT_NAME {
            return Err(Error::InvalidOption {
                option: "snapshot name",
                value: name.chars().take(64).collect(),
                reason: "must be 1 to 65535 bytes long",
            });
        }
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let mut snapshots = self.read_snapshot_table(&meta)?;
        if snapshots.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotExists {
                name: name.to_string(),
            });
        }
        if snapshots.len() >= crate::header::MAX_SNAPSHOTS as usize {
            return Err(Error::NoSpace(
                "the snapshot table is full (65536 snapshots)",
            ));
        }
        // Refused before anything changes.
        self.stored_table_size(&meta)?;
        let id = snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let l1 = meta.l1.clone();
        // The entries the snapshot shares with the active table: all, or
        // the disk's when the VM-state area moves.
        let shared = if move_vm_state {
            self.vm_state_l1_index(self.size()).min(l1.len())
        } else {
            l1.len()
        };
        // QEMU's order: the snapshot's L1 table is allocated before the
        // tree's refcounts grow. When one would overflow (narrow refcount
        // widths), nothing else changed, and the table's clusters stay
        // allocated: a leak `check` reports and repairs, as qemu-img leaves
        // it (qemu-iotests 112). The copy is written at once, as QEMU
        // writes it, and again below once the active flags are settled.
        let l1_table_offset = self.alloc_l1(&mut meta, l1.len())?;
        self.write_l1_at(l1_table_offset, &l1)?;
        if let Err(e) = self.tree_refcounts(&mut meta, &l1[..shared], 1) {
            meta.flush(&*self.file)?;
            return Err(e);
        }
        for index in shared..meta.l1.len() {
            if meta.l1[index] != 0 {
                meta.l1[index] = 0;
                meta.l1_dirty.insert(index);
            }
        }
        self.clear_moved_copied_flags(&mut meta, &l1, shared)?;
        self.fix_copied_flags(&mut meta)?;
        let mut snapshot_l1 = meta.l1.clone();
        for (to, &from) in snapshot_l1[shared..].iter_mut().zip(&l1[shared..]) {
            *to = from & !FLAG_COPIED;
        }
        let l1 = snapshot_l1;
        self.write_l1_at(l1_table_offset, &l1)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let snapshot = Snapshot {
            l1_table_offset,
            l1_size: l1.len() as u32,
            id: id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: info.vm_clock_nsec,
            vm_state_size: info.vm_state_size,
            extra_data_size: KNOWN_EXTRA_DATA,
            disk_size: Some(self.size()),
            // qemu-img records an icount of 0 (its snapshot info starts
            // zeroed), not the -1 of "no icount".
            icount: Some(0),
            unknown_extra_data: Vec::new(),
        };
        snapshots.push(snapshot.clone());
        self.replace_snapshot_table_with(&mut meta, &snapshots, true)?;
        meta.flush(&*self.file)?;
        Ok(snapshot)
    }

    /// Reverts the disk to snapshot `id_or_name` (its size included).
    pub fn apply_snapshot(&self, id_or_name: &str) -> Result<()> {
        self.apply_snapshot_unflushed(id_or_name)?;
        self.lock().flush(&*self.file)?;
        Ok(())
    }

    /// [`Self::apply_snapshot`] without its last flush, for a VM that
    /// reverts its running disk and flushes later (at its guest's next
    /// flush or when it closes the image): the new active table and the
    /// header that points at it are on disk when this returns, only the
    /// freeing of the old active tree (refcount decrements, the old L1
    /// table, COPIED flags) stays in the metadata cache. A crash before
    /// that reaches the disk leaks clusters (refcounts too high, which
    /// `check -r leaks` repairs) and corrupts nothing, since the header
    /// that no longer points at the old tree was synced first. It saves
    /// one `fdatasync` of a revert's critical path.
    pub fn apply_snapshot_unflushed(&self, id_or_name: &str) -> Result<()> {
        self.snapshot_preconditions()?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let replaced = self.switch_to_snapshot(&mut meta, id_or_name)?;
        // The header that no longer points at the old tree is on disk
        // before any of its refcounts goes down.
        self.file.flush()?;
        self.free_tree(&mut meta, replaced)
    }

    /// [`Self::apply_snapshot_unflushed`] that leaves every sync and the
    /// freeing of the old active tree for later, for a VM that resumes
    /// its guest first (no `fdatasync` on its critical path): the
    /// snapshot's tree has its new references in the metadata cache, the
    /// new active L1 table is written (not synced), and the header that
    /// points at it waits in memory, as the old tree keeps its
    /// references, until the next flush, [`Self::free_replaced_trees`],
    /// snapshot operation or close, whichever comes first, writes them
    /// (refcounts, tables and L1 entries under one sync, then the header,
    /// synced: `Meta::flush_with`); the old tree is freed after that, by
    /// any of them but a guest's flush ([`Self::flush_metadata`]).
    ///
    /// Crash safety: until then the header on disk is the old one and no
    /// refcount of the old tree goes down, so none of its clusters can be
    /// allocated again or overwritten; the guest's writes meanwhile go to
    /// new clusters of the new tree, which nothing on disk points at. A
    /// crash leaves on disk either the old header (the old tree whole:
    /// the revert undone, the new table and whatever refcounts reached
    /// the disk leaked) or, once written, the new one (the old tree
    /// counted though unreferenced): leaks either way, which `check -r
    /// leaks` repairs. A header is never written before the table it
    /// points at is synced (`Meta::l1_unsynced`).
    pub fn apply_snapshot_deferring_free(&self, id_or_name: &str) -> Result<()> {
        self.snapshot_preconditions()?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let replaced = self.switch_to_snapshot_deferred(&mut meta, id_or_name)?;
        meta.replaced.push(replaced);
        Ok(())
    }

    /// Frees the active trees [`Self::apply_snapshot_deferring_free`] left
    /// (the header is synced first), in the metadata cache: the
    /// decrements reach the disk at the next flush. Returns how many
    /// trees were freed (0 for a read-only image or none left).
    pub fn free_replaced_trees(&self) -> Result<usize> {
        if !self.writable {
            return Ok(0);
        }
        let mut meta = self.lock();
        self.free_replaced(&mut meta)
    }

    /// [`Self::free_replaced_trees`] under the caller's lock.
    pub(super) fn free_replaced(&self, meta: &mut Meta) -> Result<usize> {
        if meta.replaced.is_empty() {
            return Ok(0);
        }
        // A deferred switch's refcounts and tables, then its header, reach
        // the disk first (synced: `Meta::flush`).
        if meta.header_dirty || meta.l1_unsynced || meta.l1_unreferenced {
            meta.flush(&*self.file)?;
        }
        self.free_replaced_after_header(meta)
    }

    /// Frees the replaced trees in the cache once the header that stopped
    /// pointing at them is on disk (every header write is synced before
    /// anything else is written: `Meta::write_header`).
    pub(super) fn free_replaced_after_header(&self, meta: &mut Meta) -> Result<usize> {
        if meta.replaced.is_empty() {
            return Ok(0);
        }
        debug_assert!(!meta.header_dirty && !meta.l1_unreferenced);
        let trees = std::mem::take(&mut meta.replaced);
        let count = trees.len();
        for tree in trees {
            // A failure leaves the trees not yet freed leaked: never
            // freed twice.
            self.free_tree(meta, tree)?;
        }
        // As in `quiesce`: clusters were freed outside the deferred frees.
        meta.compressed_cursor = 0;
        *self.decompressed.lock().expect("lock poisoned") = None;
        Ok(count)
    }

    /// Points the active table at a copy of snapshot `id_or_name`'s (its
    /// size included): the snapshot's tree gains the references of the
    /// new table, which is written and synced with them, and the header
    /// is written (not synced) to point at it. Returns the old active
    /// tree, unreferenced but still counted.
    fn switch_to_snapshot(&self, meta: &mut Meta, id_or_name: &str) -> Result<ReplacedTree> {
        self.switch(meta, id_or_name, false)
    }

    /// [`Self::switch_to_snapshot`] that syncs nothing and writes no
    /// header: the refcounts stay in the cache, the new table is written
    /// unsynced ([`Meta::l1_unsynced`]) and the header marked dirty, for
    /// the next flush to write in order.
    fn switch_to_snapshot_deferred(
        &self,
        meta: &mut Meta,
        id_or_name: &str,
    ) -> Result<ReplacedTree> {
        self.switch(meta, id_or_name, true)
    }

    /// [`Self::switch_to_snapshot`], or with `deferred` its deferred form.
    fn switch(&self, meta: &mut Meta, id_or_name: &str, deferred: bool) -> Result<ReplacedTree> {
        let snapshots = self.read_snapshot_table(meta)?;
        let s = &snapshots[Self::find_snapshot(&snapshots, id_or_name)?];
        s.validate_l1(self.cluster_size())?;
        let (new_size, needed) = self.snapshot_l1_entries(s)?;
        let mut new_l1 = self.read_l1_table(s.l1_table_offset, s.l1_size)?;
        new_l1.resize(new_l1.len().max(needed as usize), 0);
        // The whole table, the VM-state area past the disk included, as
        // QEMU's qcow2_snapshot_goto copies it: after `snapshot -a` the
        // state a snapshot holds reads back at the VM-state offset
        // (qemu-iotests 029 reads it with `qemu-io -c "read -b"`).
        // The snapshot's tree gains the active table's references first.
        self.tree_refcounts(meta, &new_l1, 1)?;
        // Every cluster of the new tree is now counted by the snapshot
        // and by the active table: no COPIED flag belongs anywhere in it.
        // A snapshot's tables carry none (they are cleared when it is
        // taken); a stray one is cleared before the guest can write
        // through it in place.
        for e in &mut new_l1 {
            *e &= !FLAG_COPIED;
        }
        let stray_copied = self.tree_has_copied(meta, &new_l1)?;
        let new_offset = self.write_new_l1(meta, &new_l1)?;
        if !deferred {
            meta.flush(&*self.file)?;
        }
        let old_l1 = std::mem::replace(&mut meta.l1, new_l1);
        let old_offset = meta.hc.header.l1_table_offset;
        meta.l1_dirty.clear();
        meta.hc.header.l1_table_offset = new_offset;
        meta.hc.header.l1_size = meta.l1.len() as u32;
        meta.hc.header.size = new_size;
        if deferred {
            meta.l1_unsynced = true;
            meta.l1_unreferenced = true;
            meta.header_dirty = true;
        } else {
            meta.write_header_unsynced(&*self.file)?;
        }
        self.size
            .store(new_size, std::sync::atomic::Ordering::Release);
        if stray_copied {
            self.fix_copied_flags(meta)?;
        }
        Ok(ReplacedTree {
            l1: old_l1,
            l1_offset: old_offset,
        })
    }

    /// Whether an L2 entry of the tree of `l1` (whose L1 entries were
    /// checked) carries the COPIED flag.
    fn tree_has_copied(&self, meta: &mut Meta, l1: &[u64]) -> Result<bool> {
        for &e in l1 {
            let l2_offset = e & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            meta.load_l2(&*self.file, l2_offset)?;
            let table = meta.l2.get(l2_offset).expect("table was just loaded");
            let copied = (0..self.geo.l2_entries() as usize)
                .any(|i| RawL2::get(table, i, self.geo.extended_l2).entry & FLAG_COPIED != 0);
            if copied {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Drops the references of a replaced tree (its L2 tables, their data
    /// clusters and its L1 table), then sets the active table's COPIED
    /// flags where refcounts became one.
    fn free_tree(&self, meta: &mut Meta, tree: ReplacedTree) -> Result<()> {
        self.tree_refcounts(meta, &tree.l1, -1)?;
        self.free_range(meta, tree.l1_offset, tree.l1.len() as u64 * 8)?;
        self.fix_copied_flags(meta)
    }

    /// Deletes snapshot `id_or_name`, freeing what only it held.
    pub fn delete_snapshot(&self, id_or_name: &str) -> Result<()> {
        self.snapshot_preconditions()?;
        let meta = self.lock();
        let mut meta = self.quiesce(meta)?;
        let mut snapshots = self.read_snapshot_table(&meta)?;
        let index = Self::find_snapshot(&snapshots, id_or_name)?;
        snapshots[index].validate_l1(self.cluster_size())?;
        let s = snapshots.remove(index);
        self.replace_snapshot_table(&mut meta, &snapshots)?;
        let l1 = self.read_l1_table(s.l1_table_offset, s.l1_size)?;
        self.tree_refcounts(&mut meta, &l1, -1)?;
        self.free_range(&mut meta, s.l1_table_offset, u64::from(s.l1_size) * 8)?;
        self.fix_copied_flags(&mut meta)?;
        meta.flush(&*self.file)?;
        Ok(())
    }
}
