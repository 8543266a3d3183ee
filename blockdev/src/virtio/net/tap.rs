//! A tap device opened for a virtio-net device: `/dev/net/tun` with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (and IFF_MULTI_QUEUE for one fd per
//! queue pair), its vnet header size and offloads, and scatter-gather
//! reads and writes straight between it and guest buffers.
//!
//! Every `unsafe` operation on a tap is here: the ioctls, `readv` and
//! `writev`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::disk::IoBuf;
use crate::{Error, Result};

/// The tun/tap clone device.
const TUN_PATH: &str = "/dev/net/tun";
/// `TUNGETIFF`: read back the interface's name and flags.
const TUNGETIFF: libc::Ioctl = 0x8004_54d2;
/// Most buffers one `readv`/`writev` takes (UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// Offloads a tap may be told the reader (the guest) accepts
/// (`TUNSETOFFLOAD`), from the guest's negotiated receive features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// Partial checksums (VIRTIO_NET_F_GUEST_CSUM).
    pub csum: bool,
    /// TCP over IPv4 segmentation (GUEST_TSO4).
    pub tso4: bool,
    /// TCP over IPv6 segmentation (GUEST_TSO6).
    pub tso6: bool,
    /// UDP fragmentation (GUEST_UFO).
    pub ufo: bool,
}

impl TapOffloads {
    fn flags(self) -> libc::c_uint {
        let mut flags = 0;
        if self.csum {
            flags |= libc::TUN_F_CSUM;
            // Segmentation offloads are only valid with checksum offload.
            if self.tso4 {
                flags |= libc::TUN_F_TSO4;
            }
            if self.tso6 {
                flags |= libc::TUN_F_TSO6;
            }
            if self.ufo {
                flags |= libc::TUN_F_UFO;
            }
        }
        flags
    }
}

/// One queue (file descriptor) of a tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// Whether the queue is attached (TUNSETQUEUE refuses to attach an
    /// attached queue or detach a detached one); shared with the clones,
    /// which are the same kernel queue.
    attached: Arc<AtomicBool>,
}

/// An `ifreq` for the tun ioctls: the name and the flags word.
fn ifreq(name: &str, flags: libc::c_int) -> Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Error::Unsupported {
            what: format!(
                "tap name '{name}' must be 1 to {} bytes without NUL",
                libc::IFNAMSIZ - 1
            ),
        });
    }
    // SAFETY: ifreq is plain old data (a name array and a union of
    // integers and addresses); all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

impl Tap {
    /// Open `queues` queues (1 or more) of the tap interface `name`,
    /// creating it if it does not exist, each nonblocking with a 12-byte
    /// vnet header (`struct virtio_net_hdr_v1`, VERSION_1's header) and no
    /// offloads until [`Tap::set_offloads`].
    pub fn open(name: &str, queues: u16) -> Result<Vec<Tap>> {
        if queues == 0 {
            return Err(Error::InvalidDeviceOption {
                name: "tap queues",
                value: 0,
            });
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut taps = Vec::with_capacity(usize::from(queues));
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(TUN_PATH)
                .map_err(|source| Error::Open {
                    path: TUN_PATH.to_string(),
                    source,
                })?;
            let mut req = ifreq(name, flags)?;
            // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req`
            // is, alive for the call.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            if ret < 0 {
                return Err(Error::Io {
                    op: "attach to the tap (TUNSETIFF)",
                    source: io::Error::last_os_error(),
                });
            }
            let tap = Tap::finish(file)?;
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Take over an open tap fd (one handed over by a management tool):
    /// it must be a tap with IFF_NO_PI and IFF_VNET_HDR; it is made
    /// nonblocking with a 12-byte vnet header.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap> {
        let file = File::from(fd);
        Tap::finish(file)
    }

