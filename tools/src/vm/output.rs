//! Writing to stdout: a closed pipe ends `vm` quietly with the status of a
//! program killed by SIGPIPE, as virsh and qemu-img end.

use std::io::Write;

/// Ends the process as SIGPIPE's default action would.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring the default action and raising the signal touch
    // no memory; the default action ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// Writes `text` to stdout and flushes; dies of SIGPIPE on a closed pipe.
pub fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            die_of_sigpipe();
        }
    }
}

/// Emits what `out` holds and empties it.
pub fn flush(out: &mut String) {
    emit(out);
    out.clear();
}
