//! Seed inputs of the `virtio_blk` fuzz target (layout in
//! `virtio_blk_body.rs`), built with the library's split-ring driver in a
//! guest memory laid out as the target's, so that the fuzzer starts from
//! deep coverage: well-formed IN, OUT, FLUSH, GET_ID, DISCARD and
//! WRITE_ZEROES chains, direct and indirect, over one or two queues, with
//! and without event idx, across rounds, resets, a read-only disk, a
//! failing range, a stalled backend; and a few hand-made nasty layouts.
//!
//! Used by blockdev/tests/virtio_fuzz_regressions.rs, which runs every
//! seed (checking the status bytes of the well-formed ones) and writes
//! them out for scripts/fuzz-seeds.sh.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{
    RawDescriptor, Segment, SplitQueueDriver, DESC_F_NEXT, DESC_F_WRITE,
};

use super::virtio_blk_body::{
    encode, guest_memory, memory_image, Params, Round, FEAT_DISCARD, FEAT_EVENT_IDX, FEAT_FLUSH,
    FEAT_INDIRECT, FEAT_MQ, FEAT_RO, FEAT_WRITE_ZEROES, OPT_REVERSE, REGION_B, REGION_SIZE,
    R_KEEP_AVAIL_IDX, R_NO_KICK, R_PATCH, R_POLL, R_QUEUE_1, R_REAP, R_RESET,
};

/// One seed input.
pub struct Seed {
    /// File name (`ok-*`: well-formed; `nasty-*`: anything goes).
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
    /// For well-formed seeds: status byte addresses and the status each
    /// must hold after the rounds.
    pub statuses: Option<Vec<(u64, u8)>>,
}

/// Every feature but RO and MQ.
const ALL: u8 = FEAT_EVENT_IDX | FEAT_INDIRECT | FEAT_FLUSH | FEAT_DISCARD | FEAT_WRITE_ZEROES;
/// Where queue 1's rings start (room for 256 entries of queue 0's).
const QUEUE1_SHIFT: u32 = 0x2000;
/// Where request structures start.
const ALLOC_START: u64 = 0x4000;

/// Builds one seed.
struct Builder {
    mem: GuestMemoryMmap,
    params: Params,
    rounds: Vec<Round>,
    drivers: Vec<SplitQueueDriver>,
    next: u64,
    statuses: Vec<(u64, u8)>,
    indirect: bool,
}

impl Builder {
    fn new(features: u8, options: u8, queue_size: u16) -> Self {
        let mem = guest_memory();
        let mut drivers =
            vec![SplitQueueDriver::new(&mem, GuestAddress(0), queue_size)
                .expect("rings in region A")];
        if features & FEAT_MQ != 0 {
            let base = GuestAddress(u64::from(QUEUE1_SHIFT));
            drivers.push(SplitQueueDriver::new(&mem, base, queue_size).expect("rings"));
        }
        let params = Params {
            features,
            options,
            queue_size,
            desc: drivers[0].desc_table().raw_value() as u32,
            avail: drivers[0].avail_ring().raw_value() as u32,
            used: drivers[0].used_ring().raw_value() as u32,
            queue1_shift: QUEUE1_SHIFT,
        };
        Builder {
            mem,
            params,
            rounds: Vec::new(),
            drivers,
            next: ALLOC_START,
            statuses: Vec::new(),
            indirect: features & FEAT_INDIRECT != 0,
        }
    }

    /// `len` bytes of guest memory, 16-byte aligned.
    fn alloc(&mut self, len: usize) -> GuestAddress {
        let addr = self.next.next_multiple_of(16);
        self.next = addr + len as u64;
        let region_end = if addr < REGION_B {
            REGION_SIZE
        } else {
            REGION_B + REGION_SIZE
        };
        assert!(self.next <= region_end, "seed allocator exhausted");
        GuestAddress(addr)
    }

    /// Put the rest in region B.
    fn move_to_region_b(&mut self) {
        self.next = REGION_B + 0x100;
    }

