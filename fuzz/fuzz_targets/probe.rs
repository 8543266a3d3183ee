//! Fuzzes format probing (qcow::probe) with arbitrary file heads: it must
//! never panic, must agree between storage and bytes, and a file named
//! `.dmg` may only differ by being called dmg (a weak guess, like cloop's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow::probe::{probe_bytes, probe_storage, Format, PROBE_BUF_SIZE};
use qcow::MemStorage;

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::from_bytes(data.to_vec());
    let probed = probe_storage(&storage, Some("disk.img")).expect("memory reads do not fail");
    let mut head = [0u8; PROBE_BUF_SIZE];
    let n = data.len().min(PROBE_BUF_SIZE);
    head[..n].copy_from_slice(&data[..n]);
    assert_eq!(probed, probe_bytes(&head, data.len() as u64, Some("disk.img")));
    let as_dmg = probe_bytes(&head, data.len() as u64, Some("disk.dmg"));
    assert!(as_dmg == probed || as_dmg == Format::Dmg);
});
