//! Malformed descriptor chains, each built by hand in guest memory: the
//! device answers IOERR (status written) or UNSUPP, or returns the chain
//! with length 0 when it has no usable status byte; it writes nothing else
//! in guest memory (every byte outside the rings is compared), touches
//! nothing on the disk, and keeps serving requests afterwards.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{
    RawDescriptor, SplitQueueDriver, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use virtio_support::*;
use vm_memory::{Address, GuestAddress};

const DISK_SIZE: usize = 1 << 20;
const CAPACITY: u64 = (DISK_SIZE / 512) as u64;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Returned with this status byte written, used length 1.
    Status(u8),
    /// Returned with length 0, nothing written.
    Dropped,
}

fn rig() -> (MemDisk, Rig) {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    disk.fill(0, &pattern(DISK_SIZE, 99));
    let rig = Rig::new(Arc::new(disk.clone()));
    (disk, rig)
}

/// Run what the test put on queue 0 and check the outcome, that only the
/// rings and the status byte changed in guest memory (a dropped chain's
/// would-be status byte included), that the disk is
/// unchanged, and that a good request still works afterwards.
fn check(disk: &MemDisk, rig: &mut Rig, status: Option<GuestAddress>, expect: Outcome) {
    let disk_before = disk.contents();
    let before = snapshot(&rig.mem);
    rig.kick(0);
    let used = rig.used(0);
    assert_eq!(used.len(), 1, "the chain comes back");
    match expect {
        Outcome::Status(code) => {
            let status = status.expect("a status byte");
            assert_eq!(rig.byte(status), code, "status byte");
            assert_eq!(used[0].len, 1, "used length of a failed request");
        }
        Outcome::Dropped => assert_eq!(used[0].len, 0),
    }
    let after = snapshot(&rig.mem);
    let footprint = SplitQueueDriver::footprint(rig.drivers[0].size());
    for addr in changed(&before, &after) {
        let in_rings = addr < footprint;
        let is_status = matches!(expect, Outcome::Status(_)) && Some(GuestAddress(addr)) == status;
        assert!(in_rings || is_status, "guest byte {addr:#x} changed");
    }
    assert_eq!(disk.contents(), disk_before, "disk changed");
    assert_healthy(rig);
}

/// A write and read back of a few sectors succeed.
fn assert_healthy(rig: &mut Rig) {
    rig.reset_alloc();
    let data = pattern(2048, 7);
    let (status, _) = rig.write_sectors(40, &data, 3);
    assert_eq!(status, STATUS_OK);
    let (status, len, back) = rig.read_sectors(40, 2048, 2);
    assert_eq!((status, len), (STATUS_OK, 2049));
    assert_eq!(back, data);
    rig.reset_alloc();
}

/// Publish a direct chain over raw descriptors (linked in order unless a
/// descriptor sets its own NEXT flag).
fn publish_direct(rig: &mut Rig, descs: &[RawDescriptor]) -> u16 {
    let indices = rig.drivers[0].alloc(descs.len()).expect("descriptors");
    for (i, desc) in descs.iter().enumerate() {
        let mut desc = *desc;
        if i + 1 < descs.len() && desc.flags & DESC_F_NEXT == 0 && desc.next == 0 {
            desc.flags |= DESC_F_NEXT;
            desc.next = indices[i + 1];
        }
        rig.drivers[0]
            .write_descriptor(&*rig.mem, indices[i], desc)
            .expect("write");
    }
    let head = indices[0];
    rig.drivers[0]
        .publish(&*rig.mem, head, indices)
        .expect("publish");
    head
}

