//! `img` whose stdout or stderr is a pipe nobody reads any more ends as
//! qemu-img 10 ends: qemu-img ignores SIGPIPE and every failed write, so
//! each command runs to its end and exits with its own code (0 for an
//! `info` nobody reads, 1 for a `compare` that finds a difference, 2 for
//! one that cannot open its image), never by a signal and never with a
//! panic's 101. Both tools run each command with the same stream closed
//! and their exit statuses are compared.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu};

/// Which of the command's streams is the pipe without a reader.
#[derive(Clone, Copy, Debug)]
enum Closed {
    Stdout,
    Stderr,
}

/// The write end of a pipe whose read end is already closed: every write
/// to it fails with EPIPE (or raises SIGPIPE in a program that keeps its
/// default action).
fn readerless_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

/// Runs `cmd` in `dir` with `closed` readerless and the other stream
/// discarded; its (exit code, signal).
fn ending(mut cmd: Command, dir: &Path, closed: Closed) -> (Option<i32>, Option<i32>) {
    cmd.current_dir(dir).stdin(Stdio::null());
    match closed {
        Closed::Stdout => cmd.stdout(readerless_pipe()).stderr(Stdio::null()),
        Closed::Stderr => cmd.stdout(Stdio::null()).stderr(readerless_pipe()),
    };
    let status = cmd.status().expect("the program starts");
    (status.code(), status.signal())
}

#[test]
fn a_closed_stdout_or_stderr_ends_img_as_it_ends_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = tmp.path();
    for f in ["a.qcow2", "b.qcow2"] {
        ok(qemu_img(&["create", "-q", "-f", "qcow2", f, "4M"]).current_dir(d));
    }
    qemu_io("qcow2", &d.join("b.qcow2"), &["write -P 7 0 64k"]);
    // Each prints on stdout, stderr or both, and ends with its own code.
    let commands: &[&[&str]] = &[
        &["info", "a.qcow2"],
        &["info", "--output=json", "b.qcow2"],
        &["info", "missing.qcow2"],
        &["map", "b.qcow2"],
        &["check", "a.qcow2"],
        &["compare", "a.qcow2", "b.qcow2"],
        &["compare", "a.qcow2", "a.qcow2"],
        &["compare", "a.qcow2", "missing.qcow2"],
        &["snapshot", "-l", "a.qcow2"],
        &["measure", "-O", "qcow2", "b.qcow2"],
        &["convert", "-p", "-O", "qcow2", "b.qcow2", "out.qcow2"],
        &["convert", "-O", "qcow2", "missing.qcow2", "out.qcow2"],
        &["create", "-f", "qcow2", "new.qcow2", "1M"],
        &["resize", "a.qcow2", "-1T"],
        &["frobnicate"],
        &["--version"],
    ];
    for closed in [Closed::Stdout, Closed::Stderr] {
        for args in commands {
            let theirs = ending(qemu_img(args), d, closed);
            let _ = std::fs::remove_file(d.join("out.qcow2"));
            let _ = std::fs::remove_file(d.join("new.qcow2"));
            let ours = ending(img(args), d, closed);
            assert_eq!(ours, theirs, "img {args:?} with {closed:?} closed");
            assert_eq!(theirs.1, None, "qemu-img {args:?} died of a signal");
            // A conversion nobody watches still converts all of it.
            if args[0] == "convert" && theirs.0 == Some(0) {
                ok(qemu_img(&["compare", "b.qcow2", "out.qcow2"]).current_dir(d));
            }
            let _ = std::fs::remove_file(d.join("out.qcow2"));
            let _ = std::fs::remove_file(d.join("new.qcow2"));
        }
    }
}
