//! The `vm_state` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run exactly the same steps): its seeds
//! must parse (written to `STATE_FUZZ_SEEDS=DIR` when set, which is how
//! scripts/fuzz-seeds.sh makes the corpus), every one-byte change of them
//! must be refused, and every input under `tests/state_fuzz_regressions/`
//! (inputs the fuzzer found, and hand-made ones) must run without a panic.

#[path = "../../fuzz/fuzz_targets/vm_state_body.rs"]
mod vm_state_body;

use vm_state_body::{summary, vm_state_body, vm_state_seeds};
use vmm::state::machine::MachineState;

#[test]
fn seeds_parse_and_every_flipped_byte_is_refused() {
    let out_dir = std::env::var_os("STATE_FUZZ_SEEDS").map(std::path::PathBuf::from);
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, data) in vm_state_seeds() {
        vm_state_body(&data);
        if name == "machine" {
            MachineState::parse(&data, summary()).unwrap();
            // Every byte is under a magic, a length or a CRC.
            for i in (0..data.len()).step_by(7) {
                let mut bad = data.clone();
                bad[i] ^= 0x10;
                assert!(MachineState::parse(&bad, summary()).is_err(), "byte {i}");
            }
        }
        if name == "area" {
            let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
                vm_memory::GuestAddress(0),
                1 << 20,
            )])
            .unwrap();
            vmm::state::image::check_area(&data, summary(), &mem).unwrap();
            // The header, every record and every page are under a CRC.
            for i in (0..data.len()).step_by(97) {
                let mut bad = data.clone();
                bad[i] ^= 0x10;
                assert!(
                    vmm::state::image::check_area(&bad, summary(), &mem).is_err(),
                    "area byte {i}"
                );
            }
        }
        if let Some(dir) = &out_dir {
            std::fs::write(dir.join(format!("{name}.bin")), &data).unwrap();
        }
    }
}

#[test]
fn regressions_run_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/state_fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        vm_state_body(&data);
        count += 1;
    }
    assert!(count > 0, "no regression inputs in {dir}");
}
