//! The process-level plumbing that needs raw system calls: SIGINT and
//! SIGTERM taken through a signalfd (blocked in every thread, read by the
//! main loop), the signal that kicks vCPU threads out of KVM_RUN, and
//! QEMU-compatible image locks.

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

/// Byte offsets QEMU locks to say "I use permission N" (base + N) and "I do
/// not let others use permission N" (shared base + N), with OFD locks on
/// the image file.
const QEMU_PERM_LOCK_BASE: i64 = 100;
const QEMU_SHARED_LOCK_BASE: i64 = 200;
/// QEMU's BLK_PERM_CONSISTENT_READ, BLK_PERM_WRITE and BLK_PERM_RESIZE bit
/// numbers.
const PERM_CONSISTENT_READ: i64 = 0;
const PERM_WRITE: i64 = 1;
const PERM_RESIZE: i64 = 3;

/// What a file is to a running guest's disk, which decides the locks QEMU
/// takes on it (as QEMU 10 was seen to lock them):
///
/// | role | held | not shared |
/// | --- | --- | --- |
/// | writable image | read, write, resize | write, resize |
/// | read-only image, or a backing file | read | write, resize |
/// | writable data file | read, write, resize | resize |
/// | read-only data file | read | resize |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRole {
    /// The image the guest's disk is, opened for writing.
    WritableImage,
    /// The image opened read-only, or a file of its backing chain.
    ReadOnlyImage,
    /// An external data file the guest's writes go to.
    WritableDataFile,
    /// An external data file of a read-only disk.
    ReadOnlyDataFile,
}

impl LockRole {
    fn held(self) -> &'static [i64] {
        match self {
            LockRole::WritableImage | LockRole::WritableDataFile => {
                &[PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE]
            }
            LockRole::ReadOnlyImage | LockRole::ReadOnlyDataFile => &[PERM_CONSISTENT_READ],
        }
    }

    fn unshared(self) -> &'static [i64] {
        match self {
            LockRole::WritableImage | LockRole::ReadOnlyImage => &[PERM_WRITE, PERM_RESIZE],
            LockRole::WritableDataFile | LockRole::ReadOnlyDataFile => &[PERM_RESIZE],
        }
    }
}

fn perm_name(perm: i64) -> &'static str {
    match perm {
        PERM_CONSISTENT_READ => "consistent read",
        PERM_WRITE => "write",
        _ => "resize",
    }
}

fn ofd_lock(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: i64,
) -> std::io::Result<libc::c_short> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: `fl` is a valid flock owned by this frame and the descriptor
    // is open for the call's duration; F_OFD_* take a pointer to a flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fl.l_type)
    }
}

/// Takes QEMU-compatible locks on `file` for the VM's lifetime, as QEMU
/// takes them for a file in `role`. Fails with a message naming the
/// conflict when another process (QEMU, qemu-img, another vmm) holds a lock
/// that forbids ours.
pub fn lock_image(file: &File, role: LockRole) -> std::result::Result<(), String> {
    let conflict = |byte: i64| -> std::result::Result<bool, String> {
        ofd_lock(
            file,
            libc::F_OFD_GETLK,
            libc::F_WRLCK as libc::c_short,
            byte,
        )
        .map(|t| t != libc::F_UNLCK as libc::c_short)
        .map_err(|e| format!("cannot test its locks: {e}"))
    };
    for &p in role.held() {
        if conflict(QEMU_SHARED_LOCK_BASE + p)? {
            return Err(format!(
                "another process does not share the \"{}\" permission (is the image in use?)",
                perm_name(p)
            ));
        }
    }
    for &p in role.unshared() {
        if conflict(QEMU_PERM_LOCK_BASE + p)? {
            return Err(format!(
                "another process is using the image (it holds the \"{}\" lock)",
                perm_name(p)
            ));
        }
    }
    for byte in role
        .held()
        .iter()
        .map(|p| QEMU_PERM_LOCK_BASE + p)
        .chain(role.unshared().iter().map(|p| QEMU_SHARED_LOCK_BASE + p))
    {
        ofd_lock(
            file,
            libc::F_OFD_SETLK,
            libc::F_RDLCK as libc::c_short,
            byte,
        )
        .map_err(|e| format!("cannot lock it: {e}"))?;
    }
    Ok(())
}
