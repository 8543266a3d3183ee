//! Writing to stdout: what `vm` assembled, printed at once. A closed pipe
//! ends `vm` with the status of a program killed by SIGPIPE, as virsh
//! ends: the policy `vm`'s main chooses in [`crate::stdio`], which is the
//! one place that acts on a failed write.

/// Writes `text` to stdout and flushes; dies of SIGPIPE on a closed pipe.
pub fn emit(text: &str) {
    crate::stdio::emit_stdout(text);
}

/// Emits what `out` holds and empties it.
pub fn flush(out: &mut String) {
    emit(out);
    out.clear();
}
