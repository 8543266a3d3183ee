//! The body of the `migration_stream` fuzz target, shared with the stable
//! test that replays inputs (vmm/tests/migration_fuzz_regressions.rs), so
//! both run exactly the same steps.
//!
//! An input is what a migration's destination reads from its source after
//! the configuration was accepted: the stream header, then frames (RAM
//! runs, the machine's state, the switch) for a VM of 1 vCPU, 1 MiB of
//! RAM and one disk. Every error must be one line; RAM must land only in
//! the VM's RAM.

use vmm::migration::{receive, stream};
use vmm::state::machine::ConfigSummary;

/// The VM the inputs are received into.
pub fn summary() -> ConfigSummary {
    ConfigSummary {
        cpus: 1,
        memory: 1 << 20,
        disks: 1,
        nets: 1,
    }
}

fn one_line(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
}

/// Runs one input; whether it was accepted up to the switch.
pub fn migration_stream_body(data: &[u8]) -> bool {
    let mut input = data;
    if let Err(e) = stream::read_header(&mut input) {
        one_line(&e);
        return false;
    }
    let mem = vmm::vm::map_guest_memory(summary().memory).expect("1 MiB of guest memory");
    let mut offset = 12;
    match receive::receive_state(&mut input, &mut offset, summary(), &mem, None) {
        Ok(received) => {
            assert!(offset <= data.len() as u64);
            assert_eq!(received.machine.config, summary());
            true
        }
        Err(e) => {
            one_line(&e);
            false
        }
    }
}

/// Seeds: a whole stream (RAM runs, a machine state with one virtio
/// transport, the switch), built with `machine` (the vm_state target's
/// machine seed).
pub fn migration_stream_seeds(machine: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use stream::Tag;
    let mut whole = Vec::new();
    stream::write_header(&mut whole).expect("header");
    stream::write_ram(&mut whole, 0, &[0x11; 4096]).expect("ram");
    stream::write_ram(&mut whole, 0x8_0000, &[0x5a; 3 * 4096]).expect("ram");
    stream::write_ram(&mut whole, 0x8_0000, &[0; 4096]).expect("ram");
    stream::write_frame(&mut whole, Tag::Machine, &[machine]).expect("machine");
    stream::write_frame(&mut whole, Tag::Switch, &[&[1]]).expect("switch");
    let mut cancelled = Vec::new();
    stream::write_header(&mut cancelled).expect("header");
    stream::write_ram(&mut cancelled, 0xf_f000, &[1; 4096]).expect("ram");
    stream::write_frame(&mut cancelled, Tag::Cancel, &[b"timed out"]).expect("cancel");
    vec![("whole", whole), ("cancelled", cancelled)]
}