/// Publish a chain through an indirect table holding `entries` as given.
fn publish_indirect(rig: &mut Rig, entries: &[RawDescriptor], table_len: u32) -> u16 {
    let table = rig.alloc(16 * entries.len() as u64);
    for (i, entry) in entries.iter().enumerate() {
        SplitQueueDriver::write_descriptor_at(
            &*rig.mem,
            table.unchecked_add(16 * i as u64),
            *entry,
        )
        .expect("entry");
    }
    publish_direct(
        rig,
        &[RawDescriptor {
            addr: table.raw_value(),
            len: table_len,
            flags: DESC_F_INDIRECT,
            next: 0,
        }],
    )
}

fn ro(addr: GuestAddress, len: u32) -> RawDescriptor {
    RawDescriptor {
        addr: addr.raw_value(),
        len,
        flags: 0,
        next: 0,
    }
}

fn wo(addr: GuestAddress, len: u32) -> RawDescriptor {
    RawDescriptor {
        addr: addr.raw_value(),
        len,
        flags: DESC_F_WRITE,
        next: 0,
    }
}

/// Link `entries` of an indirect table in order.
fn linked(entries: &[RawDescriptor]) -> Vec<RawDescriptor> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = *e;
            if i + 1 < entries.len() {
                e.flags |= DESC_F_NEXT;
                e.next = i as u16 + 1;
            }
            e
        })
        .collect()
}

#[test]
fn short_or_missing_header_is_ioerr() {
    let (disk, mut rig) = rig();
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 8), wo(data, 512), wo(status, 1)]);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));

    let status = rig.status_byte();
    publish_direct(&mut rig, &[wo(status, 1)]);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
}

#[test]
fn missing_read_only_empty_or_unmapped_status_is_dropped() {
    let (disk, mut rig) = rig();
    // No writable descriptor at all.
    let header = rig.header(REQ_OUT, 0);
    let data = rig.buffer(&[1u8; 512]);
    publish_direct(&mut rig, &[ro(header, 16), ro(data, 512)]);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // The last descriptor is device-readable.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 16), wo(data, 512), ro(status, 1)]);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // A zero-length status descriptor.
    let header = rig.header(REQ_FLUSH, 0);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 16), wo(status, 0)]);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // The status byte in the hole between regions, or past all memory.
    for addr in [HOLE_START + 100, u64::MAX] {
        let header = rig.header(REQ_FLUSH, 0);
        publish_direct(&mut rig, &[ro(header, 16), wo(GuestAddress(addr), 1)]);
        check(&disk, &mut rig, None, Outcome::Dropped);
    }
}

#[test]
fn buffers_outside_guest_memory_are_ioerr() {
    let (disk, mut rig) = rig();
    let region_c_end = REGION_C.0 + REGION_C.1 as u64;
    let cases = [
        (HOLE_START, 512, true),         // in the hole
        (REGION_C.0 - 256, 512, true),   // straddles the hole's end
        (region_c_end - 256, 512, true), // runs off the last region
        (u64::MAX - 255, 512, true),     // address + length overflows
        (HOLE_START - 256, 512, false),  // OUT data running into the hole
        (region_c_end + (1 << 30), 512, false),
    ];
    for (addr, len, device_writes) in cases {
        let request_type = if device_writes { REQ_IN } else { REQ_OUT };
        let header = rig.header(request_type, 8);
        let status = rig.status_byte();
        let data = RawDescriptor {
            addr,
            len,
            flags: if device_writes { DESC_F_WRITE } else { 0 },
            next: 0,
        };
        publish_direct(&mut rig, &[ro(header, 16), data, wo(status, 1)]);
        check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    }
}

