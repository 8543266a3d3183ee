//! Replays the iso9660 fuzz target's kept inputs
//! (iso/tests/iso_fuzz_regressions/: hostile discs and whatever the
//! fuzzer found) through the target's own body, on the stable toolchain.

#[path = "../../fuzz/fuzz_targets/iso9660_body.rs"]
mod iso9660_body;

#[test]
fn kept_inputs_are_refused_in_one_line_or_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iso_fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        iso9660_body::iso9660_body(&bytes);
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}
