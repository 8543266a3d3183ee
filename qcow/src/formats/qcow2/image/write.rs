//! The write side: planning writes (allocation and copy-on-write), committing
//! their metadata, and zeroing and discarding guest ranges.
//!
//! A write goes through three steps: [`Qcow2::begin_write`] allocates host
//! clusters and fills the parts of partially written clusters from their
//! old contents; the caller writes its data to the returned
//! [`HostPiece`]s; [`Qcow2::finish_write`] points the L2 entries at the new
//! clusters. Guest clusters in between are marked in flight, so that a
//! second write to them waits instead of allocating them twice, and a read
//! never sees a cluster before its data is written.

use super::meta::{Meta, MAX_PENDING_FREES};
use super::Qcow2;
use crate::device::{check_range, FileIndex};
use crate::entries::{
    alloc_bits, make_bitmap, subcluster_mask, zero_bits, L2Entry, RawL2, FLAG_COPIED, FLAG_ZERO,
    SUBCLUSTERS,
};
use crate::error::{Error, Result};

/// Where part of the caller's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPiece {
    /// First guest byte of the piece.
    pub guest_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where to write it.
    pub host_offset: u64,
    /// Which of the image's files `host_offset` is in.
    pub file: FileIndex,
}

#[derive(Debug)]
enum Update {
    /// Replace the entry; decrement the refcounts of `free` afterwards.
    Replace {
        guest_cluster: u64,
        new: RawL2,
        free: Vec<u64>,
    },
    /// Mark subclusters allocated in place.
    SetAlloc { guest_cluster: u64, mask: u32 },
}

/// A write whose clusters are allocated but whose metadata is not yet
/// committed. Finish it with [`Qcow2::finish_write`] or drop it with
/// [`Qcow2::abort_write`].
#[derive(Debug)]
#[must_use = "a write plan must be finished or aborted"]
pub struct WritePlan {
    /// Where the caller's data goes, in guest order, covering the request.
    pub pieces: Vec<HostPiece>,
    updates: Vec<Update>,
    inflight: Vec<u64>,
}

impl WritePlan {
    /// Whether the plan holds clusters in flight (a new allocation or an
    /// L2 change), which other writes to them wait for. A write in place
    /// holds none: finishing it can wake no one.
    pub fn holds_clusters(&self) -> bool {
        !self.inflight.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum CowSource {
    Zero,
    Backing,
    Host {
        cluster_offset: u64,
        in_data_file: bool,
    },
    Compressed {
        host_offset: u64,
        compressed_len: u64,
    },
}

#[derive(Debug)]
struct CowOp {
    guest_cluster: u64,
    target_cluster: u64,
    in_data_file: bool,
    start: u64,
    end: u64,
    source: CowSource,
}

/// Joins pieces that continue each other in both guest and host space, so
/// that callers issue one write per contiguous run.
fn merge_pieces(pieces: &mut Vec<HostPiece>) {
    // In place: a write's plan is made for every request.
    let mut kept = 0;
    for i in 1..pieces.len() {
        let p = pieces[i];
        let last = &mut pieces[kept];
        if last.file == p.file
            && last.guest_offset.checked_add(last.len) == Some(p.guest_offset)
            && last.host_offset.checked_add(last.len) == Some(p.host_offset)
        {
            last.len += p.len;
        } else {
            kept += 1;
            pieces[kept] = p;
        }
    }
    pieces.truncate(kept + 1);
}

impl Qcow2 {
    pub(super) fn wait_not_inflight<'a>(
        &'a self,
        mut meta: std::sync::MutexGuard<'a, Meta>,
        first: u64,
        last: u64,
    ) -> std::sync::MutexGuard<'a, Meta> {
        while meta.any_inflight(first, last) {
            meta = self
                .inflight_done
                .wait(meta)
                .expect("metadata lock poisoned");
        }
        meta
    }

