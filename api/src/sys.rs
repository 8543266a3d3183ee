//! The one system call std lacks: a non-blocking `connect` on a Unix
//! socket, so that a full listen backlog is reported instead of waited on.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why a connect did not succeed.
pub(crate) enum ConnectError {
    /// The path does not fit in `sun_path`.
    TooLong { length: usize, max: usize },
    /// The listener's backlog is full (EAGAIN): try again later.
    Busy,
    /// Anything else.
    Os(std::io::Error),
}

/// Connects a non-blocking stream socket to `path`.
pub(crate) fn connect_nonblocking(path: &Path) -> Result<UnixStream, ConnectError> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    let max = address.sun_path.len() - 1;
    if bytes.len() > max {
        return Err(ConnectError::TooLong {
            length: bytes.len(),
            max,
        });
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(ConnectError::Os(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a socket we just created and own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let length = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: address is a valid sockaddr_un and length does not exceed
    // its size (checked against sun_path above).
    let rc = unsafe {
        libc::connect(
            fd,
            &address as *const libc::sockaddr_un as *const libc::sockaddr,
            length as libc::socklen_t,
        )
    };
    if rc < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EAGAIN) => ConnectError::Busy,
            _ => ConnectError::Os(error),
        });
    }
    Ok(UnixStream::from(owned))
}
