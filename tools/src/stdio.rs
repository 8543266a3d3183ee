//! Printing that never panics: what a write to stdout or stderr does when
//! its reader is gone (EPIPE) or it fails otherwise, chosen once per
//! process by the binary's `main` ([`on_closed_pipe`]).
//!
//! std's `println!` and `eprintln!` panic when their write fails, which
//! ended `img` and `vm` with a panic message nobody could read and exit
//! 101. The reference tools do otherwise, as measured here with a pipe
//! whose read end was closed before the program started:
//! - qemu-img ignores SIGPIPE and every printf error: the command runs to
//!   its end and exits with its own code (`qemu-img compare` of differing
//!   images exits 1, `info` of a missing file 1, whichever stream is gone);
//! - virsh leaves SIGPIPE at its default, so its first write to a closed
//!   pipe, on stdout or stderr, ends it by SIGPIPE.
//!
//! This module's `println!`, `print!`, `eprintln!` and `eprint!` shadow
//! std's in every module of this crate (lib.rs declares this module
//! first, so its macros are in scope textually in all the others); each
//! binary imports them (`use tools::{eprintln, println}`), so there is no
//! print of either binary left that can panic. Write errors other than
//! EPIPE are ignored as qemu-img and virsh ignore them.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a write to a closed pipe does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedPipe {
    /// Nothing: the write is dropped and the command goes on to its own
    /// exit code, as in qemu-img.
    Ignore,
    /// The process ends by SIGPIPE, as virsh ends.
    DieOfSigpipe,
}

/// Whether [`ClosedPipe::DieOfSigpipe`] was chosen (the default is
/// [`ClosedPipe::Ignore`]).
static DIE_OF_SIGPIPE: AtomicBool = AtomicBool::new(false);

/// Chooses what a write to a closed pipe does, for the whole process.
/// Called once, first thing, by each binary's `main`.
pub fn on_closed_pipe(policy: ClosedPipe) {
    DIE_OF_SIGPIPE.store(policy == ClosedPipe::DieOfSigpipe, Ordering::SeqCst);
}

/// Applies the chosen policy to the outcome of one write; never fails.
fn settle(result: io::Result<()>) {
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::BrokenPipe && DIE_OF_SIGPIPE.load(Ordering::SeqCst) {
            crate::vm::sys::die_of_sigpipe();
        }
    }
}

/// Writes `args` to stdout (line-buffered, as std's `print!`), as the
/// policy says on failure. Used by this module's `print!` and `println!`.
pub fn print_stdout(args: fmt::Arguments<'_>) {
    settle(io::stdout().lock().write_fmt(args));
}

/// Writes `args` to stderr (unbuffered), as the policy says on failure.
/// Used by this module's `eprint!` and `eprintln!`.
pub fn print_stderr(args: fmt::Arguments<'_>) {
    settle(io::stderr().lock().write_fmt(args));
}

/// Writes `text` to stdout and flushes it (for output assembled before it
/// is printed, as `vm` prints its tables), as the policy says on failure.
pub fn emit_stdout(text: &str) {
    let mut stdout = io::stdout().lock();
    settle(
        stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush()),
    );
}

/// A writer to stdout that never reports a failure (the policy decides
/// what one does), for output written with `io::Write` rather than the
/// print macros (`img map`'s extents).
#[derive(Debug, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        settle(io::stdout().lock().write_all(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        settle(io::stdout().lock().flush());
        Ok(())
    }
}

/// std's `print!` without the panic: see the module comment.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::stdio::print_stdout(::std::format_args!($($arg)*))
    };
}

/// std's `println!` without the panic: see the module comment.
#[macro_export]
macro_rules! println {
    () => {
        $crate::stdio::print_stdout(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdio::print_stdout(::std::format_args!(
            "{}\n",
            ::std::format_args!($($arg)*)
        ))
    };
}

/// std's `eprint!` without the panic: see the module comment.
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::stdio::print_stderr(::std::format_args!($($arg)*))
    };
}

/// std's `eprintln!` without the panic: see the module comment.
#[macro_export]
macro_rules! eprintln {
    () => {
        $crate::stdio::print_stderr(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdio::print_stderr(::std::format_args!(
            "{}\n",
            ::std::format_args!($($arg)*)
        ))
    };
}
