//! Wire constants of the virtio-blk device (virtio 1.2, section 5.2) and the
//! limits this device model advertises and enforces.

use virtio_bindings::virtio_blk as blk;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Virtio device ID of a block device.
pub const DEVICE_TYPE_BLOCK: u32 = 2;

/// Bytes per virtio sector; request sectors are always in these units.
pub const SECTOR_SIZE: u64 = 512;

/// Size of `struct virtio_blk_req`'s header (type, reserved, sector).
pub const REQUEST_HEADER_SIZE: usize = 16;

/// Size of one `struct virtio_blk_discard_write_zeroes` segment.
pub const DISCARD_SEGMENT_SIZE: usize = 16;

/// Bytes of the device ID string GET_ID returns.
pub const SERIAL_LEN: usize = blk::VIRTIO_BLK_ID_BYTES as usize;

/// Request type: read.
pub const REQ_IN: u32 = blk::VIRTIO_BLK_T_IN;
/// Request type: write.
pub const REQ_OUT: u32 = blk::VIRTIO_BLK_T_OUT;
/// Request type: flush.
pub const REQ_FLUSH: u32 = blk::VIRTIO_BLK_T_FLUSH;
/// Request type: get the device ID string.
pub const REQ_GET_ID: u32 = blk::VIRTIO_BLK_T_GET_ID;
/// Request type: discard.
pub const REQ_DISCARD: u32 = blk::VIRTIO_BLK_T_DISCARD;
/// Request type: write zeroes.
pub const REQ_WRITE_ZEROES: u32 = blk::VIRTIO_BLK_T_WRITE_ZEROES;

/// Flag of a discard/write-zeroes segment: the device may deallocate.
pub const SEGMENT_FLAG_UNMAP: u32 = blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Status byte: success.
pub const STATUS_OK: u8 = blk::VIRTIO_BLK_S_OK as u8;
/// Status byte: the request failed or was malformed.
pub const STATUS_IOERR: u8 = blk::VIRTIO_BLK_S_IOERR as u8;
/// Status byte: the request type or a flag is not supported.
pub const STATUS_UNSUPP: u8 = blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Largest virtqueue this device accepts (a power of two).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Most data segments (descriptors carrying data) in one request,
/// advertised as `seg_max`.
pub const SEG_MAX: u32 = 128;

/// Largest single data segment in bytes, advertised as `size_max`.
pub const SIZE_MAX: u32 = 1 << 20;

/// Most data bytes one read or write may carry. Anything longer is refused
/// with IOERR before it is looked at further.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;

/// Most descriptors in one chain: every data segment plus a header and a
/// status descriptor (or one per discard segment plus those two).
pub const MAX_CHAIN_DESCRIPTORS: usize = SEG_MAX as usize + 2;

/// Most segments in one discard request, advertised as `max_discard_seg`.
pub const MAX_DISCARD_SEG: u32 = 32;

/// Most segments in one write-zeroes request (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;

/// Most sectors in one discard segment (`max_discard_sectors`): 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// Most sectors in one write-zeroes segment (`max_write_zeroes_sectors`).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;

/// Feature bit: virtio 1.x device.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// Feature bit: used_event/avail_event notification suppression.
pub const F_RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// Feature bit: indirect descriptor tables.
pub const F_RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: `size_max` is valid.
pub const F_BLK_SIZE_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SIZE_MAX;
/// Feature bit: `seg_max` is valid.
pub const F_BLK_SEG_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature bit: the disk is read-only.
pub const F_BLK_RO: u64 = 1 << blk::VIRTIO_BLK_F_RO;
/// Feature bit: `blk_size` is valid.
pub const F_BLK_BLK_SIZE: u64 = 1 << blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature bit: FLUSH requests.
pub const F_BLK_FLUSH: u64 = 1 << blk::VIRTIO_BLK_F_FLUSH;
/// Feature bit: several request queues (`num_queues`).
pub const F_BLK_MQ: u64 = 1 << blk::VIRTIO_BLK_F_MQ;
/// Feature bit: DISCARD requests.
pub const F_BLK_DISCARD: u64 = 1 << blk::VIRTIO_BLK_F_DISCARD;
/// Feature bit: WRITE_ZEROES requests.
pub const F_BLK_WRITE_ZEROES: u64 = 1 << blk::VIRTIO_BLK_F_WRITE_ZEROES;

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status bit: the driver is set up; queues may be used.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error it cannot recover from.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;
