//! Thousands of random requests of every kind, several in flight, cut into
//! many segments (direct and indirect, any framing, buffers spanning two
//! memory regions), checked against an in-memory model of the disk; plus
//! the paths that only show under load: a full backend queue, out-of-order
//! completions, several queues, interrupt suppression.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::Segment;
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use virtio_queue::QueueT;
use virtio_support::*;
use vm_memory::{Address, GuestAddress};

const DISK_SIZE: usize = 8 << 20;
const SECTORS: u64 = (DISK_SIZE / 512) as u64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a published request expects back.
enum Expect {
    /// A read: compare these guest bytes with the model.
    Read {
        data: GuestAddress,
        offset: usize,
        len: usize,
    },
    /// Status OK and this used length.
    Done { used_len: u32 },
    /// A GET_ID of this many bytes into `data`.
    Id { data: GuestAddress, len: usize },
}

struct Pending {
    head: u16,
    status: GuestAddress,
    expect: Expect,
}

/// Segments for `len` bytes at `addr` in `pieces`, optionally with the
/// leading `prefix` descriptor merged into the first piece.
fn data_segments(rng: &mut Rng, addr: GuestAddress, len: u32, device_writes: bool) -> Vec<Segment> {
    let pieces = 1 + rng.below(8) as u32;
    split(addr, len, pieces, device_writes)
}

