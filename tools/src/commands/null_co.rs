//! QEMU's `null-co` driver as an image source (`json:{"driver":
//! "null-co", "size": N, "read-zeroes": true}` or `null-co://`): a device
//! of a given size that holds nothing, reads as zeros and takes writes
//! without keeping them. It stands beneath a raw image, so `convert`,
//! `map` and the rest read it like any other.

use std::sync::Arc;

use qcow::device::RawImage;
use qcow::fs::AnyImage;
use qcow::storage::Storage;

/// null-co's default size (QEMU's `NULL_OPT_SIZE` default: 1 GiB).
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// A null device of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NullStorage {
    size: u64,
}

impl Storage for NullStorage {
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> qcow::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> qcow::Result<()> {
        Ok(())
    }

    fn flush(&self) -> qcow::Result<()> {
        Ok(())
    }

    fn len(&self) -> qcow::Result<u64> {
        Ok(self.size)
    }

    fn set_len(&self, _len: u64) -> qcow::Result<()> {
        Ok(())
    }

    /// Everything is a hole that reads as zero (block status `ZERO`).
    fn data_extent(&self, _offset: u64, len: u64) -> qcow::Result<(bool, u64)> {
        Ok((false, len))
    }
}

/// The null image of `size` bytes, as a raw image.
pub fn open(size: u64) -> qcow::Result<AnyImage> {
    Ok(AnyImage::Raw(RawImage::new(Arc::new(NullStorage {
        size,
    }))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::device::{BlockRead, ExtentKind};

    #[test]
    fn reads_zeros_and_maps_as_one_zero_extent() {
        let image = open(1 << 20).unwrap();
        assert_eq!(image.virtual_size(), 1 << 20);
        let mut buf = [7u8; 4096];
        image.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let extents = image.extents(0, 1 << 20).unwrap();
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].len, 1 << 20);
        assert!(matches!(extents[0].kind, ExtentKind::Zero { .. }));
    }
}
