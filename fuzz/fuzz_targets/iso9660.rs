//! Fuzzes the ISO 9660 reader (iso9660 crate) that `vm install` reads
//! installer discs with.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "iso9660_body.rs"]
mod iso9660_body;

fuzz_target!(|data: &[u8]| iso9660_body::iso9660_body(data));
