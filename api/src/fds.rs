//! Open descriptors handed over with a request (SCM_RIGHTS), as libvirt
//! and Kata hand tap fds to Cloud Hypervisor: the client sends them with
//! the request's first bytes ([`send_with_fds`]); the server reads the
//! request through an [`FdReader`], which keeps every descriptor that
//! came with it (at most [`MAX_PASSED_FDS`]; more fail the read).
//!
//! For vm.create, CH's convention: the `fd` lists of `net` entries are
//! placeholders, replaced in order by the descriptors received.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::http::TimedRead;

/// Most descriptors one request may carry (16 queue pairs of one NIC).
pub const MAX_PASSED_FDS: usize = 16;

/// Bytes of control buffer for [`MAX_PASSED_FDS`] descriptors, aligned
/// as `cmsghdr` needs.
const CONTROL_WORDS: usize = 16;

#[repr(C, align(8))]
struct ControlBuffer([u64; CONTROL_WORDS]);

fn control_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `bytes` on `stream` with `fds` attached to them; the bytes sent
/// (the caller writes the rest normally).
pub fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<usize> {
    if fds.is_empty() || fds.len() > MAX_PASSED_FDS || bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("1 to {MAX_PASSED_FDS} descriptors and some bytes to carry them"),
        ));
    }
    let mut control = ControlBuffer([0; CONTROL_WORDS]);
    let space = control_space(fds.len());
    assert!(
        space <= std::mem::size_of::<ControlBuffer>(),
        "control buffer fits"
    );
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: the control buffer holds `space` bytes, enough for one
    // header and `fds.len()` descriptors (asserted above); CMSG_FIRSTHDR
    // and CMSG_DATA point inside it.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
        let data = libc::CMSG_DATA(header).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(fd.as_raw_fd());
        }
    }
    // SAFETY: `message` points at live buffers for the call.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// A request stream that keeps the descriptors sent with it.
pub struct FdReader<'a> {
    stream: &'a mut UnixStream,
    fds: Vec<OwnedFd>,
}

impl<'a> FdReader<'a> {
    /// Reads from `stream`.
    pub fn new(stream: &'a mut UnixStream) -> Self {
        FdReader {
            stream,
            fds: Vec::new(),
        }
    }

    /// The descriptors received, in order.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut control = ControlBuffer([0; CONTROL_WORDS]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all zeroes is a valid value.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.0.as_mut_ptr().cast();
        message.msg_controllen = control_space(MAX_PASSED_FDS) as _;
        // SAFETY: `message` points at `buf` and the control buffer, both
        // live and of the lengths given, for the call.
        let read = unsafe {
            libc::recvmsg(
                self.stream.as_raw_fd(),
                &mut message,
                libc::MSG_CMSG_CLOEXEC,
            )
        };
        if read < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: after recvmsg the control buffer holds
        // `msg_controllen` bytes of well-formed headers, which the CMSG
        // macros walk without leaving it; every SCM_RIGHTS descriptor is
        // new to this process and owned here from now on.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&message);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_RIGHTS
                {
                    let data_len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    for i in 0..data_len / std::mem::size_of::<RawFd>() {
                        self.fds
                            .push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                header = libc::CMSG_NXTHDR(&message, header);
            }
        }
        if message.msg_flags & libc::MSG_CTRUNC != 0 || self.fds.len() > MAX_PASSED_FDS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_PASSED_FDS} descriptors sent with the request"),
            ));
        }
        Ok(read as usize)
    }
}

impl Write for FdReader<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl TimedRead for FdReader<'_> {
    fn set_read_deadline(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.stream.set_read_deadline(timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let file = tempfile::tempfile().expect("file");
        std::io::Write::write_all(&mut &file, b"shared").expect("write");
        let sent = send_with_fds(&a, b"hello", &[file.as_fd(), file.as_fd()]).expect("send");
        assert_eq!(sent, 5);
        (&a).write_all(b" world").expect("rest");
        drop(a);
        let mut reader = FdReader::new(&mut b);
        let mut text = String::new();
        reader.read_to_string(&mut text).expect("read");
        assert_eq!(text, "hello world");
        let fds = reader.into_fds();
        assert_eq!(fds.len(), 2);
        let mut received = std::fs::File::from(fds.into_iter().next().expect("fd"));
        let mut contents = String::new();
        std::io::Seek::rewind(&mut received).expect("seek");
        received.read_to_string(&mut contents).expect("read fd");
        assert_eq!(contents, "shared");
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let file = tempfile::tempfile().expect("file");
        let many: Vec<BorrowedFd<'_>> = (0..MAX_PASSED_FDS + 1).map(|_| file.as_fd()).collect();
        assert!(send_with_fds(&a, b"x", &many).is_err());
    }
}
