//! Fuzzes the destination's reader of a migration stream with untrusted
//! bytes (see `migration_stream_body.rs`): each input as it is, and with
//! its frames' CRCs made right so that mutations reach the frames' checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The seeds serve the stable test that writes the corpus.
#[allow(dead_code)]
#[path = "migration_stream_body.rs"]
mod migration_stream_body;

fuzz_target!(|data: &[u8]| {
    migration_stream_body::migration_stream_body(data);
    migration_stream_body::migration_stream_body(&migration_stream_body::with_frame_crcs_fixed(data));
});