#[test]
fn wrong_directions_are_ioerr() {
    let (disk, mut rig) = rig();
    // IN whose data the device could only read.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 16), ro(data, 512), wo(status, 1)]);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    // OUT whose data is device-writable.
    let header = rig.header(REQ_OUT, 0);
    let data = rig.buffer(&[3u8; 512]);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 16), wo(data, 512), wo(status, 1)]);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    // A device-readable descriptor after a device-writable one.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let extra = rig.alloc(16);
    let status = rig.status_byte();
    publish_direct(
        &mut rig,
        &[ro(header, 16), wo(data, 512), ro(extra, 16), wo(status, 1)],
    );
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    // GET_ID with its ID buffer device-readable: the status is the only
    // writable byte, so nothing but it is written.
    let header = rig.header(REQ_GET_ID, 0);
    let id = rig.alloc(20);
    let status = rig.status_byte();
    publish_direct(&mut rig, &[ro(header, 16), ro(id, 20), wo(status, 1)]);
    let before = rig.read(id, 20);
    rig.kick(0);
    assert_eq!(rig.used(0)[0].len, 1);
    assert_eq!(rig.read(id, 20), before);
}

#[test]
fn sectors_past_the_end_and_odd_lengths_are_ioerr() {
    let (disk, mut rig) = rig();
    let cases: [(u32, u64, u32); 6] = [
        (REQ_IN, CAPACITY, 512),        // first sector past the end
        (REQ_IN, CAPACITY - 1, 1024),   // crosses the end
        (REQ_OUT, u64::MAX / 256, 512), // sector * 512 overflows
        (REQ_OUT, u64::MAX, 512),
        (REQ_IN, 0, 300), // not whole sectors
        (REQ_OUT, 0, 513),
    ];
    for (request_type, sector, len) in cases {
        let header = rig.header(request_type, sector);
        let data = rig.buffer(&vec![0x11u8; len as usize]);
        let status = rig.status_byte();
        let data_desc = if request_type == REQ_IN {
            wo(data, len)
        } else {
            ro(data, len)
        };
        publish_direct(&mut rig, &[ro(header, 16), data_desc, wo(status, 1)]);
        check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    }
}

#[test]
fn absurd_lengths_and_too_many_descriptors_are_ioerr() {
    let (disk, mut rig) = rig();
    // 65 descriptors of 2 MiB each (all over the same guest buffer) ask for
    // 130 MiB, past MAX_REQUEST_BYTES.
    let header = rig.header(REQ_IN, 0);
    let status = rig.status_byte();
    let big = GuestAddress(REGION_B.0);
    let mut entries = vec![ro(header, 16)];
    entries.extend((0..65).map(|_| wo(big, 2 << 20)));
    entries.push(wo(status, 1));
    const { assert!(65 * (2u64 << 20) > MAX_REQUEST_BYTES) };
    let entries = linked(&entries);
    publish_indirect(&mut rig, &entries, 16 * entries.len() as u32);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    // More descriptors than seg_max + 2.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    let mut entries = vec![ro(header, 16)];
    entries.extend((0..MAX_CHAIN_DESCRIPTORS).map(|_| wo(data, 512)));
    entries.push(wo(status, 1));
    let entries = linked(&entries);
    publish_indirect(&mut rig, &entries, 16 * entries.len() as u32);
    check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
}

#[test]
fn loops_and_bad_links_are_dropped() {
    let (disk, mut rig) = rig();
    // A loop in the queue's own table: a -> b -> a.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let indices = rig.drivers[0].alloc(2).expect("descriptors");
    let (a, b) = (indices[0], indices[1]);
    let mut first = ro(header, 16);
    first.flags |= DESC_F_NEXT;
    first.next = b;
    let mut second = wo(data, 512);
    second.flags |= DESC_F_NEXT;
    second.next = a;
    rig.drivers[0]
        .write_descriptor(&*rig.mem, a, first)
        .expect("a");
    rig.drivers[0]
        .write_descriptor(&*rig.mem, b, second)
        .expect("b");
    rig.drivers[0]
        .publish(&*rig.mem, a, indices)
        .expect("publish");
    check(&disk, &mut rig, None, Outcome::Dropped);
    // A next index past the queue.
    let header = rig.header(REQ_FLUSH, 0);
    let mut only = ro(header, 16);
    only.flags |= DESC_F_NEXT;
    only.next = 1000;
    publish_direct(&mut rig, &[only]);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // A loop inside an indirect table: 0 -> 1 -> 2 -> 1.
    let header = rig.header(REQ_IN, 0);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    let mut entries = linked(&[ro(header, 16), wo(data, 512), wo(status, 1)]);
    entries[2].flags |= DESC_F_NEXT;
    entries[2].next = 1;
    publish_indirect(&mut rig, &entries, 48);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // An indirect table entry linking past the table.
    let header = rig.header(REQ_FLUSH, 0);
    let mut entries = vec![ro(header, 16)];
    entries[0].flags |= DESC_F_NEXT;
    entries[0].next = 5;
    publish_indirect(&mut rig, &entries, 16);
    check(&disk, &mut rig, None, Outcome::Dropped);
}

