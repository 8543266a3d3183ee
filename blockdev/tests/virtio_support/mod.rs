//! Shared support of the virtio-blk harness tests: guest memory with
//! several regions and a hole, a device set up through our split-ring
//! driver ([`Rig`]), request builders, and whole-memory snapshots to prove
//! the device touched nothing outside a request.

#![allow(dead_code)]

pub mod drivers_hal;

use std::sync::Arc;

use blockdev::disk::BlockBackend;
use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{Segment, SplitQueueDriver, UsedElem};
use blockdev::virtio::{DeviceOptions, QueueEvents, QueueHandler, VirtioBlock};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory used by the low-level tests.
pub type Mem = Arc<GuestMemoryMmap>;

/// Region A: rings and small buffers.
pub const REGION_A: (u64, usize) = (0, 1 << 20);
/// Region B, adjacent to A (a buffer may span both).
pub const REGION_B: (u64, usize) = (1 << 20, 3 << 20);
/// Start of a hole with no memory.
pub const HOLE_START: u64 = 4 << 20;
/// Region C, after the hole.
pub const REGION_C: (u64, usize) = (5 << 20, 1 << 20);
/// Where the bump allocator starts (after the rings).
pub const ALLOC_START: u64 = 0x1_0000;
/// Byte every free guest byte holds at the start.
pub const GUARD: u8 = 0xa5;

/// Guest memory of three regions with a hole, filled with [`GUARD`].
pub fn guest_memory() -> Mem {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(REGION_A.0), REGION_A.1),
        (GuestAddress(REGION_B.0), REGION_B.1),
        (GuestAddress(REGION_C.0), REGION_C.1),
    ])
    .expect("guest memory");
    for (start, len) in [REGION_A, REGION_B, REGION_C] {
        mem.write_slice(&vec![GUARD; len], GuestAddress(start))
            .expect("fill");
    }
    Arc::new(mem)
}

/// Every byte of guest memory, region by region.
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    [REGION_A, REGION_B, REGION_C]
        .iter()
        .map(|(start, len)| {
            let mut bytes = vec![0u8; *len];
            mem.read_slice(&mut bytes, GuestAddress(*start))
                .expect("read");
            bytes
        })
        .collect()
}

/// Guest addresses whose bytes differ between two snapshots.
pub fn changed(before: &[Vec<u8>], after: &[Vec<u8>]) -> Vec<u64> {
    let mut out = Vec::new();
    for (region, (start, _)) in [REGION_A, REGION_B, REGION_C].iter().enumerate() {
        for (i, (a, b)) in before[region].iter().zip(&after[region]).enumerate() {
            if a != b {
                out.push(start + i as u64);
            }
        }
    }
    out
}

/// A fresh nonblocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// A device with queues set up and activated by our driver.
pub struct Rig {
    pub mem: Mem,
    pub device: VirtioBlock,
    pub handlers: Vec<QueueHandler<Mem>>,
    pub drivers: Vec<SplitQueueDriver>,
    pub next_alloc: u64,
}

impl Rig {
    /// One queue of `queue_size`, features: all offered (EVENT_IDX
    /// included).
    pub fn new(backend: Arc<dyn BlockBackend>) -> Rig {
        Rig::with(backend, 1, 64, u64::MAX)
    }

    /// `num_queues` queues of `queue_size`, acknowledging the offered
    /// features within `feature_mask`.
    pub fn with(
        backend: Arc<dyn BlockBackend>,
        num_queues: u16,
        queue_size: u16,
        feature_mask: u64,
    ) -> Rig {
        let mem = guest_memory();
        let mut device = VirtioBlock::new(
            backend,
            DeviceOptions {
                num_queues,
                queue_size,
                serial: b"virtio-test-serial-0123".to_vec(),
            },
        )
        .expect("device");
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = device.device_features() & feature_mask;
        device.set_driver_features_page(0, features as u32);
        device.set_driver_features_page(1, (features >> 32) as u32);
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(device.status() & STATUS_FEATURES_OK, 0, "features refused");
        let mut drivers = Vec::new();
        let mut base = 0u64;
        for index in 0..num_queues {
            let driver =
                SplitQueueDriver::new(&*mem, GuestAddress(base), queue_size).expect("rings");
            base += SplitQueueDriver::footprint(queue_size).next_multiple_of(4096);
            driver.configure(device.queue_mut(index).expect("queue"));
            drivers.push(driver);
        }
        assert!(base <= ALLOC_START);
        device
            .set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let events = (0..num_queues)
            .map(|_| QueueEvents { notify: eventfd() })
            .collect();
        let handlers = device.activate(mem.clone(), events).expect("activate");
        Rig {
            mem,
            device,
            handlers,
            drivers,
            next_alloc: ALLOC_START,
        }
    }

