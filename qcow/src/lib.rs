//! QCOW2 image format library.
//!
//! The format logic does no I/O of its own: it works through
//! [`storage::Storage`], so it runs on files, on memory and under io_uring.

pub mod cache;
pub mod entries;
pub mod error;
pub mod extensions;
pub mod header;
pub mod refcount;
pub mod storage;
mod sys;

pub use error::{Error, Result};
pub use storage::{FileStorage, MemStorage, Storage};
pub mod bitmap;
pub mod check;
pub mod compress;
pub mod create;
pub mod crypto;
pub mod device;
pub mod formats;
pub mod fs;
pub mod image;
pub mod measure;
mod offset_hash;
pub mod probe;
pub mod snapshot_table;
