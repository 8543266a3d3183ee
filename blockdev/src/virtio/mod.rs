//! The virtio-blk device model, free of any transport.
//!
//! - [`device::VirtioBlock`]: what a transport talks to (features, status,
//!   configuration space, queue setup, activation).
//! - [`handler::QueueHandler`]: one virtqueue's processing over its own
//!   backend queue, driven by eventfds from an event loop.
//! - [`request`]: validation of descriptor chains into backend requests.
//! - [`driver::SplitQueueDriver`]: a minimal driver building split-ring
//!   descriptor chains in guest memory, for tests and the benchmark.
//! - [`bench`](mod@bench): IOPS of 4 KiB requests through the device model (the
//!   `virtio_bench` example compares it with the backend driven directly).
//! - [`testing::MemDisk`]: an in-memory backend for tests.
//!
//! # Driving the device from a transport
//!
//! ```
//! use std::sync::Arc;
//! use blockdev::virtio::defs::*;
//! use blockdev::virtio::driver::SplitQueueDriver;
//! use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
//! use blockdev::virtio::{DeviceOptions, QueueEvents, VirtioBlock};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
//! let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
//! let mut device = VirtioBlock::new(disk, DeviceOptions::default())?;
//!
//! // Register writes of the driver, as the transport forwards them.
//! device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
//! let offered = (u64::from(device.device_features_page(1)) << 32)
//!     | u64::from(device.device_features_page(0));
//! let wanted = offered & (F_VERSION_1 | F_RING_EVENT_IDX | F_BLK_FLUSH);
//! device.set_driver_features_page(0, wanted as u32);
//! device.set_driver_features_page(1, (wanted >> 32) as u32);
//! device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
//! assert_ne!(device.status() & STATUS_FEATURES_OK, 0);
//! let mut capacity = [0u8; 8];
//! device.read_config(0, &mut capacity);
//! // QueueNum/QueueDesc/QueueDriver/QueueDevice/QueueReady:
//! let rings = SplitQueueDriver::new(&*mem, GuestAddress(0), 64)?;
//! rings.configure(device.queue_mut(0).unwrap());
//! device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
//!
//! // DRIVER_OK: activate with the queue's ioeventfd.
//! let events = QueueEvents {
//!     notify: EventFd::new(EFD_NONBLOCK).unwrap(),
//! };
//! let mut handlers = device.activate(mem.clone(), vec![events])?;
//! // In the event loop: notify_fd() readable -> handle_queue_notify(),
//! // completion_fd() readable -> handle_completion_event().
//! handlers[0].handle_queue_notify()?;
//! // Reset (status 0): drop the handlers, then reset the device.
//! drop(handlers);
//! device.set_status(0);
//! # Ok::<(), blockdev::Error>(())
//! ```

pub mod bench;
mod chain_merge;
pub mod config;
pub mod defs;
pub mod device;
pub mod dirty_log;
pub mod disk_dirty;
pub mod driver;
mod eventfd;
pub mod handler;
mod interrupt;
mod memory;
pub mod net;
pub mod request;
mod ring;
pub mod served;
pub mod stats;
pub mod testing;
pub mod transport;

pub use config::BlockConfig;
pub use device::{DeviceOptions, VirtioBlock};
pub use handler::{QueueEvents, QueueHandler};
pub use request::DiskInfo;
pub use transport::VirtioDevice;
