//! Backends: raw files and qcow2 images over io_uring.
//!
//! [`open`] opens a disk and returns it as a [`BlockBackend`]; each
//! [`BlockBackend::open_queue`] builds a queue with its own io_uring.
//!
//! - Raw files: guest offset = file offset; reads and writes are one
//!   io_uring operation each, discard and write-zeroes are `fallocate`
//!   (punch hole / zero range), flush is `fdatasync`.
//! - qcow2 (with backing chains and external data files): reads are mapped
//!   with [`Qcow2::extents`] (through the whole backing chain with
//!   [`qcow::device::chain_extents`] when there is one); host data, in the
//!   image or in any backing file, becomes io_uring reads, zero and
//!   unallocated ranges are zero-filled, compressed clusters (and backing
//!   data kept in a backing image's own data file) are read synchronously
//!   through the qcow2 library. Writes are planned with
//!   [`Qcow2::try_begin_write`] (allocation and copy-on-write, synchronous),
//!   their data goes through io_uring, and [`Qcow2::finish_write`] commits
//!   the metadata once the data is written. Flush waits for earlier writes,
//!   then makes metadata durable ([`Qcow2::flush`], which syncs both files).
//! - vmdk, vhdx, vpc, vdi and qed (`foreign`): each request is served on
//!   the queue's thread through the format's [`qcow::formats::ForeignImage`].
//! - `cache=none` opens a second, O_DIRECT descriptor for data; metadata
//!   stays buffered (Linux keeps the two coherent).
//!
//! Module map: `uring` holds all io_uring unsafe code, `bufs` all access
//! to caller memory, `host` the host files, `queue` the request engine,
//! `wakers` the waking of queues whose requests wait for another queue's
//! writes, `open` the opening of files and images.

pub(crate) mod bufs;
mod foreign;
mod foreign_reads;
mod host;
mod open;
mod queue;
mod uring;
mod wakers;

use std::sync::Arc;

use qcow::image::Qcow2;

use crate::disk::{BlockBackend, BlockQueue};
use crate::error::Result;

use host::HostFile;
use wakers::ParkedWakers;

pub use open::{open, open_with_files, OpenOptions, OpenedDisk};

/// Most requests one queue may hold in flight.
pub const MAX_QUEUE_DEPTH: u32 = 1024;

/// What the disk's bytes are.
pub(crate) enum Layout {
    /// Guest offset = file offset.
    Raw,
    /// A qcow2 image; the image file is `Disk::image`, the external data
    /// file (if any) `Disk::data_file`.
    Qcow2(Box<Qcow2>),
}

/// One opened disk, shared by its queues.
pub(crate) struct Disk {
    pub layout: Layout,
    pub image: HostFile,
    pub data_file: Option<HostFile>,
    /// The backing chain's files, nearest first: data reads of backing
    /// layer `n` (1 = the image's backing file) go to `backing[n - 1]`,
    /// file index `n + 1` of the rings.
    pub backing: Vec<HostFile>,
    pub size: u64,
    pub read_only: bool,
    /// Sync after every write before completing it.
    pub write_through: bool,
    /// Complete flushes without syncing.
    pub ignore_flush: bool,
    /// The queues, for waking those whose requests wait for another
    /// queue's writes.
    pub wakers: ParkedWakers,
    /// The longest spin of a queue's `wait` before it sleeps.
    pub poll_max: std::time::Duration,
}

impl Disk {
    /// The host file of an operation: 0 = the image, 1 = its data file
    /// (the image when it has none), 2 and up = the backing files.
    pub fn host(&self, file: u32) -> &HostFile {
        match file {
            0 => &self.image,
            1 => self.data_file.as_ref().unwrap_or(&self.image),
            n => &self.backing[n as usize - 2],
        }
    }

    /// Every host file, in ring file index order.
    pub fn hosts(&self) -> impl Iterator<Item = &HostFile> {
        (0..2 + self.backing.len() as u32).map(|i| self.host(i))
    }

    /// The O_DIRECT offset alignment of data I/O, 1 when buffered.
    pub fn dio_offset_align(&self) -> u64 {
        self.hosts()
            .map(|h| h.dio().map_or(1, |d| u64::from(d.offset)))
            .max()
            .unwrap_or(1)
    }

    /// The O_DIRECT memory alignment of data I/O, 1 when buffered.
    pub fn dio_mem_align(&self) -> u64 {
        self.hosts()
            .map(|h| h.dio().map_or(1, |d| u64::from(d.mem)))
            .max()
            .unwrap_or(1)
    }
}

/// A [`BlockBackend`] over a [`Disk`].
struct Backend {
    disk: Arc<Disk>,
}

impl BlockBackend for Backend {
    fn size(&self) -> u64 {
        self.disk.size
    }

    fn read_only(&self) -> bool {
        self.disk.read_only
    }

    fn block_size(&self) -> u32 {
        (self.disk.dio_offset_align() as u32).max(512)
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BlockQueue>> {
        let depth = depth.clamp(1, MAX_QUEUE_DEPTH);
        Ok(Box::new(queue::UringQueue::new(self.disk.clone(), depth)?))
    }

    fn close(&self) -> Result<()> {
        match &self.disk.layout {
            Layout::Qcow2(q) => {
                q.flush()?;
            }
            Layout::Raw => {
                if !self.disk.read_only {
                    self.disk.image.sync_data()?;
                }
            }
        }
        Ok(())
    }

    fn qcow2(&self) -> Option<&Qcow2> {
        match &self.disk.layout {
            Layout::Qcow2(q) => Some(q),
            Layout::Raw => None,
        }
    }
}