#[test]
fn bad_indirect_tables_are_dropped() {
    let (disk, mut rig) = rig();
    let header = rig.header(REQ_FLUSH, 0);
    let status = rig.status_byte();
    let good = linked(&[ro(header, 16), wo(status, 1)]);
    // Nested indirect.
    let inner = rig.alloc(32);
    for (i, e) in good.iter().enumerate() {
        SplitQueueDriver::write_descriptor_at(&*rig.mem, inner.unchecked_add(16 * i as u64), *e)
            .expect("inner");
    }
    let nested = [RawDescriptor {
        addr: inner.raw_value(),
        len: 32,
        flags: DESC_F_INDIRECT,
        next: 0,
    }];
    publish_indirect(&mut rig, &nested, 16);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // A table length that is not a whole number of descriptors.
    publish_indirect(&mut rig, &good, 20);
    check(&disk, &mut rig, None, Outcome::Dropped);
    // A table in the hole.
    publish_direct(
        &mut rig,
        &[RawDescriptor {
            addr: HOLE_START,
            len: 32,
            flags: DESC_F_INDIRECT,
            next: 0,
        }],
    );
    check(&disk, &mut rig, None, Outcome::Dropped);
    // An empty table.
    publish_indirect(&mut rig, &good, 0);
    check(&disk, &mut rig, None, Outcome::Dropped);
}

#[test]
fn a_head_index_past_the_queue_is_skipped() {
    let (disk, mut rig) = rig();
    let disk_before = disk.contents();
    rig.drivers[0]
        .publish_raw(&*rig.mem, 1000)
        .expect("publish");
    rig.kick(0);
    assert!(rig.used(0).is_empty(), "nothing can be returned for it");
    assert_eq!(disk.contents(), disk_before);
    assert_healthy(&mut rig);
}

#[test]
fn an_available_index_running_ahead_is_an_error_not_a_crash() {
    let (_disk, mut rig) = rig();
    let avail_idx = rig.drivers[0].avail_ring().unchecked_add(2);
    use vm_memory::Bytes;
    rig.mem.write_obj(500u16, avail_idx).expect("poke");
    assert!(rig.handlers[0].process_queue().is_err());
    // The driver puts the index back; the queue works again.
    rig.mem.write_obj(0u16, avail_idx).expect("poke");
    assert_healthy(&mut rig);
}