fn random_run(seed: u64, options: MemDiskOptions, requests: usize) {
    let disk = MemDisk::new(DISK_SIZE, options);
    let mut model = vec![0u8; DISK_SIZE];
    let mut rig = Rig::with(Arc::new(disk.clone()), 1, 64, u64::MAX);
    let mut rng = Rng(seed);
    let mut done = 0usize;
    let mut batch_no = 0u64;
    while done < requests {
        batch_no += 1;
        // Some batches start just below region B so buffers span A and B.
        rig.reset_alloc();
        if rng.below(3) == 0 {
            rig.next_alloc = REGION_B.0 - 512 * (1 + rng.below(64));
        }
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let mut pending = Vec::new();
        let batch = 1 + rng.below(12) as usize;
        for _ in 0..batch {
            // A range that overlaps nothing else in this batch, so the
            // model does not depend on completion order.
            let count = 1 + rng.below(64);
            let sector = rng.below(SECTORS - count);
            if taken
                .iter()
                .any(|(s, c)| sector < s + c && *s < sector + count)
            {
                continue;
            }
            taken.push((sector, count));
            let (offset, len) = ((sector * 512) as usize, (count * 512) as usize);
            let kind = rng.below(10);
            let status = rig.status_byte();
            let indirect = rng.below(2) == 0;
            let (segments, expect) = match kind {
                0..=2 => {
                    let data = rig.alloc(len as u64);
                    let header = rig.header(REQ_IN, sector);
                    let mut segments = vec![readable(header, 16)];
                    segments.extend(data_segments(&mut rng, data, len as u32, true));
                    segments.push(writable(status, 1));
                    (segments, Expect::Read { data, offset, len })
                }
                3..=5 => {
                    let bytes = pattern(len, batch_no * 1000 + sector);
                    model[offset..offset + len].copy_from_slice(&bytes);
                    let mut segments;
                    if rng.below(3) == 0 {
                        // Header and data in one descriptor.
                        let mut body = Vec::with_capacity(16 + len);
                        body.extend_from_slice(&REQ_OUT.to_le_bytes());
                        body.extend_from_slice(&[0; 4]);
                        body.extend_from_slice(&sector.to_le_bytes());
                        body.extend_from_slice(&bytes);
                        let at = rig.buffer(&body);
                        segments = vec![readable(at, body.len() as u32)];
                    } else {
                        let header = rig.header(REQ_OUT, sector);
                        let data = rig.buffer(&bytes);
                        segments = vec![readable(header, 16)];
                        segments.extend(data_segments(&mut rng, data, len as u32, false));
                    }
                    segments.push(writable(status, 1));
                    (segments, Expect::Done { used_len: 1 })
                }
                6 => {
                    let header = rig.header(REQ_FLUSH, 0);
                    (
                        vec![readable(header, 16), writable(status, 1)],
                        Expect::Done { used_len: 1 },
                    )
                }
                7 | 8 => {
                    // Discard or write zeroes over up to 4 pieces of the range.
                    let discard = kind == 7;
                    let parts = (1 + rng.below(4)).min(count);
                    let mut segs = Vec::new();
                    let per = count / parts;
                    for p in 0..parts {
                        let start = sector + p * per;
                        let n = if p + 1 == parts { count - p * per } else { per };
                        let flags = if !discard && rng.below(2) == 0 {
                            SEGMENT_FLAG_UNMAP
                        } else {
                            0
                        };
                        segs.push((start, n as u32, flags));
                    }
                    model[offset..offset + len].fill(0);
                    let request_type = if discard {
                        REQ_DISCARD
                    } else {
                        REQ_WRITE_ZEROES
                    };
                    let header = rig.header(request_type, 0);
                    let body = rig.segments(&segs);
                    (
                        vec![
                            readable(header, 16),
                            readable(body, 16 * segs.len() as u32),
                            writable(status, 1),
                        ],
                        Expect::Done { used_len: 1 },
                    )
                }
                _ => {
                    let header = rig.header(REQ_GET_ID, 0);
                    let id_len = 1 + rng.below(24) as usize;
                    let data = rig.alloc(id_len as u64 + 1);
                    // The ID and the status in one writable descriptor.
                    (
                        vec![readable(header, 16), writable(data, id_len as u32 + 1)],
                        Expect::Id { data, len: id_len },
                    )
                }
            };
            let status = match &expect {
                Expect::Id { data, len } => data.unchecked_add(*len as u64),
                _ => status,
            };
            rig.mem_write_status(status);
            let head = if indirect && segments.len() > 1 {
                let table = rig.alloc(16 * segments.len() as u64);
                rig.drivers[0]
                    .add_indirect_chain(&*rig.mem, &segments, table)
                    .expect("indirect")
            } else {
                rig.drivers[0]
                    .add_chain(&*rig.mem, &segments)
                    .expect("direct")
            };
            pending.push(Pending {
                head,
                status,
                expect,
            });
        }
        rig.kick(0);
        let used = rig.used(0);
        assert_eq!(used.len(), pending.len(), "every chain returned");
        for p in &pending {
            let elem = used
                .iter()
                .find(|u| u.id == u32::from(p.head))
                .expect("returned");
            assert_eq!(rig.byte(p.status), STATUS_OK, "status of head {}", p.head);
            match &p.expect {
                Expect::Read { data, offset, len } => {
                    assert_eq!(elem.len as usize, len + 1);
                    assert!(
                        rig.read(*data, *len) == model[*offset..offset + len],
                        "read data"
                    );
                }
                Expect::Done { used_len } => assert_eq!(elem.len, *used_len),
                Expect::Id { data, len } => {
                    let n = (*len).min(20);
                    assert_eq!(elem.len as usize, n + 1);
                    let serial = b"virtio-test-serial-0123";
                    assert_eq!(rig.read(*data, n), serial[..n]);
                }
            }
        }
        done += pending.len();
    }
    assert!(disk.contents() == model, "disk matches the model");
}

impl RigExt for Rig {
    fn mem_write_status(&self, addr: GuestAddress) {
        use vm_memory::Bytes;
        self.mem.write_obj(0xffu8, addr).expect("status");
    }
}

trait RigExt {
    fn mem_write_status(&self, addr: GuestAddress);
}

#[test]
fn random_mixed_requests_match_a_model() {
    random_run(0x5eed_0001, MemDiskOptions::default(), 3000);
}

#[test]
fn random_requests_completing_out_of_order_match_a_model() {
    random_run(
        0x5eed_0002,
        MemDiskOptions {
            reverse_completions: true,
            ..Default::default()
        },
        2000,
    );
}

/// Long run, behind an environment variable: `VIRTIO_LONG=1`.
#[test]
fn long_random_run() {
    let Ok(count) = std::env::var("VIRTIO_LONG") else {
        return;
    };
    let count: usize = count.parse().unwrap_or(1).max(1) * 100_000;
    random_run(0x5eed_0003, MemDiskOptions::default(), count);
}

