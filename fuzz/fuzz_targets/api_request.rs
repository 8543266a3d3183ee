//! Fuzzes the API's HTTP request parser and VmConfig decoding with the
//! bytes a peer sends on `vmm`'s API socket (see `api_request_body.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The seeds serve the stable test that writes the corpus.
#[allow(dead_code)]
#[path = "api_request_body.rs"]
mod api_request_body;

fuzz_target!(|data: &[u8]| {
    api_request_body::api_request_body(data);
});
