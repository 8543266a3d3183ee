//! The terminal as the guest's serial console: while the guest runs, keys
//! go to it as they are typed (no line editing, no local echo: the guest
//! echoes), as with QEMU's `-nographic` or Firecracker. Ctrl-C still stops
//! the VMM cleanly (SIGINT); Ctrl-Z and Ctrl-\ go to the guest instead of
//! suspending or killing the VMM with its disks open. The terminal's
//! settings are put back when the VMM ends.

use std::os::fd::RawFd;

const STDIN: RawFd = 0;

/// The terminal's settings before the guest took it, to put back.
pub struct RawConsole {
    saved: libc::termios,
}

impl RawConsole {
    /// Takes the terminal on standard input for the guest; `None` when
    /// standard input is no terminal (a pipe, a file, /dev/null), which is
    /// then read as it is.
    pub fn enter() -> Option<RawConsole> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(STDIN) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; all zeroes is a valid value
        // that tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios owned by this frame.
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::IXON | libc::ISTRIP);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // Ctrl-\ and Ctrl-Z are the guest's; Ctrl-C (VINTR) stays ours.
        raw.c_cc[libc::VQUIT] = 0;
        raw.c_cc[libc::VSUSP] = 0;
        // SAFETY: `raw` is a valid termios owned by this frame.
        if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawConsole { saved })
    }

    /// Puts the terminal's settings back (the main thread's seccomp filter
    /// allows exactly this ioctl on standard input).
    pub fn restore(&self) {
        // SAFETY: `self.saved` is the valid termios tcgetattr filled in.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &self.saved) };
    }
}

impl Drop for RawConsole {
    fn drop(&mut self) {
        self.restore();
    }
}
