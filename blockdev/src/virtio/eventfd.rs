//! Resetting an eventfd we do not own (a backend's completion fd, a
//! transport's irqfd) without blocking, whatever its flags.

use std::os::fd::RawFd;

use crate::{Error, Result};

/// If `fd` is readable, read its counter (resetting it) and return `true`;
/// otherwise return `false` at once.
pub(crate) fn drain(fd: RawFd) -> Result<bool> {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll_fd` is one valid pollfd for the duration of the call,
    // and a zero timeout makes poll return at once.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    if ready < 0 {
        return Err(Error::Io {
            op: "poll an eventfd",
            source: std::io::Error::last_os_error(),
        });
    }
    if ready == 0 || poll_fd.revents & libc::POLLIN == 0 {
        return Ok(false);
    }
    let mut counter = 0u64;
    // SAFETY: reads at most 8 bytes into `counter`, a live u64; the fd was
    // just reported readable so the read does not block.
    let read = unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
    if read < 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(false);
        }
        return Err(Error::Io {
            op: "read an eventfd",
            source,
        });
    }
    Ok(read == 8)
}