    /// A chain on `queue`: a header (request type, sector), `out` in
    /// `pieces` readable descriptors, `in_len` bytes in `pieces` writable
    /// ones, a status byte that must end up as `expect`.
    fn request(
        &mut self,
        queue: usize,
        (request_type, sector): (u32, u64),
        out: &[u8],
        in_len: usize,
        pieces: usize,
        expect: u8,
    ) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        let header_at = self.alloc(16);
        self.mem.write_slice(&header, header_at).expect("header");
        let mut segments = vec![Segment {
            addr: header_at,
            len: 16,
            device_writes: false,
        }];
        let mut pieces_of = |builder: &mut Builder, len: usize, device_writes: bool| {
            let at = builder.alloc(len);
            let count = pieces.clamp(1, len.max(1));
            let mut done = 0;
            for i in 0..count {
                let piece = if i + 1 == count {
                    len - done
                } else {
                    len / count
                };
                segments.push(Segment {
                    addr: at.unchecked_add(done as u64),
                    len: piece as u32,
                    device_writes,
                });
                done += piece;
            }
            at
        };
        if !out.is_empty() {
            let at = pieces_of(self, out.len(), false);
            self.mem.write_slice(out, at).expect("data");
        }
        if in_len > 0 {
            pieces_of(self, in_len, true);
        }
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, status).expect("status");
        segments.push(Segment {
            addr: status,
            len: 1,
            device_writes: true,
        });
        if self.indirect {
            let table = self.alloc(16 * segments.len());
            self.drivers[queue]
                .add_indirect_chain(&self.mem, &segments, table)
                .expect("indirect chain");
        } else {
            self.drivers[queue]
                .add_chain(&self.mem, &segments)
                .expect("direct chain");
        }
        self.statuses.push((status.raw_value(), expect));
    }

    /// The six request types on `queue`, all expected to succeed (or as
    /// a read-only disk answers).
    fn every_type(&mut self, queue: usize, sector: u64, seed: u8) {
        let read_only = self.params.features & FEAT_RO != 0;
        let write_status = if read_only { STATUS_IOERR } else { STATUS_OK };
        let data: Vec<u8> = (0..1024).map(|i| (i as u8) ^ seed).collect();
        self.request(queue, (REQ_OUT, sector), &data, 0, 2, write_status);
        self.request(queue, (REQ_IN, sector), &[], 1536, 3, STATUS_OK);
        self.request(queue, (REQ_FLUSH, 0), &[], 0, 1, STATUS_OK);
        self.request(queue, (REQ_GET_ID, 0), &[], 20, 1, STATUS_OK);
        let discard = segments(&[(sector + 8, 4, 0), (sector + 20, 2, 0)]);
        self.request(queue, (REQ_DISCARD, 0), &discard, 0, 1, write_status);
        let zeroes = segments(&[(sector + 1, 3, SEGMENT_FLAG_UNMAP)]);
        self.request(queue, (REQ_WRITE_ZEROES, 0), &zeroes, 0, 1, write_status);
    }

    /// A round on `queue` that exposes everything published so far.
    fn round(&mut self, queue: usize, flags: u8) {
        let flags = flags | if queue == 1 { R_QUEUE_1 } else { 0 };
        self.rounds.push(Round {
            avail_idx: self.drivers[queue].published(),
            flags,
            ..Round::default()
        });
    }

    fn finish(self, name: &str, well_formed: bool) -> Seed {
        let mut image = memory_image(&self.mem);
        let used = image
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |last| last + 1);
        image.truncate(used);
        Seed {
            name: name.to_string(),
            data: encode(&self.params, &self.rounds, &image),
            statuses: well_formed.then_some(self.statuses),
        }
    }
}

