//! The snapshot table part of the check (QEMU's
//! qcow2_check_read_snapshot_table and qcow2_check_fix_snapshot_table):
//! reading the table leniently, dropping what cannot be kept with
//! `Repair::All`, and rewriting the table when entries need repair.

use byteorder::{BigEndian, ByteOrder};

use super::{Ctx, Flow, Repair, Stop, EFBIG, EINVAL, EIO};
use crate::error::{Error, Result};
use crate::header::MAX_SNAPSHOTS;
use crate::refcount::Refcounts;
use crate::snapshot_table::{
    SnapshotTable, ENTRY_HEADER_LEN, KNOWN_EXTRA_DATA, MAX_EXTRA_DATA, V3_MIN_EXTRA_DATA,
};

impl Ctx<'_> {
    /// Reads the snapshot table; counts go to `self.res`.
    pub(super) fn read_snapshot_table(&mut self) -> Flow<()> {
        let fix = self.fix;
        let offset = self.raw_snapshots_offset;
        let mut nb = self.raw_nb_snapshots;
        let mut reduced = 0u64;
        if nb > MAX_SNAPSHOTS && fix.errors() {
            self.msg(format!(
                "Discarding {} overhanging snapshots",
                nb - MAX_SNAPSHOTS
            ));
            reduced += u64::from(nb - MAX_SNAPSHOTS);
            nb = MAX_SNAPSHOTS;
        }
        // QEMU's qcow2_validate_table.
        if nb > MAX_SNAPSHOTS {
            self.res.check_errors += 1;
            self.msg("ERROR snapshot table too large".to_string());
            self.msg(format!(
                "You can force-remove all {} overhanging snapshots with qemu-img check -r all",
                nb - MAX_SNAPSHOTS
            ));
            return Err(Stop::Abort(EFBIG));
        }
        let table_bytes = u64::from(nb) * ENTRY_HEADER_LEN;
        if i64::MAX as u64 - table_bytes < offset || offset & (self.cluster_size - 1) != 0 {
            self.res.check_errors += 1;
            self.msg("ERROR snapshot table offset invalid".to_string());
            return Err(Stop::Abort(EINVAL));
        }
        let read = match SnapshotTable::read_for_check(self.storage, offset, nb, fix.errors()) {
            Ok(r) => r,
            Err(e) => {
                self.res.check_errors += 1;
                let prefix = "ERROR failed to read the snapshot table";
                return Err(match e {
                    Error::SnapshotExtraDataTooLarge { index, .. } => {
                        self.msg(format!(
                            "{prefix}: Too much extra metadata in snapshot table entry {index}"
                        ));
                        self.msg(
                            "You can force-remove this extra metadata with qemu-img check -r all"
                                .to_string(),
                        );
                        Stop::Abort(EFBIG)
                    }
                    Error::SnapshotTableTooBig { overhanging, .. } => {
                        self.msg(format!("{prefix}: Snapshot table is too big"));
                        self.msg(format!(
                            "You can force-remove all {overhanging} overhanging snapshots with \
                             qemu-img check -r all"
                        ));
                        Stop::Abort(EFBIG)
                    }
                    other => {
                        self.msg(format!("{prefix}: Failed to read snapshot table: {other}"));
                        Stop::Abort(EIO)
                    }
                });
            }
        };
        for &(index, size) in &read.truncated {
            self.msg(format!(
                "Discarding too much extra metadata in snapshot table entry {index} ({size} > \
                 {MAX_EXTRA_DATA})"
            ));
        }
        if read.dropped > 0 {
            self.msg(format!(
                "Discarding {} overhanging snapshots (snapshot table is too big)",
                read.dropped
            ));
            reduced += u64::from(read.dropped);
        }
        self.res.corruptions += reduced + read.truncated.len() as u64;
        self.snapshots = read.snapshots;
        self.snapshots_offset = offset;
        self.snapshots_size = read.table_size;
        if reduced > 0 {
            // The header must agree before the refcounts are checked; the
            // dropped entries' clusters are leaks the check then repairs.
            let mut raw = [0u8; 4];
            BigEndian::write_u32(&mut raw, self.snapshots.len() as u32);
            let written = self
                .storage
                .write_at(&raw, 60)
                .and_then(|()| self.storage.flush());
            if let Err(e) = written {
                self.res.check_errors += 1;
                self.msg(format!(
                    "ERROR failed to update the snapshot count in the image header: {e}"
                ));
                return Err(Stop::Abort(EIO));
            }
            self.res.fixed_corruptions(reduced);
        }
        if self.header.version >= 3 {
            let verb = self.verb(fix.errors());
            for i in 0..self.snapshots.len() {
                if self.snapshots[i].extra_data_size < V3_MIN_EXTRA_DATA {
                    self.res.corruptions += 1;
                    self.msg(format!("{verb} snapshot table entry {i} is incomplete"));
                }
            }
        }
        Ok(())
    }

    /// Rewrites the snapshot table when its part of the check found
    /// corruptions and errors may be repaired; counts in `self.res`.
    pub(super) fn fix_snapshot_table(&mut self) -> Flow<()> {
        if self.res.corruptions == 0 || self.fix != Repair::All {
            return Ok(());
        }
        if let Err(e) = self.write_snapshots() {
            self.res.check_errors += 1;
            self.msg(format!("ERROR failed to update snapshot table: {e}"));
            return Err(Stop::Abort(EIO));
        }
        self.res.corruptions_fixed += self.res.corruptions;
        self.res.corruptions = 0;
        Ok(())
    }

    /// Writes the snapshot table to newly allocated clusters, points the
    /// header at it and frees the old one (QEMU's qcow2_write_snapshots).
    fn write_snapshots(&mut self) -> Result<()> {
        let cs = self.cluster_size;
        let virtual_size = self.header.size & !511;
        for s in &mut self.snapshots {
            s.disk_size.get_or_insert(virtual_size);
            s.extra_data_size = KNOWN_EXTRA_DATA + s.unknown_extra_data.len() as u32;
        }
        let bytes = SnapshotTable::write(&self.snapshots);
        let size = bytes.len() as u64;
        if size > crate::header::MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::NoSpace("snapshot table would exceed 64 MiB"));
        }
        let mut refcounts = Refcounts::load(
            self.storage,
            self.cluster_bits,
            self.header.refcount_order,
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters.into(),
        )?;
        let new_offset = if size > 0 {
            refcounts.alloc(self.storage, size.div_ceil(cs))? << self.cluster_bits
        } else {
            0
        };
        refcounts.flush(self.storage)?;
        if size > 0 {
            if !self.write_allowed(new_offset, size, 0)? {
                return Err(Error::Corrupt(format!(
                    "new snapshot table at {new_offset:#x} would overwrite metadata"
                )));
            }
            self.storage.write_at(&bytes, new_offset)?;
        }
        self.storage.flush()?;
        let mut hdr = [0u8; 12];
        BigEndian::write_u32(&mut hdr[0..4], self.snapshots.len() as u32);
        BigEndian::write_u64(&mut hdr[4..12], new_offset);
        self.storage.write_at(&hdr, 60)?;
        self.storage.flush()?;
        // Free the old table; failures only leak.
        let (old_offset, old_size) = (self.snapshots_offset, self.snapshots_size);
        self.snapshots_offset = new_offset;
        self.snapshots_size = size;
        if old_size > 0 {
            let first = old_offset >> self.cluster_bits;
            let last = (old_offset + old_size - 1) >> self.cluster_bits;
            for cluster in first..=last {
                match refcounts.add(self.storage, cluster, -1) {
                    Ok(0) => self.discards.push(cluster),
                    Ok(_) => {}
                    Err(e) => {
                        // QEMU frees the range in one call that stops at the
                        // first error: one message, not one per cluster (a
                        // hostile table spans up to 64 MiB; found by fuzzing).
                        self.msg(format!("qcow2_free_clusters failed: {e}"));
                        break;
                    }
                }
            }
            refcounts.flush(self.storage)?;
            self.flush_refcounts()?;
        }
        Ok(())
    }
}
