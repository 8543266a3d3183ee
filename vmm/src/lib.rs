//! A minimal KVM virtual machine monitor.
//!
//! Nothing lives here yet: the vmm issue builds it on blockdev's virtio-blk
//! device model.
