//! Fuzzes the snapshot table parser and everything that uses its result:
//! the input is a snapshot table (raw, or patches to a valid one) that a
//! template image's header points at (see `snapshot_table_body.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "snapshot_table_body.rs"]
mod snapshot_table_body;

fuzz_target!(|data: &[u8]| snapshot_table_body::snapshot_table_body(data));
