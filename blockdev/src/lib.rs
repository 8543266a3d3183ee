//! Block backends (raw and qcow2) and a transport-free virtio-blk device
//! model.
//!
//! Nothing lives here yet: the io_uring data path and the device model are
//! built by the blockdev issue, on top of the `qcow` crate's low-level
//! mapping API.
