//! Fuzzes the `vm` domain XML reader and writer.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "domain_xml_body.rs"]
mod domain_xml_body;

fuzz_target!(|data: &[u8]| domain_xml_body::domain_xml_body(data));
