//! The `virtio_net` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run exactly the same steps):
//!
//! - a few built-in inputs (rings at valid and at absurd places, frames
//!   injected, resets, every feature byte) run and leave the device
//!   healthy (the body's own check at the end);
//! - every input under `tests/virtio_net_fuzz_regressions/` (inputs the
//!   fuzzer found, and hand-made ones) must run without a panic, within a
//!   time bound.
//!
//! Needs root (the body makes a network namespace per thread).

#[path = "../../fuzz/fuzz_targets/virtio_net_body.rs"]
mod virtio_net_body;

use std::time::{Duration, Instant};

use virtio_net_body::*;

/// Longest one input may take here.
const MAX_PER_INPUT: Duration = Duration::from_secs(5);

/// An input with valid rings for every queue, the given feature byte and
/// round flags, and a memory image holding one tx chain and rx buffers.
fn layout(features: u8, rounds: &[u8]) -> Vec<u8> {
    let mut data = vec![0u8; IMAGE_AT + 2 * REGION_SIZE as usize];
    data[0] = features;
    data[1..3].copy_from_slice(&16u16.to_le_bytes());
    // Rings of queue N at 0x1000 * (N + 1) + {0, 0x100, 0x200}.
    data[3..7].copy_from_slice(&0x1000u32.to_le_bytes());
    data[7..11].copy_from_slice(&0x1100u32.to_le_bytes());
    data[11..15].copy_from_slice(&0x1200u32.to_le_bytes());
    data[15..19].copy_from_slice(&0x1000u32.to_le_bytes());
    for (n, flags) in rounds.iter().enumerate() {
        let record = &mut data[HEADER_LEN + n * ROUND_LEN..][..ROUND_LEN];
        record[0..2].copy_from_slice(&1u16.to_le_bytes());
        record[2] = *flags;
        record[3..5].copy_from_slice(&(64 + 100 * n as u16).to_le_bytes());
        // Patch a byte nobody reads.
        record[6..8].copy_from_slice(&0xf000u16.to_le_bytes());
    }
    let image = &mut data[IMAGE_AT..];
    // Descriptor 0 of queue 0 (rx): 4 KiB writable at 0x8000; of queue 1
    // (tx): 12 + 60 bytes at 0xa000; avail ring entry 0 = head 0.
    let desc = |image: &mut [u8], at: usize, addr: u64, len: u32, flags: u16| {
        image[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        image[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        image[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
    };
    desc(image, 0x1000, 0x8000, 4096, 2);
    desc(image, 0x2000, 0xa000, 72, 0);
    image[0xa000 + 12..0xa000 + 18].fill(0xff);
    image[0xa000 + 24..0xa000 + 26].copy_from_slice(&[0x88, 0xb5]);
    data
}

#[test]
fn built_in_inputs_leave_the_device_healthy() {
    let inputs = [
        layout(0, &[0]),
        layout(FEAT_MRG_RXBUF | FEAT_EVENT_IDX, &[R_INJECT, R_RX, 0]),
        layout(0x7f, &[R_INJECT, R_CTRL, R_PAIR_1, R_RESET, R_INJECT]),
        layout(FEAT_NO_VERSION_1, &[R_RX, 0]),
        layout(
            FEAT_CSUM | FEAT_GUEST_CSUM,
            &[R_KEEP_AVAIL_IDX | R_INJECT; 8],
        ),
        vec![0xff; IMAGE_AT + 64],
        Vec::new(),
    ];
    for (n, input) in inputs.iter().enumerate() {
        let started = Instant::now();
        virtio_net_body(input);
        assert!(started.elapsed() < MAX_PER_INPUT, "input {n} took too long");
    }
}

#[test]
fn replay_fuzz_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/virtio_net_fuzz_regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        virtio_net_body(&data);
        let took = started.elapsed();
        assert!(took < MAX_PER_INPUT, "{} took {took:?}", path.display());
    }
    eprintln!("replayed {} virtio_net inputs", paths.len());
}
