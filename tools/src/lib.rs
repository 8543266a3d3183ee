//! The `img` tool as a library: command-line definitions ([`cli`]), size
//! parsing and formatting ([`size`]), `-o` creation options ([`opts`]) and
//! the reports of each subcommand ([`report`]), all matching qemu-img 10's
//! syntax, messages and output. `main.rs` wires them to the qcow2 library.

pub mod cli;
pub mod commands;
pub mod engine;
pub mod opts;
pub mod report;
pub mod size;
pub mod vm;

/// Program name used in messages (`img: ...`, `Try 'img --help' ...`),
/// where qemu-img says `qemu-img`.
pub const PROGRAM: &str = "img";
