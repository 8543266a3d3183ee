//! Fuzzes the virtio-blk device model with an arbitrary guest memory and
//! queue layout: features, queue size, ring addresses, rounds of kicks,
//! stores, completions and a reset, then a health check (see
//! `virtio_blk_body.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The encoders and the outcome serve the seed builder and the stable test.
#[allow(dead_code)]
#[path = "virtio_blk_body.rs"]
mod virtio_blk_body;

fuzz_target!(|data: &[u8]| {
    virtio_blk_body::virtio_blk_body(data);
});
