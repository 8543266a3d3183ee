//! The storage the format logic runs on.
//!
//! The qcow2 code never touches a file directly: it reads and writes byte
//! ranges through [`Storage`], which is implemented here for files and for
//! memory, and elsewhere (tests, fuzzing) for recording or failing wrappers.
//! All methods take `&self` so that several requests can be in flight at
//! once from different threads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::RwLock;

use crate::error::{Error, Result};

/// Byte-addressed storage with positional I/O.
pub trait Storage: Send + Sync {
    /// Reads `buf.len()` bytes at `offset`. Bytes past the end read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`, growing the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// Whether the storage is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends to `len` bytes (new bytes read as zero).
    fn set_len(&self, len: u64) -> Result<()>;
    /// Tells the storage that a range is no longer used; it may free it.
    /// Reading it afterwards returns zeroes or the old data.
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Reserves space for a range without writing it (posix_fallocate).
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        if self.len()? < end {
            self.set_len(end)?;
        }
        Ok(())
    }
    /// Bytes of host storage actually used (for `actual-size`), if known.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
    /// Starts writing dirty cached data to the device without waiting for
    /// it (a hint; durability still needs [`Storage::flush`]).
    fn start_writeback(&self) -> Result<()> {
        Ok(())
    }
    /// Whether `offset` is in data (`true`) or a hole, and for how many
    /// bytes (at most `len`, at least 1 when `len > 0`). Storage that cannot
    /// tell reports data.
    fn data_extent(&self, _offset: u64, len: u64) -> Result<(bool, u64)> {
        Ok((true, len))
    }
    /// The file beneath, for copies done by the kernel
    /// ([`copy_range`]); `None` for storage that is not one file.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// Copies `len` bytes at `src_offset` of `src` to `dst_offset` of `dst`
/// with copy_file_range, as qemu-img's copy offloading does. `Ok(None)`:
/// no offload here (either side is not a file, or the kernel or file
/// system cannot copy between them); the caller copies by reading and
/// writing. `Ok(Some(n))`: `n` bytes copied, fewer than `len` only where
/// `src` ends (the rest reads as zeros). An I/O error is returned as one.
pub fn copy_range(
    src: &dyn Storage,
    src_offset: u64,
    dst: &dyn Storage,
    dst_offset: u64,
    len: u64,
) -> Result<Option<u64>> {
    let (Some(from), Some(to)) = (src.as_file(), dst.as_file()) else {
        return Ok(None);
    };
    match crate::sys::copy_file_range(from, src_offset, to, dst_offset, len) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EBADF)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io(
            format!("copy_file_range at byte {src_offset}"),
            e,
        )),
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn len(&self) -> Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        (**self).set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        (**self).allocate(offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        (**self).allocated_bytes()
    }
    fn data_extent(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        (**self).data_extent(offset, len)
    }
    fn start_writeback(&self) -> Result<()> {
        (**self).start_writeback()
    }
    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn len(&self) -> Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        (**self).set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        (**self).allocate(offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        (**self).allocated_bytes()
    }
    fn data_extent(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        (**self).data_extent(offset, len)
    }
    fn start_writeback(&self) -> Result<()> {
        (**self).start_writeback()
    }
    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
}

/// A regular file (or block device) accessed with pread/pwrite.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    ignore_flush: bool,
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        FileStorage {
            file,
            ignore_flush: false,
        }
    }

    /// Wraps an open file whose flushes are skipped (qemu's `cache=unsafe`,
    /// the default for `qemu-img convert` targets): writes still happen in
    /// order, but nothing waits for the disk.
    pub fn unsafe_cache(file: File) -> Self {
        FileStorage {
            file,
            ignore_flush: true,
        }
    }

    /// The wrapped file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("read at offset {offset}"), e)),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(format!("write at offset {offset}"), e))
    }

    fn flush(&self) -> Result<()> {
        if self.ignore_flush {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| Error::io("flush", e))
    }

    fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", e))
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io(format!("truncate to {len}"), e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        crate::sys::punch_hole(&self.file, offset, len);
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        crate::sys::fallocate(&self.file, offset, len)
            .map_err(|e| Error::io(format!("fallocate {len} bytes at {offset}"), e))
    }

    fn allocated_bytes(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }

    fn data_extent(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        Ok(crate::sys::data_extent(&self.file, offset, len))
    }

    fn start_writeback(&self) -> Result<()> {
        crate::sys::start_writeback(&self.file);
        Ok(())
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Storage held in memory, for tests and fuzzing.
#[derive(Debug)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    limit: u64,
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage {
            data: RwLock::new(Vec::new()),
            limit: MEM_STORAGE_MAX,
        }
    }
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Storage holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(bytes),
            limit: MEM_STORAGE_MAX,
        }
    }

    /// Storage holding `bytes` that refuses to grow past `limit` bytes
    /// (hostile images in fuzzing would otherwise make it huge).
    pub fn with_limit(bytes: Vec<u8>, limit: u64) -> Self {
        MemStorage {
            data: RwLock::new(bytes),
            limit,
        }
    }

    /// A copy of the contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.read().expect("lock poisoned").clone()
    }
}

/// The largest memory storage we let a hostile image grow to.
const MEM_STORAGE_MAX: u64 = 1 << 32;

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read().expect("lock poisoned");
        let len = data.len() as u64;
        if offset >= len {
            buf.fill(0);
            return Ok(());
        }
        let start = offset as usize;
        let avail = ((len - offset) as usize).min(buf.len());
        buf[..avail].copy_from_slice(&data[start..start + avail]);
        buf[avail..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.limit)
            .ok_or(Error::NoSpace("memory storage limit"))?;
        let mut data = self.data.write().expect("lock poisoned");
        if (data.len() as u64) < end {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.data.read().expect("lock poisoned").len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        if len > self.limit {
            return Err(Error::NoSpace("memory storage limit"));
        }
        self.data
            .write()
            .expect("lock poisoned")
            .resize(len as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_range_copies_between_files_and_stops_at_the_source_end() {
        let src = FileStorage::new(tempfile::tempfile().unwrap());
        let dst = FileStorage::new(tempfile::tempfile().unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        src.write_at(&data, 0).unwrap();
        assert_eq!(
            copy_range(&src, 4096, &dst, 8192, 100_000).unwrap(),
            Some(100_000)
        );
        let mut got = vec![0u8; 100_000];
        dst.read_at(&mut got, 8192).unwrap();
        assert_eq!(got, data[4096..104_096]);
        // Past the source's end: only what is there.
        assert_eq!(
            copy_range(&src, 290_000, &dst, 0, 50_000).unwrap(),
            Some(10_000)
        );
        // Memory has no file: no offload, the caller copies.
        let mem = MemStorage::from_bytes(data.clone());
        assert_eq!(copy_range(&mem, 0, &dst, 0, 10).unwrap(), None);
    }

    #[test]
    fn mem_reads_past_end_as_zero() {
        let s = MemStorage::from_bytes(vec![1, 2, 3]);
        let mut buf = [9u8; 5];
        s.read_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [2, 3, 0, 0, 0]);
        s.write_at(&[7], 6).unwrap();
        assert_eq!(s.len().unwrap(), 7);
        assert_eq!(s.to_bytes(), vec![1, 2, 3, 0, 0, 0, 7]);
    }

    #[test]
    fn file_reads_past_end_as_zero() {
        let f = tempfile::tempfile().unwrap();
        let s = FileStorage::new(f);
        s.write_at(&[1, 2], 0).unwrap();
        let mut buf = [9u8; 4];
        s.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [1, 2, 0, 0]);
    }
}
