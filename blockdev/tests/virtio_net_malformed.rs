//! The virtio-net device driven by our own low-level driver over a tap in
//! a fresh network namespace: malformed transmit chains and absurd vnet
//! headers are dropped, returned and counted, and nothing of them reaches
//! the tap; malformed receive chains are returned empty and counted;
//! merged receive buffers carry `num_buffers`; oversized frames are
//! dropped without losing the buffers; a starved receive queue stops
//! waiting on the tap, asks for a batch of buffers, and its refill timer
//! takes fewer. Needs root and iproute2.

mod net_support;

use blockdev::virtio::driver::{RawDescriptor, Segment, DESC_F_NEXT, DESC_F_WRITE};
use blockdev::virtio::net::defs::*;
use blockdev::virtio::net::header::NetHeader;
use blockdev::virtio::net::rx::{RX_KICK_BATCH, RX_REFILL_WAIT};
use net_support::packet::{PacketSocket, QUIET, WAIT};
use net_support::{in_netns, pattern, test_frame, NetRig, GUEST_MAC, TEST_ETHERTYPE};
use vm_memory::GuestAddress;

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 9];

fn plain() -> [u8; NET_HDR_SIZE] {
    NetHeader::default().to_bytes()
}

#[test]
fn malformed_tx_chains_and_headers_are_dropped_and_counted() {
    in_netns(|| {
        let mut rig = NetRig::new("mal0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("mal0", TEST_ETHERTYPE);
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(300, 1));
        let good = |rig: &mut NetRig| {
            let used = rig.send(&plain(), &frame, &[5, 20]);
            assert_eq!(used.len, 0);
        };
        good(&mut rig);
        assert_eq!(socket.recv(WAIT).expect("good frame"), frame);

        let mut bad_headers = Vec::new();
        let tso = |gso_size: u16, csum_start: u16, csum_offset: u16, gso_type: u8| NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: 54,
            gso_size,
            csum_start,
            csum_offset,
            num_buffers: 0,
        };
        bad_headers.push(tso(0, 34, 16, GSO_TCPV4)); // gso_size 0
        bad_headers.push(tso(u16::MAX, 34, 16, GSO_TCPV4)); // GSO_BY_FRAGS
        bad_headers.push(tso(1000, 300, 16, GSO_TCPV4)); // checksum past the frame
        bad_headers.push(tso(1000, u16::MAX, u16::MAX, GSO_TCPV6));
        bad_headers.push(tso(100, 34, 16, 2)); // unknown GSO type
        bad_headers.push(tso(100, 34, 16, GSO_TCPV4 | GSO_ECN)); // ECN not offered
        bad_headers.push(NetHeader {
            flags: 0x80,
            ..NetHeader::default()
        });
        bad_headers.push(NetHeader {
            hdr_len: 5000,
            ..NetHeader::default()
        });
        for header in &bad_headers {
            let used = rig.send(&header.to_bytes(), &frame, &[3]);
            assert_eq!(used.len, 0);
        }
        // Frames too short or too long, and a chain shorter than a header.
        rig.send(&plain(), &frame[..13], &[]);
        rig.send(&plain(), &vec![0u8; MAX_FRAME + 1], &[40_000]);
        let short = rig.buffer(&[0u8; 8]);
        let head = rig.add(
            1,
            &[Segment {
                addr: short,
                len: 8,
                device_writes: false,
            }],
        );
        rig.handlers.tx[0].handle_queue_notify().expect("tx");
        assert_eq!(rig.used(1)[0].id, u32::from(head));
        // A device-writable descriptor in a tx chain.
        let body = rig.buffer(&frame);
        let header = rig.buffer(&plain());
        rig.add(
            1,
            &[
                Segment {
                    addr: header,
                    len: 12,
                    device_writes: false,
                },
                Segment {
                    addr: body,
                    len: frame.len() as u32,
                    device_writes: true,
                },
            ],
        );
        // A buffer past the end of guest memory.
        rig.add(
            1,
            &[Segment {
                addr: GuestAddress(u64::MAX - 100),
                len: 200,
                device_writes: false,
            }],
        );
        // A chain that loops on itself.
        let indices = rig.drivers[1].alloc(1).expect("descriptor");
        rig.drivers[1]
            .write_descriptor(
                &*rig.mem,
                indices[0],
                RawDescriptor {
                    addr: header.0,
                    len: 12,
                    flags: DESC_F_NEXT,
                    next: indices[0],
                },
            )
            .expect("descriptor");
        rig.drivers[1]
            .publish(&*rig.mem, indices[0], indices.clone())
            .expect("publish");
        // A head past the queue: nothing to return.
        rig.drivers[1].publish_raw(&*rig.mem, 999).expect("publish");
        rig.handlers.tx[0].handle_queue_notify().expect("tx");
        assert_eq!(
            rig.used(1).len(),
            3,
            "three chains returned, the bad head not"
        );
        assert!(
            socket.recv(QUIET).is_none(),
            "nothing malformed reached the tap"
        );

        let stats = rig.device.counters().snapshot();
        // Six malformed chains, and the head past the queue (walked as an
        // empty, unterminated chain).
        assert_eq!(stats.tx_errors, bad_headers.len() as u64 + 7);
        assert_eq!(stats.tx_frames, 1);
        good(&mut rig);
        assert_eq!(socket.recv(WAIT).expect("device still works"), frame);
        assert_eq!(rig.device.counters().snapshot().tx_frames, 2);
    });
}

