//! Fuzzes opening an arbitrary byte string as a vhdx image in memory, then
//! reading, mapping and checking it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "foreign_body.rs"]
mod foreign_body;

fuzz_target!(|data: &[u8]| foreign_body::foreign_body("vhdx", data));
