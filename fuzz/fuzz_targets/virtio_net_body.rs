//! The body of the `virtio_net` fuzz target, shared with the stable test
//! that replays inputs (blockdev/tests/virtio_net_fuzz_regressions.rs), so
//! both run exactly the same steps.
//!
//! The virtio-net device model, over a real tap in a network namespace of
//! the calling thread's own (made once per thread; needs root), is fed an
//! arbitrary guest memory and queue layout. Guest memory is two 64 KiB
//! regions with a 64 KiB hole between them (`0..64K` and `128K..192K`). An
//! input is a header, [`ROUNDS`] round records and the memory image (short
//! inputs are padded with zeros):
//!
//! - header byte 0, the features the driver acknowledges besides
//!   VERSION_1: [`FEAT_EVENT_IDX`], [`FEAT_INDIRECT`], [`FEAT_MRG_RXBUF`],
//!   [`FEAT_CSUM`] (with the host offloads), [`FEAT_GUEST_CSUM`] (with the
//!   guest offloads), [`FEAT_CTRL_VQ`], [`FEAT_MQ`] (two queue pairs over a
//!   multiqueue tap), [`FEAT_NO_VERSION_1`] (leave VERSION_1 out:
//!   FEATURES_OK is refused);
//! - header bytes 1-2: the queue size the driver writes;
//! - header bytes 3-14: pair 0's receive queue's descriptor table,
//!   available ring and used ring addresses (u32 each, anywhere);
//! - header bytes 15-18: the displacement of every next queue's rings
//!   (transmit, then the others), added once per queue;
//! - each round ([`ROUND_LEN`] bytes): the available index stored before
//!   the kick (u16), flags ([`R_KEEP_AVAIL_IDX`], [`R_RX`], [`R_CTRL`],
//!   [`R_PAIR_1`], [`R_INJECT`], [`R_RESET`]), an injected frame's length
//!   (u16; sent into the tap before the round), a patch byte and its
//!   address (u16 into region A) stored before the kick;
//! - the rest: region A's bytes, then region B's.
//!
//! Nothing may panic or hang. Afterwards a reset, fresh valid rings and a
//! well-formed frame each way must work: the device is not left broken.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{Segment, SplitQueueDriver};
use blockdev::virtio::net::defs::*;
use blockdev::virtio::net::{NetHandlers, NetOptions, Tap, VirtioNet};
use blockdev::virtio::QueueEvents;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[allow(dead_code)]
#[path = "../../blockdev/tests/net_support/packet.rs"]
mod packet;
use packet::PacketSocket;

/// Bytes of each guest memory region.
pub const REGION_SIZE: u64 = 64 << 10;
/// Guest address of region B, after a hole as large as a region.
pub const REGION_B: u64 = 128 << 10;
/// Bytes of the input's header.
pub const HEADER_LEN: usize = 19;
/// Rounds of stores, frames and kicks.
pub const ROUNDS: usize = 8;
/// Bytes of one round record.
pub const ROUND_LEN: usize = 8;
/// Where the memory image starts in an input.
pub const IMAGE_AT: usize = HEADER_LEN + ROUNDS * ROUND_LEN;

/// Header byte 0: acknowledge EVENT_IDX.
pub const FEAT_EVENT_IDX: u8 = 1;
/// Header byte 0: acknowledge INDIRECT_DESC.
pub const FEAT_INDIRECT: u8 = 2;
/// Header byte 0: acknowledge MRG_RXBUF.
pub const FEAT_MRG_RXBUF: u8 = 4;
/// Header byte 0: acknowledge CSUM and HOST_TSO4/6, HOST_UFO.
pub const FEAT_CSUM: u8 = 8;
/// Header byte 0: acknowledge GUEST_CSUM and GUEST_TSO4/6, GUEST_UFO.
pub const FEAT_GUEST_CSUM: u8 = 16;
/// Header byte 0: acknowledge CTRL_VQ.
pub const FEAT_CTRL_VQ: u8 = 32;
/// Header byte 0: two queue pairs, MQ acknowledged.
pub const FEAT_MQ: u8 = 64;
/// Header byte 0: leave VERSION_1 out.
pub const FEAT_NO_VERSION_1: u8 = 128;

/// Round flag: leave the available index as memory holds it.
pub const R_KEEP_AVAIL_IDX: u8 = 1;
/// Round flag: kick the receive queue (else the transmit queue).
pub const R_RX: u8 = 2;
/// Round flag: kick the control queue.
pub const R_CTRL: u8 = 4;
/// Round flag: the round is on pair 1 (with MQ).
pub const R_PAIR_1: u8 = 8;
/// Round flag: send a frame into the tap before the kick and let the
/// receive queue take it.
pub const R_INJECT: u8 = 16;
/// Round flag: reset and reactivate the device after the round.
pub const R_RESET: u8 = 32;

