//! Inputs the fuzzers found (hangs, panics) replayed on stable: each file
//! under `tests/fuzz_regressions/` goes through the body of the
//! `open_image` fuzz target and must finish without a panic.

#[path = "../../fuzz/fuzz_targets/open_image_body.rs"]
mod open_image_body;

use open_image_body::open_image_body;

#[test]
fn replay_fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("open_image")
        {
            open_image_body(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs found in {}", dir.display());
}
