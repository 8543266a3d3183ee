//! A raw packet socket (AF_PACKET) on a tap interface's kernel side: what
//! it sends, the tap's reader (the device) receives; what the device
//! writes to the tap, it receives. Bound to one ethertype, so that it
//! sees only incoming frames of that type.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A packet socket bound to one interface and ethertype.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ethertype: u16,
}

impl PacketSocket {
    /// Bind to interface `name` (in this thread's namespace) for frames
    /// of `ethertype` (0x0003 for all).
    pub fn bind(name: &str, ethertype: u16) -> PacketSocket {
        let cname = CString::new(name).expect("name");
        // SAFETY: a NUL-terminated string, alive for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {name}");
        // SAFETY: no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ethertype.to_be()),
            )
        };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr(ifindex, ethertype);
        // SAFETY: `addr` is a sockaddr_ll of the size passed, alive for
        // the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket {
            fd,
            ifindex,
            ethertype,
        }
    }

    /// Send one whole Ethernet frame out of the interface (into the tap).
    pub fn send(&self, frame: &[u8]) {
        let addr = sockaddr(self.ifindex, self.ethertype);
        // SAFETY: `frame` and `addr` are live for the call with the
        // lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame received within `timeout`, if any.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut poll_fd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout.as_millis() as i32) };
        if ready <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 70_000];
        // SAFETY: `buf` is writable for its length for the call.
        let got = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if got < 0 {
            return None;
        }
        buf.truncate(got as usize);
        Some(buf)
    }
}

fn sockaddr(ifindex: i32, ethertype: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain integers and arrays; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = ifindex;
    addr
}

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(2);
/// How long a test waits to be sure a frame does not come.
pub const QUIET: Duration = Duration::from_millis(100);
