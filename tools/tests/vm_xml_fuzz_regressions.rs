//! The `domain_xml` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run the same steps) over every input in
//! `tests/vm_xml_fuzz_regressions/` (found by the fuzzer, or made by hand):
//! no panic, a one-line refusal or an exact round trip, within a time
//! bound.

#[path = "../../fuzz/fuzz_targets/domain_xml_body.rs"]
mod domain_xml_body;

use std::time::{Duration, Instant};

/// Longest one input may take (inputs normally take microseconds).
const MAX_PER_INPUT: Duration = Duration::from_secs(5);

#[test]
fn replay_domain_xml_inputs() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm_xml_fuzz_regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("domain_xml-"),
            "{name}: must start with the target's name"
        );
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        domain_xml_body::domain_xml_body(&data);
        assert!(
            started.elapsed() < MAX_PER_INPUT,
            "{name} took {:?}",
            started.elapsed()
        );
    }
    eprintln!("replayed {} domain_xml inputs", paths.len());
}
