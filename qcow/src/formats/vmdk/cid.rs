//! A vmdk's content ID (`CID`) as QEMU keeps it: rewritten with a new
//! random value on the first write after each open (`vmdk_write_cid`),
//! and a child's `parentCID` checked against its parent's current `CID`
//! before the child reads from the parent or allocates a grain
//! (`vmdk_is_cid_valid`), which fails with EINVAL when they differ.
//!
//! The descriptor text is edited as QEMU edits it, as a C string: the
//! value after the first `CID` is replaced by the new one in `%x` (no
//! zero padding) and the text from `parentCID` on follows it; bytes past
//! the new text's NUL stay as they were. QEMU writes back the whole
//! area it read (the descriptor file's length rounded up to a sector, or
//! 20 sectors from byte 512 of a sparse file); only the bytes that
//! changed are written here, which leaves the same file without racing
//! grain-table updates of concurrent writers that share the area.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::device::{BlockRead, FileIndex};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Bytes QEMU reads for the CIDs of an embedded descriptor (at byte 512
/// of a sparse or VMFS sparse file) and of any parent.
pub const DESC_SIZE: u64 = 20 * 512;
/// Where an embedded descriptor starts, as QEMU reads it (whatever the
/// header says).
pub const EMBEDDED_OFFSET: u64 = 512;
/// The largest descriptor file QEMU rewrites ("VMDK description file too
/// big" past it).
pub const MAX_DESCRIPTOR_FILE: u64 = 16 << 20;

/// The error QEMU's vmdk driver returns for a stale `parentCID` or a
/// descriptor without `parentCID`: EINVAL, which qemu-img words as
/// "Invalid argument".
fn einval(what: &str) -> Error {
    Error::io(what, std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the C string at the start of `buf`.
fn c_len(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == 0).unwrap_or(buf.len())
}

/// Copies the C string `src` to `buf[at..]`, at most `buf.len() - at - 1`
/// bytes and a NUL, as QEMU's `pstrcpy` (nothing when no room).
fn put_c_string(buf: &mut [u8], at: usize, src: &[u8]) {
    let Some(room) = buf.len().checked_sub(at) else {
        return;
    };
    if room == 0 {
        return;
    }
    let n = src.len().min(room - 1);
    buf[at..at + n].copy_from_slice(&src[..n]);
    buf[at + n] = 0;
}

/// Edits descriptor area `buf` for the new `cid` as QEMU's
/// `vmdk_write_cid` does; false when the text has no `parentCID` (QEMU
/// then fails the write with EINVAL and leaves the file alone).
pub fn rewrite(buf: &mut [u8], cid: u32) -> bool {
    let Some(last) = buf.len().checked_sub(1) else {
        return false;
    };
    buf[last] = 0;
    let text_len = c_len(buf);
    let Some(parent_at) = find(&buf[..text_len], b"parentCID") else {
        return false;
    };
    let tail = buf[parent_at..text_len].to_vec();
    if let Some(cid_at) = find(&buf[..text_len], b"CID") {
        // `sizeof("CID")`: the key and the one byte after it.
        let value_at = cid_at + 4;
        put_c_string(buf, value_at, format!("{cid:x}\n").as_bytes());
        let end = c_len(buf);
        put_c_string(buf, end, &tail);
    }
    true
}

/// The value after the first `key` in descriptor area `buf` (cut at its
/// last byte), read as QEMU's `vmdk_read_cid` reads it: the byte after
/// the key skipped, then `%x`.
pub fn read_value(buf: &[u8], key: &str) -> Option<u32> {
    let text = &buf[..c_len(&buf[..buf.len().saturating_sub(1)])];
    let at = find(text, key.as_bytes())? + key.len() + 1;
    let mut rest = text.get(at..)?;
    while let [b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c', more @ ..] = rest {
        rest = more;
    }
    let negative = rest.first() == Some(&b'-');
    if let [b'+' | b'-', more @ ..] = rest {
        rest = more;
    }
    if let [b'0', b'x' | b'X', more @ ..] = rest {
        if more.first().is_some_and(u8::is_ascii_hexdigit) {
            rest = more;
        }
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit());
    // glibc's %x converts as strtoul does (an unsigned long: past 64 bits
    // ULONG_MAX, whatever the sign; a minus sign negates) and keeps the
    // low 32 bits.
    let mut value: Option<u64> = None;
    let mut overflow = false;
    for d in digits {
        let digit = u64::from((*d as char).to_digit(16).unwrap_or(0));
        let so_far = value.unwrap_or(0);
        overflow |= so_far >> 60 != 0;
        value = Some((so_far << 4) | digit);
    }
    let value = match value? {
        _ if overflow => u64::MAX,
        v if negative => v.wrapping_neg(),
        v => v,
    };
    Some(value as u32)
}

/// A new random CID (QEMU's `g_random_int`).
pub fn new_cid() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u32::from_le_bytes(bytes);
    }
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one(nanos) as u32
}

