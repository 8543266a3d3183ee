//! Live migration (pre-copy), source and destination.
//!
//! - [`api`]: vm.send-migration's and vm.receive-migration's bodies,
//!   checked.
//! - [`transport`]: the connection (`unix:PATH` or `tcp:HOST:PORT`); the
//!   destination binds only the address it is given and takes one peer.
//! - [`stream`]: the versioned wire format: a header, then frames each
//!   with a tag, a length bounded per tag before anything is allocated,
//!   and a CRC-32. RAM and the machine's state travel as the records of
//!   `crate::state` (one state format for snapshots and migration).
//! - [`dirty`]: KVM's dirty log on every RAM slot
//!   (KVM_MEM_LOG_DIRTY_PAGES) joined with blockdev's log of the pages
//!   the device threads write, which KVM does not see.
//! - [`resumed`]: the committed source times the destination's Resumed
//!   on a thread of its own, after answering its caller.
//! - [`prefault`]: the paused window's threads' heap and stack touched
//!   before the window.
//! - [`sched`]: how the paused window's threads were scheduled (time
//!   waiting for a CPU), for the source's phase log.
//! - [`send`]: the source: a full pass, dirty passes until the estimated
//!   downtime is under the target (or the timeout strikes), then pause,
//!   last pass, machine state, flush and let go of the image locks, and
//!   the switch. Any failure leaves the VM running here with its disks
//!   and locks.
//! - [`storage`], [`storage_send`], [`storage_receive`]: disks that
//!   travel with the VM (`--copy-storage-all`/`-inc`).
//! - [`receive`]: the destination: everything read is checked (sizes,
//!   ranges, the configuration) before it is used; the KVM VM is made
//!   while RAM arrives, the disks and devices only at the switch, so a
//!   failure leaves nothing behind.
//!
//! The exchange:
//!
//! ```text
//! source                                   destination
//! header, Config(VmConfig JSON),
//! Annotation(text), Storage(plan)   ->     creates the copied images,
//!                                          makes the KVM VM (RAM, vCPUs)
//!                                          and starts its threads
//!                                   <-     Ack | Refused(reason)
//! Disk(chunk)* (a copy of the disks),
//! Ram(record)* (full, then dirty passes, each with its Disk chunks)
//! Machine(records), Switch(resume)  ->     locks and opens the disks,
//!                                          wires the devices, sets the
//!                                          state (paused)
//!                                   <-     Ready | Refused(reason)
//! Commit                            ->     resumes
//!                                   <-     Resumed (the guest's pause
//!                                          ends here)
//! ```
//!
//! The downtime reported as QEMU reports its own runs on the source
//! from the pause to the Switch flushed into the connection; the source
//! also reports the span to the destination's Resumed, and the
//! destination logs its side ([`receive::SwitchLog`]) when asked.
//!
//! The source flushes its disks while the guest still runs, so that at
//! the switch only the disks written since need a flush, and it turns
//! its dirty log off only after the Commit: the paused window holds the
//! pause, the last pass, the state, the destination's wiring and the
//! Commit.

pub mod api;
pub mod dirty;
pub mod prefault;
pub mod receive;
pub mod resumed;
pub mod sched;
pub mod send;
pub mod storage;
pub mod storage_receive;
pub mod storage_send;
pub mod stream;
pub mod transport;
pub mod unnamed_file;

use thiserror::Error;

use crate::state::StateError;

/// Why a migration failed (one line each).
#[derive(Debug, Error)]
pub enum MigrationError {
    /// A bad migration URL.
    #[error("migration URL: {0}")]
    Url(String),
    /// The connection failed (connect, bind, accept, read, write).
    #[error("migration connection: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("migration connection: the peer closed it during {during}")]
    Closed {
        /// What was being done.
        during: &'static str,
    },
    /// The stream is not what the format says.
    #[error("migration stream: {0}")]
    Stream(String),
    /// A frame longer than its kind may be.
    #[error("migration stream: a {tag} frame of {length} bytes, more than the {max} it may hold")]
    FrameTooLong {
        /// Its kind.
        tag: &'static str,
        /// Its length.
        length: u64,
        /// The bound.
        max: u64,
    },
    /// A frame's CRC does not match.
    #[error("migration stream: checksum mismatch in the {tag} frame at byte {offset}")]
    Checksum {
        /// Its kind.
        tag: &'static str,
        /// Where it starts.
        offset: u64,
    },
    /// A record inside the stream is refused.
    #[error("migration stream: {0}")]
    State(#[from] StateError),
    /// The destination refused.
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    /// The migration did not converge in time.
    #[error("migration timed out after {seconds} s with {dirty_mib} MiB still dirty (estimated downtime {estimate_ms} ms, target {target_ms} ms)")]
    Timeout {
        /// The timeout.
        seconds: u64,
        /// What was left to send.
        dirty_mib: u64,
        /// The last estimate.
        estimate_ms: u64,
        /// The target.
        target_ms: u64,
    },
    /// The VM could not be paused, saved, built or resumed.
    #[error("{0}")]
    Vm(#[from] crate::Error),
}

impl MigrationError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| MigrationError::Io { what, source }
    }
}

/// The result of a migration step.
pub type Result<T> = std::result::Result<T, MigrationError>;
