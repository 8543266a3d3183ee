//! How many walks over the old refcount table QEMU's
//! qcow2_change_refcount_order makes, for `amend -p`'s progress figures.
//!
//! QEMU walks the old table once to allocate the new refcount blocks, and
//! again while the allocations (new blocks, then the new table) make more
//! blocks non-empty; a last walk writes the blocks. Its progress reports
//! each walk as a share of a total it re-estimates per walk, so the figure
//! goes back when a walk more is needed (qemu-iotests 112: 66.67 % after
//! two of three walks, 50.00 % at the start of the third of four). This
//! replays the allocations on a map of used clusters: first fit from a
//! moving free-cluster index, as qcow2_alloc_clusters does; a cluster whose
//! old refcount block is missing gets one placed at the next free cluster.

/// Parameters of the replay.
pub(super) struct Layout {
    /// Entries of the old refcount table.
    pub old_table_entries: u64,
    /// Which old refcount blocks exist (by table index).
    pub old_blocks: Vec<bool>,
    /// Refcounts per old block.
    pub old_block_entries: u64,
    /// Refcounts per new block.
    pub new_block_entries: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
}

struct Replay {
    used: Vec<bool>,
    free_index: u64,
    old_blocks: Vec<bool>,
    old_block_entries: u64,
    old_table_entries: u64,
}

impl Replay {
    fn is_used(&self, c: u64) -> bool {
        self.used.get(c as usize).copied().unwrap_or(false)
    }

    fn set(&mut self, c: u64, value: bool) {
        if c as usize >= self.used.len() {
            self.used.resize(c as usize + 1, false);
        }
        self.used[c as usize] = value;
    }

    /// `n` contiguous clusters, as qcow2_alloc_clusters finds them.
    fn alloc(&mut self, n: u64) -> u64 {
        loop {
            let mut run = 0;
            while run < n {
                let c = self.free_index;
                self.free_index += 1;
                run = if self.is_used(c) { 0 } else { run + 1 };
            }
            let start = self.free_index - n;
            // A missing old block is placed first, then the search restarts
            // (QEMU's EAGAIN).
            let missing = (start..start + n)
                .map(|c| c / self.old_block_entries)
                .find(|&b| !self.old_blocks.get(b as usize).copied().unwrap_or(false));
            if let Some(b) = missing {
                if b as usize >= self.old_blocks.len() {
                    self.old_blocks.resize(b as usize + 1, false);
                }
                self.old_blocks[b as usize] = true;
                if b < self.old_table_entries {
                    let mut block = self.free_index;
                    while self.is_used(block) {
                        block += 1;
                    }
                    self.set(block, true);
                    self.free_index = self.free_index.min(start);
                    continue;
                }
            }
            for c in start..start + n {
                self.set(c, true);
            }
            return start;
        }
    }
}

/// The number of allocation walks QEMU makes for an image whose used
/// clusters are `used` (stored refcount not 0).
pub(super) fn allocation_walks(used: Vec<bool>, layout: &Layout) -> u64 {
    let coverage = layout.old_table_entries * layout.old_block_entries;
    let nbs = layout.new_block_entries;
    let blocks = coverage.div_ceil(nbs);
    let per_table_cluster = layout.cluster_size / 8;
    let mut r = Replay {
        used,
        free_index: 0,
        old_blocks: layout.old_blocks.clone(),
        old_block_entries: layout.old_block_entries,
        old_table_entries: layout.old_table_entries,
    };
    let mut new_table: Vec<bool> = Vec::new();
    let mut table_area: Option<(u64, u64)> = None;
    let mut walks = 0;
    loop {
        walks += 1;
        let mut allocated = false;
        for j in 0..blocks {
            let lo = j * nbs;
            if lo >= r.used.len() as u64 {
                break;
            }
            let hi = (lo + nbs).min(coverage).min(r.used.len() as u64);
            if !r.used[lo as usize..hi as usize].iter().any(|&u| u) {
                continue;
            }
            if j as usize >= new_table.len() {
                new_table.resize((j + 1).next_multiple_of(per_table_cluster) as usize, false);
            }
            if !new_table[j as usize] {
                r.alloc(1);
                new_table[j as usize] = true;
                allocated = true;
            }
        }
        if !allocated {
            return walks;
        }
        if let Some((start, n)) = table_area {
            for c in start..start + n {
                r.set(c, false);
            }
            r.free_index = r.free_index.min(start);
        }
        let n = (new_table.len() as u64 * 8).div_ceil(layout.cluster_size);
        table_area = Some((r.alloc(n), n));
    }
}

/// Calls `status(offset, total)` as QEMU's walk_over_reftable calls its
/// status callback, for `walks` allocation walks and the writing walk.
pub(super) fn report(walks: u64, old_table_entries: u64, status: &mut dyn FnMut(u64, u64)) {
    let rts = old_table_entries;
    let mut walk = |index: u64, total: u64| {
        for i in 0..rts {
            status(index * rts + i, total * rts);
        }
        status((index + 1) * rts, total * rts);
    };
    for index in 0..walks {
        walk(index, (index + 2).max(3));
    }
    walk(walks, walks + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iotest_112_needs_a_fourth_walk() {
        // 512-byte clusters, 1-bit refcounts to 64-bit: 63 used clusters
        // leave the first new block one free entry (qemu-iotests 112).
        let layout = Layout {
            old_table_entries: 64,
            old_blocks: vec![true],
            old_block_entries: 4096,
            new_block_entries: 64,
            cluster_size: 512,
        };
        assert_eq!(allocation_walks(vec![true; 63], &layout), 3);
        // Fewer used clusters: two allocation walks, as usual.
        assert_eq!(allocation_walks(vec![true; 10], &layout), 2);
        let mut figures = Vec::new();
        report(3, 2, &mut |o, t| figures.push(o as f32 * 100.0 / t as f32));
        assert_eq!(figures[5], 200.0 / 3.0);
        assert_eq!(figures[6], 50.0);
        assert_eq!(*figures.last().unwrap(), 100.0);
    }
}
