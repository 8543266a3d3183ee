//! Inputs of the `vpc`, `vdi`, `vmdk` and `qed` fuzz targets replayed on stable:
//! each file under `tests/formats_fuzz_regressions/` goes through the
//! target named by the start of its name and must finish in bounded time
//! without a panic. The body is the targets' own code, included from
//! `fuzz/fuzz_targets/foreign_body.rs`.

#[path = "../../fuzz/fuzz_targets/foreign_body.rs"]
mod foreign_body;

use std::time::{Duration, Instant};

/// Longest one input may take here.
const MAX_PER_INPUT: Duration = Duration::from_secs(10);

#[test]
fn replay_format_fuzz_inputs() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats_fuzz_regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let mut counts = [0usize; 4];
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let format = ["vpc", "vdi", "vmdk", "qed"]
            .iter()
            .position(|f| name.starts_with(&format!("{f}-")))
            .unwrap_or_else(|| {
                panic!("{name}: the name must start with vpc-, vdi-, vmdk- or qed-")
            });
        let data = std::fs::read(&path).unwrap();
        let started = Instant::now();
        foreign_body::foreign_body(["vpc", "vdi", "vmdk", "qed"][format], &data);
        assert!(
            started.elapsed() < MAX_PER_INPUT,
            "{name} took {:?}",
            started.elapsed()
        );
        counts[format] += 1;
    }
    assert!(
        counts.iter().all(|&c| c > 0),
        "every format has inputs: {counts:?}"
    );
}
