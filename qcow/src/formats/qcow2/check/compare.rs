//! The refcount stage of the check (QEMU's qcow2_check_refcounts):
//! comparing computed references with stored refcounts, repairing them or
//! rebuilding the refcount structure, then checking the COPIED flags.

use byteorder::{BigEndian, ByteOrder};

use super::imrt::Imrt;
use super::walk::{l2_get, ClusterType};
use super::{ol, Counts, Ctx, Flow, Repair, Stop, EFBIG, EIO};
use crate::entries::{FLAG_COPIED, OFFSET_MASK};
use crate::error::Error;

impl Ctx<'_> {
    /// QEMU's qcow2_check_refcounts: counts go to `self.res`.
    pub(super) fn check_refcounts(&mut self) -> Flow<()> {
        let cs = self.cluster_size;
        self.file_len = self.storage.len()?;
        let nb_clusters = self.file_len.div_ceil(cs);
        if nb_clusters > i32::MAX as u64 {
            self.res.check_errors += 1;
            return Err(Stop::Abort(EFBIG));
        }
        // QEMU's virtual size is in whole sectors.
        self.frag.total = (self.header.size & !511).div_ceil(cs);
        let imrt = Imrt::new(self.header.refcount_order, cs, nb_clusters).map_err(|bytes| {
            Stop::Fail(Error::Unsupported(format!(
                "checking a file of {nb_clusters} clusters needs {bytes} bytes of reference \
                 counts, more than the limit of {} bytes",
                super::imrt::MAX_IMRT_BYTES
            )))
        })?;
        self.imrt = Some(imrt);

        let mut rebuild = false;
        self.calculate_refcounts(self.fix, &mut rebuild)?;
        // With repairs but no rebuild, the comparison runs again to repair.
        let pre_compare = self.res;
        let mut highest = 0;
        self.compare_refcounts(Repair::None, &mut rebuild, &mut highest)?;

        if rebuild && self.fix.errors() {
            let old = self.res;
            let mut fresh_leaks = 0;
            self.msg("Rebuilding refcount structure".to_string());
            self.rebuild_refcount_structure()?;
            self.res.corruptions = 0;
            self.res.leaks = 0;
            // The references change with the new structure: recompute.
            rebuild = false;
            self.imrt().clear();
            self.calculate_refcounts(Repair::None, &mut rebuild)?;
            if self.fix.leaks() {
                // The old structure is leaked now; fix that. What remains
                // was leaked by the rebuild itself.
                let saved = std::mem::take(&mut self.res);
                self.compare_refcounts(Repair::Leaks, &mut rebuild, &mut highest)?;
                if rebuild {
                    self.msg("ERROR rebuilt refcount structure is still broken".to_string());
                }
                fresh_leaks = self.res.leaks;
                self.res = saved;
            }
            if self.res.corruptions < old.corruptions {
                self.res.corruptions_fixed += old.corruptions - self.res.corruptions;
            }
            if self.res.leaks < old.leaks {
                self.res.leaks_fixed += old.leaks - self.res.leaks;
            }
            self.res.leaks += fresh_leaks;
        } else if self.fix != Repair::None {
            if rebuild {
                self.msg("ERROR need to rebuild refcount structures".to_string());
                self.res.check_errors += 1;
                return Err(Stop::Abort(EIO));
            }
            if self.res.leaks > 0 || self.res.corruptions > 0 {
                self.res = pre_compare;
                self.compare_refcounts(self.fix, &mut rebuild, &mut highest)?;
            }
        }
        // Refcounts go out before the flags that depend on them.
        self.flush_refcounts()?;
        let outcome = self.check_oflag_copied(self.fix);
        self.storage.flush()?;
        outcome?;
        self.image_end_offset = (highest + 1) * cs;
        Ok(())
    }

    /// QEMU's compare_refcounts: reports (and with `fix`, repairs) every
    /// cluster whose stored refcount differs from its references. A used
    /// cluster with refcount 0 asks for a rebuild instead.
    fn compare_refcounts(
        &mut self,
        fix: Repair,
        rebuild: &mut bool,
        highest: &mut u64,
    ) -> Flow<()> {
        *highest = 0;
        let entries = self.imrt().entries();
        for i in 0..entries {
            let Some(stored) = self.stored_refcount(i)? else {
                self.msg(format!("Can't get refcount for cluster {i}: {EIO}"));
                self.res.check_errors += 1;
                continue;
            };
            let computed = self.imrt().get(i);
            if stored > 0 || computed > 0 {
                *highest = i;
            }
            if stored == computed {
                continue;
            }
            let fixable = if stored == 0 {
                *rebuild = true;
                false
            } else if stored > computed {
                fix.leaks()
            } else {
                fix.errors()
            };
            let verb = if fixable {
                "Repairing"
            } else if stored < computed {
                "ERROR"
            } else {
                "Leaked"
            };
            self.msg(format!(
                "{verb} cluster {i} refcount={stored} reference={computed}"
            ));
            if fixable && self.stored.set(self.storage, i, computed)? {
                if stored > computed {
                    self.res.leaks_fixed += 1;
                } else {
                    self.res.corruptions_fixed += 1;
                }
                if computed == 0 {
                    self.discards.push(i);
                }
                continue;
            }
            if stored < computed {
                self.res.corruptions += 1;
            } else {
                self.res.leaks += 1;
            }
        }
        Ok(())
    }

    /// QEMU's check_oflag_copied: the COPIED flag of every active L1 and L2
    /// entry must say whether the refcount is exactly 1.
    fn check_oflag_copied(&mut self, fix: Repair) -> Flow<()> {
        let repair = match fix {
            Repair::All => true,
            // The refcounts were just repaired: trust them only if that
            // left nothing behind.
            Repair::Leaks => {
                let Counts {
                    check_errors,
                    corruptions,
                    leaks,
                    ..
                } = self.res;
                check_errors == 0 && corruptions == 0 && leaks == 0
            }
            Repair::None => false,
        };
        let verb = self.verb(repair);
        let cs = self.cluster_size;
        let extended = self.header.extended_l2();
        let entries = if extended { cs / 16 } else { cs / 8 } as usize;
        let mut table = vec![0u8; cs as usize];
        for i in 0..self.l1_table.len() {
            let l1_entry = self.l1_table[i];
            let l2_offset = l1_entry & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let Some(refcount) = self.stored_refcount(l2_offset >> self.cluster_bits)? else {
                continue;
            };
            if (refcount == 1) != (l1_entry & FLAG_COPIED != 0) {
                self.res.corruptions += 1;
                self.msg(format!(
                    "{verb} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1_entry:x} \
                     refcount={refcount}"
                ));
                if repair {
                    let fixed = if refcount == 1 {
                        l1_entry | FLAG_COPIED
                    } else {
                        l1_entry & !FLAG_COPIED
                    };
                    self.l1_table[i] = fixed;
                    self.write_l1_entry(i)?;
                    self.res.fixed_corruptions(1);
                }
            }
            self.storage.read_at(&mut table, l2_offset)?;
            let mut dirty = 0;
            for j in 0..entries {
                let (entry, _) = l2_get(&table, j, extended);
                let data_offset = entry & OFFSET_MASK;
                if !matches!(
                    self.cluster_type(entry),
                    ClusterType::Normal | ClusterType::ZeroAlloc
                ) {
                    continue;
                }
                let refcount = if self.data_file {
                    1
                } else {
                    match self.stored_refcount(data_offset >> self.cluster_bits)? {
                        Some(r) => r,
                        None => continue,
                    }
                };
                if (refcount == 1) != (entry & FLAG_COPIED != 0) {
                    self.res.corruptions += 1;
                    self.msg(format!(
                        "{verb} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={refcount}"
                    ));
                    if repair {
                        let fixed = if refcount == 1 {
                            entry | FLAG_COPIED
                        } else {
                            entry & !FLAG_COPIED
                        };
                        let at = if extended { j * 16 } else { j * 8 };
                        BigEndian::write_u64(&mut table[at..at + 8], fixed);
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                if !self.write_allowed(l2_offset, cs, ol::ACTIVE_L2)? {
                    self.msg(format!(
                        "ERROR: Could not write L2 table; metadata overlap check failed: {EIO}"
                    ));
                    self.res.check_errors += 1;
                    return Err(Stop::Abort(EIO));
                }
                self.storage.write_at(&table, l2_offset)?;
                self.res.fixed_corruptions(dirty);
            }
        }
        Ok(())
    }

    /// Writes active L1 entry `index` (QEMU's qcow2_write_l1_entry).
    fn write_l1_entry(&mut self, index: usize) -> Flow<()> {
        let offset = self.header.l1_table_offset + index as u64 * 8;
        if !self.write_allowed(offset, 8, ol::ACTIVE_L1)? {
            self.res.check_errors += 1;
            return Err(Stop::Abort(EIO));
        }
        let mut raw = [0u8; 8];
        BigEndian::write_u64(&mut raw, self.l1_table[index]);
        self.storage.write_at(&raw, offset)?;
        self.storage.flush()?;
        Ok(())
    }
}
