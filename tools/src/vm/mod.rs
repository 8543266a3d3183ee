//! `vm`, the virsh of this stack: libvirt domain XML in a store folder,
//! one `vmm` process per running domain driven through its API socket, and
//! virsh's commands, output and exit codes.
//!
//! - [`xml`]: the domain XML reader and writer;
//! - [`store`]: the store folder (definitions, run folders, locks);
//! - [`cli`]: virsh's command-line grammar;
//! - [`mod@format`]: virsh's output layouts;
//! - [`runtime`]: what a domain's VMM is doing (state always true);
//! - [`commands`]: one module per command family;
//! - [`install`]: `vm install` (virt-install); [`resources`]: vCPU and
//!   memory allocation;
//! - [`output`], [`terminal`], [`sys`]: stdout (SIGPIPE), the raw
//!   terminal and the system calls (all of `vm`'s `unsafe` is in the last
//!   two);
//! - [`phases`]: a command's phase log (`VM_PHASES=1`).

pub mod cli;
pub mod commands;
pub mod error;
pub mod format;
pub mod install;
pub mod output;
pub mod phases;
pub mod resources;
pub mod runtime;
pub mod store;
pub mod sys;
pub mod terminal;
pub mod xml;
