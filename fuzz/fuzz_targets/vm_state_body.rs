//! The body of the `vm_state` fuzz target, shared with the stable test
//! that replays inputs (vmm/tests/state_fuzz_regressions.rs), so both run
//! exactly the same steps.
//!
//! An input is a saved VM state as a snapshot's files or an image's
//! VM-state area would carry it (someone else may have written it). It is
//! read as the machine's records (state.json's) for a VM of 1 vCPU, 1 MiB,
//! one disk and one network interface (so the virtio-net record is reached), as a RAM stream (memory-ranges) into 1 MiB of guest
//! memory, and as a qcow2 image's VM-state area (header, machine, RAM):
//! directly, and through a full snapshot of an in-memory image holding it,
//! which must agree. Every error must be one line; a machine state that
//! parses must encode back to the very same bytes.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::state::image;
use vmm::state::machine::{ConfigSummary, MachineState};
use vmm::state::memory;

/// The VM the inputs are restored into.
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

/// Runs one input.
pub fn vm_state_body(data: &[u8]) {
    match MachineState::parse(data, summary()) {
        Ok(state) => {
            let again = state.to_bytes().expect("a parsed state encodes");
            assert!(again == data, "a parsed state encodes to other bytes");
        }
        Err(e) => one_line(&e),
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
        .expect("1 MiB of guest memory");
    let restored = memory::restore(&mut &data[..], summary(), &mem);
    match &restored {
        Ok(bytes) => assert!(*bytes <= 1 << 20),
        Err(e) => one_line(e),
    }
    // The lazy loader's index of the same stream (headers only): a stream
    // the eager reader takes must index to the same bytes of RAM.
    let indexed = vmm::lazy_ram::index::build(&SliceSource(data), 0, data.len() as u64, summary());
    match (&restored, &indexed) {
        (Ok(bytes), Ok((_, indexed_bytes))) => assert_eq!(bytes, indexed_bytes),
        (Ok(_), Err(e)) => panic!("the eager reader took a stream the index refused: {e}"),
        (_, Err(e)) => one_line(e),
        (Err(_), Ok(_)) => {}
    }
    let direct = image::check_area(data, summary(), &fresh_memory());
    if let Err(e) = &direct {
        one_line(e);
    }
    let through_image = area_through_image(data);
    if let Err(e) = &through_image {
        one_line(e);
    }
    assert_eq!(
        direct.is_ok(),
        through_image.is_ok(),
        "the area read directly and through an image disagree: {direct:?} {through_image:?}"
    );
}

/// A RAM stream held in memory, for the lazy loader's index.
struct SliceSource<'a>(&'a [u8]);

impl vmm::lazy_ram::index::StreamSource for SliceSource<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), vmm::state::StateError> {
        let from = usize::try_from(pos).unwrap_or(usize::MAX);
        let slice = from
            .checked_add(buf.len())
            .and_then(|end| self.0.get(from..end))
            .ok_or(vmm::state::StateError::Truncated { offset: pos })?;
        buf.copy_from_slice(slice);
        Ok(())
    }
}

fn fresh_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
        .expect("1 MiB of guest memory")
}

/// Writes `data` as the VM state of a full snapshot of an in-memory qcow2
/// image, then reads it back as a revert does.
fn area_through_image(data: &[u8]) -> Result<u64, vmm::state::StateError> {
    let storage: Arc<dyn qcow::Storage> = Arc::new(qcow::MemStorage::new());
    let options = qcow::create::CreateOptions {
        size: 1 << 20,
        cluster_size: 4096,
        ..Default::default()
    };
    let disk = qcow::create::create(storage, None, None, &options).expect("in-memory image");
    let mut writer = disk.vm_state_writer().expect("state writer");
    writer.write_all(data).expect("state in memory");
    let size = writer.finish().expect("state in memory");
    disk.create_snapshot_with_vm_state(
        "fuzz",
        qcow::image::VmStateInfo {
            vm_state_size: size,
            vm_clock_nsec: 0,
        },
    )
    .expect("snapshot in memory");
    let area = image::read_machine(&disk, "fuzz", summary())?;
    // Half the inputs load as a revert in place does (over RAM that held
    // other data: here zeroed, so the outcome must not differ).
    let over = data.len() % 2 == 1;
    image::read_memory(&disk, "fuzz", area.ram, summary(), &fresh_memory(), over)
}

/// Seeds: a machine state of default KVM structures with two virtio
/// transports (a disk's, an interface's) and the interface's record, and
/// a RAM stream with a few runs of pages.
pub fn vm_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vmm::state::devices::{QueueState, VirtioMmioState};
    use vmm::state::net::NetDeviceState;
    use vmm::state::vcpu::VcpuState;
    let vcpu = VcpuState {
        mp_state: Default::default(),
        regs: kvm_bindings::kvm_regs {
            rip: 0x20_0000,
            rflags: 2,
            ..Default::default()
        },
        sregs: Default::default(),
        fpu: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        tsc_khz: 2_000_000,
        cpuid: vec![kvm_bindings::kvm_cpuid_entry2::default(); 3],
        msrs: vec![
            kvm_bindings::kvm_msr_entry {
                index: 0x10,
                data: 1234,
                ..Default::default()
            };
            2
        ],
        events: Default::default(),
    };
    let mut irqchips = [kvm_bindings::kvm_irqchip::default(); 3];
    for (id, chip) in irqchips.iter_mut().enumerate() {
        chip.chip_id = id as u32;
    }
    let machine = MachineState {
        config: summary(),
        vcpus: vec![vcpu],
        pit: Default::default(),
        clock: Default::default(),
        irqchips,
        serial: Default::default(),
        ged: 0,
        virtio: vec![
            VirtioMmioState {
                status: 0xf,
                activated: true,
                driver_features: 1 << 32,
                queues: vec![QueueState {
                    size: 16,
                    ready: true,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000,
                    next_avail: 5,
                    next_used: 5,
                    ..Default::default()
                }],
                ..Default::default()
            },
            VirtioMmioState {
                status: 0xf,
                activated: true,
                driver_features: 1 << 32 | 1 << 5,
                queues: (0..3u64)
                    .map(|q| QueueState {
                        size: 16,
                        ready: q < 2,
                        desc: 0x4000 + q * 0x1000,
                        avail: 0x4400 + q * 0x1000,
                        used: 0x4800 + q * 0x1000,
                        next_avail: 4,
                        next_used: 2,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        ],
        nets: vec![NetDeviceState {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            max_pairs: 1,
            resume: vmm::state::net::NetResume {
                active_pairs: 1,
                rx_stash: vec![vec![2, 3]],
                announce: Default::default(),
            },
        }],
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
        .expect("1 MiB of guest memory");
    vm_memory::Bytes::write_slice(&mem, b"boot", GuestAddress(0)).expect("write");
    vm_memory::Bytes::write_slice(&mem, &[0x5a; 3 * 4096], GuestAddress(0x8_0000)).expect("write");
    let mut ram = Vec::new();
    memory::save(&mem, summary(), &mut ram).expect("save RAM");
    let area = image::encode_area(&machine, &mem).expect("encode the area");
    vec![
        ("machine", machine.to_bytes().expect("encode")),
        ("ram", ram),
        ("area", area),
    ]
}
