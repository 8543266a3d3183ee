//! An open `luks` image: a LUKS1 header, then the payload, every 512-byte
//! sector of it encrypted under the master key and numbered from the
//! payload's start, as QEMU's `block/crypto.c` reads and writes it.
//! Writes of partial sectors read, decrypt, merge and re-encrypt the
//! sectors around them.

use std::sync::{Arc, Mutex};

use super::cipher::{SectorCipher, SECTOR_SIZE};
use super::luks::{LuksHeader, HEADER_LEN};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex};
use crate::error::{Error, Result};
use crate::formats::{CheckReport, ForeignImage};
use crate::storage::Storage;

/// Sectors decrypted or encrypted at a time (bounds the bounce buffer).
const SECTORS_PER_PASS: u64 = 2048;

/// Reads and checks the LUKS header at the start of `storage`, as QEMU
/// does before it asks for a key: a LUKS2 header, which QEMU 10 does not
/// read, gets its `LUKS version 2 is not supported`.
pub fn read_header(storage: &dyn Storage) -> Result<LuksHeader> {
    let file_len = storage.len()?;
    if file_len < HEADER_LEN as u64 {
        return Err(Error::LuksHeader {
            field: "magic",
            reason: "Volume is not in LUKS format".into(),
        });
    }
    let mut buf = vec![0u8; HEADER_LEN];
    storage.read_at(&mut buf, 0)?;
    LuksHeader::parse(&buf, file_len)
}

/// An unlocked LUKS volume.
pub struct LuksVolume {
    storage: Arc<dyn Storage>,
    cipher: SectorCipher,
    /// First byte of the payload in the file.
    payload_offset: u64,
    /// Payload bytes (whole sectors).
    size: u64,
    /// Serialises read-modify-write of partial sectors.
    rmw: Mutex<()>,
}

impl LuksVolume {
    /// Opens the LUKS volume in `storage` with `password`: QEMU's header
    /// checks, then the key slots tried in order (a wrong password gets
    /// QEMU's message).
    pub fn open(storage: Arc<dyn Storage>, password: &[u8]) -> Result<LuksVolume> {
        let file_len = storage.len()?;
        let header = read_header(&*storage)?;
        let key = header.unlock(password, &mut |at, out| storage.read_at(out, at))?;
        let cipher = header.payload_cipher(&key)?;
        let payload_offset = u64::from(header.payload_offset_sector) * SECTOR_SIZE as u64;
        let size =
            file_len.saturating_sub(payload_offset) / SECTOR_SIZE as u64 * SECTOR_SIZE as u64;
        Ok(LuksVolume {
            storage,
            cipher,
            payload_offset,
            size,
            rmw: Mutex::new(()),
        })
    }

    /// Reads and decrypts whole sectors `[first, first + buf.len()/512)`.
    fn read_sectors(&self, buf: &mut [u8], first: u64) -> Result<()> {
        self.storage
            .read_at(buf, self.payload_offset + first * SECTOR_SIZE as u64)?;
        self.cipher.decrypt(buf, first);
        Ok(())
    }

    /// Encrypts and writes whole sectors (`buf` is encrypted in place).
    fn write_sectors(&self, buf: &mut [u8], first: u64) -> Result<()> {
        self.cipher.encrypt(buf, first);
        self.storage
            .write_at(buf, self.payload_offset + first * SECTOR_SIZE as u64)
    }

    /// The sector-aligned passes covering `[offset, offset + len)`: first
    /// sector and sector count of each.
    fn passes(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
        let sector = SECTOR_SIZE as u64;
        let first = offset / sector;
        let end = (offset + len).div_ceil(sector);
        (first..end)
            .step_by(SECTORS_PER_PASS as usize)
            .map(move |s| (s, (end - s).min(SECTORS_PER_PASS)))
    }
}

impl BlockRead for LuksVolume {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let sector = SECTOR_SIZE as u64;
        let mut bounce = Vec::new();
        for (first, count) in Self::passes(offset, buf.len() as u64) {
            bounce.resize((count * sector) as usize, 0);
            self.read_sectors(&mut bounce, first)?;
            let pass_start = first * sector;
            let from = offset.max(pass_start);
            let to = (offset + buf.len() as u64).min(pass_start + count * sector);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bounce[(from - pass_start) as usize..(to - pass_start) as usize]);
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(offset, len, self.size)?;
        Ok(vec![Extent {
            guest_offset: offset,
            len,
            kind: ExtentKind::Data {
                host_offset: self.payload_offset + offset,
                file: FileIndex::IMAGE,
            },
        }])
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        None
    }

    fn format_name(&self) -> &'static str {
        "luks"
    }
}

impl ForeignImage for LuksVolume {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let sector = SECTOR_SIZE as u64;
        let _guard = self.rmw.lock().expect("luks write lock poisoned");
        let mut bounce = Vec::new();
        for (first, count) in Self::passes(offset, buf.len() as u64) {
            bounce.resize((count * sector) as usize, 0);
            let pass_start = first * sector;
            let pass_end = pass_start + count * sector;
            let from = offset.max(pass_start);
            let to = (offset + buf.len() as u64).min(pass_end);
            if from != pass_start || to != pass_end {
                // Partial sectors at either end: keep the bytes around.
                self.read_sectors(&mut bounce, first)?;
            }
            bounce[(from - pass_start) as usize..(to - pass_start) as usize]
                .copy_from_slice(&buf[(from - offset) as usize..(to - offset) as usize]);
            self.write_sectors(&mut bounce, first)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.storage.flush()
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn cluster_size(&self) -> Option<u64> {
        None
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::luks::{create, LuksOptions};
    use crate::storage::MemStorage;

    fn volume(password: &[u8], payload: usize) -> Arc<MemStorage> {
        let opts = LuksOptions {
            iter_time_ms: 1,
            ..LuksOptions::default()
        };
        let new = create(&opts, password).unwrap();
        let mut bytes = new.area.clone();
        let start = new.header.payload_offset_sector as usize * SECTOR_SIZE;
        bytes.resize(start + payload, 0);
        Arc::new(MemStorage::from_bytes(bytes))
    }

    #[test]
    fn unaligned_writes_read_back_and_the_payload_is_encrypted() {
        let storage = volume(b"pw", 8192);
        let v = LuksVolume::open(storage.clone(), b"pw").unwrap();
        assert_eq!(v.virtual_size(), 8192);
        v.write_at(&[0x5a; 1000], 700).unwrap();
        let mut back = vec![0u8; 8192];
        v.read_at(&mut back, 0).unwrap();
        assert!(back[700..1700].iter().all(|&b| b == 0x5a));
        // The rest of the touched sectors read as they did (zeros on disk
        // decrypt to noise, and stay that noise).
        let v2 = LuksVolume::open(storage.clone(), b"pw").unwrap();
        let mut again = vec![0u8; 8192];
        v2.read_at(&mut again, 0).unwrap();
        assert_eq!(back, again);
        let raw = storage.to_bytes();
        let payload = &raw[raw.len() - 8192..];
        assert!(!payload[700..1700].iter().all(|&b| b == 0x5a));
        let e = LuksVolume::open(storage, b"wrong")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "Invalid password, cannot unlock any keyslot");
        assert!(v.read_at(&mut [0u8; 2], 8191).is_err());
    }

    #[test]
    fn a_luks2_header_gets_qemus_message() {
        let mut bytes = vec![0u8; 1 << 16];
        bytes[..6].copy_from_slice(b"LUKS\xba\xbe");
        bytes[7] = 2;
        let e = read_header(&MemStorage::from_bytes(bytes))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "LUKS version 2 is not supported");
    }
}
