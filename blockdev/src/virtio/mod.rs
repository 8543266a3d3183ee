//! The virtio-blk device model.
