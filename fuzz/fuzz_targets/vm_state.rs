//! Fuzzes the reader of saved VM state (records, the machine's layout and
//! the RAM stream) with untrusted bytes (see `vm_state_body.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The seeds serve the stable test that writes the corpus.
#[allow(dead_code)]
#[path = "vm_state_body.rs"]
mod vm_state_body;

fuzz_target!(|data: &[u8]| {
    vm_state_body::vm_state_body(data);
});
