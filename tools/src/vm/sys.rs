//! The system calls `vm` makes through libc, as safe functions: file locks,
//! the effective uid, signals, clock ticks, detaching a child from our
//! session, and the clock and resource counts of the phase log. All of
//! `vm`'s `unsafe` is here and in [`super::terminal`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

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

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of Python's
/// `time.monotonic_ns()`, so a spawner's reading can be compared with ours.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec the call writes into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// What this process has used so far (getrusage of RUSAGE_SELF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user and system.
    pub cpu: Duration,
    /// Page faults that read from storage.
    pub major_faults: i64,
    /// Page faults served from memory.
    pub minor_faults: i64,
    /// 512-byte blocks read from storage (faults and reads).
    pub blocks_read: i64,
    /// Waits for something (I/O, a lock, an answer).
    pub voluntary_switches: i64,
    /// Preemptions.
    pub involuntary_switches: i64,
}

/// This process's [`Usage`] now.
pub fn usage() -> Usage {
    // SAFETY: rusage is plain integers; all zeros is a valid value.
    let mut raw: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is a valid rusage the call writes into.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut raw) } != 0 {
        return Usage::default();
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Usage {
        cpu: time(raw.ru_utime) + time(raw.ru_stime),
        major_faults: raw.ru_majflt,
        minor_faults: raw.ru_minflt,
        blocks_read: raw.ru_inblock,
        voluntary_switches: raw.ru_nvcsw,
        involuntary_switches: raw.ru_nivcsw,
    }
}