    /// `len` bytes of guest memory (16-byte aligned), never reused until
    /// [`Rig::reset_alloc`].
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = self.next_alloc.next_multiple_of(16);
        self.next_alloc = addr + len;
        assert!(self.next_alloc <= HOLE_START, "test allocator exhausted");
        GuestAddress(addr)
    }

    /// Start allocating from the beginning again.
    pub fn reset_alloc(&mut self) {
        self.next_alloc = ALLOC_START;
    }

    /// A request header in guest memory.
    pub fn header(&mut self, request_type: u32, sector: u64) -> GuestAddress {
        let addr = self.alloc(16);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&bytes, addr).expect("header");
        addr
    }

    /// A status byte preset to 0xff.
    pub fn status_byte(&mut self) -> GuestAddress {
        let addr = self.alloc(1);
        self.mem.write_obj(0xffu8, addr).expect("status");
        addr
    }

    /// A buffer holding `data`.
    pub fn buffer(&mut self, data: &[u8]) -> GuestAddress {
        let addr = self.alloc(data.len() as u64);
        self.mem.write_slice(data, addr).expect("buffer");
        addr
    }

    /// Discard/write-zeroes segments in guest memory.
    pub fn segments(&mut self, segments: &[(u64, u32, u32)]) -> GuestAddress {
        let mut bytes = Vec::new();
        for (sector, num_sectors, flags) in segments {
            bytes.extend_from_slice(&sector.to_le_bytes());
            bytes.extend_from_slice(&num_sectors.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        self.buffer(&bytes)
    }

    /// Read `len` guest bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mem.read_slice(&mut bytes, addr).expect("read");
        bytes
    }

    /// The byte at `addr`.
    pub fn byte(&self, addr: GuestAddress) -> u8 {
        self.mem.read_obj(addr).expect("byte")
    }

    /// Kick queue `index` and wait until the device is idle.
    pub fn kick(&mut self, index: usize) {
        self.handlers[index].handle_queue_notify().expect("notify");
        self.handlers[index].run_until_idle().expect("run");
    }

    /// Everything queue `index` returned since the last call.
    pub fn used(&mut self, index: usize) -> Vec<UsedElem> {
        let mut out = Vec::new();
        while let Some(used) = self.drivers[index].pop_used(&*self.mem).expect("used") {
            out.push(used);
        }
        out
    }

    /// Publish a direct chain on queue 0, run the device, and return what
    /// came back for it.
    pub fn run_chain(&mut self, segments: &[Segment]) -> UsedElem {
        let head = self.drivers[0]
            .add_chain(&*self.mem, segments)
            .expect("chain");
        self.kick(0);
        let used = self.used(0);
        assert_eq!(used.len(), 1, "one chain in, one out");
        assert_eq!(used[0].id, u32::from(head));
        used[0]
    }

    /// A read of `len` bytes at `sector` through a direct chain with the
    /// data split into `pieces` descriptors; returns (status, used len, data).
    pub fn read_sectors(&mut self, sector: u64, len: u32, pieces: u32) -> (u8, u32, Vec<u8>) {
        let header = self.header(REQ_IN, sector);
        let data = self.alloc(u64::from(len));
        let status = self.status_byte();
        let mut segments = vec![readable(header, 16)];
        segments.extend(split(data, len, pieces, true));
        segments.push(writable(status, 1));
        let used = self.run_chain(&segments);
        (self.byte(status), used.len, self.read(data, len as usize))
    }

    /// A write of `data` at `sector` split into `pieces`; returns (status, used len).
    pub fn write_sectors(&mut self, sector: u64, data: &[u8], pieces: u32) -> (u8, u32) {
        let header = self.header(REQ_OUT, sector);
        let buf = self.buffer(data);
        let status = self.status_byte();
        let mut segments = vec![readable(header, 16)];
        segments.extend(split(buf, data.len() as u32, pieces, false));
        segments.push(writable(status, 1));
        let used = self.run_chain(&segments);
        (self.byte(status), used.len)
    }

    /// A request with only a header and a status; returns (status, used len).
    pub fn simple(&mut self, request_type: u32, sector: u64) -> (u8, u32) {
        let header = self.header(request_type, sector);
        let status = self.status_byte();
        let used = self.run_chain(&[readable(header, 16), writable(status, 1)]);
        (self.byte(status), used.len)
    }

    /// Discard or write-zeroes with `segments` (sector, count, flags).
    pub fn ranges(&mut self, request_type: u32, segments: &[(u64, u32, u32)]) -> (u8, u32) {
        let header = self.header(request_type, 0);
        let body = self.segments(segments);
        let status = self.status_byte();
        let used = self.run_chain(&[
            readable(header, 16),
            readable(body, 16 * segments.len() as u32),
            writable(status, 1),
        ]);
        (self.byte(status), used.len)
    }
}

/// A device-readable segment.
pub fn readable(addr: GuestAddress, len: u32) -> Segment {
    Segment {
        addr,
        len,
        device_writes: false,
    }
}

/// A device-writable segment.
pub fn writable(addr: GuestAddress, len: u32) -> Segment {
    Segment {
        addr,
        len,
        device_writes: true,
    }
}

/// `len` bytes at `addr` cut into `pieces` segments of uneven sizes.
pub fn split(addr: GuestAddress, len: u32, pieces: u32, device_writes: bool) -> Vec<Segment> {
    let pieces = pieces.clamp(1, len.max(1));
    let mut out = Vec::new();
    let mut at = 0u32;
    for i in 0..pieces {
        let remaining = len - at;
        let left = pieces - i;
        let piece = if left == 1 {
            remaining
        } else {
            (remaining / left).max(1) + (i % 3)
        };
        let piece = piece.min(remaining - (left - 1));
        out.push(Segment {
            addr: addr.unchecked_add(u64::from(at)),
            len: piece,
            device_writes,
        });
        at += piece;
    }
    out
}

/// A deterministic byte pattern for sector `sector` of a write with `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether guest memory is mapped at `addr` (for sanity checks).
pub fn mapped(mem: &GuestMemoryMmap, addr: u64) -> bool {
    mem.check_range(GuestAddress(addr), 1, vm_memory::Permissions::Read)
}
