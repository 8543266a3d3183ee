//! [`InstallError`]: why `vm install` refused or failed, one line each.

/// Why an install failed. Each message is one line naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A command-line option is malformed.
    #[error("{option}: {reason}")]
    Option {
        /// The option as virt-install spells it (`--disk`).
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The installer disc is unreadable or hostile.
    #[error("cannot read installer disc '{disc}': {reason}")]
    Disc {
        /// The disc (or the file on it).
        disc: String,
        /// The reader's one-line reason.
        reason: String,
    },
    /// The disc has no kernel where we looked.
    #[error("no kernel found on '{disc}': looked for {looked_for}")]
    NoKernel {
        /// The disc.
        disc: String,
        /// Every configuration and tree looked at.
        looked_for: String,
    },
    /// A file could not be made or read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A disk image could not be created.
    #[error("Error creating storage '{path}': {reason}")]
    Storage {
        /// The image.
        path: String,
        /// Why.
        reason: String,
    },
}
