//! Shared support of the virtio-net tests: a fresh network namespace per
//! test (so no tap appears on the host), taps in it, a raw packet socket
//! on the tap's kernel side, and a device set up through our own
//! split-ring driver ([`NetRig`]).

#![allow(dead_code)]

pub mod drivers_net;
pub mod packet;

use std::process::Command;
use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{Segment, SplitQueueDriver, UsedElem};
use blockdev::virtio::net::defs::{NET_HDR_SIZE, OFFERED_FEATURES};
use blockdev::virtio::net::{NetHandlers, NetOptions, Tap, VirtioNet};
use blockdev::virtio::QueueEvents;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory of the low-level tests.
pub type Mem = Arc<GuestMemoryMmap>;

/// The ethertype of test frames (IEEE local experimental), so that
/// whatever else the kernel sends on the tap is told apart.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// The guest's MAC in every test.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// Guest memory: one region of 8 MiB.
const MEM_SIZE: usize = 8 << 20;
/// Where the bump allocator starts (after the rings).
const ALLOC_START: u64 = 0x4_0000;

/// Run `body` on a thread of its own in a fresh network namespace (only
/// that thread and the processes it starts are in it), and return what it
/// returns; panics in `body` fail the test.
pub fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the
        // calling thread into a new network namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET) (the net tests need root): {}",
            std::io::Error::last_os_error()
        );
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Run `ip ARGS` (iproute2) in the calling thread's namespace.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Open `queues` queues of tap `name` and bring it up, with no IPv6
/// address (so the kernel sends no router solicitations into it).
pub fn open_tap(name: &str, queues: u16) -> Vec<Tap> {
    let taps = Tap::open(name, queues).expect("open tap");
    ip(&["link", "set", name, "addrgenmode", "none"]);
    ip(&["link", "set", name, "up"]);
    taps
}

/// A fresh nonblocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// An Ethernet frame of the test ethertype from `src` to `dst` carrying
/// `payload`.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Whether `frame` is a test frame.
pub fn is_test_frame(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == TEST_ETHERTYPE.to_be_bytes()
}

/// Bytes of a pattern that differs per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A device over a tap with its queues driven by our split-ring driver:
/// drivers[2N] is pair N's rx, drivers[2N+1] its tx, the last the
/// control queue.
pub struct NetRig {
    pub mem: Mem,
    pub device: VirtioNet,
    pub handlers: NetHandlers<Mem>,
    pub drivers: Vec<SplitQueueDriver>,
    pub next_alloc: u64,
    /// Second handles on the tap queues (to read what the device sent and
    /// write frames for it as the kernel would not).
    pub taps: Vec<Tap>,
}

impl NetRig {
    /// A device over tap `name` with `queues` pairs and `features` (of
    /// those offered) acknowledged.
    pub fn new(name: &str, queues: u16, features: u64) -> NetRig {
        let taps = open_tap(name, queues);
        let peers = taps.iter().map(|t| t.try_clone().expect("dup")).collect();
        let mut device = VirtioNet::new(
            taps,
            NetOptions {
                mac: GUEST_MAC,
                queue_size: 64,
            },
        )
        .expect("device");
        let mem: Mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
        );
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = features & device.device_features();
        device.set_driver_features_page(0, features as u32);
        device.set_driver_features_page(1, (features >> 32) as u32);
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(device.status() & STATUS_FEATURES_OK, 0, "features refused");
        let mut drivers = Vec::new();
        let mut base = 0u64;
        for index in 0..device.num_queues() {
            let driver = SplitQueueDriver::new(&*mem, GuestAddress(base), 64).expect("rings");
            base += SplitQueueDriver::footprint(64).next_multiple_of(4096);
            driver.configure(device.queue_mut(index).expect("queue"));
            drivers.push(driver);
        }
        assert!(base <= ALLOC_START);
        device
            .set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let events = (0..device.num_queues())
            .map(|_| QueueEvents { notify: eventfd() })
            .collect();
        let handlers = device.activate(mem.clone(), events).expect("activate");
        NetRig {
            mem,
            device,
            handlers,
            drivers,
            next_alloc: ALLOC_START,
            taps: peers,
        }
    }

    /// Every offered feature (MRG_RXBUF, offloads, event idx...).
    pub fn all_features() -> u64 {
        OFFERED_FEATURES | blockdev::virtio::net::defs::F_NET_MQ
    }

    /// `len` bytes of guest memory, 16-byte aligned.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = self.next_alloc.next_multiple_of(16);
        self.next_alloc = addr + len;
        assert!(self.next_alloc <= MEM_SIZE as u64, "allocator exhausted");
        GuestAddress(addr)
    }

    /// A guest buffer holding `data`.
    pub fn buffer(&mut self, data: &[u8]) -> GuestAddress {
        let addr = self.alloc(data.len() as u64);
        self.mem.write_slice(data, addr).expect("buffer");
        addr
    }

    /// Read `len` guest bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mem.read_slice(&mut bytes, addr).expect("read");
        bytes
    }

    /// Publish a chain on driver queue `queue`.
    pub fn add(&mut self, queue: usize, segments: &[Segment]) -> u16 {
        self.drivers[queue]
            .add_chain(&*self.mem, segments)
            .expect("chain")
    }

    /// Everything queue `queue` returned since the last call.
    pub fn used(&mut self, queue: usize) -> Vec<UsedElem> {
        let mut out = Vec::new();
        while let Some(used) = self.drivers[queue].pop_used(&*self.mem).expect("used") {
            out.push(used);
        }
        out
    }

    /// Send `header` + `frame` on pair 0's tx queue as one chain split at
    /// the given byte offsets; returns the used element.
    pub fn send(&mut self, header: &[u8; NET_HDR_SIZE], frame: &[u8], cuts: &[usize]) -> UsedElem {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        let segments = split_readable(self, &bytes, cuts);
        let head = self.add(1, &segments);
        self.handlers.tx[0].handle_queue_notify().expect("tx");
        let used = self.used(1);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].id, u32::from(head));
        used[0]
    }

    /// Post one rx chain of writable buffers of `sizes` on pair 0; returns
    /// the head and the buffers' addresses.
    pub fn post_rx(&mut self, sizes: &[u32]) -> (u16, Vec<(GuestAddress, u32)>) {
        let bufs: Vec<_> = sizes
            .iter()
            .map(|len| (self.alloc(u64::from(*len)), *len))
            .collect();
        let segments: Vec<_> = bufs
            .iter()
            .map(|(addr, len)| Segment {
                addr: *addr,
                len: *len,
                device_writes: true,
            })
            .collect();
        let head = self.add(0, &segments);
        (head, bufs)
    }
}

/// `bytes` in guest memory as readable segments cut at `cuts`.
pub fn split_readable(rig: &mut NetRig, bytes: &[u8], cuts: &[usize]) -> Vec<Segment> {
    let mut points: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|c| *c > 0 && *c < bytes.len())
        .collect();
    points.sort_unstable();
    points.dedup();
    points.push(bytes.len());
    let mut from = 0;
    let mut segments = Vec::new();
    for to in points {
        let addr = rig.buffer(&bytes[from..to]);
        segments.push(Segment {
            addr,
            len: (to - from) as u32,
            device_writes: false,
        });
        from = to;
    }
    segments
}
