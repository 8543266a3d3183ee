//! A minimal KVM VMM that boots Linux guests (and the project's tiny test
//! guest) through the Linux 64-bit boot protocol, with virtio-blk disks
//! served by `blockdev`.
//!
//! - [`acpi`]: the ACPI tables a stock kernel finds its devices in.
//! - [`config`]: what the user asked for (`--kernel`, `--memory`, `--disk`, ...).
//! - [`layout`]: the guest-physical memory map.
//! - [`net_config`]: network interfaces (`--net`, vm.create's `net`).
//! - [`boot`]: loading the kernel, initrd, command line, boot_params, GDT
//!   and page tables.
//! - [`cpu`]: vCPU state at entry (CPUID, MSRs, registers, LAPIC).
//! - [`devices`]: the legacy devices (8250 serial, i8042) and the port/MMIO bus.
//! - [`seccomp`]: the system calls each VMM thread may make.
//! - [`vm`]: putting a VM together; [`vcpu`]: its vCPU threads, paused and
//!   resumed.
//! - [`control`]: the one place that acts on the VM (API requests, guest
//!   events); [`api_server`]: the API thread on `--api-socket`.
//! - [`serial_sink`]: where the serial port goes (terminal, file, socket).
//! - [`migration`]: live migration (pre-copy), source and destination.
//! - [`lazy_ram`]: guest RAM loaded on demand (userfaultfd) after a
//!   revert or a fork.
//! - [`ready_thread`]: threads started ahead of their work (a migration's
//!   destination, before the switch).
//! - [`thread_boost`]: the real-time class for the threads a client or a
//!   guest waits on (the API thread, a revert, the RAM loader's first
//!   milliseconds).
//! - [`resident`]: the VMM's and its client's code kept in memory
//!   (`--keep-resident`).

pub mod acpi;
pub mod api_server;
pub mod boot;
pub mod config;
pub mod console;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod kvm_shell;
pub mod layout;
pub mod lazy_ram;
pub mod migration;
pub mod net_config;
pub mod ready_thread;
pub mod resident;
pub mod seccomp;
pub mod serial_sink;
mod sock;
pub mod state;
mod sys;
pub mod thread_boost;
pub mod vcpu;
pub mod vcpu_capture;
pub mod vcpu_pause_times;
pub mod vm;

pub use error::{Error, Result};
