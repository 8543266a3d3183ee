//! The `migration_stream` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run exactly the same steps): its seeds
//! must be accepted (written to `MIGRATION_FUZZ_SEEDS=DIR` when set, which
//! is how scripts/fuzz-seeds.sh makes the corpus), every one-byte change
//! of the two whole streams must be refused, and every input under
//! `tests/migration_fuzz_regressions/` must run without a panic, as it
//! is and with its frames' CRCs made right.

#[allow(dead_code)]
#[path = "../../fuzz/fuzz_targets/vm_state_body.rs"]
mod vm_state_body;

#[path = "../../fuzz/fuzz_targets/migration_stream_body.rs"]
mod migration_stream_body;

use migration_stream_body::{migration_stream_body, migration_stream_seeds, with_frame_crcs_fixed};

fn machine_seed() -> Vec<u8> {
    vm_state_body::vm_state_seeds()
        .into_iter()
        .find(|(name, _)| *name == "machine")
        .expect("the vm_state target's machine seed")
        .1
}

#[test]
fn seeds_are_accepted_and_every_flipped_byte_is_refused() {
    let out_dir = std::env::var_os("MIGRATION_FUZZ_SEEDS").map(std::path::PathBuf::from);
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, data) in migration_stream_seeds(&machine_seed()) {
        let accepted = migration_stream_body(&data);
        // The seeds' CRCs are right already.
        assert_eq!(with_frame_crcs_fixed(&data), data, "{name}");
        let whole = name == "whole" || name == "disks";
        assert_eq!(accepted, whole, "{name}");
        if whole {
            // Every byte is under the magic, a tag, a length or a CRC.
            // (Every 29th byte of the whole stream, every 97th of the one
            // with disks: each input creates two images, and the test
            // stays in seconds.)
            let step = if name == "whole" { 29 } else { 97 };
            for i in (0..data.len()).step_by(step) {
                let mut bad = data.clone();
                bad[i] ^= 0x20;
                assert!(!migration_stream_body(&bad), "{name}: byte {i}");
            }
            for cut in [0, 5, 12, 30, data.len() - 1] {
                assert!(!migration_stream_body(&data[..cut]), "{name}: cut at {cut}");
            }
        }
        if let Some(dir) = &out_dir {
            std::fs::write(dir.join(format!("{name}.bin")), &data).unwrap();
        }
    }
}

#[test]
fn regressions_run_clean() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/migration_fuzz_regressions"
    );
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        migration_stream_body(&data);
        migration_stream_body(&with_frame_crcs_fixed(&data));
        count += 1;
    }
    assert!(count > 0, "no regression inputs in {dir}");
}
