//! The few Linux system calls `std` does not wrap: hole punching,
//! fallocate, SEEK_DATA/SEEK_HOLE, writeback and copy_file_range. This is
//! the crate's only unsafe code.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Deallocates a byte range of a file, keeping its size. Best effort: file
/// systems without hole punching leave the data in place.
pub fn punch_hole(file: &File, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: fallocate only reads its integer arguments; the fd is valid for
    // the lifetime of `file`.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

/// Allocates a byte range of a file (posix_fallocate semantics), growing it.
pub fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate only reads its integer arguments; the fd is valid for
    // the lifetime of `file`.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // Fall back to extending the file; the blocks stay sparse.
        let end = offset + len;
        if file.metadata()?.len() < end {
            file.set_len(end)?;
        }
        return Ok(());
    }
    Err(err)
}

/// Finds whether `offset` lies in data or in a hole, and how far that
/// lasts (capped at `len`), with SEEK_DATA/SEEK_HOLE. Falls back to "data".
pub fn data_extent(file: &File, offset: u64, len: u64) -> (bool, u64) {
    let fd = file.as_raw_fd();
    // SAFETY: lseek only reads its integer arguments; the fd is valid for the
    // lifetime of `file`. The file position it changes is not used by pread.
    let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            // No data after offset: a hole to the end.
            return (false, len);
        }
        return (true, len);
    }
    let data = data as u64;
    if data > offset {
        return (false, (data - offset).min(len));
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
    if hole < 0 {
        return (true, len);
    }
    let hole = hole as u64;
    (true, hole.saturating_sub(offset).clamp(1, len))
}

/// Starts writeback of the file's dirty pages without waiting
/// (sync_file_range with SYNC_FILE_RANGE_WRITE). Best effort.
pub fn start_writeback(file: &File) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // valid for the lifetime of `file`.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Asks the kernel to read `[offset, offset + len)` of the file into the
/// page cache in the background (posix_fadvise POSIX_FADV_WILLNEED).
/// Best effort.
pub fn will_need(file: &File, offset: u64, len: u64) {
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is
    // valid for the lifetime of `file`.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Copies `len` bytes at `src_offset` of `src` to `dst_offset` of `dst`
/// in the kernel (copy_file_range: a reflink or a server-side copy where
/// the file system has one, an in-kernel copy otherwise). Returns the
/// bytes copied, fewer than `len` only when `src` ends first. Neither
/// file's position is used or changed.
pub fn copy_file_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (src_offset + done) as libc::loff_t;
        let mut off_out = (dst_offset + done) as libc::loff_t;
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: copy_file_range reads its integer arguments and updates
        // the two offsets it is given pointers to, which live on this
        // stack frame for the call; both fds are valid for the lifetime of
        // the borrowed files.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}
