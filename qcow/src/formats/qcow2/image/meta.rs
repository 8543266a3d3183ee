//! The mutable metadata of an open image: header, L1 table, L2 cache and
//! refcounts, and the order in which they reach the disk.
//!
//! Flush order (see [`Meta::flush`]): refcount blocks, refcount table, L2
//! tables, L1 entries, header; each step synced before the next, so a
//! crash between steps leaves at worst leaked clusters. References dropped
//! by an L2/L1 update are only decremented afterwards. A header that
//! points at an active L1 table written but not yet synced
//! ([`Meta::l1_unsynced`], a revert that resumes its guest first) is
//! written only after a sync; while the header on disk does not point at
//! the active L1 table ([`Meta::l1_unreferenced`]) the steps before the
//! header share one sync, as do a snapshot's
//! ([`Meta::flush_for_snapshot_header`]).

use std::collections::{BTreeSet, HashSet};

use byteorder::{BigEndian, ByteOrder};

use crate::cache::TableCache;
use crate::entries::{table_get, Geometry, RawL2, FLAG_COPIED, OFFSET_MASK};
use crate::error::{Error, Result};
use crate::extensions::HeaderCluster;
use crate::refcount::{Refcounts, MAX_HOST_OFFSET};
use crate::storage::Storage;

/// A number as C's `%#x` prints it: `0` for zero, else `0x...` (QEMU's
/// corruption events use it for indexes).
pub fn c_hex(value: u64) -> String {
    if value == 0 {
        "0".to_string()
    } else {
        format!("{value:#x}")
    }
}

/// L2 tables kept in memory, in bytes.
pub const L2_CACHE_BYTES: usize = 4 << 20;

/// Decrements queued before an internal flush makes room.
pub const MAX_PENDING_FREES: usize = 65536;

/// Metadata state guarded by the image's lock.
pub struct Meta {
    pub hc: HeaderCluster,
    pub geo: Geometry,
    pub l1: Vec<u64>,
    pub l1_dirty: BTreeSet<usize>,
    pub l2: TableCache,
    pub rc: Refcounts,
    /// Guest clusters with an allocation or entry change in flight.
    pub inflight: HashSet<u64>,
    /// The header cluster must be rewritten at the next flush.
    pub header_dirty: bool,
    /// File length when opened, to refuse offsets past the end.
    pub file_len_at_open: u64,
    /// Next free byte for compressed data (0: start a new cluster).
    pub compressed_cursor: u64,
    /// The external data file, synced before tables that point into it.
    pub data_file: Option<std::sync::Arc<dyn Storage>>,
    /// Active trees a revert replaced and left to free later
    /// (`Qcow2::apply_snapshot_deferring_free`): still counted in the
    /// refcounts, so a process that dies first leaks their clusters.
    pub replaced: Vec<ReplacedTree>,
    /// The active L1 table was written to new clusters and not synced
    /// since (a deferred revert): the header that points at it is
    /// written only after a sync ([`Meta::write_header_unsynced`]).
    pub l1_unsynced: bool,
    /// The header on disk does not point at the active L1 table (a
    /// deferred revert's new table, whose header waits in memory), so no
    /// table of the active tree can be reached on disk yet: [`Meta::flush`]
    /// then writes refcounts, L2 tables and L1 entries under one sync
    /// before the header.
    pub l1_unreferenced: bool,
}

/// What [`Meta::flush_with`] did.
pub struct Flushed {
    /// Host clusters that became free, for discarding.
    pub freed: Vec<u64>,
    /// Whether it ended with a sync after its last write (everything
    /// written before it started is durable).
    pub synced: bool,
}

/// An active L1/L2 tree a revert replaced: the L1 table's entries and
/// where the table lies. Nothing references it any more but its own
/// refcounts, which stay until it is freed.
#[derive(Debug)]
pub struct ReplacedTree {
    /// The old active L1 table's entries.
    pub l1: Vec<u64>,
    /// The old active L1 table's host offset.
    pub l1_offset: u64,
}