#[test]
fn unknown_types_and_flags_are_unsupp_and_limits_are_ioerr() {
    let (disk, mut rig) = rig();
    for request_type in [2u32, 10, 14, 99, u32::MAX] {
        let header = rig.header(request_type, 0);
        let status = rig.status_byte();
        publish_direct(&mut rig, &[ro(header, 16), wo(status, 1)]);
        check(
            &disk,
            &mut rig,
            Some(status),
            Outcome::Status(STATUS_UNSUPP),
        );
    }
    type Case = (u32, Vec<(u64, u32, u32)>, u8);
    let cases: Vec<Case> = vec![
        (REQ_DISCARD, vec![(0, 8, SEGMENT_FLAG_UNMAP)], STATUS_UNSUPP),
        (REQ_WRITE_ZEROES, vec![(0, 8, 4)], STATUS_UNSUPP),
        (
            REQ_DISCARD,
            vec![(0, 8, 0); MAX_DISCARD_SEG as usize + 1],
            STATUS_IOERR,
        ),
        (
            REQ_WRITE_ZEROES,
            vec![(0, 8, 0); MAX_WRITE_ZEROES_SEG as usize + 1],
            STATUS_IOERR,
        ),
        (
            REQ_DISCARD,
            vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
            STATUS_IOERR,
        ),
        (REQ_WRITE_ZEROES, vec![(CAPACITY - 1, 2, 0)], STATUS_IOERR),
        (REQ_WRITE_ZEROES, vec![(u64::MAX / 256, 1, 0)], STATUS_IOERR),
        // A bad segment after a good one: nothing is done.
        (
            REQ_WRITE_ZEROES,
            vec![(0, 8, 0), (CAPACITY, 1, 0)],
            STATUS_IOERR,
        ),
    ];
    for (request_type, segments, code) in cases {
        let header = rig.header(request_type, 0);
        let body = rig.segments(&segments);
        let status = rig.status_byte();
        let len = 16 * segments.len() as u32;
        publish_direct(&mut rig, &[ro(header, 16), ro(body, len), wo(status, 1)]);
        check(&disk, &mut rig, Some(status), Outcome::Status(code));
    }
    // Segment bytes that are not whole segments, or none at all.
    for len in [0u32, 8, 24] {
        let header = rig.header(REQ_DISCARD, 0);
        let body = rig.segments(&[(0, 8, 0), (8, 8, 0)]);
        let status = rig.status_byte();
        let mut descs = vec![ro(header, 16)];
        if len > 0 {
            descs.push(ro(body, len));
        }
        descs.push(wo(status, 1));
        publish_direct(&mut rig, &descs);
        check(&disk, &mut rig, Some(status), Outcome::Status(STATUS_IOERR));
    }
}

#[test]
fn read_only_disk_refuses_every_change() {
    let disk = MemDisk::new(
        DISK_SIZE,
        MemDiskOptions {
            read_only: true,
            ..Default::default()
        },
    );
    disk.fill(0, &pattern(DISK_SIZE, 5));
    let mut rig = Rig::new(Arc::new(disk.clone()));
    assert_ne!(rig.device.device_features() & F_BLK_RO, 0);
    let before = disk.contents();
    assert_eq!(rig.write_sectors(0, &[1u8; 512], 1).0, STATUS_IOERR);
    assert_eq!(rig.ranges(REQ_DISCARD, &[(0, 8, 0)]).0, STATUS_IOERR);
    assert_eq!(
        rig.ranges(REQ_WRITE_ZEROES, &[(0, 8, SEGMENT_FLAG_UNMAP)])
            .0,
        STATUS_IOERR
    );
    assert_eq!(rig.simple(REQ_FLUSH, 0).0, STATUS_OK);
    let (status, len, data) = rig.read_sectors(0, 4096, 3);
    assert_eq!((status, len), (STATUS_OK, 4097));
    assert_eq!(data, before[..4096]);
    assert_eq!(disk.contents(), before);
}

#[test]
fn backend_errors_become_ioerr() {
    let disk = MemDisk::new(
        DISK_SIZE,
        MemDiskOptions {
            fail_range: Some(8192..8704),
            ..Default::default()
        },
    );
    let mut rig = Rig::new(Arc::new(disk.clone()));
    let (status, len, _) = rig.read_sectors(15, 1024, 2);
    assert_eq!((status, len), (STATUS_IOERR, 1));
    assert_eq!(rig.write_sectors(16, &[1u8; 512], 1).0, STATUS_IOERR);
    let (status, len, _) = rig.read_sectors(17, 512, 1);
    assert_eq!((status, len), (STATUS_OK, 513));
}