/// Post `count` rx chains of one `size`-byte buffer each.
fn post(rig: &mut NetRig, count: usize, size: u32) -> Vec<(u16, GuestAddress)> {
    (0..count)
        .map(|_| {
            let (head, bufs) = rig.post_rx(&[size]);
            (head, bufs[0].0)
        })
        .collect()
}

#[test]
fn merged_rx_buffers_carry_num_buffers_and_the_frame() {
    in_netns(|| {
        let mut rig = NetRig::new("mrg0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("mrg0", TEST_ETHERTYPE);
        let chains = post(&mut rig, 40, 100);
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        let frame = test_frame(GUEST_MAC, PEER_MAC, &pattern(986, 4));
        socket.send(&frame);
        std::thread::sleep(QUIET);
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let used = rig.used(0);
        // 12 + 1000 bytes in 100-byte buffers: 11 chains.
        assert_eq!(used.len(), 11);
        let mut got = Vec::new();
        for (n, elem) in used.iter().enumerate() {
            assert_eq!(elem.id, u32::from(chains[n].0));
            got.extend(rig.read(chains[n].1, elem.len as usize));
        }
        assert_eq!(used[10].len, 12);
        assert_eq!(got.len(), NET_HDR_SIZE + frame.len());
        let header = NetHeader::from_bytes(got[..12].try_into().expect("header"));
        assert_eq!(header.num_buffers, 11);
        assert_eq!(&got[12..], &frame[..]);
        let stats = rig.device.counters().snapshot();
        assert_eq!((stats.rx_frames, stats.rx_bytes), (1, frame.len() as u64));
    });
}

#[test]
fn without_merged_buffers_an_oversized_frame_is_dropped_and_the_chain_kept() {
    in_netns(|| {
        let features = NetRig::all_features() & !F_NET_MRG_RXBUF;
        let mut rig = NetRig::new("big0", 1, features);
        let socket = PacketSocket::bind("big0", TEST_ETHERTYPE);
        let chains = post(&mut rig, 1, 512);
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        let big = test_frame(GUEST_MAC, PEER_MAC, &pattern(1000, 5));
        let small = test_frame(GUEST_MAC, PEER_MAC, &pattern(100, 6));
        socket.send(&big);
        socket.send(&small);
        std::thread::sleep(QUIET);
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let used = rig.used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].id, u32::from(chains[0].0));
        assert_eq!(used[0].len as usize, NET_HDR_SIZE + small.len());
        let got = rig.read(chains[0].1, used[0].len as usize);
        assert_eq!(
            NetHeader::from_bytes(got[..12].try_into().unwrap()).num_buffers,
            1
        );
        assert_eq!(&got[12..], &small[..]);
        let stats = rig.device.counters().snapshot();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 1));
    });
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_counted() {
    in_netns(|| {
        let mut rig = NetRig::new("rxm0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("rxm0", TEST_ETHERTYPE);
        let readable = rig.buffer(&[0u8; 2048]);
        let bad: Vec<u16> = vec![
            // A device-readable buffer.
            rig.add(
                0,
                &[Segment {
                    addr: readable,
                    len: 2048,
                    device_writes: false,
                }],
            ),
            // Shorter than the vnet header.
            rig.post_rx(&[8]).0,
            // Outside guest memory.
            rig.add(
                0,
                &[Segment {
                    addr: GuestAddress(1 << 40),
                    len: 4096,
                    device_writes: true,
                }],
            ),
        ];
        // A descriptor pointing at an index past the table.
        let indices = rig.drivers[0].alloc(1).expect("descriptor");
        rig.drivers[0]
            .write_descriptor(
                &*rig.mem,
                indices[0],
                RawDescriptor {
                    addr: readable.0,
                    len: 2048,
                    flags: DESC_F_WRITE | DESC_F_NEXT,
                    next: 500,
                },
            )
            .expect("descriptor");
        rig.drivers[0]
            .publish(&*rig.mem, indices[0], indices.clone())
            .expect("publish");
        let good = rig.post_rx(&[2048]);
        let frame = test_frame(GUEST_MAC, PEER_MAC, &pattern(64, 8));
        socket.send(&frame);
        std::thread::sleep(QUIET);
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        let used = rig.used(0);
        assert_eq!(used.len(), 5);
        for (elem, head) in used.iter().zip(bad.iter().chain([&indices[0]])) {
            assert_eq!(elem.id, u32::from(*head));
            assert_eq!(elem.len, 0);
        }
        assert_eq!(used[4].id, u32::from(good.0));
        let got = rig.read(good.1[0].0, used[4].len as usize);
        assert_eq!(&got[12..], &frame[..]);
        let stats = rig.device.counters().snapshot();
        assert_eq!((stats.rx_errors, stats.rx_frames), (4, 1));
    });
}

#[test]
fn with_no_buffers_the_rx_queue_stops_waiting_on_the_tap() {
    in_netns(|| {
        let mut rig = NetRig::new("idle0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("idle0", TEST_ETHERTYPE);
        socket.send(&test_frame(GUEST_MAC, PEER_MAC, &pattern(64, 9)));
        std::thread::sleep(QUIET);
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        assert!(
            !rig.handlers.rx[0].tap_wanted(),
            "no buffers: wait for a kick"
        );
        let (head, bufs) = rig.post_rx(&[4096]);
        rig.post_rx(&[4096]);
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        assert!(rig.handlers.rx[0].tap_wanted(), "one buffer left");
        let used = rig.used(0);
        assert_eq!(used.len(), 1, "the waiting frame was delivered");
        assert_eq!(used[0].id, u32::from(head));
        assert_eq!(used[0].len, 12 + 14 + 64);
        let frame = rig.read(GuestAddress(bufs[0].0 .0 + 12), 14);
        assert_eq!(frame[..6], GUEST_MAC, "after the vnet header");
    });
}

/// Whether `fd` turns readable within `timeout`.
fn readable_within(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    let n = unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
    n == 1 && pollfd.revents & libc::POLLIN != 0
}

#[test]
fn a_starved_queue_asks_for_a_batch_and_its_timer_takes_fewer() {
    in_netns(|| {
        let mut rig = NetRig::new(
            "batch0",
            1,
            F_VERSION_1 | F_RING_EVENT_IDX | F_NET_MAC | F_NET_MRG_RXBUF,
        );
        let socket = PacketSocket::bind("batch0", TEST_ETHERTYPE);
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|i| test_frame(GUEST_MAC, PEER_MAC, &pattern(64 + i, i as u64)))
            .collect();
        for frame in &frames {
            socket.send(frame);
        }
        std::thread::sleep(QUIET);
        let tap_fd = rig.handlers.rx[0].tap_fd();
        // No buffers: wait for a batch of them, on the refill timer.
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        assert!(rig.handlers.rx[0].starved());
        let timer = rig.handlers.rx[0].wait_fd().expect("a refill timer");
        assert_ne!(timer, tap_fd, "not the tap: it stays readable");
        let event = rig.drivers[0].avail_event(&*rig.mem).expect("avail_event");
        assert_eq!(
            event,
            RX_KICK_BATCH - 1,
            "a kick at the batch's last buffer"
        );
        // Two buffers, no kick (fewer than the batch): the timer takes them.
        let posted: Vec<_> = (0..2).map(|_| rig.post_rx(&[2048]).0).collect();
        assert!(
            readable_within(timer, RX_REFILL_WAIT * 200),
            "the refill timer fires"
        );
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let used = rig.used(0);
        assert_eq!(
            used.iter().map(|u| u.id).collect::<Vec<_>>(),
            posted.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
        );
        assert!(rig.handlers.rx[0].take_interrupt().expect("irq"));
        // Out again with one frame waiting: the next timer takes the one
        // buffer posted after it.
        let timer = rig.handlers.rx[0].wait_fd().expect("armed again");
        let event = rig.drivers[0].avail_event(&*rig.mem).expect("avail_event");
        assert_eq!(event, 2 + RX_KICK_BATCH - 1);
        let (head, bufs) = rig.post_rx(&[2048]);
        assert!(readable_within(timer, RX_REFILL_WAIT * 200));
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let used = rig.used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].id, u32::from(head));
        let got = rig.read(GuestAddress(bufs[0].0 .0 + 12), frames[2].len());
        assert_eq!(got, frames[2], "every frame arrived, in order");
        // A timer that finds nothing posted is not armed again: the
        // queue waits for a kick at the first buffer.
        let timer = rig.handlers.rx[0].wait_fd().expect("armed again");
        assert!(readable_within(timer, RX_REFILL_WAIT * 200));
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        assert!(rig.handlers.rx[0].starved());
        assert_eq!(rig.handlers.rx[0].wait_fd(), None, "waits for a kick only");
        let event = rig.drivers[0].avail_event(&*rig.mem).expect("avail_event");
        assert_eq!(event, 3, "a kick at the next buffer");
        // A full batch posted before the queue looks is taken at once.
        socket.send(&frames[0]);
        std::thread::sleep(QUIET);
        for _ in 0..RX_KICK_BATCH {
            rig.post_rx(&[2048]);
        }
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        assert!(!rig.handlers.rx[0].starved());
        assert_eq!(rig.used(0).len(), 1);
        let stats = rig.device.counters().snapshot();
        assert_eq!(
            (stats.rx_frames, stats.rx_errors, stats.rx_dropped),
            (4, 0, 0)
        );
    });
}
