//! Fuzzes the header and extension parser with arbitrary first clusters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow::extensions::HeaderCluster;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut hc) = HeaderCluster::parse(data, data.len() as u64) {
        // Whatever parses must serialise again without panicking.
        let _ = hc.write();
    }
});