/// Where a file's descriptor area starts, as QEMU picks it: byte 512 of
/// a sparse ("KDMV") or VMFS sparse ("COWD") file, else the descriptor
/// file's start.
pub fn descriptor_offset(storage: &dyn Storage) -> Result<u64> {
    let mut magic = [0u8; 4];
    if storage.len()? >= 4 {
        storage.read_at(&mut magic, 0)?;
    }
    let sparse =
        u32::from_le_bytes(magic) == super::header::MAGIC || &magic == super::header::COWD_MAGIC;
    Ok(if sparse { EMBEDDED_OFFSET } else { 0 })
}

/// Reads `len` bytes at `offset` of `storage`, zeros past its end.
fn read_area(storage: &dyn Storage, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let have = storage.len()?.saturating_sub(offset).min(len) as usize;
    if have > 0 {
        storage.read_at(&mut buf[..have], offset)?;
    }
    Ok(buf)
}

/// The CID in the descriptor of the vmdk whose image file is `storage`.
pub fn read_cid(storage: &dyn Storage) -> Result<Option<u32>> {
    let offset = descriptor_offset(storage)?;
    let area = read_area(storage, offset, DESC_SIZE)?;
    Ok(read_value(&area, "CID"))
}

/// The `CID` and `parentCID` of the image whose descriptor area starts
/// at `offset` of `storage`, read as QEMU's `vmdk_open` reads them
/// (`vmdk_read_cid` on the area, whatever the descriptor's lines say):
/// each is the value after the first occurrence of its key anywhere in
/// the text, so `CID` may be found inside `parentCID` or a comment. QEMU
/// fails the open with EINVAL when either is missing or no number.
pub fn read_cids(storage: &dyn Storage, offset: u64) -> Result<(u32, u32)> {
    let area = read_area(storage, offset, DESC_SIZE)?;
    let cid = read_value(&area, "CID").ok_or_else(|| einval("a vmdk descriptor without a CID"))?;
    let parent_cid = read_value(&area, "parentCID")
        .ok_or_else(|| einval("a vmdk descriptor without a parentCID"))?;
    Ok((cid, parent_cid))
}

