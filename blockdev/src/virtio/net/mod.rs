//! The virtio-net device model over a tap device, free of any transport,
//! sharing the split-ring walker and the guest memory view with
//! virtio-blk.
//!
//! - [`tap::Tap`]: one queue of a tap interface (IFF_TAP | IFF_NO_PI |
//!   IFF_VNET_HDR, IFF_MULTI_QUEUE for several), with every `unsafe` of
//!   the tap side.
//! - [`device::VirtioNet`]: what a transport talks to (features, status,
//!   `mac`/`status`/`max_virtqueue_pairs` configuration, queue setup,
//!   activation).
//! - [`rx::RxQueue`], [`tx::TxQueue`]: one queue pair's data path, frames
//!   moved between the tap and guest buffers with `readv`/`writev` and no
//!   copy of the frame; [`ctrl::CtrlQueue`]: the MQ and announce
//!   commands.
//! - [`announce::AnnounceState`]: VIRTIO_NET_S_ANNOUNCE after a restore.
//! - [`header::NetHeader`]: the vnet header and its validation.
//! - [`counters::NetCounters`]: rx/tx bytes, frames, drops and errors.
//!
//! # Driving the device from an event loop
//!
//! For each [`rx::RxQueue`]: notify fd readable →
//! [`rx::RxQueue::handle_queue_notify`]; tap fd readable (waited for only
//! while [`rx::RxQueue::tap_wanted`]) → [`rx::RxQueue::handle_tap_event`].
//! For each [`tx::TxQueue`] and the [`ctrl::CtrlQueue`]: notify fd
//! readable → `handle_queue_notify`.

pub mod announce;
pub mod counters;
pub mod ctrl;
pub mod defs;
pub mod device;
pub mod header;
mod queue;
pub mod rx;
pub mod tap;
pub mod tx;

pub use counters::{NetCounters, NetStats};
pub use device::{AnnounceTick, NetHandlers, NetOptions, NetResume, VirtioNet};
pub use rx::RxQueue;
pub use tap::Tap;
pub use tx::TxQueue;