    /// Host clusters whose refcount an entry holds (none with a data file).
    /// An unaligned data offset names no cluster: it is left allocated
    /// (leaked), as QEMU's qcow2_free_any_cluster leaks it ("Cannot free
    /// unaligned cluster"), rather than the cluster beneath it freed.
    /// The host clusters an entry references, for a caller that drops
    /// the entry and frees them: a data cluster at an unaligned offset is
    /// leaked, as QEMU's qcow2_free_any_cluster leaks it, with its
    /// non-fatal corruption event.
    pub(super) fn refs_to_free(&self, raw: RawL2) -> Vec<u64> {
        if self.data_file.is_none() {
            if let L2Entry::Zero { host_offset, .. } | L2Entry::Normal { host_offset, .. } =
                self.geo.decode_l2(raw.entry)
            {
                if !host_offset.is_multiple_of(self.cluster_size()) {
                    self.non_fatal_corruption(format!(
                        "Cannot free unaligned cluster {host_offset:#x}"
                    ));
                }
            }
        }
        self.entry_refs(raw)
    }

    /// Drops the references of an entry that was replaced
    /// ([`Qcow2::refs_to_free`]), once the replacement is durable.
    pub(super) fn free_entry(&self, meta: &mut Meta, raw: RawL2) {
        for c in self.refs_to_free(raw) {
            meta.rc.defer_free(c);
        }
    }

    pub(super) fn entry_refs(&self, raw: RawL2) -> Vec<u64> {
        if self.data_file.is_some() {
            return Vec::new();
        }
        let cs = self.cluster_size();
        match self.geo.decode_l2(raw.entry) {
            L2Entry::Unallocated => Vec::new(),
            L2Entry::Zero { host_offset, .. } | L2Entry::Normal { host_offset, .. } => {
                if host_offset == 0 || !host_offset.is_multiple_of(cs) {
                    Vec::new()
                } else {
                    vec![host_offset / cs]
                }
            }
            L2Entry::Compressed {
                host_offset,
                compressed_len,
            } => {
                let first = host_offset / cs;
                let last = (host_offset + compressed_len.max(1) - 1) / cs;
                (first..=last).collect()
            }
        }
    }

    /// Allocates and prepares host space for a guest write of `len` bytes at
    /// `offset`. Partially written clusters are completed from their old
    /// contents before this returns. Corruption found on the way is
    /// signalled as QEMU signals it (an image open for writing gets the
    /// corrupt bit).
    pub fn begin_write(&self, offset: u64, len: u64) -> Result<WritePlan> {
        let plan = self
            .plan_write(offset, len, true)
            .map_err(|e| self.signal_corruption(e))?;
        Ok(plan.expect("a waiting plan_write always returns a plan"))
    }

    /// Whether an unfinished write (planned, not yet finished or aborted)
    /// holds a guest cluster that `len` bytes at `offset` touch: then
    /// [`Qcow2::begin_write`], [`Qcow2::write_zeroes`] and
    /// [`Qcow2::discard`] on that range would wait for it. A caller that
    /// must not block (one thread serving several queues of a disk) asks
    /// this first and retries once the holder is done.
    pub fn range_in_flight(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let cs = self.cluster_size();
        let first = offset / cs;
        let last = offset.saturating_add(len - 1) / cs;
        self.lock().any_inflight(first, last)
    }

    /// Like [`Qcow2::begin_write`], but returns `Ok(None)` at once instead
    /// of waiting when an unfinished write holds one of the guest clusters
    /// (for callers that must not block while they hold plans themselves).
    pub fn try_begin_write(&self, offset: u64, len: u64) -> Result<Option<WritePlan>> {
        self.plan_write(offset, len, false)
            .map_err(|e| self.signal_corruption(e))
    }