/// The guest's MAC.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0, 0, 1];
/// Ethertype of injected and health-check frames.
const ETHERTYPE: u16 = 0x88b5;

/// A tap (one or two queues) that lives as long as the thread, with a
/// packet socket on its kernel side.
struct ThreadTap {
    taps: Vec<Tap>,
    socket: PacketSocket,
}

thread_local! {
    static TAPS: RefCell<Option<(ThreadTap, ThreadTap)>> = const { RefCell::new(None) };
}

fn make_tap(name: &str, queues: u16) -> ThreadTap {
    let taps = Tap::open(name, queues).expect("open tap");
    for args in [
        ["link", "set", name, "addrgenmode", "none"],
        ["link", "set", name, "mtu", "9000"],
    ] {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(status.success());
    }
    let status = std::process::Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .expect("ip");
    assert!(status.success());
    let socket = PacketSocket::bind(name, ETHERTYPE);
    ThreadTap { taps, socket }
}

/// Run `f` with this thread's taps (single-queue, two-queue), moving the
/// thread into a network namespace of its own the first time.
fn with_taps<T>(f: impl FnOnce(&ThreadTap, &ThreadTap) -> T) -> T {
    TAPS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            // SAFETY: no pointers; only this thread moves.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "unshare(CLONE_NEWNET) needs root");
            *slot = Some((make_tap("fznet0", 1), make_tap("fznet1", 2)));
        }
        let (one, two) = slot.as_ref().expect("made above");
        f(one, two)
    })
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// Read and drop every frame waiting in the tap queues.
fn drain_tap(taps: &[Tap]) {
    let mut buf = vec![0u8; 70_000];
    let bufs = [blockdev::disk::IoBuf {
        addr: buf.as_mut_ptr(),
        len: buf.len(),
    }];
    for tap in taps {
        // SAFETY: `bufs` describes `buf`, alive and unborrowed meanwhile.
        while unsafe { tap.read_frame(&bufs) }.is_ok() {}
    }
}

fn features_of(byte: u8) -> u64 {
    let mut features = F_NET_MAC | F_NET_STATUS;
    if byte & FEAT_NO_VERSION_1 == 0 {
        features |= F_VERSION_1;
    }
    let pairs = [
        (FEAT_EVENT_IDX, F_RING_EVENT_IDX),
        (FEAT_INDIRECT, F_RING_INDIRECT_DESC),
        (FEAT_MRG_RXBUF, F_NET_MRG_RXBUF),
        (
            FEAT_CSUM,
            F_NET_CSUM | F_NET_HOST_TSO4 | F_NET_HOST_TSO6 | F_NET_HOST_UFO,
        ),
        (
            FEAT_GUEST_CSUM,
            F_NET_GUEST_CSUM | F_NET_GUEST_TSO4 | F_NET_GUEST_TSO6 | F_NET_GUEST_UFO,
        ),
        (FEAT_CTRL_VQ, F_NET_CTRL_VQ),
        (FEAT_MQ, F_NET_MQ | F_NET_CTRL_VQ),
    ];
    for (bit, feature) in pairs {
        if byte & bit != 0 {
            features |= feature;
        }
    }
    features
}

/// Negotiate, set every queue up at the input's addresses and activate;
/// `None` when the device refuses (that is allowed).
fn start(
    device: &mut VirtioNet,
    mem: &Arc<GuestMemoryMmap>,
    data: &[u8],
) -> Option<NetHandlers<Arc<GuestMemoryMmap>>> {
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let features = features_of(data[0]);
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let size = u16_at(data, 1);
    let step = u64::from(u32_at(data, 15));
    for index in 0..device.num_queues() {
        let shift = step.wrapping_mul(u64::from(index));
        let queue = device.queue_mut(index)?;
        queue.set_size(size);
        let at = |n: usize| {
            let addr = u64::from(u32_at(data, 3 + 4 * n)).wrapping_add(shift);
            (Some(addr as u32), Some((addr >> 32) as u32))
        };
        let (lo, hi) = at(0);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = at(1);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = at(2);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
    }
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = (0..device.num_queues())
        .map(|_| QueueEvents { notify: eventfd() })
        .collect();
    device.activate(mem.clone(), events).ok()
}

/// A frame of `len` bytes (at least an Ethernet header) to the guest.
fn frame_to_guest(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len.max(14));
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend((14..len).map(|i| (i as u8) ^ seed));
    frame
}