/// Writes a new CID into the descriptor area at `offset` of `storage`
/// and flushes it (QEMU's `bdrv_co_pwrite_sync`).
pub fn write_new_cid(storage: &dyn Storage, offset: u64, cid: u32) -> Result<()> {
    let len = if offset == 0 {
        // A descriptor file: all of it, as QEMU reads it (its length
        // rounded up to a sector).
        let len = storage.len()?.div_ceil(512) * 512;
        if len > MAX_DESCRIPTOR_FILE {
            return Err(Error::io(
                "VMDK description file too big",
                std::io::Error::from_raw_os_error(libc::EFBIG),
            ));
        }
        len
    } else {
        DESC_SIZE
    };
    if len == 0 {
        return Err(einval("a vmdk descriptor without parentCID"));
    }
    let old = read_area(storage, offset, len)?;
    let mut new = old.clone();
    if !rewrite(&mut new, cid) {
        return Err(einval("a vmdk descriptor without parentCID"));
    }
    let first = old.iter().zip(&new).position(|(a, b)| a != b);
    let last = old.iter().zip(&new).rposition(|(a, b)| a != b);
    if let (Some(first), Some(last)) = (first, last) {
        storage.write_at(&new[first..=last], offset + first as u64)?;
    }
    crate::formats::grow_to(storage, offset + len)?;
    storage.flush()
}

/// What one open image keeps about its CIDs.
#[derive(Debug, Default)]
pub struct CidState {
    /// Set once the CID was rewritten in this open.
    updated: AtomicBool,
    /// Serialises the one rewrite.
    rewrite_lock: Mutex<()>,
    /// Set once the parent's CID was found to match `parentCID`.
    parent_checked: AtomicBool,
}

impl CidState {
    /// After a write that changed the image: on the first one of this
    /// open, a new CID into the descriptor at `offset` of `storage`.
    pub fn after_write(&self, storage: &dyn Storage, offset: u64) -> Result<()> {
        if self.updated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.rewrite_lock.lock().expect("CID rewrite lock poisoned");
        if self.updated.load(Ordering::Acquire) {
            return Ok(());
        }
        write_new_cid(storage, offset, new_cid())?;
        self.updated.store(true, Ordering::Release);
        Ok(())
    }

