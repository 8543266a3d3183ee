//! A minimal KVM VMM that boots Linux guests (and the project's tiny test
//! guest) through the Linux 64-bit boot protocol, with virtio-blk disks
//! served by `blockdev`.
//!
//! - [`acpi`]: the ACPI tables a stock kernel finds its devices in.
//! - [`config`]: what the user asked for (`--kernel`, `--memory`, `--disk`, ...).
//! - [`layout`]: the guest-physical memory map.
//! - [`boot`]: loading the kernel, initrd, command line, boot_params, GDT
//!   and page tables.
//! - [`cpu`]: vCPU state at entry (CPUID, MSRs, registers, LAPIC).
//! - [`devices`]: the legacy devices (8250 serial, i8042) and the port/MMIO bus.
//! - [`seccomp`]: the system calls each VMM thread may make.
//! - [`vm`]: putting it together and running until the guest resets or
//!   powers off.

pub mod acpi;
pub mod boot;
pub mod config;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod layout;
pub mod seccomp;
mod sys;
pub mod vm;

pub use error::{Error, Result};
