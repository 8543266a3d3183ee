//! The virtio-blk device model, free of any transport.
//!
//! - [`device::VirtioBlock`]: what a transport talks to (features, status,
//!   configuration space, queue setup, activation).
//! - [`handler::QueueHandler`]: one virtqueue's processing over its own
//!   backend queue, driven by eventfds from an event loop.
//! - [`request`]: validation of descriptor chains into backend requests.
//! - [`driver::SplitQueueDriver`]: a minimal driver building split-ring
//!   descriptor chains in guest memory, for tests and the benchmark.
//! - [`bench`]: IOPS of 4 KiB requests through the device model.
//! - [`testing::MemDisk`]: an in-memory backend for tests.

pub mod bench;
pub mod config;
pub mod defs;
pub mod device;
pub mod driver;
mod eventfd;
pub mod handler;
pub mod request;
pub mod testing;

pub use config::BlockConfig;
pub use device::{DeviceOptions, VirtioBlock};
pub use handler::{QueueEvents, QueueHandler};
pub use request::DiskInfo;