#[test]
fn a_full_backend_queue_stalls_popping_and_resumes() {
    for reverse in [false, true] {
        let disk = MemDisk::new(
            DISK_SIZE,
            MemDiskOptions {
                reverse_completions: reverse,
                ..Default::default()
            },
        );
        disk.fill(0, &pattern(DISK_SIZE, 1));
        // Queue size 16: the backend queue holds 16 requests; each chain
        // below asks for 32.
        let mut rig = Rig::with(Arc::new(disk.clone()), 1, 16, u64::MAX);
        let mut expected = disk.contents();
        let mut heads = Vec::new();
        for chain in 0..8u64 {
            let segs: Vec<(u64, u32, u32)> =
                (0..32u64).map(|i| (chain * 1024 + i * 16, 8, 0)).collect();
            for (sector, n, _) in &segs {
                let at = (*sector * 512) as usize;
                expected[at..at + *n as usize * 512].fill(0);
            }
            let header = rig.header(REQ_WRITE_ZEROES, 0);
            let body = rig.segments(&segs);
            let status = rig.status_byte();
            let segments = [
                readable(header, 16),
                readable(body, 512),
                writable(status, 1),
            ];
            let table = rig.alloc(48);
            let head = rig.drivers[0]
                .add_indirect_chain(&*rig.mem, &segments, table)
                .expect("chain");
            heads.push((head, status));
        }
        rig.kick(0);
        let used = rig.used(0);
        assert_eq!(used.len(), 8);
        for (_, status) in heads {
            assert_eq!(rig.byte(status), STATUS_OK);
        }
        assert!(disk.contents() == expected);
        assert_eq!(rig.handlers[0].in_flight(), 0);
    }
}

#[test]
fn framing_is_free_and_buffers_may_span_regions() {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let mut rig = Rig::new(Arc::new(disk.clone()));
    // Write: header and data in one descriptor, then an empty descriptor.
    let data = pattern(1024, 42);
    let mut body = Vec::new();
    body.extend_from_slice(&REQ_OUT.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&10u64.to_le_bytes());
    body.extend_from_slice(&data);
    let at = rig.buffer(&body);
    let empty = rig.alloc(0);
    let status = rig.status_byte();
    let used = rig.run_chain(&[readable(at, 1040), readable(empty, 0), writable(status, 1)]);
    assert_eq!((rig.byte(status), used.len), (STATUS_OK, 1));
    assert!(disk.contents()[5120..6144] == data[..]);
    // Read: data and status in one writable descriptor that spans regions
    // A and B.
    rig.next_alloc = REGION_B.0 - 700;
    let header = rig.header(REQ_IN, 10);
    let both = rig.alloc(1025);
    assert!(both.raw_value() < REGION_B.0 && both.raw_value() + 1025 > REGION_B.0);
    let used = rig.run_chain(&[readable(header, 16), writable(both, 1025)]);
    assert_eq!(used.len, 1025);
    assert_eq!(rig.read(both, 1024), data);
    assert_eq!(rig.byte(both.unchecked_add(1024)), STATUS_OK);
    // GET_ID into a short buffer: only that many bytes.
    let header = rig.header(REQ_GET_ID, 0);
    let id = rig.buffer(&[0xee; 9]);
    let used = rig.run_chain(&[readable(header, 16), writable(id, 9)]);
    assert_eq!(used.len, 9);
    assert_eq!(rig.read(id, 8), b"virtio-t");
}