impl Meta {
    /// Whether an unfinished write holds a guest cluster in
    /// `first..=last` (walking whichever is smaller, the range or the set).
    pub fn any_inflight(&self, first: u64, last: u64) -> bool {
        if self.inflight.is_empty() {
            false
        } else if last - first < self.inflight.len() as u64 {
            (first..=last).any(|c| self.inflight.contains(&c))
        } else {
            self.inflight.iter().any(|c| (first..=last).contains(c))
        }
    }

    /// Whether nothing awaits writing back: no dirty refcount block, table
    /// entry, L2 table, L1 entry or header, no deferred decrement and no
    /// replaced tree left to free.
    pub fn is_clean(&self) -> bool {
        !self.rc.is_dirty()
            && self.rc.pending_frees() == 0
            && !self.l2.has_dirty()
            && self.l1_dirty.is_empty()
            && !self.header_dirty
            && self.replaced.is_empty()
    }

    /// Highest host offset that can hold valid data right now.
    pub fn host_limit(&self) -> u64 {
        self.file_len_at_open
            .max(self.rc.alloc_end() << self.geo.cluster_bits)
    }

    fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    /// Validated L2 table offset of L1 entry `l1_index`, 0 if none.
    pub fn l2_offset(&self, l1_index: usize) -> Result<u64> {
        let Some(&entry) = self.l1.get(l1_index) else {
            return Ok(0);
        };
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            return Ok(0);
        }
        if !offset.is_multiple_of(self.cluster_size()) {
            // QEMU's qcow2_get_host_offset and get_cluster_table.
            return Err(Error::CorruptionFound {
                event: format!(
                    "L2 table offset {offset:#x} unaligned (L1 index: {})",
                    c_hex(l1_index as u64)
                ),
                marked: false,
                during: None,
            });
        }
        // A table past the end of the file reads as zeros (the file
        // pads reads past its end) and is written there, as QEMU's is.
        Ok(offset)
    }

    /// Makes room in the L2 cache, writing a dirty victim after the
    /// refcounts it depends on.
    fn make_l2_room(&mut self, file: &dyn Storage) -> Result<()> {
        if !self.l2.is_full() {
            return Ok(());
        }
        if let Some((victim, dirty)) = self.l2.victim() {
            if dirty {
                // Data the table points at (copied-in parts of clusters
                // included) must be durable before the table.
                if !self.rc.flush(file)? {
                    self.sync_data(file)?;
                } else if let Some(df) = &self.data_file {
                    df.flush()?;
                }
                self.l2.write_back(file, victim)?;
            }
            self.l2.remove(victim);
        }
        Ok(())
    }

    /// Loads an L2 table into the cache.
    pub fn load_l2(&mut self, file: &dyn Storage, l2_offset: u64) -> Result<()> {
        if self.l2.contains(l2_offset) {
            return Ok(());
        }
        self.make_l2_room(file)?;
        let mut data = vec![0u8; self.cluster_size() as usize];
        file.read_at(&mut data, l2_offset)?;
        self.l2.insert(l2_offset, data, false);
        Ok(())
    }

    /// The raw L2 entry of guest cluster `guest_cluster`.
    ///
    /// An aligned L2 table past the end of the file reads as zeros, as
    /// QEMU reads it (its file driver pads reads past the end): nothing
    /// in its range is allocated until a write puts entries there.
    pub fn l2_entry(&mut self, file: &dyn Storage, guest_cluster: u64) -> Result<RawL2> {
        let l2_entries = self.geo.l2_entries();
        let l1_index = (guest_cluster / l2_entries) as usize;
        let l2_offset = self.l2_offset(l1_index)?;
        if l2_offset == 0 {
            return Ok(RawL2::default());
        }
        self.load_l2(file, l2_offset)?;
        let table = self.l2.get(l2_offset).expect("table was just loaded");
        Ok(RawL2::get(
            table,
            (guest_cluster % l2_entries) as usize,
            self.geo.extended_l2,
        ))
    }

    /// Allocates `count` contiguous host clusters; returns the first offset.
    pub fn alloc_clusters(&mut self, file: &dyn Storage, count: u64) -> Result<u64> {
        let first = self.rc.alloc(file, count)?;
        let offset = first << self.geo.cluster_bits;
        if offset + (count << self.geo.cluster_bits) > MAX_HOST_OFFSET {
            return Err(Error::NoSpace("host offsets beyond 2^56"));
        }
        Ok(offset)
    }

    /// Allocates between 1 and `max` contiguous host clusters; returns the
    /// first offset and the count.
    pub fn alloc_some(&mut self, file: &dyn Storage, max: u64) -> Result<(u64, u64)> {
        let (first, count) = self.rc.alloc_some(file, max)?;
        let offset = first << self.geo.cluster_bits;
        if offset + (count << self.geo.cluster_bits) > MAX_HOST_OFFSET {
            return Err(Error::NoSpace("host offsets beyond 2^56"));
        }
        Ok((offset, count))
    }

    /// Makes the L2 table for `l1_index` writable (allocating it, or copying
    /// it if shared with a snapshot) and returns its offset.
    fn writable_l2(&mut self, file: &dyn Storage, l1_index: usize) -> Result<u64> {
        let entry = self.l1[l1_index];
        let old = self.l2_offset(l1_index)?;
        if old != 0 && entry & FLAG_COPIED != 0 {
            self.load_l2(file, old)?;
            return Ok(old);
        }
        let data = if old != 0 {
            self.load_l2(file, old)?;
            self.l2.get(old).expect("loaded").to_vec()
        } else {
            vec![0u8; self.cluster_size() as usize]
        };
        let new = self.alloc_clusters(file, 1)?;
        self.make_l2_room(file)?;
        self.l2.insert(new, data, true);
        self.l1[l1_index] = new | FLAG_COPIED;
        self.l1_dirty.insert(l1_index);
        if old != 0 {
            self.rc.defer_free(old >> self.geo.cluster_bits);
        }
        Ok(new)
    }

    /// Makes the L2 table that maps `guest_cluster` writable (allocating or
    /// copying it) ahead of the data clusters a write allocates for it, so
    /// that a new table lies before its data in the file, as QEMU orders
    /// them (its `l2_allocate` runs before the data clusters are taken).
    pub fn prepare_l2(&mut self, file: &dyn Storage, guest_cluster: u64) -> Result<()> {
        let l1_index = (guest_cluster / self.geo.l2_entries()) as usize;
        if l1_index >= self.l1.len() {
            return Err(Error::Corrupt(format!(
                "guest cluster {guest_cluster} is beyond the L1 table"
            )));
        }
        self.writable_l2(file, l1_index).map(|_| ())
    }

    /// Replaces the L2 entry of `guest_cluster`.
    pub fn set_l2_entry(
        &mut self,
        file: &dyn Storage,
        guest_cluster: u64,
        value: RawL2,
    ) -> Result<()> {
        let l2_entries = self.geo.l2_entries();
        let l1_index = (guest_cluster / l2_entries) as usize;
        if l1_index >= self.l1.len() {
            return Err(Error::Corrupt(format!(
                "guest cluster {guest_cluster} is beyond the L1 table"
            )));
        }
        let l2_offset = self.writable_l2(file, l1_index)?;
        let table = self.l2.get_mut(l2_offset).expect("table is cached");
        value.set(
            table,
            (guest_cluster % l2_entries) as usize,
            self.geo.extended_l2,
        );
        Ok(())
    }

    /// Writes all metadata in dependency order, syncing between steps, and
    /// then applies deferred frees. Returns host ranges that became free.
    pub fn flush(&mut self, file: &dyn Storage) -> Result<Vec<u64>> {
        Ok(self.flush_with(file, true)?.freed)
    }

    /// [`Meta::flush`]; with `sync_frees` false the deferred decrements
    /// are applied in the cache only (written at the next flush: a crash
    /// before leaks the clusters, as the references they drop are on disk).
    ///
    /// While the active L1 table is unreferenced ([`Meta::l1_unreferenced`])
    /// refcounts, L2 tables and L1 entries are written one after the other
    /// and synced once, then the header: nothing on disk reaches the new
    /// tables before that header, and the refcounts of such a state only
    /// grow (its decrements come after the header), so a crash before it
    /// leaks clusters at worst. The syncs between the steps otherwise keep
    /// a crash from leaving a reachable table that points at what is not
    /// on disk.
    pub fn flush_with(&mut self, file: &dyn Storage, sync_frees: bool) -> Result<Flushed> {
        let combined = self.l1_unreferenced;
        let wrote_refcounts = if combined {
            self.rc.write_back(file)?
        } else {
            self.rc.flush(file)?
        };
        let mut synced = wrote_refcounts && !combined;
        if synced {
            self.l1_unsynced = false;
        }
        if self.l2.has_dirty() {
            if combined {
                self.l2.write_back_all(file)?;
                synced = false;
            } else {
                // Everything the tables point at (copy-on-write fills that
                // changed no refcount included) reaches the disk first.
                if !synced {
                    self.sync_data(file)?;
                } else if let Some(df) = &self.data_file {
                    df.flush()?;
                }
                self.l2.write_back_all(file)?;
                file.flush()?;
                synced = true;
            }
        }
        if self.write_dirty_l1(file)? {
            if combined {
                synced = false;
            } else {
                file.flush()?;
                synced = true;
            }
        }
        if self.header_dirty {
            if combined {
                // The one sync of the tables and refcounts (and the
                // guest's data) before the header that reaches them.
                self.sync_data(file)?;
                self.l1_unsynced = false;
            }
            self.write_header(file)?;
            synced = true;
        } else if combined && !synced {
            self.sync_data(file)?;
            synced = true;
        }
        let mut freed = Vec::new();
        if self.rc.pending_frees() > 0 {
            freed = self.rc.apply_pending_frees(file)?;
            self.forget_freed_tables(&freed);
            if sync_frees && self.rc.flush(file)? {
                synced = true;
            }
        }
        Ok(Flushed { freed, synced })
    }

    /// Writes the changed L1 entries (unsynced); returns whether there
    /// were any.
    fn write_dirty_l1(&mut self, file: &dyn Storage) -> Result<bool> {
        if self.l1_dirty.is_empty() {
            return Ok(false);
        }
        let l1_offset = self.hc.header.l1_table_offset;
        let dirty = std::mem::take(&mut self.l1_dirty);
        // Write runs of adjacent entries in one piece.
        let dirty: Vec<usize> = dirty.into_iter().collect();
        let mut i = 0;
        while i < dirty.len() {
            let mut j = i;
            while j + 1 < dirty.len() && dirty[j + 1] == dirty[j] + 1 {
                j += 1;
            }
            let mut buf = vec![0u8; (j - i + 1) * 8];
            for (k, index) in (dirty[i]..=dirty[j]).enumerate() {
                BigEndian::write_u64(&mut buf[k * 8..], self.l1[index]);
            }
            file.write_at(&buf, l1_offset + dirty[i] as u64 * 8)?;
            i = j + 1;
        }
        Ok(true)
    }

    /// Writes refcounts, L2 tables and L1 entries under one sync, for a
    /// snapshot being taken: since the last flush the live tables only
    /// lost entries (a VM-state area moving into the snapshot) or had
    /// COPIED flags cleared (or set on clusters counted once), and what
    /// the snapshot adds (its L1 table, the snapshot table) is reached
    /// only through a header written after this. Whichever of these
    /// writes a crash lets reach the disk leaks clusters or leaves a flag
    /// in a direction that loses nothing (the refcounts only grew), as
    /// the crash between two synced steps would.
    pub fn flush_for_snapshot_header(&mut self, file: &dyn Storage) -> Result<()> {
        debug_assert_eq!(self.rc.pending_frees(), 0, "quiesced before");
        self.rc.write_back(file)?;
        if self.l2.has_dirty() {
            self.l2.write_back_all(file)?;
        }
        self.write_dirty_l1(file)?;
        self.sync_data(file)?;
        self.l1_unsynced = false;
        Ok(())
    }

    /// Drops cached L2 tables whose clusters were freed, so that a cluster
    /// reused for something else is never read or written as a stale table.
    pub fn forget_freed_tables(&mut self, freed: &[u64]) {
        let cursor_cluster = self.compressed_cursor >> self.geo.cluster_bits;
        for &c in freed {
            self.l2.remove(c << self.geo.cluster_bits);
            if self.compressed_cursor != 0 && c == cursor_cluster {
                // Never pack compressed data into a cluster that was freed.
                self.compressed_cursor = 0;
            }
        }
    }

    /// Makes data writes durable: the image file and the data file.
    fn sync_data(&self, file: &dyn Storage) -> Result<()> {
        if let Some(df) = &self.data_file {
            df.flush()?;
        }
        file.flush()
    }

    /// Rewrites the header cluster and syncs.
    pub fn write_header(&mut self, file: &dyn Storage) -> Result<()> {
        self.write_header_unsynced(file)?;
        file.flush().inspect_err(|_| self.header_dirty = true)
    }

    /// Rewrites the header cluster without syncing: the caller syncs
    /// before anything that relies on the new header being on disk.
    pub fn write_header_unsynced(&mut self, file: &dyn Storage) -> Result<()> {
        if self.l1_unsynced {
            // The table the header points at reaches the disk first.
            file.flush()?;
            self.l1_unsynced = false;
        }
        let (rt_offset, rt_clusters) = self.rc.table_location();
        self.hc.header.refcount_table_offset = rt_offset;
        self.hc.header.refcount_table_clusters = rt_clusters as u32;
        let buf = self.hc.write()?;
        let len = self.hc.header.cluster_size().min(buf.len() as u64) as usize;
        file.write_at(&buf[..len], 0)?;
        self.header_dirty = false;
        self.l1_unreferenced = false;
        Ok(())
    }

    /// Reads the active L1 table.
    pub fn read_l1(file: &dyn Storage, offset: u64, entries: u32) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; entries as usize * 8];
        file.read_at(&mut raw, offset)?;
        // As QEMU, entries are checked where they are used
        // ([`Meta::l2_offset`]), so that an operation meeting a bad one
        // can signal corruption.
        Ok((0..entries as usize).map(|i| table_get(&raw, i)).collect())
    }

    /// Moves the active L1 table to a larger one of `entries` entries.
    pub fn grow_l1(&mut self, file: &dyn Storage, entries: u64) -> Result<()> {
        if entries <= self.l1.len() as u64 {
            return Ok(());
        }
        if entries * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::InvalidTable {
                table: "L1 table",
                offset: self.hc.header.l1_table_offset,
                entries,
                reason: "larger than 32 MiB",
            });
        }
        // Everything the new table refers to must be on disk first.
        self.flush(file)?;
        let cs = self.cluster_size();
        let clusters = (entries * 8).div_ceil(cs);
        let new_offset = self.alloc_clusters(file, clusters)?;
        let mut l1 = self.l1.clone();
        l1.resize(entries as usize, 0);
        let mut raw = vec![0u8; (clusters * cs) as usize];
        for (i, &e) in l1.iter().enumerate() {
            BigEndian::write_u64(&mut raw[i * 8..], e);
        }
        // The new table's refcount and the table itself, under one sync:
        // nothing on disk reaches the table before the header does.
        self.rc.write_back(file)?;
        file.write_at(&raw, new_offset)?;
        file.flush()?;
        let old_offset = self.hc.header.l1_table_offset;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        self.hc.header.l1_table_offset = new_offset;
        self.hc.header.l1_size = entries as u32;
        self.l1 = l1;
        self.write_header(file)?;
        // The old table's decrement, after the header's sync, waits for
        // the next flush (a crash before leaks it).
        if old_offset != 0 {
            for c in 0..old_clusters {
                self.rc.add(file, (old_offset / cs) + c, -1)?;
            }
        }
        Ok(())
    }
}
