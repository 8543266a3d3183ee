//! Host files under a disk: the descriptor data I/O goes through (O_DIRECT
//! for `cache=none`), a buffered one for metadata and synchronous
//! fallbacks, the O_DIRECT alignment the file system asks for, and the few
//! system calls std lacks (statx for that alignment, fallocate).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::disk::CacheMode;
use crate::error::{Error, Result};

/// Alignment assumed when the kernel cannot say (safe on every device).
const FALLBACK_DIO_ALIGN: u32 = 4096;

/// O_DIRECT alignment: of file offsets and lengths, and of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    /// Offsets and lengths must be multiples of this.
    pub offset: u32,
    /// Buffer addresses must be multiples of this.
    pub mem: u32,
}

/// One host file of a disk.
#[derive(Debug)]
pub struct HostFile {
    /// Descriptor for data I/O (O_DIRECT with `cache=none`).
    data: File,
    /// Buffered descriptor (the same file description when not direct).
    buffered: File,
    /// O_DIRECT alignment, if `data` is direct.
    dio: Option<DioAlign>,
}

fn open_err(path: &Path, source: io::Error) -> Error {
    Error::Open {
        path: path.display().to_string(),
        source,
    }
}

impl HostFile {
    /// Opens `path` for the given cache mode.
    #[cfg(test)]
    pub fn open(path: &Path, writable: bool, cache: CacheMode) -> Result<HostFile> {
        let buffered = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        Self::from_buffered(buffered, path, writable, cache)
    }

    /// Wraps an already open buffered descriptor of `path`, opening a
    /// direct one beside it for `cache=none`.
    pub fn from_buffered(
        buffered: File,
        path: &Path,
        writable: bool,
        cache: CacheMode,
    ) -> Result<HostFile> {
        match cache {
            CacheMode::Writeback => Ok(HostFile {
                data: buffered.try_clone().map_err(|e| open_err(path, e))?,
                buffered,
                dio: None,
            }),
            CacheMode::None => {
                let data = OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .map_err(|e| open_err(path, e))?;
                let dio = dio_align(&data);
                Ok(HostFile {
                    data,
                    buffered,
                    dio: Some(dio),
                })
            }
        }
    }

    /// The descriptor data I/O goes through.
    pub fn data_fd(&self) -> RawFd {
        self.data.as_raw_fd()
    }

    /// O_DIRECT alignment, if data I/O is direct.
    pub fn dio(&self) -> Option<DioAlign> {
        self.dio
    }

    /// Size in bytes (works for block devices too).
    pub fn size(&self) -> Result<u64> {
        let mut f = &self.buffered;
        io::Seek::seek(&mut f, io::SeekFrom::End(0)).map_err(|source| Error::Io {
            op: "seek to the end",
            source,
        })
    }

    /// Reads `buf` at `offset` through the page cache; bytes past the end
    /// read as zero.
    pub fn read_buffered(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self
                .buffered
                .read_at(&mut buf[done..], offset + done as u64)
            {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Io { op: "read", source }),
            }
        }
        Ok(())
    }

    /// Writes `buf` at `offset` through the page cache.
    pub fn write_buffered(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.buffered
            .write_all_at(buf, offset)
            .map_err(|source| Error::Io {
                op: "write",
                source,
            })
    }

    /// Writes the `len` bytes at `data` to `offset` through the page cache,
    /// straight from where they are (no copy into a buffer of ours).
    ///
    /// # Safety
    /// `data..data + len` must be valid for reads for the whole call.
    pub unsafe fn write_buffered_from(
        &self,
        data: *const u8,
        len: usize,
        offset: u64,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            // SAFETY: the caller keeps `data..data + len` readable; the
            // kernel reads `len - done` bytes from `data + done`.
            let n = unsafe {
                libc::pwrite(
                    self.buffered.as_raw_fd(),
                    data.add(done).cast(),
                    len - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => {
                    return Err(Error::Io {
                        op: "write",
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                }
                _ => {
                    let source = io::Error::last_os_error();
                    if source.kind() != io::ErrorKind::Interrupted {
                        return Err(Error::Io {
                            op: "write",
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `len` zero bytes at `offset` through the page cache.
    pub fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; len.min(CHUNK) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(CHUNK);
            self.write_buffered(&zeros[..n as usize], pos)?;
            pos += n;
        }
        Ok(())
    }

    /// `fdatasync`.
    pub fn sync_data(&self) -> Result<()> {
        self.buffered.sync_data().map_err(|source| Error::Io {
            op: "fdatasync",
            source,
        })
    }
}

/// Asks the kernel for a direct descriptor's alignment (statx
/// STATX_DIOALIGN, Linux 6.1+); falls back to 4096.
fn dio_align(file: &File) -> DioAlign {
    // SAFETY: statx is plain old data; all-zero bytes are a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string, AT_EMPTY_PATH makes the
    // call look at the descriptor, and `st` is a valid, writable statx.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    let valid = |v: u32| v.is_power_of_two() && v <= 65536;
    if rc == 0
        && st.stx_mask & libc::STATX_DIOALIGN != 0
        && valid(st.stx_dio_offset_align)
        && valid(st.stx_dio_mem_align)
    {
        DioAlign {
            offset: st.stx_dio_offset_align,
            mem: st.stx_dio_mem_align,
        }
    } else {
        DioAlign {
            offset: FALLBACK_DIO_ALIGN,
            mem: FALLBACK_DIO_ALIGN,
        }
    }
}

/// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: deallocate, read as zero.
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// `FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE`: read as zero, stay allocated.
pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_files_report_an_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![5u8; 8192]).unwrap();
        let f = HostFile::open(&path, true, CacheMode::Writeback).unwrap();
        assert!(f.dio().is_none());
        assert_eq!(f.size().unwrap(), 8192);
        f.write_zero_bytes(100, 200).unwrap();
        let mut buf = [1u8; 400];
        f.read_buffered(&mut buf, 8000).unwrap();
        assert!(buf[..192].iter().all(|&b| b == 5) && buf[192..].iter().all(|&b| b == 0));
        match HostFile::open(&path, true, CacheMode::None) {
            Ok(d) => {
                let a = d.dio().unwrap();
                assert!(a.offset.is_power_of_two() && a.mem.is_power_of_two());
            }
            // tmpfs and some others refuse O_DIRECT.
            Err(Error::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
