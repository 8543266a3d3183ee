//! The VDI header (little-endian, 512 bytes), validated as QEMU's vdi
//! driver validates it.

use byteorder::{ByteOrder, LittleEndian};

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;

/// Bytes of the header sector.
pub const HEADER_SIZE: usize = 512;
/// The signature at byte 64.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// The one block size QEMU supports (1 MiB).
pub const BLOCK_SIZE: u32 = 1 << 20;
/// Image type of a dynamic image.
pub const TYPE_DYNAMIC: u32 = 1;
/// Image type of a static (preallocated) image.
pub const TYPE_STATIC: u32 = 2;
/// Most blocks an image may have: QEMU 10's bound (its largest disk is
/// 0x1fffff8000000 bytes), which also bounds the block map in memory to
/// 128 MiB.
pub const MAX_BLOCKS: u32 = 0x1ff_fff8;
/// The text at the start of images QEMU makes.
pub const TEXT: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Dynamic or static.
    pub image_type: u32,
    /// Offset of the block map.
    pub offset_bmap: u32,
    /// Offset of the first data block.
    pub offset_data: u32,
    /// Guest size in bytes (rounded up to a sector, as QEMU does).
    pub disk_size: u64,
    /// Block map entries.
    pub blocks_in_image: u32,
    /// Blocks allocated so far.
    pub blocks_allocated: u32,
    /// The header sector as read, to rewrite with a new block count.
    pub raw: [u8; HEADER_SIZE],
}

fn uuid_is_null(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

impl Header {
    /// Parses and checks a header sector.
    pub fn parse(raw: &[u8; HEADER_SIZE]) -> Result<Header> {
        let le32 = |at: usize| LittleEndian::read_u32(&raw[at..at + 4]);
        let signature = le32(64);
        if signature != SIGNATURE {
            return Err(invalid(
                FORMAT,
                "signature",
                signature.into(),
                "Image not in VDI format",
            ));
        }
        let version = le32(68);
        if version != VERSION_1_1 {
            return Err(invalid(
                FORMAT,
                "version",
                version.into(),
                "unsupported VDI image version",
            ));
        }
        let offset_bmap = le32(340);
        if offset_bmap % 512 != 0 {
            return Err(invalid(
                FORMAT,
                "block map offset",
                offset_bmap.into(),
                "unaligned block map offset",
            ));
        }
        let offset_data = le32(344);
        if offset_data % 512 != 0 {
            return Err(invalid(
                FORMAT,
                "data offset",
                offset_data.into(),
                "unaligned data offset",
            ));
        }
        let sector_size = le32(360);
        if sector_size != 512 {
            return Err(invalid(
                FORMAT,
                "sector size",
                sector_size.into(),
                "sector size is not 512",
            ));
        }
        let block_size = le32(376);
        if block_size != BLOCK_SIZE {
            return Err(invalid(
                FORMAT,
                "block size",
                block_size.into(),
                "block size is not 1048576",
            ));
        }
        let disk_size = LittleEndian::read_u64(&raw[368..376]);
        let blocks_in_image = le32(384);
        if blocks_in_image > MAX_BLOCKS {
            return Err(invalid(
                FORMAT,
                "blocks in image",
                blocks_in_image.into(),
                "too many blocks",
            ));
        }
        if disk_size > u64::from(blocks_in_image) * u64::from(BLOCK_SIZE) {
            return Err(invalid(
                FORMAT,
                "disk size",
                disk_size,
                "the block map has no room for it",
            ));
        }
        if !uuid_is_null(&raw[424..440]) {
            return Err(invalid(
                FORMAT,
                "link UUID",
                0,
                "unsupported VDI image (non-NULL link UUID)",
            ));
        }
        if !uuid_is_null(&raw[440..456]) {
            return Err(invalid(
                FORMAT,
                "parent UUID",
                0,
                "unsupported VDI image (non-NULL parent UUID)",
            ));
        }
        Ok(Header {
            image_type: le32(76),
            offset_bmap,
            offset_data,
            disk_size: disk_size.div_ceil(512) * 512,
            blocks_in_image,
            blocks_allocated: le32(388),
            raw: *raw,
        })
    }

    /// The header sector with `blocks_allocated` updated.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = self.raw;
        LittleEndian::write_u32(&mut b[388..392], self.blocks_allocated);
        b
    }
}

/// The header sector of a new image.
pub fn new_header(
    disk_size: u64,
    is_static: bool,
    blocks: u32,
    offset_data: u32,
    uuids: ([u8; 16], [u8; 16]),
) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[..TEXT.len()].copy_from_slice(TEXT);
    let mut put = |at: usize, v: u32| LittleEndian::write_u32(&mut b[at..at + 4], v);
    put(64, SIGNATURE);
    put(68, VERSION_1_1);
    put(72, 0x180);
    put(76, if is_static { TYPE_STATIC } else { TYPE_DYNAMIC });
    put(340, 0x200);
    put(344, offset_data);
    put(360, 512);
    put(376, BLOCK_SIZE);
    put(384, blocks);
    put(388, if is_static { blocks } else { 0 });
    LittleEndian::write_u64(&mut b[368..376], disk_size);
    b[392..408].copy_from_slice(&uuids.0);
    b[408..424].copy_from_slice(&uuids.1);
    b
}
