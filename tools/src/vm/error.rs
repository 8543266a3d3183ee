//! [`VmError`]: why a `vm` command failed, in virsh's words. main prints
//! each line after `error: `.

use super::store::StoreError;
use super::xml::XmlError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No domain has this name, id or uuid.
    #[error("failed to get domain '{0}'")]
    NoDomain(String),
    /// An action on a domain failed: virsh's two lines.
    #[error("Failed to {action} domain '{name}'\nerror: {cause}")]
    Failed {
        /// The action (`start`, `shutdown`, ...).
        action: &'static str,
        /// The domain's name.
        name: String,
        /// Why.
        cause: Box<VmError>,
    },
    /// The domain is not running.
    #[error("Requested operation is not valid: domain is not running")]
    NotRunning,
    /// The domain's state forbids the operation (virsh's
    /// VIR_ERR_OPERATION_INVALID).
    #[error("Requested operation is not valid: {0}")]
    InvalidOperation(String),
    /// `start` of a running domain.
    #[error("Domain is already active")]
    AlreadyActive,
    /// Another `define` names the same domain with another uuid.
    #[error("operation failed: domain '{name}' already exists with uuid {uuid}")]
    UuidClash {
        /// The domain's name.
        name: String,
        /// The uuid it has.
        uuid: String,
    },
    /// A file given on the command line cannot be read.
    #[error("Failed to open file '{path}': {reason}")]
    OpenFile {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The XML was refused.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something the definition asks for that we cannot give.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
    /// An argument names nothing the domain has.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The VMM failed or refused.
    #[error("operation failed: {0}")]
    OperationFailed(String),
    /// A VMM did not answer in time.
    #[error("domain '{name}' (vmm pid {pid}) did not answer within {millis} ms")]
    NoAnswer {
        /// The domain's name.
        name: String,
        /// Its VMM's pid.
        pid: i32,
        /// How long we waited.
        millis: u128,
    },
    /// A refusal already in virsh's words.
    #[error("{0}")]
    Refused(String),
    /// Any other failure, as one line.
    #[error("internal error: {0}")]
    Internal(String),
}

impl VmError {
    /// Wraps `self` as virsh's "Failed to ACTION domain 'NAME'".
    pub fn failed(self, action: &'static str, name: &str) -> VmError {
        VmError::Failed {
            action,
            name: name.to_string(),
            cause: Box::new(self),
        }
    }
}

impl From<vmapi::Error> for VmError {
    fn from(e: vmapi::Error) -> Self {
        VmError::OperationFailed(e.to_string().replace('\n', " "))
    }
}
