//! Saved VM state (rule 14 of STYLE.md): each part of a VM (every vCPU,
//! the in-kernel irqchip and timers, each device, guest RAM) saves and
//! restores itself as versioned, checksummed [`record`]s. A snapshot's
//! files (`snapshot`), and later the qcow2 VM-state area and the migration
//! stream, only carry those records.
//!
//! Everything read back is untrusted: [`record::read_record`] bounds every
//! length before it allocates and checks each record's CRC;
//! [`machine::MachineState::parse`] refuses records out of order, a state
//! for another configuration (vCPU count, memory size, device list), and
//! [`memory`] refuses RAM outside the VM's RAM ranges, each with one line.

pub mod devices;
pub mod fork;
pub mod image;
pub mod in_image;
pub mod machine;
pub mod memory;
pub mod net;
pub mod record;
pub mod resident;
pub mod snapshot;
pub mod vcpu;

use thiserror::Error;

/// Why a state cannot be saved or restored.
#[derive(Debug, Error)]
pub enum StateError {
    /// A record does not start with the magic.
    #[error("VM state: no record magic at byte {offset}")]
    BadMagic {
        /// Where the record starts.
        offset: u64,
    },
    /// A record of another format version.
    #[error(
        "VM state: record at byte {offset} has format version {version}, this vmm reads version 1"
    )]
    Version {
        /// Where the record starts.
        offset: u64,
        /// Its version.
        version: u16,
    },
    /// A record longer than any record may be.
    #[error("VM state: record kind {kind:#x} is {length} bytes long, more than the 4 MiB a record may hold")]
    TooLong {
        /// Its kind code.
        kind: u16,
        /// Its length.
        length: u64,
    },
    /// The input ends inside a record, or before the end record.
    #[error("VM state: truncated at byte {offset}")]
    Truncated {
        /// Where the cut record starts.
        offset: u64,
    },
    /// A record's CRC does not match.
    #[error("VM state: checksum mismatch in the record at byte {offset}")]
    Checksum {
        /// Where the record starts.
        offset: u64,
    },
    /// A RAM record's CRC does not match (found when its pages are
    /// filled lazily).
    #[error("VM state: checksum mismatch in the RAM record at byte {offset}, which holds guest RAM {start:#x}-{last:#x}")]
    RamChecksum {
        /// Where the record starts.
        offset: u64,
        /// The first guest-physical byte it holds.
        start: u64,
        /// The last guest-physical byte it holds.
        last: u64,
    },
    /// A record of a kind this vmm does not know.
    #[error("VM state: unknown record kind {kind:#x} at byte {offset}")]
    UnknownKind {
        /// Where the record starts.
        offset: u64,
        /// Its kind code.
        kind: u16,
    },
    /// A record's payload does not decode.
    #[error("VM state: record kind {kind:#x}: {reason}")]
    BadPayload {
        /// Its kind code.
        kind: u16,
        /// What is wrong.
        reason: String,
    },
    /// Records missing, repeated or out of order.
    #[error("VM state: {0}")]
    Layout(String),
    /// The state was saved from a VM configured otherwise.
    #[error("VM state is for another configuration: {0}")]
    Config(String),
    /// A RAM record outside the VM's RAM.
    #[error("VM state: RAM at {start:#x} ({length} bytes) is outside the VM's memory")]
    OutsideMemory {
        /// Its guest-physical start.
        start: u64,
        /// Its length.
        length: u64,
    },
    /// KVM refused to get or set a part of the state.
    #[error("VM state: {what}: {reason}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Reading the carrier failed.
    #[error("VM state: reading: {0}")]
    Read(String),
    /// Writing the carrier failed.
    #[error("VM state: writing: {0}")]
    Write(String),
    /// An in-image snapshot cannot be taken, reverted or deleted (no
    /// writable qcow2 first disk, a name taken or missing, a disk resized).
    #[error("{0}")]
    InImage(String),
}

impl StateError {
    fn read(e: std::io::Error) -> Self {
        StateError::Read(e.to_string())
    }

    fn write(e: std::io::Error) -> Self {
        StateError::Write(e.to_string())
    }
}