/// Run one input.
pub fn virtio_net_body(input: &[u8]) {
    let mut data = input.to_vec();
    let image_len = 2 * REGION_SIZE as usize;
    data.resize(IMAGE_AT + image_len, 0);
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), REGION_SIZE as usize),
            (GuestAddress(REGION_B), REGION_SIZE as usize),
        ])
        .expect("memory"),
    );
    let image = &data[IMAGE_AT..];
    mem.write_slice(&image[..REGION_SIZE as usize], GuestAddress(0))
        .expect("region A");
    mem.write_slice(&image[REGION_SIZE as usize..], GuestAddress(REGION_B))
        .expect("region B");
    with_taps(|one, two| {
        let tap = if data[0] & FEAT_MQ != 0 { two } else { one };
        drain_tap(&tap.taps);
        let taps = tap
            .taps
            .iter()
            .map(|t| t.try_clone().expect("dup tap"))
            .collect();
        let options = NetOptions {
            mac: GUEST_MAC,
            queue_size: 64,
        };
        let mut device = VirtioNet::new(taps, options).expect("device");
        let mut handlers = start(&mut device, &mem, &data);
        for round in 0..ROUNDS {
            let record = &data[HEADER_LEN + round * ROUND_LEN..][..ROUND_LEN];
            let flags = record[2];
            if flags & R_INJECT != 0 {
                let len = usize::from(u16_at(record, 3)) % 9000;
                tap.socket.send(&frame_to_guest(len, round as u8));
            }
            if flags & R_KEEP_AVAIL_IDX == 0 {
                let avail = u64::from(u32_at(&data, 7));
                let _ = mem.write_obj(u16_at(record, 0), GuestAddress(avail.wrapping_add(2)));
            }
            let _ = mem.write_obj(record[5], GuestAddress(u64::from(u16_at(record, 6))));
            if let Some(h) = handlers.as_mut() {
                let pair = usize::from(flags & R_PAIR_1 != 0);
                let _ = if flags & R_CTRL != 0 {
                    h.ctrl.as_mut().map(|c| c.process_queue())
                } else if flags & R_RX != 0 || flags & R_INJECT != 0 {
                    h.rx.get_mut(pair).map(|q| q.process_queue())
                } else {
                    h.tx.get_mut(pair).map(|q| q.process_queue())
                };
            }
            if flags & R_RESET != 0 {
                drop(handlers.take());
                device.set_status(0);
                handlers = start(&mut device, &mem, &data);
            }
        }
        drop(handlers);
        device.set_status(0);
        health_check(&mut device, &mem, tap);
    });
}

/// After whatever the input did: a fresh, valid setup must move one frame
/// each way.
fn health_check(device: &mut VirtioNet, mem: &Arc<GuestMemoryMmap>, tap: &ThreadTap) {
    drain_tap(&tap.taps);
    while tap.socket.recv(Duration::ZERO).is_some() {}
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    device.set_driver_features_page(0, (F_NET_MAC | F_NET_MRG_RXBUF) as u32);
    device.set_driver_features_page(1, (F_VERSION_1 >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_ne!(device.status() & STATUS_FEATURES_OK, 0);
    let rx = SplitQueueDriver::new(&**mem, GuestAddress(0), 16).expect("rx rings");
    let tx = SplitQueueDriver::new(&**mem, GuestAddress(0x2000), 16).expect("tx rings");
    let (mut rx, mut tx) = (rx, tx);
    rx.configure(device.queue_mut(0).expect("rx"));
    tx.configure(device.queue_mut(1).expect("tx"));
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = (0..device.num_queues())
        .map(|_| QueueEvents { notify: eventfd() })
        .collect();
    let mut handlers = device.activate(mem.clone(), events).expect("activate");
    // Guest to tap.
    let mut out = vec![0u8; NET_HDR_SIZE];
    let frame = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(b"health check");
        f
    };
    out.extend_from_slice(&frame);
    mem.write_slice(&out, GuestAddress(0x8000)).expect("frame");
    tx.add_chain(
        &**mem,
        &[Segment {
            addr: GuestAddress(0x8000),
            len: out.len() as u32,
            device_writes: false,
        }],
    )
    .expect("tx chain");
    handlers.tx[0].process_queue().expect("tx");
    let got = tap.socket.recv(packet::WAIT).expect("frame on the tap");
    assert_eq!(got, frame);
    // Tap to guest.
    rx.add_chain(
        &**mem,
        &[Segment {
            addr: GuestAddress(0x9000),
            len: 4096,
            device_writes: true,
        }],
    )
    .expect("rx chain");
    handlers.rx[0].process_queue().expect("rx");
    let frame = frame_to_guest(100, 0x5a);
    tap.socket.send(&frame);
    let started = std::time::Instant::now();
    let used = loop {
        handlers.rx[0].process_queue().expect("rx");
        if let Some(used) = rx.pop_used(&**mem).expect("used") {
            break used;
        }
        assert!(
            started.elapsed() < packet::WAIT,
            "no frame reached the guest"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used.len as usize, NET_HDR_SIZE + frame.len());
    let mut back = vec![0u8; frame.len()];
    mem.read_slice(&mut back, GuestAddress(0x9000 + NET_HDR_SIZE as u64))
        .expect("read");
    assert_eq!(back, frame);
    drop(handlers);
    device.set_status(0);
}