/// Discard/write-zeroes segments (sector, sectors, flags) as bytes.
fn segments(list: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (sector, count, flags) in list {
        bytes.extend_from_slice(&sector.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
    }
    bytes
}

/// Every seed.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for (name, features) in [
        ("ok-direct", ALL & !FEAT_INDIRECT),
        ("ok-indirect", ALL),
        (
            "ok-direct-no-event-idx",
            ALL & !FEAT_INDIRECT & !FEAT_EVENT_IDX,
        ),
        ("ok-indirect-no-event-idx", ALL & !FEAT_EVENT_IDX),
    ] {
        let mut b = Builder::new(features, 0, 32);
        b.every_type(0, 4, 1);
        b.round(0, R_REAP);
        out.push(b.finish(name, true));
    }

    // Completions handled a round late, in reverse, over a full ring.
    let mut b = Builder::new(ALL & !FEAT_INDIRECT, OPT_REVERSE, 256);
    for i in 0..6 {
        b.every_type(0, 8 * i, i as u8);
        b.round(0, if i % 2 == 1 { R_REAP } else { 0 });
    }
    out.push(b.finish("ok-reverse-late-reaps-256", true));

    // Two queues, each with its own rings.
    let mut b = Builder::new(ALL | FEAT_MQ, 0, 32);
    b.every_type(0, 0, 2);
    b.round(0, R_REAP);
    b.every_type(1, 64, 3);
    b.round(1, R_REAP);
    out.push(b.finish("ok-mq", true));

    // The VMM's polling loop: kicks left off, chains taken before sleeping,
    // with and without event idx.
    for (name, features) in [
        ("ok-polling", ALL),
        ("ok-polling-no-event-idx", ALL & !FEAT_EVENT_IDX),
    ] {
        let mut b = Builder::new(features, 0, 32);
        b.every_type(0, 20, 5);
        // No kick: preparing to sleep finds these chains (the idle rounds
        // that pad every input kick afterwards).
        b.round(0, R_POLL | R_NO_KICK | R_REAP);
        out.push(b.finish(name, true));
        let mut b = Builder::new(features, 0, 32);
        b.every_type(0, 20, 5);
        b.round(0, R_POLL);
        b.every_type(0, 40, 6);
        b.round(0, R_POLL | R_REAP);
        out.push(b.finish(&format!("{name}-kicked"), true));
    }

    // A reset between rounds: the device starts the ring over.
    let mut b = Builder::new(ALL, 0, 16);
    b.every_type(0, 10, 4);
    b.round(0, R_RESET);
    b.round(0, R_REAP);
    out.push(b.finish("ok-reset-between-rounds", true));

    let mut b = Builder::new(ALL | FEAT_RO, 0, 16);
    b.every_type(0, 30, 5);
    b.round(0, R_REAP);
    out.push(b.finish("ok-read-only", true));

    // Backend failures on sectors 0-7.
    let mut b = Builder::new(ALL & !FEAT_INDIRECT, 1, 16);
    b.request(0, (REQ_IN, 6), &[], 1024, 2, STATUS_IOERR);
    b.request(0, (REQ_IN, 8), &[], 1024, 2, STATUS_OK);
    b.request(0, (REQ_OUT, 0), &[7; 512], 0, 1, STATUS_IOERR);
    b.request(
        0,
        (REQ_WRITE_ZEROES, 0),
        &segments(&[(2, 1, 0)]),
        0,
        1,
        STATUS_IOERR,
    );
    b.round(0, R_REAP);
    out.push(b.finish("ok-failing-range", true));

    // Queues of one and two entries: 32-segment discards and write-zeroes
    // wait for backend room request by request.
    let mut b = Builder::new(ALL, 0, 1);
    let many: Vec<(u64, u32, u32)> = (0..32).map(|i| (2 * i, 1, 0)).collect();
    b.request(0, (REQ_DISCARD, 0), &segments(&many), 0, 1, STATUS_OK);
    b.round(0, R_REAP);
    out.push(b.finish("ok-stall-size-1", true));
    let mut b = Builder::new(ALL, 0, 2);
    b.request(0, (REQ_DISCARD, 0), &segments(&many), 0, 1, STATUS_OK);
    let many: Vec<(u64, u32, u32)> = (0..32).map(|i| (64 + i, 1, SEGMENT_FLAG_UNMAP)).collect();
    b.request(0, (REQ_WRITE_ZEROES, 0), &segments(&many), 0, 1, STATUS_OK);
    b.round(0, R_REAP);
    out.push(b.finish("ok-stall-size-2", true));

    // Buffers in region B.
    let mut b = Builder::new(ALL & !FEAT_EVENT_IDX, 0, 8);
    b.move_to_region_b();
    b.every_type(0, 40, 6);
    b.round(0, R_REAP);
    out.push(b.finish("ok-region-b", true));

    out.extend(nasty());
    out
}