    /// Before reading from `parent` or allocating a grain in a child of
    /// it: the parent must be a vmdk whose current CID is `parent_cid`
    /// (checked until it matches once, as QEMU checks it).
    pub fn check_parent(&self, parent: &dyn BlockRead, parent_cid: u32) -> Result<()> {
        if self.parent_checked.load(Ordering::Acquire) {
            return Ok(());
        }
        let current = if parent.format_name() == super::FORMAT {
            match parent.extent_file(FileIndex::IMAGE) {
                Some(file) => read_cid(&*file.storage).ok().flatten(),
                None => None,
            }
        } else {
            None
        };
        if current != Some(parent_cid) {
            return Err(einval(
                "the vmdk parent's CID no longer matches the child's parentCID",
            ));
        }
        self.parent_checked.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"# Disk DescriptorFile\nversion=1\nCID=2fc1881a\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n";

    fn area(text: &[u8], len: usize) -> Vec<u8> {
        let mut buf = text.to_vec();
        buf.resize(len, 0);
        buf
    }

    #[test]
    fn a_shorter_cid_leaves_the_old_text_past_the_new_nul() {
        let mut buf = area(TEXT, 512);
        assert!(rewrite(&mut buf, 0x1a));
        let text = b"# Disk DescriptorFile\nversion=1\nCID=1a\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n";
        assert_eq!(&buf[..text.len()], text);
        assert_eq!(buf[text.len()], 0);
        // The old text's last six bytes stay after the new NUL.
        assert_eq!(&buf[text.len() + 1..TEXT.len()], &TEXT[text.len() + 1..]);
        assert_eq!(read_value(&buf, "CID"), Some(0x1a));
        assert_eq!(read_value(&buf, "parentCID"), Some(u32::MAX));
    }

    #[test]
    fn text_between_cid_and_parent_cid_is_dropped_as_qemu_drops_it() {
        let mut buf = area(b"CID=1\nfoo=2\nparentCID=3\n", 64);
        assert!(rewrite(&mut buf, 0xabc));
        assert_eq!(&buf[..c_len(&buf)], b"CID=abc\nparentCID=3\n");
    }

    #[test]
    fn the_last_byte_of_the_area_becomes_nul() {
        let mut buf = vec![b'#'; 64];
        buf[..20].copy_from_slice(b"CID=1\nparentCID=3\n##");
        let before = buf.clone();
        assert!(rewrite(&mut buf, 2));
        assert_eq!(buf[63], 0);
        assert_eq!(buf[4], b'2');
        assert_eq!(&buf[5..63], &before[5..63]);
    }

    #[test]
    fn text_without_parent_cid_is_refused_unchanged() {
        let mut buf = area(b"CID=1\n", 32);
        let before = buf.clone();
        assert!(!rewrite(&mut buf, 5));
        assert_eq!(&buf[..31], &before[..31]);
        assert!(!rewrite(&mut [], 5));
    }

    #[test]
    fn parent_cid_first_gets_the_new_value_where_qemu_puts_it() {
        // QEMU's strstr finds "CID" inside "parentCID" first.
        let mut buf = area(b"parentCID=ffffffff\nCID=1\n", 64);
        assert!(rewrite(&mut buf, 0x42));
        assert_eq!(
            &buf[..c_len(&buf)],
            b"parentCID=42\nparentCID=ffffffff\nCID=1\n".as_slice()
        );
    }

    #[test]
    fn values_read_as_sscanf_reads_them() {
        assert_eq!(read_value(b"CID=0x1F\n\0", "CID"), Some(0x1f));
        assert_eq!(read_value(b"CID= ab\n\0", "CID"), Some(0xab));
        assert_eq!(read_value(b"CID=zz\n\0", "CID"), None);
        assert_eq!(read_value(b"CID=123456789\n\0", "CID"), Some(0x2345_6789));
        assert_eq!(read_value(b"nothing\0", "CID"), None);
        assert_eq!(read_value(b"CID=-5\n\0", "CID"), Some(0xffff_fffb));
        assert_eq!(read_value(b"CID=+0x10\n\0", "CID"), Some(0x10));
        assert_eq!(read_value(b"CID=0x\n\0", "CID"), Some(0));
        // Past 64 bits strtoul gives ULONG_MAX, negative or not.
        assert_eq!(
            read_value(b"CID=-10000000000000000\n\0", "CID"),
            Some(u32::MAX)
        );
        assert_eq!(
            read_value(b"CID=fedcba987654321\n\0", "CID"),
            Some(0x8765_4321)
        );
    }

    fn storage(text: &[u8]) -> crate::storage::MemStorage {
        crate::storage::MemStorage::from_bytes(text.to_vec())
    }

    #[test]
    fn cids_are_found_where_qemu_finds_them() {
        // The first "CID" anywhere: inside parentCID when that comes first.
        let text = b"parentCID=ffffffff\nCID=1234\ncreateType=\"monolithicFlat\"\n";
        assert_eq!(
            read_cids(&storage(text), 0).unwrap(),
            (0xffff_ffff, 0xffff_ffff)
        );
        // Or in a comment, and the byte after the key is skipped unread.
        let text = b"# CID: fa (old)\nCID=1234\nparentCID=ffffffff\n";
        assert_eq!(read_cids(&storage(text), 0).unwrap(), (0xfa, 0xffff_ffff));
        // Past the first NUL and past the area nothing counts.
        let mut text = b"CID=5\n\0parentCID=ffffffff\n".to_vec();
        assert!(read_cids(&storage(&text), 0).is_err());
        text = vec![b' '; DESC_SIZE as usize - 4];
        text.extend_from_slice(b"CID=5 parentCID=ffffffff\n");
        assert!(read_cids(&storage(&text), 0).is_err());
        assert!(read_cids(&storage(b"CID=zz\nparentCID=1\n"), 0).is_err());
        let at_512 = [vec![0u8; 512], b"CID=ab\nparentCID=cd\n".to_vec()].concat();
        assert_eq!(
            read_cids(&storage(&at_512), EMBEDDED_OFFSET).unwrap(),
            (0xab, 0xcd)
        );
    }
}
