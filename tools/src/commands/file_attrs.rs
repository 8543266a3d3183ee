//! The `file` protocol's creation options `nocow` and `extent_size_hint`,
//! applied to a new image file as QEMU's file-posix driver applies them:
//! both are hints, so a file system that has no such attribute (ext4 has
//! neither) leaves the file as it is; only an explicit nonzero extent size
//! hint that cannot be set gets a warning. All of img's ioctls on image
//! files live here.

use std::fs::File;
use std::os::fd::AsRawFd;

/// QEMU's extent size hint when none is given: 1 MiB.
pub const DEFAULT_EXTENT_SIZE_HINT: u64 = 1 << 20;

/// `FS_NOCOW_FL` of `FS_IOC_SETFLAGS` (linux/fs.h).
const FS_NOCOW_FL: libc::c_long = 0x0080_0000;
/// `FS_XFLAG_EXTSIZE` of `struct fsxattr` (linux/fs.h).
const FS_XFLAG_EXTSIZE: u32 = 0x0000_0800;
/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `FS_IOC_FSSETXATTR`: `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// `struct fsxattr` (linux/fs.h), 28 bytes.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// Applies `nocow=on` (when `nocow`) and the extent size hint (`hint`, or
/// QEMU's default when `None`) to a file just created. Returns the warning
/// qemu-img prints when an explicit nonzero hint could not be set.
pub fn apply(file: &File, nocow: bool, hint: Option<u64>) -> Option<String> {
    let fd = file.as_raw_fd();
    if nocow {
        let mut flags: libc::c_long = 0;
        // SAFETY: fd is an open file owned by `file` for this call; the
        // ioctl writes one c_long into `flags`, which lives on our stack.
        let got = unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) };
        if got == 0 {
            flags |= FS_NOCOW_FL;
            // SAFETY: as above; the ioctl reads one c_long from `flags`.
            // Its failure is ignored, as QEMU ignores it (an optimisation).
            unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) };
        }
    }
    let size = hint.unwrap_or(DEFAULT_EXTENT_SIZE_HINT);
    let mut attr = FsXattr::default();
    // SAFETY: fd is open; the ioctl fills a `struct fsxattr`, which
    // `FsXattr` lays out exactly (repr(C), 28 bytes).
    let mut result = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR, &mut attr) };
    if result == 0 {
        attr.xflags |= FS_XFLAG_EXTSIZE;
        attr.extsize = u32::try_from(size).unwrap_or(u32::MAX);
        // SAFETY: as above; the ioctl reads the `struct fsxattr`.
        result = unsafe { libc::ioctl(fd, FS_IOC_FSSETXATTR, &attr) };
    }
    if result < 0 && hint.is_some_and(|h| h != 0) {
        let err = std::io::Error::last_os_error();
        return Some(format!(
            "Failed to set extent size hint: {}",
            super::os_text(&err)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsxattr_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
    }

    #[test]
    fn hints_never_fail_the_creation() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        // Whatever the file system, a default or zero hint is silent.
        assert_eq!(apply(&file, true, None), None);
        assert_eq!(apply(&file, false, Some(0)), None);
    }
}
