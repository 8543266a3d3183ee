//! The system calls `vm` makes through libc, as safe functions: file locks,
//! the effective uid, signals, clock ticks and detaching a child from our
//! session. All of `vm`'s `unsafe` is here and in [`super::terminal`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Takes an exclusive flock on `file` if nobody holds one: Ok(true) if
/// taken, Ok(false) if held elsewhere.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Takes an exclusive flock on `file`, waiting for it.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to `pid` (errors ignored: the process may be gone).
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill takes no memory.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Clock ticks per second (the unit of /proc's CPU times).
pub fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf takes no memory.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// Makes `command`'s child start a session of its own (setsid), detached
/// from our terminal and process group.
pub fn detach_session(command: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Ends the process as SIGPIPE's default action does.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring the default action and raising the signal touch
    // no memory; the default action ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
