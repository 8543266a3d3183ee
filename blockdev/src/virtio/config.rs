//! The virtio-blk configuration space (`struct virtio_blk_config`), laid out
//! little-endian as the spec defines it, readable by byte offset.

use super::defs::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};

/// Bytes of configuration space this device exposes: every field up to and
/// including `write_zeroes_may_unmap` and its padding (secure erase and
/// zoned fields are not offered and read as zero).
pub const CONFIG_SPACE_SIZE: usize = 60;

/// Offset of `capacity` (le64, in 512-byte sectors).
pub const OFFSET_CAPACITY: usize = 0;
/// Offset of `size_max` (le32).
pub const OFFSET_SIZE_MAX: usize = 8;
/// Offset of `seg_max` (le32).
pub const OFFSET_SEG_MAX: usize = 12;
/// Offset of `blk_size` (le32).
pub const OFFSET_BLK_SIZE: usize = 20;
/// Offset of `num_queues` (le16).
pub const OFFSET_NUM_QUEUES: usize = 34;
/// Offset of `max_discard_sectors` (le32).
pub const OFFSET_MAX_DISCARD_SECTORS: usize = 36;
/// Offset of `max_discard_seg` (le32).
pub const OFFSET_MAX_DISCARD_SEG: usize = 40;
/// Offset of `discard_sector_alignment` (le32).
pub const OFFSET_DISCARD_SECTOR_ALIGNMENT: usize = 44;
/// Offset of `max_write_zeroes_sectors` (le32).
pub const OFFSET_MAX_WRITE_ZEROES_SECTORS: usize = 48;
/// Offset of `max_write_zeroes_seg` (le32).
pub const OFFSET_MAX_WRITE_ZEROES_SEG: usize = 52;
/// Offset of `write_zeroes_may_unmap` (u8).
pub const OFFSET_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// The values of the configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Largest data segment in bytes.
    pub size_max: u32,
    /// Most data segments per request.
    pub seg_max: u32,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Most sectors per discard segment.
    pub max_discard_sectors: u32,
    /// Most segments per discard request.
    pub max_discard_seg: u32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Most sectors per write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// Most segments per write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes with UNMAP may deallocate.
    pub write_zeroes_may_unmap: bool,
}

impl BlockConfig {
    /// The configuration of a disk of `disk_size` bytes (rounded down to
    /// whole sectors) with logical blocks of `block_size` bytes, served by
    /// `num_queues` queues.
    pub fn new(disk_size: u64, block_size: u32, num_queues: u16) -> Self {
        let block_size = block_size.max(SECTOR_SIZE as u32);
        BlockConfig {
            capacity: disk_size / SECTOR_SIZE,
            size_max: SIZE_MAX,
            seg_max: SEG_MAX,
            blk_size: block_size,
            num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            discard_sector_alignment: block_size / SECTOR_SIZE as u32,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
            max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG,
            write_zeroes_may_unmap: true,
        }
    }

    /// The whole configuration space as the guest sees it.
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut bytes = [0u8; CONFIG_SPACE_SIZE];
        let mut put = |offset: usize, value: &[u8]| {
            bytes[offset..offset + value.len()].copy_from_slice(value);
        };
        put(OFFSET_CAPACITY, &self.capacity.to_le_bytes());
        put(OFFSET_SIZE_MAX, &self.size_max.to_le_bytes());
        put(OFFSET_SEG_MAX, &self.seg_max.to_le_bytes());
        put(OFFSET_BLK_SIZE, &self.blk_size.to_le_bytes());
        put(OFFSET_NUM_QUEUES, &self.num_queues.to_le_bytes());
        put(
            OFFSET_MAX_DISCARD_SECTORS,
            &self.max_discard_sectors.to_le_bytes(),
        );
        put(OFFSET_MAX_DISCARD_SEG, &self.max_discard_seg.to_le_bytes());
        put(
            OFFSET_DISCARD_SECTOR_ALIGNMENT,
            &self.discard_sector_alignment.to_le_bytes(),
        );
        put(
            OFFSET_MAX_WRITE_ZEROES_SECTORS,
            &self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            OFFSET_MAX_WRITE_ZEROES_SEG,
            &self.max_write_zeroes_seg.to_le_bytes(),
        );
        put(
            OFFSET_WRITE_ZEROES_MAY_UNMAP,
            &[u8::from(self.write_zeroes_may_unmap)],
        );
        bytes
    }

    /// Fill `data` with the configuration space from byte `offset`; bytes
    /// past its end read as zero (as for fields this device does not offer).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.to_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at).copied())
                .unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_spec_offsets() {
        let config = BlockConfig::new(10 << 20, 4096, 3);
        let mut capacity = [0u8; 8];
        config.read(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), (10 << 20) / 512);
        let mut word = [0u8; 4];
        config.read(20, &mut word);
        assert_eq!(u32::from_le_bytes(word), 4096);
        let mut half = [0u8; 2];
        config.read(34, &mut half);
        assert_eq!(u16::from_le_bytes(half), 3);
        config.read(44, &mut word);
        assert_eq!(u32::from_le_bytes(word), 8);
        let mut byte = [0u8; 1];
        config.read(56, &mut byte);
        assert_eq!(byte[0], 1);
    }

    #[test]
    fn reads_past_the_end_are_zero() {
        let config = BlockConfig::new(1 << 20, 512, 1);
        let mut data = [0xffu8; 8];
        config.read(58, &mut data);
        assert_eq!(data, [0; 8]);
        config.read(u64::MAX - 2, &mut data);
        assert_eq!(data, [0; 8]);
    }
}
