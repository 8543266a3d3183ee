//! Volume descriptors (ECMA-119 8.4 and 8.5): the primary one, a Joliet
//! supplementary one, and the set terminator.

use crate::{IsoError, Result};

/// Bytes of a volume descriptor (and of a sector of the descriptor area).
pub const SECTOR: usize = 2048;
/// The first descriptor's sector (after the 32 KiB system area).
pub const FIRST_SECTOR: u64 = 16;
/// Bytes of the root directory record inside a descriptor.
pub const ROOT_RECORD_LEN: usize = 34;

const TYPE_PRIMARY: u8 = 1;
const TYPE_SUPPLEMENTARY: u8 = 2;
const TYPE_TERMINATOR: u8 = 255;

/// How a directory tree spells its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// ISO 9660 names (d-characters, `;1` versions), maybe with Rock
    /// Ridge `NM` entries.
    Iso,
    /// Joliet: UCS-2 big-endian names.
    Joliet,
}

/// A validated primary or Joliet volume descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDescriptor {
    /// How the tree it roots spells names.
    pub kind: NameKind,
    /// The volume identifier, trailing spaces dropped.
    pub volume_id: String,
    /// Volume space size in logical blocks.
    pub volume_blocks: u32,
    /// Logical block size (512, 1024 or 2048).
    pub block_size: u32,
    /// The root directory record as stored (34 bytes).
    pub root_record: [u8; ROOT_RECORD_LEN],
}

/// What one descriptor sector is.
#[derive(Debug)]
pub enum Descriptor {
    /// The primary volume descriptor.
    Primary(VolumeDescriptor),
    /// A Joliet supplementary descriptor.
    Joliet(VolumeDescriptor),
    /// The set terminator.
    Terminator,
    /// Any other descriptor (boot record, partition, non-Joliet SVD).
    Other,
}

/// Reads one descriptor sector found at `sector`.
pub fn parse(bytes: &[u8; SECTOR], sector: u64) -> Result<Descriptor> {
    if &bytes[1..6] != b"CD001" {
        return Err(IsoError::NoDescriptor { sector });
    }
    match bytes[0] {
        TYPE_TERMINATOR => Ok(Descriptor::Terminator),
        TYPE_PRIMARY => Ok(Descriptor::Primary(volume(bytes, NameKind::Iso)?)),
        TYPE_SUPPLEMENTARY if is_joliet(bytes) => {
            Ok(Descriptor::Joliet(volume(bytes, NameKind::Joliet)?))
        }
        _ => Ok(Descriptor::Other),
    }
}

/// Joliet's escape sequences (levels 1 to 3) at bytes 88..120.
fn is_joliet(bytes: &[u8; SECTOR]) -> bool {
    let escapes = &bytes[88..120];
    [b"%/@", b"%/C", b"%/E"]
        .iter()
        .any(|seq| escapes.windows(3).any(|w| w == *seq))
}

fn volume(bytes: &[u8; SECTOR], kind: NameKind) -> Result<VolumeDescriptor> {
    let block_size = u32::from(u16::from_le_bytes([bytes[128], bytes[129]]));
    if !matches!(block_size, 512 | 1024 | 2048) {
        return Err(IsoError::BlockSize { size: block_size });
    }
    let volume_blocks = u32::from_le_bytes(bytes[80..84].try_into().expect("4 bytes"));
    let id_bytes = &bytes[40..72];
    let volume_id = match kind {
        NameKind::Iso => String::from_utf8_lossy(id_bytes).into_owned(),
        NameKind::Joliet => ucs2(id_bytes),
    };
    Ok(VolumeDescriptor {
        kind,
        volume_id: volume_id.trim_end_matches([' ', '\0']).to_string(),
        volume_blocks,
        block_size,
        root_record: bytes[156..156 + ROOT_RECORD_LEN]
            .try_into()
            .expect("34 bytes"),
    })
}

/// Decodes UCS-2 big-endian (Joliet), unpaired surrogates as U+FFFD.
pub fn ucs2(bytes: &[u8]) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(kind: u8) -> Box<[u8; SECTOR]> {
        let mut bytes = Box::new([0u8; SECTOR]);
        bytes[0] = kind;
        bytes[1..6].copy_from_slice(b"CD001");
        bytes[6] = 1;
        bytes[128..130].copy_from_slice(&2048u16.to_le_bytes());
        bytes[40..46].copy_from_slice(b"VOLUME");
        bytes
    }

    #[test]
    fn primary_terminator_and_joliet_are_told_apart() {
        assert!(matches!(
            parse(&sector(1), 16).unwrap(),
            Descriptor::Primary(VolumeDescriptor { ref volume_id, .. }) if volume_id == "VOLUME"
        ));
        assert!(matches!(
            parse(&sector(255), 17).unwrap(),
            Descriptor::Terminator
        ));
        let mut svd = sector(2);
        assert!(matches!(parse(&svd, 17).unwrap(), Descriptor::Other));
        svd[88..91].copy_from_slice(b"%/E");
        assert!(matches!(parse(&svd, 17).unwrap(), Descriptor::Joliet(_)));
    }

    #[test]
    fn refuses_a_missing_magic_and_odd_block_sizes() {
        let mut bytes = sector(1);
        bytes[1] = b'X';
        assert!(matches!(
            parse(&bytes, 16),
            Err(IsoError::NoDescriptor { sector: 16 })
        ));
        let mut bytes = sector(1);
        bytes[128..130].copy_from_slice(&4096u16.to_le_bytes());
        let err = parse(&bytes, 16).unwrap_err();
        assert!(matches!(err, IsoError::BlockSize { size: 4096 }));
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn ucs2_decodes_and_replaces_lone_surrogates() {
        assert_eq!(ucs2(&[0, b'a', 0, b'b']), "ab");
        assert_eq!(ucs2(&[0xd8, 0x00]), "\u{fffd}");
    }
}
