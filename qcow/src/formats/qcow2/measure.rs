//! How big a qcow2 image needs to be: QEMU's `qemu-img measure` arithmetic
//! (metadata of a fully allocated image, refcount structures included).

/// Whether an image of `virtual_size` bytes fits qcow2's L1 limit
/// (`MAX_L1_BYTES`) with this cluster size, as qcow2_measure checks before
/// it measures: false when the L1 table would have to be larger.
pub fn fits_l1_limit(virtual_size: u64, cluster_size: u64, extended_l2: bool) -> bool {
    let entry = if extended_l2 { 16 } else { 8 };
    let clusters = virtual_size.div_ceil(cluster_size);
    let l2_tables = clusters.div_ceil(cluster_size / entry);
    l2_tables.saturating_mul(8) <= crate::header::MAX_L1_BYTES
}

/// Bytes of refcount table and blocks needed to cover `clusters` clusters,
/// themselves included.
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let (blocks, table) = refcount_metadata_clusters(clusters, cluster_size, refcount_order, false);
    (blocks + table) * cluster_size
}

/// Refcount blocks and table clusters needed to cover `clusters` clusters,
/// themselves included (QEMU's qcow2_refcount_metadata_size); with
/// `generous`, room for a table half as large again is counted too.
pub fn refcount_metadata_clusters(
    mut clusters: u64,
    cluster_size: u64,
    refcount_order: u32,
    mut generous: bool,
) -> (u64, u64) {
    let blocks_per_table_cluster = cluster_size / 8;
    let refcounts_per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(refcounts_per_block);
        table = blocks.div_ceil(blocks_per_table_cluster);
        n = clusters + blocks + table;
        if n == last && generous {
            clusters += table.div_ceil(2);
            n = 0;
            generous = false;
        } else if n == last {
            break;
        }
    }
    (blocks, table)
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

    #[test]
    fn the_l1_limit_is_qemus() {
        // qemu-img measure -O qcow2 --size 2P passes and 7E is too large
        // with 64 KiB clusters; 2 MiB clusters take 2E but not 7E.
        assert!(fits_l1_limit(2 << 50, 65536, false));
        assert!(!fits_l1_limit(7 << 60, 65536, false));
        assert!(fits_l1_limit(2 << 60, 2 << 20, false));
        assert!(!fits_l1_limit(7 << 60, 2 << 20, false));
        // The last size that fits: 4 Mi L2 tables of 8 Ki entries each.
        let limit = (32u64 << 20) / 8 * 8192 * 65536;
        assert!(fits_l1_limit(limit, 65536, false));
        assert!(!fits_l1_limit(limit + 1, 65536, false));
        assert!(!fits_l1_limit(u64::MAX, 512, true));
    }
}