    fn plan_write(&self, offset: u64, len: u64, wait: bool) -> Result<Option<WritePlan>> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        self.mark_bitmaps_dirty(offset, len);
        let mut plan = WritePlan {
            pieces: Vec::new(),
            updates: Vec::new(),
            inflight: Vec::new(),
        };
        if len == 0 {
            return Ok(Some(plan));
        }
        let cs = self.cluster_size();
        let first = offset / cs;
        let last = (offset + len - 1) / cs;
        let meta = self.lock();
        if !wait && meta.any_inflight(first, last) {
            return Ok(None);
        }
        let mut meta = self.wait_not_inflight(meta, first, last);
        let mut cows = Vec::new();
        let result = self.plan_clusters(&mut meta, offset, len, &mut plan, &mut cows);
        for &c in &plan.inflight {
            meta.inflight.insert(c);
        }
        drop(meta);
        if let Err(e) = result.and_then(|()| self.run_cows(&cows)) {
            self.abort_write(plan);
            return Err(e);
        }
        merge_pieces(&mut plan.pieces);
        Ok(Some(plan))
    }

    fn plan_clusters(
        &self,
        meta: &mut Meta,
        offset: u64,
        len: u64,
        plan: &mut WritePlan,
        cows: &mut Vec<CowOp>,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let first = offset / cs;
        let last = (offset + len - 1) / cs;
        let file = self.data_file_index();
        let in_data_file = !file.is_image();
        // Clusters that need a new host cluster: (guest cluster, old entry).
        let mut to_alloc: Vec<(u64, RawL2)> = Vec::new();
        for gc in first..=last {
            let start = if gc == first { offset % cs } else { 0 };
            let end = if gc == last {
                (offset + len - 1) % cs + 1
            } else {
                cs
            };
            let raw = meta.l2_entry(&*self.file, gc)?;
            let entry = self.geo.decode_l2(raw.entry);
            let in_place = match entry {
                L2Entry::Normal {
                    host_offset,
                    copied,
                } if copied || in_data_file => Some(host_offset),
                _ if in_data_file && !matches!(entry, L2Entry::Compressed { .. }) => Some(gc * cs),
                _ => None,
            };
            if let Some(host) = in_place {
                if !in_data_file {
                    self.check_in_place(gc, host)?;
                }
                let mut changed = false;
                if self.geo.extended_l2 {
                    let (mask, partial_cows) =
                        self.subcluster_cows(gc, host, raw, start, end, alloc_bits(raw.bitmap));
                    if mask & !alloc_bits(raw.bitmap) != 0 || zero_bits(raw.bitmap) & mask != 0 {
                        plan.updates.push(Update::SetAlloc {
                            guest_cluster: gc,
                            mask,
                        });
                        changed = true;
                    }
                    changed |= !partial_cows.is_empty();
                    cows.extend(partial_cows);
                } else if !matches!(entry, L2Entry::Normal { .. }) {
                    // Data file cluster not yet marked allocated: fill the
                    // rest from the old contents and mark it.
                    self.push_edge_cows(gc, host, raw, start, end, cows);
                    plan.updates.push(Update::Replace {
                        guest_cluster: gc,
                        new: RawL2 {
                            entry: host | FLAG_COPIED,
                            bitmap: 0,
                        },
                        free: Vec::new(),
                    });
                    changed = true;
                }
                if changed {
                    plan.inflight.push(gc);
                }
                plan.pieces.push(HostPiece {
                    guest_offset: gc * cs + start,
                    len: end - start,
                    host_offset: host + start,
                    file,
                });
                continue;
            }
            // A preallocated zero cluster we own is reused in place.
            if let L2Entry::Zero {
                host_offset,
                copied: true,
            } = entry
            {
                if host_offset != 0 && !self.geo.extended_l2 {
                    self.check_in_place(gc, host_offset)?;
                    self.push_edge_cows(gc, host_offset, raw, start, end, cows);
                    plan.updates.push(Update::Replace {
                        guest_cluster: gc,
                        new: RawL2 {
                            entry: host_offset | FLAG_COPIED,
                            bitmap: 0,
                        },
                        free: Vec::new(),
                    });
                    plan.inflight.push(gc);
                    plan.pieces.push(HostPiece {
                        guest_offset: gc * cs + start,
                        len: end - start,
                        host_offset: host_offset + start,
                        file,
                    });
                    continue;
                }
            }
            to_alloc.push((gc, raw));
            // Pieces are filled in below once hosts are known; keep order by
            // pushing a placeholder now.
            plan.pieces.push(HostPiece {
                guest_offset: gc * cs + start,
                len: end - start,
                host_offset: u64::MAX,
                file,
            });
        }
        // Allocate runs of consecutive guest clusters, contiguously where
        // the allocator can; a run stays within one L2 table, whose table
        // is allocated first (QEMU's order: the table, then its data).
        let l2_entries = self.geo.l2_entries();
        let mut i = 0;
        while i < to_alloc.len() {
            let mut j = i;
            while j + 1 < to_alloc.len()
                && to_alloc[j + 1].0 == to_alloc[j].0 + 1
                && to_alloc[j + 1].0 / l2_entries == to_alloc[i].0 / l2_entries
            {
                j += 1;
            }
            if !in_data_file {
                meta.prepare_l2(&*self.file, to_alloc[i].0)?;
            }
            let wanted = (j - i + 1) as u64;
            let (base, got) = if in_data_file {
                (to_alloc[i].0 * cs, wanted)
            } else {
                // One contiguous run for the whole request, as QEMU's
                // do_alloc_cluster_offset: free gaps shorter than it are
                // skipped, so data and later metadata land where QEMU's do.
                (meta.alloc_clusters(&*self.file, wanted)?, wanted)
            };
            let j = i + got as usize - 1;
            for (k, &(gc, raw)) in to_alloc[i..=j].iter().enumerate() {
                let host = base + k as u64 * cs;
                let start = if gc == first { offset % cs } else { 0 };
                let end = if gc == last {
                    (offset + len - 1) % cs + 1
                } else {
                    cs
                };
                let bitmap = if self.geo.extended_l2 {
                    self.alloc_bitmap_and_cows(gc, host, raw, start, end, cows)
                } else {
                    self.push_edge_cows(gc, host, raw, start, end, cows);
                    0
                };
                plan.updates.push(Update::Replace {
                    guest_cluster: gc,
                    new: RawL2 {
                        entry: host | FLAG_COPIED,
                        bitmap,
                    },
                    free: self.refs_to_free(raw),
                });
                plan.inflight.push(gc);
                let piece = plan
                    .pieces
                    .iter_mut()
                    .find(|p| p.guest_offset / cs == gc)
                    .expect("a piece exists for every cluster");
                piece.host_offset = host + start;
            }
            i = j + 1;
        }
        Ok(())
    }

    fn check_in_place(&self, gc: u64, host: u64) -> Result<()> {
        let cs = self.cluster_size();
        if !host.is_multiple_of(cs) {
            // QEMU's handle_copied.
            return Err(Error::CorruptionFound {
                event: format!(
                    "Data cluster offset {host:#x} unaligned (guest offset: {})",
                    super::meta::c_hex(gc * cs)
                ),
                marked: false,
                during: None,
            });
        }
        if host == 0 {
            return Err(Error::InvalidEntry {
                what: "L2",
                index: gc,
                offset: host,
                reason: "data cluster is not aligned to a cluster",
            });
        }
        // A cluster past the end of the file is written there, the file
        // growing, as QEMU writes it.
        Ok(())
    }

    /// The source of a cluster's old contents.
    fn cow_source(&self, raw: RawL2) -> CowSource {
        match self.geo.decode_l2(raw.entry) {
            L2Entry::Unallocated => CowSource::Backing,
            L2Entry::Zero { .. } => CowSource::Zero,
            L2Entry::Normal { host_offset, .. } => CowSource::Host {
                cluster_offset: host_offset,
                in_data_file: self.data_file.is_some(),
            },
            L2Entry::Compressed {
                host_offset,
                compressed_len,
            } => CowSource::Compressed {
                host_offset,
                compressed_len,
            },
        }
    }

    /// Copy-on-write of the parts of a whole cluster outside `[start, end)`.
    fn push_edge_cows(
        &self,
        gc: u64,
        target: u64,
        raw: RawL2,
        start: u64,
        end: u64,
        cows: &mut Vec<CowOp>,
    ) {
        let cs = self.cluster_size();
        let source = self.cow_source(raw);
        let in_data_file = self.data_file.is_some();
        if start > 0 {
            cows.push(CowOp {
                guest_cluster: gc,
                target_cluster: target,
                in_data_file,
                start: 0,
                end: start,
                source,
            });
        }
        if end < cs {
            cows.push(CowOp {
                guest_cluster: gc,
                target_cluster: target,
                in_data_file,
                start: end,
                end: cs,
                source,
            });
        }
    }

    /// For an in-place write with extended L2: the subclusters it covers and
    /// the copy-on-write of partially covered, not yet allocated ones.
    fn subcluster_cows(
        &self,
        gc: u64,
        host: u64,
        raw: RawL2,
        start: u64,
        end: u64,
        alloc: u32,
    ) -> (u32, Vec<CowOp>) {
        let sc = self.geo.subcluster_size();
        let first_sc = (start / sc) as u32;
        let last_sc = ((end - 1) / sc) as u32;
        let mask = subcluster_mask(first_sc, last_sc - first_sc + 1);
        let zero = zero_bits(raw.bitmap);
        let mut cows = Vec::new();
        let in_data_file = self.data_file.is_some();
        for (index, lo, hi) in [
            (first_sc, u64::from(first_sc) * sc, start),
            (last_sc, end, (u64::from(last_sc) + 1) * sc),
        ] {
            if lo >= hi || alloc & (1 << index) != 0 {
                continue;
            }
            let source = if zero & (1 << index) != 0 {
                CowSource::Zero
            } else {
                CowSource::Backing
            };
            cows.push(CowOp {
                guest_cluster: gc,
                target_cluster: host,
                in_data_file,
                start: lo,
                end: hi,
                source,
            });
        }
        (mask, cows)
    }

    /// For a newly allocated cluster with extended L2: its bitmap and the
    /// copies that carry over the old contents.
    fn alloc_bitmap_and_cows(
        &self,
        gc: u64,
        host: u64,
        raw: RawL2,
        start: u64,
        end: u64,
        cows: &mut Vec<CowOp>,
    ) -> u64 {
        let entry = self.geo.decode_l2(raw.entry);
        match entry {
            L2Entry::Compressed { .. } => {
                self.push_edge_cows(gc, host, raw, start, end, cows);
                make_bitmap(u32::MAX, 0)
            }
            L2Entry::Normal { .. } => {
                // Shared cluster: copy every allocated subcluster outside the
                // write, and complete partially covered unallocated ones.
                let old_alloc = alloc_bits(raw.bitmap);
                let sc = self.geo.subcluster_size();
                let (mask, partial) = self.subcluster_cows(gc, host, raw, start, end, old_alloc);
                cows.extend(partial);
                let source = self.cow_source(raw);
                for index in 0..SUBCLUSTERS {
                    if old_alloc & (1 << index) == 0 {
                        continue;
                    }
                    let lo = u64::from(index) * sc;
                    let hi = lo + sc;
                    for (a, b) in [(lo, hi.min(start)), (lo.max(end), hi)] {
                        if a < b {
                            cows.push(CowOp {
                                guest_cluster: gc,
                                target_cluster: host,
                                in_data_file: false,
                                start: a,
                                end: b,
                                source,
                            });
                        }
                    }
                }
                let alloc = old_alloc | mask;
                make_bitmap(alloc, zero_bits(raw.bitmap) & !alloc)
            }
            L2Entry::Unallocated | L2Entry::Zero { .. } => {
                let (mask, partial) = self.subcluster_cows(gc, host, raw, start, end, 0);
                cows.extend(partial);
                make_bitmap(mask, zero_bits(raw.bitmap) & !mask)
            }
        }
    }

    fn run_cows(&self, cows: &[CowOp]) -> Result<()> {
        let cs = self.cluster_size();
        let mut buf = Vec::new();
        for op in cows {
            buf.resize((op.end - op.start) as usize, 0);
            match op.source {
                CowSource::Zero => buf.fill(0),
                CowSource::Backing => {
                    self.read_backing(&mut buf, op.guest_cluster * cs + op.start)?
                }
                CowSource::Host {
                    cluster_offset,
                    in_data_file,
                } => {
                    let storage = if in_data_file {
                        self.data_file.as_ref().expect("data file")
                    } else {
                        &self.file
                    };
                    storage.read_at(&mut buf, cluster_offset + op.start)?;
                    if let Some(cipher) = self.cipher()? {
                        let guest = op.guest_cluster * cs + op.start;
                        cipher.decrypt(&mut buf, guest, cluster_offset + op.start);
                    }
                }
                CowSource::Compressed {
                    host_offset,
                    compressed_len,
                } => {
                    let (s, e) = (op.start as usize, op.end as usize);
                    self.with_decompressed(host_offset, compressed_len, |data| {
                        buf.copy_from_slice(&data[s..e]);
                    })?;
                }
            }
            let storage = if op.in_data_file {
                self.data_file.as_ref().expect("data file")
            } else {
                &self.file
            };
            if let Some(cipher) = self.cipher()? {
                let guest = op.guest_cluster * cs + op.start;
                cipher.encrypt(&mut buf, guest, op.target_cluster + op.start);
            }
            storage.write_at(&buf, op.target_cluster + op.start)?;
        }
        Ok(())
    }

    /// Commits the metadata of a write whose data has been written.
    pub fn finish_write(&self, plan: WritePlan) -> Result<()> {
        if plan.updates.is_empty() && plan.inflight.is_empty() {
            // A write in place: no metadata to change, no one to wake.
            return Ok(());
        }
        let mut meta = self.lock();
        let result = self.commit_updates(&mut meta, &plan.updates);
        for c in &plan.inflight {
            meta.inflight.remove(c);
        }
        // Waiters only wait for in-flight clusters: a plan that held none
        // (an in-place write) has no one to wake, and skips the syscall.
        if !plan.inflight.is_empty() {
            self.inflight_done.notify_all();
        }
        result?;
        if meta.rc.pending_frees() > MAX_PENDING_FREES {
            self.flush_locked(&mut meta)?;
        }
        Ok(())
    }

    fn commit_updates(&self, meta: &mut Meta, updates: &[Update]) -> Result<()> {
        for u in updates {
            match u {
                Update::Replace {
                    guest_cluster,
                    new,
                    free,
                } => {
                    meta.set_l2_entry(&*self.file, *guest_cluster, *new)?;
                    for &c in free {
                        meta.rc.defer_free(c);
                    }
                }
                Update::SetAlloc {
                    guest_cluster,
                    mask,
                } => {
                    let mut raw = meta.l2_entry(&*self.file, *guest_cluster)?;
                    let alloc = alloc_bits(raw.bitmap) | mask;
                    raw.bitmap = make_bitmap(alloc, zero_bits(raw.bitmap) & !alloc);
                    if self.data_file.is_some() {
                        raw.entry = (*guest_cluster * self.cluster_size()) | FLAG_COPIED;
                    }
                    meta.set_l2_entry(&*self.file, *guest_cluster, raw)?;
                }
            }
        }
        Ok(())
    }

    /// Gives up a planned write: its new clusters leak until the next
    /// check repairs them, and nothing points at them.
    pub fn abort_write(&self, plan: WritePlan) {
        let mut meta = self.lock();
        for c in &plan.inflight {
            meta.inflight.remove(c);
        }
        if !plan.inflight.is_empty() {
            self.inflight_done.notify_all();
        }
    }

    pub(super) fn flush_locked(&self, meta: &mut Meta) -> Result<()> {
        if let Some(df) = &self.data_file {
            df.flush()?;
        }
        let freed = meta.flush(&*self.file)?;
        let cs = self.cluster_size();
        for c in freed {
            self.file.discard(c * cs, cs)?;
        }
        Ok(())
    }

    /// Writes guest bytes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        const CHUNK: usize = 8 << 20;
        let cipher = self.cipher()?;
        if cipher.is_some() && !super::read::sector_aligned(offset, buf.len() as u64) {
            // Encrypted data goes in whole sectors: merge with those around.
            let (start, end) = super::read::sector_span(offset, buf.len() as u64);
            crate::device::check_range(start, end - start, self.size())?;
            let mut whole = vec![0u8; (end - start) as usize];
            self.read_at(&mut whole, start)?;
            let skip = (offset - start) as usize;
            whole[skip..skip + buf.len()].copy_from_slice(buf);
            return self.write_at(&whole, start);
        }
        let mut sealed = Vec::new();
        let mut done = 0;
        while done < buf.len() || (buf.is_empty() && done == 0) {
            let n = (buf.len() - done).min(CHUNK);
            let pos = offset + done as u64;
            let plan = self.begin_write(pos, n as u64)?;
            let mut result = Ok(());
            for p in &plan.pieces {
                let start = (p.guest_offset - offset) as usize;
                let mut data = &buf[start..start + p.len as usize];
                if let Some(cipher) = cipher {
                    sealed.clear();
                    sealed.extend_from_slice(data);
                    cipher.encrypt(&mut sealed, p.guest_offset, p.host_offset);
                    data = &sealed;
                }
                let storage = self
                    .file_storage(p.file)
                    .expect("a write plan names only the image's own files");
                result = storage.write_at(data, p.host_offset);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Ok(()) => self.finish_write(plan)?,
                Err(e) => {
                    self.abort_write(plan);
                    return Err(e);
                }
            }
            done += n;
            if buf.is_empty() {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let chunk = len.min(1 << 20) as usize;
        let zeros = vec![0u8; chunk];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(chunk as u64) as usize;
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Makes a guest range read as zero. Whole clusters become zero
    /// clusters (deallocated when `may_unmap`); partial clusters are
    /// written with zeros, or get zero bits where the image has
    /// subclusters. Corruption found on the way is signalled as
    /// [`Qcow2::begin_write`] signals it.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.zero_range(offset, len, may_unmap)
            .map_err(|e| self.signal_corruption(e))
    }

    fn zero_range(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        self.mark_bitmaps_dirty(offset, len);
        if len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let end = offset + len;
        let first_full = offset.div_ceil(cs);
        let end_full = end / cs;
        // Raw data files must hold the zeros themselves.
        let raw_data = self.lock().hc.header.data_file_raw();
        if self.geo.extended_l2 && !raw_data {
            return self.write_zeroes_subclusters(offset, len, may_unmap);
        }
        if raw_data {
            return self.write_zero_bytes(offset, len);
        }
        if first_full >= end_full {
            return self.zero_parts_of_clusters(offset, len, may_unmap);
        }
        if offset < first_full * cs {
            self.zero_parts_of_clusters(offset, first_full * cs - offset, may_unmap)?;
        }
        let mut fallback = Vec::new();
        {
            let meta = self.lock();
            let mut meta = self.wait_not_inflight(meta, first_full, end_full - 1);
            for gc in first_full..end_full {
                let raw = meta.l2_entry(&*self.file, gc)?;
                let entry = self.geo.decode_l2(raw.entry);
                // As QEMU's zero_in_l2_slice without MAY_UNMAP: a cluster
                // holding host space keeps it, with the zero flag.
                let keep = match entry {
                    L2Entry::Normal { host_offset, .. } | L2Entry::Zero { host_offset, .. } => {
                        host_offset != 0 && !may_unmap && self.geo.version >= 3
                    }
                    _ => false,
                };
                let new = if self.geo.version < 3 {
                    if self.backing.is_some() {
                        fallback.push(gc);
                        continue;
                    }
                    RawL2::default()
                } else if self.geo.extended_l2 {
                    RawL2 {
                        entry: 0,
                        bitmap: make_bitmap(0, u32::MAX),
                    }
                } else if keep {
                    RawL2 {
                        entry: raw.entry | FLAG_ZERO,
                        bitmap: 0,
                    }
                } else {
                    RawL2 {
                        entry: FLAG_ZERO,
                        bitmap: 0,
                    }
                };
                if self.geo.version >= 3 {
                    // QEMU's zero_in_l2_slice takes the table for writing
                    // first: one shared with a snapshot is copied even
                    // where no entry changes.
                    meta.prepare_l2(&*self.file, gc)?;
                }
                if new == raw {
                    continue;
                }
                meta.set_l2_entry(&*self.file, gc, new)?;
                if !keep {
                    self.free_entry(&mut meta, raw);
                }
            }
            if meta.rc.pending_frees() > MAX_PENDING_FREES {
                self.flush_locked(&mut meta)?;
            }
        }
        for gc in fallback {
            self.write_zero_bytes(gc * cs, cs)?;
        }
        if end_full * cs < end {
            self.zero_parts_of_clusters(end_full * cs, end - end_full * cs, may_unmap)?;
        }
        Ok(())
    }

    /// Discards whole clusters in a guest range: they read as zero
    /// afterwards (or from the backing file in version 2 images, as in
    /// QEMU). Partial clusters are left alone; discard is advisory.
    /// Corruption found on the way is signalled as [`Qcow2::begin_write`]
    /// signals it.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.discard_range(offset, len)
            .map_err(|e| self.signal_corruption(e))
    }

    fn discard_range(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        self.mark_bitmaps_dirty(offset, len);
        let cs = self.cluster_size();
        let first_full = offset.div_ceil(cs);
        let end_full = (offset + len) / cs;
        if first_full >= end_full {
            return Ok(());
        }
        let meta = self.lock();
        if meta.hc.header.data_file_raw() {
            return Ok(());
        }
        let mut meta = self.wait_not_inflight(meta, first_full, end_full - 1);
        for gc in first_full..end_full {
            let raw = meta.l2_entry(&*self.file, gc)?;
            // As QEMU's discard_in_l2_slice (a guest discard, not a full
            // one): a cluster that holds host space, or any cluster over
            // a backing file, becomes a zero cluster (unallocated in a
            // version 2 image); others are left as they are.
            let allocated = match self.geo.decode_l2(raw.entry) {
                L2Entry::Normal { .. } | L2Entry::Compressed { .. } => true,
                L2Entry::Zero { host_offset, .. } => host_offset != 0,
                L2Entry::Unallocated => false,
            };
            let new = if !allocated && self.backing.is_none() {
                raw
            } else if self.geo.version >= 3 {
                if self.geo.extended_l2 {
                    RawL2 {
                        entry: 0,
                        bitmap: make_bitmap(0, u32::MAX),
                    }
                } else {
                    RawL2 {
                        entry: FLAG_ZERO,
                        bitmap: 0,
                    }
                }
            } else {
                RawL2::default()
            };
            if new == raw {
                continue;
            }
            meta.set_l2_entry(&*self.file, gc, new)?;
            self.free_entry(&mut meta, raw);
        }
        if meta.rc.pending_frees() > MAX_PENDING_FREES {
            self.flush_locked(&mut meta)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(guest_offset: u64, len: u64, host_offset: u64, in_data_file: bool) -> HostPiece {
        HostPiece {
            guest_offset,
            len,
            host_offset,
            file: if in_data_file {
                FileIndex::QCOW2_DATA_FILE
            } else {
                FileIndex::IMAGE
            },
        }
    }

    #[test]
    fn pieces_merge_only_when_they_continue_in_guest_and_host_space() {
        let mut none: Vec<HostPiece> = Vec::new();
        merge_pieces(&mut none);
        assert!(none.is_empty());
        let mut one = vec![piece(0, 512, 4096, false)];
        merge_pieces(&mut one);
        assert_eq!(one, vec![piece(0, 512, 4096, false)]);
        let mut pieces = vec![
            piece(0, 512, 4096, false),
            piece(512, 512, 4608, false),
            // Host gap.
            piece(1024, 512, 8192, false),
            piece(1536, 512, 8704, false),
            // Same host offset but in the data file.
            piece(2048, 512, 9216, true),
            // Guest gap.
            piece(4096, 512, 9728, true),
            piece(4608, 1024, 10240, true),
        ];
        merge_pieces(&mut pieces);
        assert_eq!(
            pieces,
            vec![
                piece(0, 1024, 4096, false),
                piece(1024, 1024, 8192, false),
                piece(2048, 512, 9216, true),
                piece(4096, 1536, 9728, true),
            ]
        );
    }
}