#[test]
fn several_queues_each_serve_requests() {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let mut rig = Rig::with(Arc::new(disk.clone()), 3, 32, u64::MAX);
    assert_eq!(rig.handlers.len(), 3);
    let mut config = [0u8; 2];
    rig.device.read_config(34, &mut config);
    assert_eq!(u16::from_le_bytes(config), 3);
    let mut pending = Vec::new();
    for q in 0..3usize {
        for i in 0..5u64 {
            let sector = (q as u64 * 100 + i) * 8;
            let bytes = pattern(4096, sector);
            let header = rig.header(REQ_OUT, sector);
            let data = rig.buffer(&bytes);
            let status = rig.status_byte();
            let segments = [
                readable(header, 16),
                readable(data, 4096),
                writable(status, 1),
            ];
            rig.drivers[q]
                .add_chain(&*rig.mem, &segments)
                .expect("chain");
            pending.push((status, sector, bytes));
        }
    }
    for q in 0..3 {
        rig.kick(q);
        assert_eq!(rig.used(q).len(), 5);
    }
    let contents = disk.contents();
    for (status, sector, bytes) in pending {
        assert_eq!(rig.byte(status), STATUS_OK);
        let at = sector as usize * 512;
        assert!(contents[at..at + 4096] == bytes[..]);
    }
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let mut rig = Rig::new(Arc::new(disk));
    assert!(rig.handlers[0].queue().event_idx_enabled());
    let flush = |rig: &mut Rig| {
        let header = rig.header(REQ_FLUSH, 0);
        let status = rig.status_byte();
        rig.drivers[0]
            .add_chain(&*rig.mem, &[readable(header, 16), writable(status, 1)])
            .expect("chain");
    };
    // used_event starts at 0: the first completion interrupts.
    flush(&mut rig);
    rig.kick(0);
    assert!(rig.handlers[0].take_interrupt().expect("irq"));
    assert_eq!(rig.used(0).len(), 1);
    // Ask to hear only once the used index passes 3 (it is 1 now).
    rig.drivers[0]
        .set_used_event(&*rig.mem, 3)
        .expect("used_event");
    flush(&mut rig);
    rig.kick(0);
    assert!(
        !rig.handlers[0].take_interrupt().expect("irq"),
        "used 2: quiet"
    );
    flush(&mut rig);
    rig.kick(0);
    assert!(
        !rig.handlers[0].take_interrupt().expect("irq"),
        "used 3: quiet"
    );
    flush(&mut rig);
    rig.kick(0);
    assert!(
        rig.handlers[0].take_interrupt().expect("irq"),
        "used 4 passes 3"
    );
    // The device publishes where it wants the next kick (avail_event).
    assert_eq!(
        rig.drivers[0].avail_event(&*rig.mem).expect("avail_event"),
        rig.drivers[0].published()
    );
}

#[test]
fn without_event_idx_every_batch_interrupts_unless_the_driver_says_no() {
    use vm_memory::Bytes;
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let mut rig = Rig::with(Arc::new(disk), 1, 64, !F_RING_EVENT_IDX);
    assert!(!rig.handlers[0].queue().event_idx_enabled());
    for _ in 0..3 {
        assert_eq!(rig.simple(REQ_FLUSH, 0).0, STATUS_OK);
        assert!(rig.handlers[0].take_interrupt().expect("irq"));
    }
    // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags.
    let flags = rig.drivers[0].avail_ring();
    rig.mem.write_obj(1u16.to_le(), flags).expect("flags");
    assert_eq!(rig.simple(REQ_FLUSH, 0).0, STATUS_OK);
    assert!(!rig.handlers[0].take_interrupt().expect("irq"));
    rig.mem.write_obj(0u16, flags).expect("flags");
    assert_eq!(rig.simple(REQ_FLUSH, 0).0, STATUS_OK);
    assert!(rig.handlers[0].take_interrupt().expect("irq"));
}

#[test]
fn notifications_come_back_on_once_a_full_queue_drains() {
    use vm_memory::Bytes;
    for feature_mask in [u64::MAX, !F_RING_EVENT_IDX] {
        let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
        // Four slots, filled by four chains at once.
        let mut rig = Rig::with(Arc::new(disk), 1, 4, feature_mask);
        for round in 0..3 {
            let mut statuses = Vec::new();
            for _ in 0..4 {
                let header = rig.header(REQ_FLUSH, 0);
                let status = rig.status_byte();
                let table = rig.alloc(32);
                let segments = [readable(header, 16), writable(status, 1)];
                rig.drivers[0]
                    .add_indirect_chain(&*rig.mem, &segments, table)
                    .expect("chain");
                statuses.push(status);
            }
            rig.kick(0);
            assert_eq!(rig.used(0).len(), 4, "round {round}");
            for status in statuses {
                assert_eq!(rig.byte(status), STATUS_OK);
            }
            // The device is idle: the driver must be allowed to kick again
            // (no VRING_USED_F_NO_NOTIFY; with event idx, avail_event is
            // where the next chain will go).
            let used_flags: u16 = rig.mem.read_obj(rig.drivers[0].used_ring()).expect("flags");
            assert_eq!(used_flags & 1, 0, "NO_NOTIFY left set, round {round}");
            if feature_mask == u64::MAX {
                assert_eq!(
                    rig.drivers[0].avail_event(&*rig.mem).expect("avail_event"),
                    rig.drivers[0].published()
                );
            }
        }
    }
}