/// Hand-made nasty layouts: anything but a panic or a hang may happen.
fn nasty() -> Vec<Seed> {
    let mut out = Vec::new();
    let base = |features: u8| {
        let mut b = Builder::new(features, 0, 32);
        b.every_type(0, 4, 9);
        b
    };

    let mut b = base(ALL);
    b.rounds.push(Round {
        avail_idx: 1000,
        flags: R_REAP,
        ..Round::default()
    });
    b.round(0, R_REAP);
    out.push(b.finish("nasty-avail-idx-far-ahead", false));

    let mut b = base(ALL);
    b.params.desc = (REGION_SIZE + 0x100) as u32;
    b.round(0, R_REAP);
    out.push(b.finish("nasty-table-in-hole", false));

    let mut b = base(ALL);
    (b.params.desc, b.params.avail, b.params.used) = (8, 1, 2);
    b.round(0, R_REAP);
    out.push(b.finish("nasty-unaligned-rings", false));

    let mut b = base(ALL);
    b.params.used = b.params.desc;
    b.round(0, R_REAP);
    out.push(b.finish("nasty-used-ring-on-descriptors", false));

    // The used index lands on the available index: the device's own
    // completions move the ring it is reading.
    let mut b = base(ALL);
    b.params.used = b.params.avail;
    b.round(0, R_REAP);
    out.push(b.finish("nasty-used-ring-on-avail-ring", false));

    let mut b = base(ALL);
    (b.params.desc, b.params.avail, b.params.used) = (0x8000_0100, 0x8000_0080, 0x8000_0040);
    b.round(0, R_REAP);
    out.push(b.finish("nasty-rings-at-the-top", false));

    let mut b = base(ALL & !FEAT_INDIRECT);
    b.params.queue_size = 100;
    b.round(0, R_REAP);
    out.push(b.finish("nasty-queue-size-100", false));

    // Both queues on the same rings, kicked in turn.
    let mut b = Builder::new(ALL | FEAT_MQ, 0, 16);
    b.params.queue1_shift = 0;
    b.every_type(0, 4, 10);
    b.round(0, 0);
    b.round(1, R_REAP);
    b.round(0, R_REAP);
    out.push(b.finish("nasty-mq-shared-rings", false));

    // A read into the available ring, and one into the descriptor table.
    let mut b = Builder::new(ALL & !FEAT_INDIRECT, 0, 16);
    let avail = u64::from(b.params.avail);
    let desc = u64::from(b.params.desc);
    for target in [avail, desc] {
        let header = b.alloc(16);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&REQ_IN.to_le_bytes());
        b.mem.write_slice(&bytes, header).expect("header");
        let status = b.alloc(1);
        b.drivers[0]
            .add_chain(
                &b.mem,
                &[
                    Segment {
                        addr: header,
                        len: 16,
                        device_writes: false,
                    },
                    Segment {
                        addr: GuestAddress(target),
                        len: 512,
                        device_writes: true,
                    },
                    Segment {
                        addr: status,
                        len: 1,
                        device_writes: true,
                    },
                ],
            )
            .expect("chain");
    }
    b.round(0, R_REAP);
    b.round(0, R_KEEP_AVAIL_IDX | R_REAP);
    out.push(b.finish("nasty-reads-into-the-rings", false));

    // A descriptor that links to itself.
    let mut b = Builder::new(ALL, 0, 16);
    let table = &b.drivers[0];
    table
        .write_descriptor(
            &b.mem,
            0,
            RawDescriptor {
                addr: ALLOC_START,
                len: 16,
                flags: DESC_F_NEXT | DESC_F_WRITE,
                next: 0,
            },
        )
        .expect("descriptor");
    b.drivers[0].publish_raw(&b.mem, 0).expect("publish");
    b.round(0, R_REAP);
    out.push(b.finish("nasty-descriptor-loop", false));

    // The status descriptor moved into the hole while its chain is in
    // flight (completions not yet handled), then a reset.
    let mut b = Builder::new(ALL & !FEAT_INDIRECT, 0, 16);
    b.request(0, (REQ_IN, 2), &[], 512, 1, STATUS_OK);
    b.round(0, 0);
    // The driver gave the chain descriptors 2, 1, 0: the status is 0.
    let status_desc_addr = u64::from(b.params.desc) + 6;
    b.rounds.push(Round {
        flags: R_KEEP_AVAIL_IDX | R_PATCH | R_REAP | R_RESET,
        patch_value: 0x01,
        patch_addr: status_desc_addr as u32,
        ..Round::default()
    });
    b.round(0, R_REAP);
    out.push(b.finish("nasty-patch-in-flight", false));
    out
}
