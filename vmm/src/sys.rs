//! The process-level plumbing that needs raw system calls: SIGINT and
//! SIGTERM taken through a signalfd (blocked in every thread, read by the
//! main loop), the signal that kicks vCPU threads out of KVM_RUN, the
//! VMM's wording of QEMU-compatible image lock conflicts (the locks
//! themselves are blockdev's), and the process's page-fault counts.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{Error, Result};

/// The signal sent to vCPU threads to make KVM_RUN return.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal: its only effect is to
/// interrupt KVM_RUN with EINTR.
pub fn install_kick_handler() -> Result<()> {
    register_signal_handler(kick_signal(), on_kick).map_err(|e| Error::Io {
        what: "installing the vCPU kick signal handler".into(),
        source: std::io::Error::from_raw_os_error(e.errno()),
    })
}

/// SIGINT and SIGTERM, readable from a file descriptor.
pub struct ExitSignals {
    file: File,
}

impl ExitSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread (threads spawned
    /// later inherit that) and opens a signalfd for them.
    pub fn new() -> Result<ExitSignals> {
        let io = |what: &str| Error::Io {
            what: what.to_string(),
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame; the calls
        // only write into it and into this thread's signal mask.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io("blocking SIGINT and SIGTERM"));
            }
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io("signalfd"));
        }
        // SAFETY: `fd` was just returned by signalfd and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(ExitSignals { file })
    }

    /// The signal received, if any.
    pub fn take(&mut self) -> Option<i32> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match self.file.read(&mut info) {
            Ok(n) if n == info.len() => Some(i32::from_ne_bytes(
                info[0..4].try_into().expect("four bytes"),
            )),
            _ => None,
        }
    }
}

impl AsRawFd for ExitSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

pub use blockdev::lock::LockRole;

/// Takes QEMU-compatible locks on `file` for the VM's lifetime, as QEMU
/// takes them for a file in `role` (see [`blockdev::lock`]). Fails with a
/// message naming the conflict when another process (QEMU, qemu-img,
/// another vmm) holds a lock that forbids ours.
pub fn lock_image(file: &File, role: LockRole) -> std::result::Result<(), String> {
    use blockdev::Error as E;
    blockdev::lock::lock(file, role.request()).map_err(|e| match e {
        E::LockHeld {
            permission,
            shared: false,
        } => format!(
            "another process does not share the \"{permission}\" permission (is the image in use?)"
        ),
        E::LockHeld {
            permission,
            shared: true,
        } => format!("another process is using the image (it holds the \"{permission}\" lock)"),
        E::LockFailed { source, .. } => format!("cannot lock it: {source}"),
        other => other.to_string(),
    })
}

/// Closes descriptor `fd`, which this process holds as a bare number (a
/// descriptor handed over with an API request and kept by number in the
/// configuration); the caller must own it and forget the number after.
pub fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` (it came with a request and no other
    // object wraps it: devices work on duplicates) and drops its number
    // after this call, so no one closes or uses it again.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
}

/// Kills this process with SIGKILL, as `kill -9` would: no destructor,
/// no buffered write, nothing else runs (a test's fault injection).
pub fn kill_self() -> ! {
    // SAFETY: raise takes no pointers; SIGKILL cannot be caught, so the
    // process ends here.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    unreachable!("SIGKILL was raised")
}

/// The process's page faults so far (all threads; getrusage of
/// RUSAGE_SELF): (major, minor, 512-byte blocks read from storage). A
/// major fault read a page of the program or of a mapped file from
/// storage.
pub fn fault_counts() -> (i64, i64, i64) {
    // SAFETY: rusage is plain integers; all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage the call writes into.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0, 0, 0);
    }
    (usage.ru_majflt, usage.ru_minflt, usage.ru_inblock)
}
