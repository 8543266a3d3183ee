//! Block backends (raw and qcow2) with an io_uring data path, and a
//! transport-free virtio-blk device model.
//!
//! - [`disk`] is the contract between the two halves: a [`disk::BlockBackend`]
//!   opens per-queue [`disk::BlockQueue`]s that take requests whose buffers
//!   live in guest memory and report completions asynchronously.
//! - [`backend`] implements it for raw files and qcow2 images over io_uring.
//! - [`lock`] takes QEMU-compatible image locks, for vmm and img alike.
//! - [`virtio`] turns virtio-blk descriptor chains into requests on a queue.

pub mod backend;
pub mod bench;
pub mod disk;
pub mod error;
pub mod lock;
pub mod poll;
pub mod virtio;

pub use error::{Error, Result};
