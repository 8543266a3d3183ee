//! Random descriptor tables (direct and indirect; addresses in memory, in
//! the hole, across region ends, at the top of the address space; random
//! lengths, flags, links and headers) fed to the device: it never panics,
//! returns every published head that names a descriptor, writes guest
//! memory only inside descriptors the driver marked device-writable (and
//! the rings), and serves a good request afterwards.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{RawDescriptor, SplitQueueDriver};
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use proptest::prelude::*;
use virtio_support::*;
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: usize = 1 << 20;
const CAPACITY: u64 = (DISK_SIZE / 512) as u64;
/// Where the fuzzed structures live (region B, away from the allocator).
const HEADER_AT: u64 = 0x30_0000;
const SEGMENTS_AT: u64 = 0x30_1000;
const INDIRECT_AT: u64 = 0x30_2000;
const DATA_AT: u64 = 0x31_0000;

fn addr_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(HEADER_AT),
        Just(SEGMENTS_AT),
        Just(INDIRECT_AT),
        (0u64..0x4000).prop_map(|o| DATA_AT + o),
        Just(REGION_B.0 - 8),
        Just(HOLE_START - 100),
        Just(HOLE_START + 10),
        Just(REGION_C.0 + REGION_C.1 as u64 - 8),
        Just(u64::MAX - 100),
        any::<u64>(),
    ]
}

fn len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(15),
        Just(16),
        Just(17),
        Just(32),
        Just(48),
        Just(512),
        Just(513),
        Just(4096),
        Just(1 << 20),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn desc_strategy(max_next: u16) -> impl Strategy<Value = RawDescriptor> {
    (addr_strategy(), len_strategy(), 0u16..8, 0..max_next).prop_map(|(addr, len, flags, next)| {
        RawDescriptor {
            addr,
            len,
            flags,
            next,
        }
    })
}

fn header_strategy() -> impl Strategy<Value = (u32, u64)> {
    (
        prop_oneof![
            Just(REQ_IN),
            Just(REQ_OUT),
            Just(REQ_FLUSH),
            Just(REQ_GET_ID),
            Just(REQ_DISCARD),
            Just(REQ_WRITE_ZEROES),
            any::<u32>()
        ],
        prop_oneof![
            Just(0u64),
            Just(CAPACITY - 1),
            Just(CAPACITY),
            Just(u64::MAX / 256),
            0..CAPACITY
        ],
    )
}

#[derive(Debug, Clone)]
struct Case {
    table: Vec<RawDescriptor>,
    indirect: Vec<RawDescriptor>,
    header: (u32, u64),
    segments: Vec<(u64, u32, u32)>,
    heads: Vec<u16>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(desc_strategy(12), 1..10),
        prop::collection::vec(desc_strategy(10), 0..8),
        header_strategy(),
        prop::collection::vec((0..CAPACITY + 2, 0u32..64, 0u32..4), 0..4),
        prop::collection::vec(prop_oneof![0u16..10, Just(1000u16)], 1..4),
    )
        .prop_map(|(table, indirect, header, segments, heads)| Case {
            table,
            indirect,
            header,
            segments,
            heads,
        })
}

/// Guest ranges the driver let the device write: writable descriptors of
/// the queue's table and of every table an indirect descriptor points at
/// (whatever the bytes there are, as the device reads them).
fn writable_ranges(mem: &vm_memory::GuestMemoryMmap, case: &Case) -> Vec<(u64, u64)> {
    let mut descs: Vec<RawDescriptor> = case.table.clone();
    for desc in &case.table {
        if desc.flags & 4 == 0 {
            continue;
        }
        let entries = (desc.len / 16).min(4096);
        for i in 0..u64::from(entries) {
            let mut raw = [0u8; 16];
            let Some(at) = desc.addr.checked_add(16 * i) else {
                break;
            };
            if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
                break;
            }
            descs.push(RawDescriptor {
                addr: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
                len: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
                flags: u16::from_le_bytes(raw[12..14].try_into().expect("2 bytes")),
                next: 0,
            });
        }
    }
    descs
        .iter()
        .filter(|d| d.flags & 2 != 0)
        .map(|d| (d.addr, d.addr.saturating_add(u64::from(d.len))))
        .collect()
}

fn run_case(case: &Case) {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    disk.fill(0, &pattern(DISK_SIZE, 3));
    let mut rig = Rig::new(Arc::new(disk.clone()));
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&case.header.0.to_le_bytes());
    header[8..16].copy_from_slice(&case.header.1.to_le_bytes());
    rig.mem
        .write_slice(&header, GuestAddress(HEADER_AT))
        .expect("header");
    let mut segments = Vec::new();
    for (sector, count, flags) in &case.segments {
        segments.extend_from_slice(&sector.to_le_bytes());
        segments.extend_from_slice(&count.to_le_bytes());
        segments.extend_from_slice(&flags.to_le_bytes());
    }
    rig.mem
        .write_slice(&segments, GuestAddress(SEGMENTS_AT))
        .expect("segments");
    for (i, desc) in case.indirect.iter().enumerate() {
        SplitQueueDriver::write_descriptor_at(
            &*rig.mem,
            GuestAddress(INDIRECT_AT + 16 * i as u64),
            *desc,
        )
        .expect("indirect");
    }
    for (i, desc) in case.table.iter().enumerate() {
        rig.drivers[0]
            .write_descriptor(&*rig.mem, i as u16, *desc)
            .expect("table");
    }
    for head in &case.heads {
        rig.drivers[0]
            .publish_raw(&*rig.mem, *head)
            .expect("publish");
    }
    let allowed = writable_ranges(&rig.mem, case);
    let before = snapshot(&rig.mem);
    rig.kick(0);
    let used = rig.used(0);
    let returnable = case.heads.iter().filter(|h| **h < 64).count();
    assert_eq!(
        used.len(),
        returnable,
        "every head inside the queue comes back"
    );
    let footprint = SplitQueueDriver::footprint(64);
    for addr in changed(&before, &snapshot(&rig.mem)) {
        assert!(
            addr < footprint || allowed.iter().any(|(s, e)| *s <= addr && addr < *e),
            "guest byte {addr:#x} written outside any device-writable descriptor"
        );
    }
    // Still serving.
    rig.reset_alloc();
    let data = pattern(1024, 9);
    assert_eq!(rig.write_sectors(100, &data, 2).0, STATUS_OK);
    let (status, _, back) = rig.read_sectors(100, 1024, 3);
    assert_eq!(status, STATUS_OK);
    assert_eq!(back, data);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_descriptor_tables(case in case_strategy()) {
        run_case(&case);
    }
}
