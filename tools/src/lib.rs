//! The `img` tool as a library: command-line definitions ([`cli`]), size
//! parsing and formatting ([`size`]), `-o` creation options ([`opts`]) and
//! the reports of each subcommand ([`report`]), all matching qemu-img 10's
//! syntax, messages and output. `main.rs` wires them to the qcow2 library.
//! [`stdio`]'s print macros, declared first, stand in for std's in every
//! module: no print of `img` or `vm` panics.

#[macro_use]
pub mod stdio;

pub mod cli;
pub mod commands;
pub mod engine;
pub mod opts;
pub mod report;
pub mod size;
pub mod vm;

/// Default program name used in messages (`img: ...`, `Try 'img --help'
/// ...`), where qemu-img says `qemu-img`.
pub const PROGRAM: &str = "img";

static PROGRAM_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The program name messages start with: the base name of `argv[0]` as
/// set by [`set_program_name`] (`qemu-img` when img is installed under
/// that name, as qemu-img prefixes its messages with its own name), else
/// [`PROGRAM`].
pub fn program() -> &'static str {
    PROGRAM_NAME.get().map(String::as_str).unwrap_or(PROGRAM)
}

/// Sets the name [`program`] returns from `argv[0]` (its base name); only
/// the first call counts. Called once by `main`.
pub fn set_program_name(argv0: &std::ffi::OsStr) {
    let base = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty());
    if let Some(name) = base {
        let _ = PROGRAM_NAME.set(name);
    }
}
