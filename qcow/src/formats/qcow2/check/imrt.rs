//! The in-memory reference count table (QEMU's "IMRT"): the reference
//! count the checker computes for every host cluster, packed at the image's
//! own refcount width so that it overflows exactly where the image's
//! refcounts would and so that a slice of it is a ready refcount block.

use crate::refcount::{block_get, block_set, max_refcount};

/// Most memory the table may take. With the default 16-bit refcounts this
/// is 512 Mi clusters (32 TiB of 64 KiB clusters); with 64-bit refcounts
/// and 512-byte clusters, 128 Mi clusters (64 GiB).
pub const MAX_IMRT_BYTES: u64 = 1 << 30;

/// One reference count per host cluster, `1 << order` bits each.
pub(super) struct Imrt {
    data: Vec<u8>,
    entries: u64,
    order: u32,
    cluster_size: u64,
}

/// Bytes of a table of `entries` counts, rounded up to whole clusters
/// (`None` on overflow).
pub(super) fn byte_size(entries: u64, order: u32, cluster_size: u64) -> Option<u64> {
    let bits = entries.checked_mul(1u64 << order)?;
    bits.div_ceil(8).checked_next_multiple_of(cluster_size)
}

impl Imrt {
    /// A zeroed table of `entries` counts; `Err` carries the bytes it
    /// would need when that is over [`MAX_IMRT_BYTES`].
    pub(super) fn new(order: u32, cluster_size: u64, entries: u64) -> Result<Imrt, u64> {
        let mut t = Imrt {
            data: Vec::new(),
            entries: 0,
            order,
            cluster_size,
        };
        t.resize(entries)?;
        Ok(t)
    }

    /// Bits per count, as a power of two.
    pub(super) fn order(&self) -> u32 {
        self.order
    }

    /// Number of clusters covered.
    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// The count of `cluster` (0 beyond the end).
    pub(super) fn get(&self, cluster: u64) -> u64 {
        if cluster >= self.entries {
            return 0;
        }
        block_get(&self.data, cluster, self.order)
    }

    /// Sets the count of `cluster`, which must be below `entries()`.
    pub(super) fn set(&mut self, cluster: u64, value: u64) {
        debug_assert!(cluster < self.entries);
        block_set(&mut self.data, cluster, self.order, value);
    }

    /// The largest count representable.
    pub(super) fn max(&self) -> u64 {
        max_refcount(self.order)
    }

    /// Grows (or shrinks) to `entries` counts; new counts are zero. `Err`
    /// carries the bytes needed when over the bound.
    pub(super) fn resize(&mut self, entries: u64) -> Result<(), u64> {
        let bytes = byte_size(entries, self.order, self.cluster_size).ok_or(u64::MAX)?;
        if bytes > MAX_IMRT_BYTES {
            return Err(bytes);
        }
        if bytes != self.data.len() as u64 {
            self.data.resize(bytes as usize, 0);
        }
        if entries < self.entries {
            // Clear counts that fall off inside the last kept byte range, so
            // that growing again starts from zero.
            for c in entries..self.entries.min((bytes * 8) >> self.order) {
                block_set(&mut self.data, c, self.order, 0);
            }
        }
        self.entries = entries;
        Ok(())
    }

    /// Sets every count to zero.
    pub(super) fn clear(&mut self) {
        self.data.fill(0);
    }

    /// Refcount block number `block_index` as it would be on disk.
    pub(super) fn block(&self, block_index: u64) -> &[u8] {
        let start = (block_index * self.cluster_size) as usize;
        &self.data[start..start + self.cluster_size as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_refcount_blocks() {
        let mut t = Imrt::new(0, 512, 10).unwrap();
        assert_eq!(t.max(), 1);
        t.set(3, 1);
        assert_eq!(t.block(0)[0], 0b1000);
        t.resize(5000).unwrap();
        assert_eq!(t.get(3), 1);
        assert_eq!(t.get(4999), 0);
        assert_eq!(t.get(5000), 0);
        t.set(4100, 1);
        assert_eq!(t.block(1)[(4100 - 4096) / 8], 1 << (4100 % 8));
        t.resize(4000).unwrap();
        t.resize(5000).unwrap();
        assert_eq!(t.get(4100), 0);
        assert!(Imrt::new(6, 65536, 1 << 40).is_err());
    }
}
