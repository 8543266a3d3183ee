//! The userfaultfd(2) calls lazy RAM needs, and nothing else: a
//! descriptor, MISSING-mode registration of a range, UFFDIO_COPY,
//! UFFDIO_ZEROPAGE, UFFDIO_WAKE, and reading page-fault events. The
//! `unsafe` of lazy RAM is all here; each call passes the kernel a
//! struct it fills or reads, sized as the kernel's uapi header says.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `UFFD_API`: the API version asked for.
const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)` (24 bytes).
const UFFDIO_API: u64 = ioc(3, 0x3f, 24);
/// `_IOWR(0xaa, 0x00, struct uffdio_register)` (32 bytes).
const UFFDIO_REGISTER: u64 = ioc(3, 0x00, 32);
/// `_IOR(0xaa, 0x01, struct uffdio_range)` (16 bytes).
const UFFDIO_UNREGISTER: u64 = ioc(2, 0x01, 16);
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = ioc(2, 0x02, 16);
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)` (40 bytes).
const UFFDIO_COPY: u64 = ioc(3, 0x03, 40);
/// `_IOWR(0xaa, 0x04, struct uffdio_zeropage)` (32 bytes).
const UFFDIO_ZEROPAGE: u64 = ioc(3, 0x04, 32);
/// `USERFAULTFD_IOC_NEW`: `_IO(0xaa, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: u64 = 0xaa00;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
const EVENT_PAGEFAULT: u8 = 0x12;

/// The ioctl numbers the loader thread's seccomp filter allows.
pub const LOADER_IOCTLS: [u64; 4] = [UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE, UFFDIO_UNREGISTER];

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0xaa << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// A userfaultfd, non-blocking, with the API handshake done.
pub struct Uffd {
    fd: OwnedFd,
}

/// The outcome of filling a range.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// Every page of the range is now present.
    All,
    /// A page of the range was present already (EEXIST): fill page by
    /// page instead.
    SomePresent,
}

impl Uffd {
    /// A new userfaultfd that also sees faults taken inside the kernel
    /// (KVM's, a device's copy): the system call, or /dev/userfaultfd
    /// where the system call is refused to us.
    pub fn new() -> io::Result<Uffd> {
        // SAFETY: userfaultfd(2) takes flags only and returns a new
        // descriptor or -1; nothing of ours is passed.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        let raw = if raw >= 0 {
            raw as i32
        } else {
            let dev = File::open("/dev/userfaultfd")?;
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and
            // returns a new descriptor or -1; `dev` is open.
            let rc = unsafe {
                libc::ioctl(
                    dev.as_raw_fd(),
                    USERFAULTFD_IOC_NEW as _,
                    libc::O_CLOEXEC | libc::O_NONBLOCK,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            rc
        };
        // SAFETY: `raw` is a descriptor just returned to us and owned by
        // nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: UFFDIO_API reads and writes the 24-byte struct we own.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Uffd { fd })
    }

    fn range_ioctl(&self, request: u64, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: the request reads the 16-byte range struct we own; it
        // only changes how faults in [start, start + len) are handled.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, &mut range) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registers `[start, start + len)` of our address space (page
    /// aligned, one private anonymous mapping) for missing-page faults:
    /// from now on a missing page there waits for this descriptor.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the 32-byte struct we
        // own; the range is a mapping the caller owns.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Undoes [`Uffd::register`]: missing pages fault as usual again.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(UFFDIO_UNREGISTER, start, len)
    }

    /// Wakes the threads waiting on a fault in the range (its pages were
    /// filled already).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(UFFDIO_WAKE, start, len)
    }

    /// Copies `src` into the missing pages at `dst` (registered, page
    /// aligned, `src.len()` a multiple of the page size) and wakes the
    /// threads waiting on them.
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<Filled> {
        let mut copy = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: the kernel reads `src.len()` bytes from `src`, which we
        // borrow for the call, and fills only missing pages of the
        // registered range at `dst` (it never overwrites a present one);
        // it writes the struct we own.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut copy) };
        filled(rc)
    }

    /// Maps the zero page at the missing pages of `[start, start + len)`
    /// and wakes the threads waiting on them.
    pub fn zero(&self, start: u64, len: u64) -> io::Result<Filled> {
        let mut zero = UffdioZeropage {
            range: UffdioRange { start, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes the 32-byte struct we
        // own and fills only missing pages of the registered range.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut zero) };
        filled(rc)
    }

    /// Waits at most `timeout` for a message (a fault) to read.
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<()> {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up: a timeout under 1 ms is not a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: poll(2) reads and writes the one pollfd we own.
        let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The address of the next page fault waiting, if any (never
    /// blocks). Other events (none are asked for) are skipped.
    pub fn next_fault(&self) -> io::Result<Option<u64>> {
        loop {
            let mut msg = [0u8; 32];
            // SAFETY: read(2) writes at most 32 bytes into `msg`, the size
            // of one struct uffd_msg.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n as usize != msg.len() {
                return Err(io::Error::other(format!(
                    "a userfaultfd message of {n} bytes"
                )));
            }
            if msg[0] == EVENT_PAGEFAULT {
                // struct uffd_msg: event u8, 7 reserved bytes, then
                // pagefault.flags u64 and pagefault.address u64.
                let address = u64::from_le_bytes(msg[16..24].try_into().expect("8 bytes"));
                return Ok(Some(address));
            }
        }
    }
}

/// A buffer of its own anonymous mapping, outside malloc: the loader
/// reads each record into it. (A multi-MiB buffer from malloc, freed
/// under the loader's seccomp filter, can make glibc shrink a thread
/// arena, whose first shrink opens /proc/sys/vm/overcommit_memory: a
/// call the filter kills the process for.)
pub struct PageBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the buffer alone and reached only
// through `&mut self`.
unsafe impl Send for PageBuffer {}

impl PageBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> io::Result<PageBuffer> {
        // SAFETY: a new private anonymous mapping at an address the
        // kernel picks; nothing of ours is passed.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PageBuffer {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Its first `n` bytes (at most its length).
    pub fn slice(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: [ptr, ptr + len) is our live read-write mapping and
        // `&mut self` makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n.min(self.len)) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which no
        // reference outlives (slices borrow `self`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn filled(rc: libc::c_int) -> io::Result<Filled> {
    if rc == 0 {
        return Ok(Filled::All);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(Filled::SomePresent)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
    }
}
