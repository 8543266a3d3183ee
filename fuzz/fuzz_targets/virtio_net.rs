//! Fuzzes the virtio-net device model's transmit, receive and control
//! paths over a tap with an arbitrary guest memory and queue layout, then
//! checks the device still moves a frame each way (see
//! `virtio_net_body.rs`). Needs root: each fuzzing thread makes its own
//! network namespace.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "virtio_net_body.rs"]
mod virtio_net_body;

fuzz_target!(|data: &[u8]| {
    virtio_net_body::virtio_net_body(data);
});
