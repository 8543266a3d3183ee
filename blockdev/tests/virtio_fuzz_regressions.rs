//! The `virtio_blk` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run exactly the same steps):
//!
//! - every seed the target starts from (`virtio_blk_seeds.rs`) runs, and
//!   the well-formed ones must leave every status byte as expected, with
//!   no handler error (so the seeds really reach the device's depths);
//!   with `VIRTIO_FUZZ_SEEDS=DIR` they are also written to DIR, which is
//!   how scripts/fuzz-seeds.sh makes the corpus;
//! - every input under `tests/virtio_fuzz_regressions/` (inputs the fuzzer
//!   found, and hand-made ones) must run without a panic, within a time
//!   bound.

#[path = "../../fuzz/fuzz_targets/virtio_blk_body.rs"]
mod virtio_blk_body;
#[path = "../../fuzz/fuzz_targets/virtio_blk_seeds.rs"]
mod virtio_blk_seeds;

use std::time::{Duration, Instant};

use virtio_blk_body::{image_index, virtio_blk_body};

/// Longest one input may take here (the fuzzer's per-input timeout is
/// 20 s under the sanitizer; inputs normally take milliseconds).
const MAX_PER_INPUT: Duration = Duration::from_secs(5);

#[test]
fn seeds_reach_every_request_type() {
    let seeds = virtio_blk_seeds::seeds();
    let out_dir = std::env::var_os("VIRTIO_FUZZ_SEEDS").map(std::path::PathBuf::from);
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut well_formed = 0;
    for seed in &seeds {
        let started = Instant::now();
        let outcome = virtio_blk_body(&seed.data);
        let took = started.elapsed();
        assert!(took < MAX_PER_INPUT, "{} took {took:?}", seed.name);
        if let Some(statuses) = &seed.statuses {
            well_formed += 1;
            assert!(outcome.activations > 0, "{}: never activated", seed.name);
            assert_eq!(outcome.errors, 0, "{}: handler errors", seed.name);
            for (addr, expected) in statuses {
                let at = image_index(*addr).unwrap();
                assert_eq!(
                    outcome.memory[at], *expected,
                    "{}: status byte at {addr:#x}",
                    seed.name
                );
            }
        }
        if let Some(dir) = &out_dir {
            std::fs::write(dir.join(format!("{}.bin", seed.name)), &seed.data).unwrap();
        }
    }
    assert!(well_formed >= 10, "only {well_formed} well-formed seeds");
    eprintln!("ran {} seeds ({well_formed} well-formed)", seeds.len());
}

#[test]
fn replay_fuzz_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/virtio_fuzz_regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("virtio_blk-"),
            "{name}: the name must start with the fuzz target's name"
        );
        let started = Instant::now();
        virtio_blk_body(&data);
        let took = started.elapsed();
        assert!(took < MAX_PER_INPUT, "{name} took {took:?}");
    }
    eprintln!("replayed {} virtio_blk inputs", paths.len());
}
