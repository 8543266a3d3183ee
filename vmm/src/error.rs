//! The VMM's error type.

use thiserror::Error;

/// Everything that stops the VMM from starting or running a guest.
#[derive(Debug, Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An option has a value that cannot work.
    #[error("invalid {option} '{value}': {reason}")]
    InvalidOption {
        /// The option as the user spells it.
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The kernel image could not be loaded.
    #[error("cannot load kernel '{path}': {reason}")]
    Kernel {
        /// The kernel file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The initrd could not be loaded.
    #[error("cannot load initrd '{path}': {reason}")]
    Initrd {
        /// The initrd file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A disk could not be opened.
    #[error("disk '{path}': {reason}")]
    Disk {
        /// The image file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A network interface could not be set up.
    #[error("network interface '{id}': {reason}")]
    Net {
        /// The interface's id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Saved VM state could not be written, read or applied.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The guest stopped in a way the VMM cannot continue from.
    #[error("guest stopped: {0}")]
    GuestFault(String),
}

/// The VMM's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a KVM error with what was being done.
pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
