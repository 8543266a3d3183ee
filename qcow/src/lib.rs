//! Disk image library: qcow2 (with snapshots, backing chains, compression,
//! check and repair), raw, and the formats other hypervisors write (vmdk,
//! vhdx, vpc, vdi, qed), each a module of [`formats`].
//!
//! The format logic does no I/O of its own: it works through
//! [`storage::Storage`], so it runs on files, on memory and under io_uring.
//!
//! qcow2's modules live in [`formats::qcow2`] beside the other formats; they
//! are re-exported here under their old paths (`qcow::header`,
//! `qcow::image`, ...) so callers keep working.

pub mod backing_name;
pub mod blkdebug;
pub mod crypto;
pub mod device;
pub mod error;
pub mod formats;
pub mod fs;
pub mod probe;
pub mod raw_window;
pub mod storage;
mod sys;

pub use error::{Error, Result};
pub use storage::{FileStorage, MemStorage, Storage};

pub(crate) use formats::qcow2::offset_hash;
pub use formats::qcow2::{
    bitmap, cache, check, compress, create, entries, extensions, header, image, measure, refcount,
    snapshot_table,
};
