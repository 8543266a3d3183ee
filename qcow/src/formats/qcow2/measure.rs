//! How big a qcow2 image needs to be: QEMU's `qemu-img measure` arithmetic
//! (metadata of a fully allocated image, refcount structures included).

/// Bytes of refcount table and blocks needed to cover `clusters` clusters,
/// themselves included.
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let blocks_per_table_cluster = cluster_size / 8;
    let refcounts_per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(refcounts_per_block);
        table = blocks.div_ceil(blocks_per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            break;
        }
    }
    (blocks + table) * cluster_size
}

/// Size of a fully allocated image of `virtual_size` bytes (rounded up to
/// a cluster): header, L1 and L2 tables, refcount structures and data.
pub fn fully_allocated_size(
    virtual_size: u64,
    cluster_size: u64,
    refcount_order: u32,
    extended_l2: bool,
) -> u64 {
    let entry = if extended_l2 { 16 } else { 8 };
    let aligned = virtual_size.div_ceil(cluster_size) * cluster_size;
    let mut meta = cluster_size;
    let l2_entries =
        (aligned / cluster_size).div_ceil(cluster_size / entry) * (cluster_size / entry);
    meta += l2_entries * entry;
    let l1_entries =
        (l2_entries * entry / cluster_size).div_ceil(cluster_size / 8) * (cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_qemu_img_measure() {
        // Figures printed by qemu-img 10 `measure -O qcow2 --size ...`.
        assert_eq!(
            fully_allocated_size(1 << 30, 65536, 4, false),
            1_074_135_040
        );
        assert_eq!(fully_allocated_size(1000, 65536, 4, false), 393_216);
        assert_eq!(
            fully_allocated_size(10 << 30, 65536, 4, true),
            10_740_629_504
        );
    }
}
