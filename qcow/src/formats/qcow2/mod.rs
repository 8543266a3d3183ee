//! qcow2, QEMU's native format and ours: the header and its extensions, the
//! L1/L2 cluster maps, refcounts, internal snapshots, persistent bitmaps,
//! compressed clusters, creation, `measure`, `check` and repair, and
//! [`image::Qcow2`], which reads and writes through all of them.
//!
//! The crate root re-exports these modules under their old paths
//! (`qcow::header`, `qcow::image`, ...).

pub mod bitmap;
pub mod cache;
pub mod check;
pub mod compress;
pub mod create;
pub mod entries;
pub mod extensions;
pub mod header;
pub mod image;
pub mod measure;
pub(crate) mod offset_hash;
pub mod refcount;
pub mod snapshot_table;
