//! Fuzzes opening an arbitrary byte string as an image held in memory,
//! then reading all of it, writing a few clusters and running check.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "open_image_body.rs"]
mod open_image_body;

fuzz_target!(|data: &[u8]| open_image_body::open_image_body(data));