    /// Check the interface's flags, read its name, set the vnet header
    /// size and nonblocking mode.
    fn finish(file: File) -> Result<Tap> {
        let fd = file.as_raw_fd();
        // SAFETY: zeroed ifreq is valid (see `ifreq`); TUNGETIFF writes
        // one ifreq into it.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `req` is alive for the call.
        if unsafe { libc::ioctl(fd, TUNGETIFF, &mut req) } < 0 {
            return Err(Error::Io {
                op: "read the tap's flags (TUNGETIFF): not a tap fd",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
        let needed = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & needed != needed {
            return Err(Error::Unsupported {
                what: format!(
                    "tap fd flags {flags:#x} lack IFF_TAP|IFF_NO_PI|IFF_VNET_HDR ({needed:#x})"
                ),
            });
        }
        // SAFETY: ifr_name is a NUL-padded array of IFNAMSIZ bytes the
        // kernel filled; the last byte is always NUL.
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let header_size: libc::c_int = super::defs::NET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &header_size) } < 0 {
            return Err(Error::Io {
                op: "set the tap's vnet header size (TUNSETVNETHDRSZ)",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: F_GETFL/F_SETFL on an fd we own; no pointers.
        let set = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
        };
        if !set {
            return Err(Error::Io {
                op: "make the tap nonblocking",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name,
            attached: Arc::new(AtomicBool::new(true)),
        };
        tap.set_offloads(TapOffloads::default())?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tell the tap which offloads the guest accepts on receive.
    pub fn set_offloads(&self, offloads: TapOffloads) -> Result<()> {
        let flags = offloads.flags();
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), libc::TUNSETOFFLOAD, flags) };
        if ret < 0 {
            return Err(Error::Io {
                op: "set the tap's offloads (TUNSETOFFLOAD)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the kernel steers frames to this queue (false once the MQ
    /// command detached it; its fd then reads and writes nothing).
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// Attach this queue to its multiqueue interface or detach it
    /// (`TUNSETQUEUE`): the kernel only steers frames to attached queues.
    pub fn set_queue_attached(&self, attached: bool) -> Result<()> {
        if self.attached.load(Ordering::Relaxed) == attached {
            return Ok(());
        }
        let flags = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut req = ifreq(&self.name, flags)?;
        // SAFETY: TUNSETQUEUE reads one ifreq, alive for the call.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), libc::TUNSETQUEUE, &mut req) };
        if ret < 0 {
            return Err(Error::Io {
                op: "attach or detach a tap queue (TUNSETQUEUE)",
                source: io::Error::last_os_error(),
            });
        }
        self.attached.store(attached, Ordering::Relaxed);
        Ok(())
    }

    /// Read one frame (vnet header first) into `bufs`; the bytes read. A
    /// frame that does not fit is cut to the buffers' length (the rest is
    /// lost), so a caller that must tell adds a spare byte at the end.
    /// `WouldBlock` when no frame is waiting.
    ///
    /// # Safety
    /// Each buffer must be writable memory that stays mapped for the call
    /// (guest memory behind a live guest memory view).
    pub unsafe fn read_frame(&self, bufs: &[IoBuf]) -> io::Result<usize> {
        with_iovecs(bufs, |iov, count| {
            // SAFETY: `iov` is `count` live iovecs; the caller vouches for
            // the memory they point to.
            unsafe { libc::readv(self.as_raw_fd(), iov, count) }
        })
    }

    /// Write one frame (vnet header first) gathered from `bufs`.
    ///
    /// # Safety
    /// Each buffer must be readable memory that stays mapped for the call.
    pub unsafe fn write_frame(&self, bufs: &[IoBuf]) -> io::Result<usize> {
        with_iovecs(bufs, |iov, count| {
            // SAFETY: as in `read_frame`.
            unsafe { libc::writev(self.as_raw_fd(), iov, count) }
        })
    }

    /// Write one frame (vnet header first) held in `frame`, from the
    /// device itself (the RARP it announces a restored guest with).
    pub fn write_bytes(&self, frame: &[u8]) -> io::Result<usize> {
        let buf = IoBuf {
            addr: frame.as_ptr().cast_mut(),
            len: frame.len(),
        };
        // SAFETY: `frame` is a live shared slice for the call; writev only
        // reads it (the pointer is `*mut` by IoBuf's type alone).
        unsafe { self.write_frame(std::slice::from_ref(&buf)) }
    }

    /// A second handle on the same queue (for a test reading what the
    /// device wrote, or the VMM's event loop registration).
    pub fn try_clone(&self) -> Result<Tap> {
        let file = self.file.try_clone().map_err(|source| Error::Io {
            op: "duplicate the tap fd",
            source,
        })?;
        Ok(Tap {
            file,
            name: self.name.clone(),
            attached: self.attached.clone(),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl From<Tap> for OwnedFd {
    fn from(tap: Tap) -> OwnedFd {
        tap.file.into()
    }
}

/// Iovecs kept on the stack for one call; longer lists go to the heap.
const STACK_IOVECS: usize = 64;

/// Run a readv/writev-like `call` on the iovecs of (at most
/// [`MAX_IOVECS`] of) `bufs`, turning its return into a length or the OS
/// error.
fn with_iovecs(
    bufs: &[IoBuf],
    call: impl FnOnce(*const libc::iovec, libc::c_int) -> isize,
) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut on_stack = [empty; STACK_IOVECS];
    let mut on_heap = Vec::new();
    let iov: &mut [libc::iovec] = if bufs.len() <= STACK_IOVECS {
        &mut on_stack[..bufs.len()]
    } else {
        on_heap.resize(bufs.len(), empty);
        &mut on_heap
    };
    for (slot, buf) in iov.iter_mut().zip(bufs) {
        *slot = libc::iovec {
            iov_base: buf.addr.cast(),
            iov_len: buf.len,
        };
    }
    let ret = call(iov.as_ptr(), iov.len() as libc::c_int);
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused() {
        let null = File::open("/dev/null").expect("/dev/null");
        let err = Tap::from_fd(null.into()).expect_err("not a tap");
        assert!(err.to_string().contains("TUNGETIFF"), "{err}");
    }

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for name in ["", "a-name-longer-than-15", "nul\0inside"] {
            let err = Tap::open(name, 1).expect_err("bad name");
            assert!(err.to_string().contains("tap name"), "{err}");
        }
        assert!(Tap::open("tap0", 0).is_err());
    }
}
