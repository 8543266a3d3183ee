//! Writing to stdout: a closed pipe ends `vm` quietly with the status of a
//! program killed by SIGPIPE, as virsh and qemu-img end.

use std::io::Write;

use super::sys::die_of_sigpipe;

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
