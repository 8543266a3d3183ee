//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in a block backend or the device model.
#[derive(Debug, Error)]
pub enum Error {
    /// The qcow2 library refused or failed.
    #[error("{0}")]
    Qcow(#[from] qcow::Error),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another user of an image file holds a QEMU lock that forbids ours
    /// (worded as QEMU's file-posix driver words it).
    #[error("Failed to get {}\"{permission}\" lock", if *shared { "shared " } else { "" })]
    LockHeld {
        /// QEMU's name of the permission (`write`, `resize`, ...).
        permission: &'static str,
        /// Whether we wanted the others not to hold it (rather than to
        /// hold it ourselves).
        shared: bool,
    },
    /// Locking or testing a lock byte failed for another reason.
    #[error("Failed to lock byte {byte}: {source}")]
    LockFailed {
        /// The byte offset.
        byte: i64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the disk could not be opened.
    #[error("Could not open '{path}': {source}")]
    Open {
        /// The file's path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The disk or the options ask for something the backends do not do.
    #[error("{what}")]
    Unsupported {
        /// What, in words.
        what: String,
    },
    /// A request reaches past the end of the disk.
    #[error("request at byte {offset} of {len} bytes is past the end of the {size}-byte disk")]
    OutOfRange {
        /// First byte of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// The disk's size.
        size: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The queue has no room for another request until completions are reaped.
    #[error("the queue is full ({depth} requests in flight)")]
    QueueFull {
        /// The queue's depth.
        depth: u32,
    },
    /// A virtqueue operation failed (guest memory unreachable, bad ring).
    #[error("virtqueue: {op}: {source}")]
    Virtqueue {
        /// What was being done.
        op: &'static str,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// A queue's setup cannot be used.
    #[error("queue {index}: {reason}")]
    InvalidQueue {
        /// The queue's index.
        index: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// A device call came at the wrong point of the device's life.
    #[error("virtio device: {reason}")]
    DeviceState {
        /// What was expected.
        reason: &'static str,
    },
    /// A device option is out of range.
    #[error("invalid device option {name} = {value}")]
    InvalidDeviceOption {
        /// The option.
        name: &'static str,
        /// Its value.
        value: u64,
    },
    /// Guest memory could not be accessed at an address.
    #[error("guest memory: {op} at {addr:#x}")]
    GuestMemory {
        /// What was being done.
        op: &'static str,
        /// The guest address.
        addr: u64,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
