//! The virtio-net device's features driven by our own low-level driver
//! over a tap in a fresh network namespace: checksum and TSO offload
//! headers reach the tap's stack, event-idx interrupt suppression, the
//! configuration space, the MQ command and the announce bit with its
//! ack, tap fds handed over, the
//! queues served through the event loop's `ServedQueue` trait, and a
//! restore (pairs in use and held receive chains taken over). Needs root
//! and iproute2.

mod net_support;

use std::time::{Duration, Instant};

use blockdev::virtio::defs::{F_RING_EVENT_IDX, F_VERSION_1};
use blockdev::virtio::driver::Segment;
use blockdev::virtio::net::announce::{rarp_frame, SavedAnnounce};
use blockdev::virtio::net::defs::*;
use blockdev::virtio::net::header::NetHeader;
use net_support::packet::{PacketSocket, QUIET, WAIT};
use net_support::{in_netns, pattern, test_frame, NetRig, GUEST_MAC, TEST_ETHERTYPE};

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 9];

fn plain() -> [u8; NET_HDR_SIZE] {
    NetHeader::default().to_bytes()
}

/// An IPv4/UDP frame to the broadcast address whose UDP checksum is left
/// to the device (NEEDS_CSUM at csum_start 34, csum_offset 6).
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + udp_len;
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 255]);
    frame.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn a_checksum_offload_header_is_passed_to_the_tap() {
    in_netns(|| {
        let mut rig = NetRig::new("csum0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("csum0", 0x0800);
        let frame = udp_frame(&pattern(200, 3));
        let header = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..NetHeader::default()
        };
        rig.send(&header.to_bytes(), &frame, &[20]);
        let stats = rig.device.counters().snapshot();
        let got = socket
            .recv(WAIT)
            .unwrap_or_else(|| panic!("no frame; {stats:?}"));
        // All but the checksum, which the stack fills later or never.
        assert_eq!(got.len(), frame.len());
        assert_eq!(&got[..40], &frame[..40]);
        assert_eq!(&got[42..], &frame[42..]);
        assert_eq!(stats.tx_frames, 1);
    });
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    in_netns(|| {
        let mut rig = NetRig::new("evt0", 1, F_VERSION_1 | F_RING_EVENT_IDX | F_NET_MAC);
        rig.drivers[1].set_used_event_on_pop(false);
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(50, 10));
        // used_event 0: the first used element interrupts.
        rig.send(&plain(), &frame, &[]);
        assert!(rig.handlers.tx[0].take_interrupt().expect("irq"));
        // used_event 5: the next ones (used idx 2..5) do not, the sixth does.
        rig.drivers[1]
            .set_used_event(&*rig.mem, 5)
            .expect("used_event");
        for n in 0..4 {
            rig.send(&plain(), &frame, &[]);
            assert!(
                !rig.handlers.tx[0].take_interrupt().expect("irq"),
                "element {} interrupted",
                n + 2
            );
        }
        rig.send(&plain(), &frame, &[]);
        assert!(rig.handlers.tx[0].take_interrupt().expect("irq"));
    });
}

#[test]
fn a_polled_stream_parks_avail_event_and_interrupts_once() {
    in_netns(|| {
        let mut rig = NetRig::new("park0", 1, F_VERSION_1 | F_RING_EVENT_IDX | F_NET_MAC);
        rig.drivers[1].set_used_event_on_pop(false);
        rig.handlers.tx[0].set_polling(true);
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(50, 11));
        let mut bytes = plain().to_vec();
        bytes.extend_from_slice(&frame);
        // used_event 0: the first element returned asks for an interrupt.
        for n in 1..=3u16 {
            let segments = net_support::split_readable(&mut rig, &bytes, &[]);
            rig.add(1, &segments);
            rig.handlers.tx[0].process_queue().expect("tx");
            assert_eq!(rig.used(1).len(), 1, "frame {n} returned at once");
            // Parked: a driver testing `avail_idx > avail_event` (as
            // virtio-drivers does) does not notify for the next frame.
            let parked = rig.drivers[1].avail_event(&*rig.mem).expect("avail_event");
            assert!(parked > n + 100, "avail_event {parked} after frame {n}");
            // The stream's interrupt waits for the loop to sleep.
            assert!(!rig.handlers.tx[0].take_interrupt().expect("irq"));
            assert!(rig.handlers.tx[0].worth_polling());
        }
        // Going to sleep: notifications on at the next index, and one
        // interrupt for the three frames.
        assert!(!rig.handlers.tx[0].prepare_to_sleep().expect("sleep"));
        assert_eq!(rig.drivers[1].avail_event(&*rig.mem).expect("event"), 3);
        assert!(rig.handlers.tx[0].take_interrupt().expect("irq"));
        // A batch that finds nothing ends the stream: no more spinning.
        rig.handlers.tx[0].process_queue().expect("tx");
        assert!(!rig.handlers.tx[0].worth_polling());
        assert_eq!(rig.device.counters().snapshot().tx_frames, 3);
    });
}

/// Run one control command; (used len, ack byte).
fn control(rig: &mut NetRig, command: &[u8], with_ack: bool) -> (u32, u8) {
    let data = rig.buffer(command);
    let ack = rig.buffer(&[0xee]);
    let mut segments = vec![Segment {
        addr: data,
        len: command.len() as u32,
        device_writes: false,
    }];
    if with_ack {
        segments.push(Segment {
            addr: ack,
            len: 1,
            device_writes: true,
        });
    }
    let ctrl = rig.drivers.len() - 1;
    rig.add(ctrl, &segments);
    rig.handlers
        .ctrl
        .as_mut()
        .expect("control queue")
        .handle_queue_notify()
        .expect("ctrl");
    let used = rig.used(ctrl);
    assert_eq!(used.len(), 1);
    (used[0].len, rig.read(ack, 1)[0])
}

#[test]
fn the_mq_command_sets_the_pairs_in_use_and_refuses_the_rest() {
    in_netns(|| {
        let mut rig = NetRig::new("mq0", 2, NetRig::all_features());
        assert_eq!(rig.handlers.rx.len(), 2);
        assert_eq!(rig.handlers.tx.len(), 2);
        let mut config = [0u8; 10];
        rig.device.read_config(0, &mut config);
        assert_eq!(&config[..6], &GUEST_MAC);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([config[8], config[9]]), 2);
        let set = |pairs: u16| {
            let mut c = vec![CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET];
            c.extend_from_slice(&pairs.to_le_bytes());
            c
        };
        assert!(rig.handlers.rx[0].tap_wanted());
        assert!(!rig.handlers.rx[1].tap_wanted(), "pair 1 unused: detached");
        assert_eq!(control(&mut rig, &set(2), true), (1, CTRL_OK));
        assert_eq!(rig.handlers.ctrl.as_ref().unwrap().active_pairs(), 2);
        assert!(rig.handlers.rx[1].tap_wanted(), "pair 1 attached");
        assert_eq!(control(&mut rig, &set(3), true), (1, CTRL_ERR));
        assert_eq!(control(&mut rig, &set(0), true), (1, CTRL_ERR));
        assert_eq!(control(&mut rig, &[0, 0, 1], true), (1, CTRL_ERR));
        assert_eq!(control(&mut rig, &[CTRL_CLASS_MQ], true), (1, CTRL_ERR));
        assert_eq!(control(&mut rig, &set(1), false).0, 0, "no ack byte");
        assert_eq!(control(&mut rig, &set(1), true), (1, CTRL_OK));
        assert_eq!(rig.handlers.ctrl.as_ref().unwrap().active_pairs(), 1);
        assert!(!rig.handlers.rx[1].tap_wanted());
        // Frames sent on pair 1's tx queue reach the tap too.
        let socket = PacketSocket::bind("mq0", TEST_ETHERTYPE);
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(80, 11));
        let mut bytes = plain().to_vec();
        bytes.extend_from_slice(&frame);
        let segments = net_support::split_readable(&mut rig, &bytes, &[]);
        rig.add(3, &segments);
        rig.handlers.tx[1].handle_queue_notify().expect("tx");
        assert_eq!(socket.recv(WAIT).expect("frame from pair 1"), frame);
    });
}

/// The configuration's `status` (le16 at byte 6).
fn config_status(rig: &NetRig) -> u16 {
    let mut config = [0u8; 10];
    rig.device.read_config(0, &mut config);
    u16::from_le_bytes([config[6], config[7]])
}

#[test]
fn an_announcement_is_set_then_cleared_by_the_drivers_ack() {
    in_netns(|| {
        let mut rig = NetRig::new("ann0", 1, NetRig::all_features());
        let ack = [CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK];
        assert_eq!(
            control(&mut rig, &ack, true),
            (1, CTRL_ERR),
            "an ack with nothing pending"
        );
        assert_eq!(config_status(&rig), NET_S_LINK_UP);
        let generation = rig.device.config_generation();
        let rarp = PacketSocket::bind("ann0", 0x8035);
        let tick = rig.device.announce().expect("announce");
        assert!(tick.config_changed);
        // The device announces the guest itself too, as QEMU does.
        assert_eq!(rarp.recv(WAIT).expect("a RARP"), rarp_frame(GUEST_MAC));
        assert_eq!(rig.device.saved_announce().rounds_left, 4);
        assert_eq!(config_status(&rig), NET_S_LINK_UP | NET_S_ANNOUNCE);
        assert_ne!(rig.device.config_generation(), generation);
        // Another class's command leaves it pending.
        assert_eq!(
            control(&mut rig, &[CTRL_CLASS_ANNOUNCE, 1], true),
            (1, CTRL_ERR)
        );
        assert!(rig.device.announce_pending());
        assert_eq!(control(&mut rig, &ack, true), (1, CTRL_OK));
        assert_eq!(config_status(&rig), NET_S_LINK_UP);
        // The ack scheduled the next of QEMU's five rounds; each round
        // also sends a RARP. Every round, acked, then nothing more.
        let mut at = Instant::now();
        let mut rounds = 1;
        let mut rarps = 1;
        let mut tick = rig.device.announce_tick(at).expect("tick");
        loop {
            if tick.config_changed {
                rounds += 1;
                assert_eq!(control(&mut rig, &ack, true), (1, CTRL_OK));
            }
            while rarp.recv(Duration::from_millis(1)).is_some() {
                rarps += 1;
            }
            assert!(rounds <= 5, "more rounds than QEMU's five");
            let Some(wake) = tick.wake else { break };
            at = wake.max(at) + Duration::from_millis(1);
            tick = rig.device.announce_tick(at).expect("tick");
        }
        while rarp.recv(Duration::from_millis(50)).is_some() {
            rarps += 1;
        }
        assert_eq!((rounds, rarps), (5, 5));
        assert!(!rig.device.announce_pending());
        // With one pair MQ is not offered: VQ_PAIRS_SET is refused, as
        // QEMU refuses it without MQ.
        let mut set = vec![CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET];
        set.extend_from_slice(&1u16.to_le_bytes());
        assert_eq!(control(&mut rig, &set, true), (1, CTRL_ERR));
        // A driver without GUEST_ANNOUNCE is never asked.
        let mut plain_rig = NetRig::new("ann1", 1, NetRig::all_features() & !F_NET_GUEST_ANNOUNCE);
        let rarp = PacketSocket::bind("ann1", 0x8035);
        assert!(
            !plain_rig
                .device
                .announce()
                .expect("announce")
                .config_changed
        );
        assert_eq!(rarp.recv(WAIT).expect("a RARP"), rarp_frame(GUEST_MAC));
        assert_eq!(config_status(&plain_rig), NET_S_LINK_UP);
        assert_eq!(control(&mut plain_rig, &ack, true), (1, CTRL_ERR));
    });
}

#[test]
fn an_event_loop_serves_net_queues_through_the_shared_trait() {
    fn assert_send<T: Send>(_: &T) {}
    in_netns(|| {
        let mut rig = NetRig::new("srv0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("srv0", TEST_ETHERTYPE);
        let handlers = std::mem::replace(
            &mut rig.handlers,
            blockdev::virtio::net::NetHandlers {
                rx: Vec::new(),
                tx: Vec::new(),
                ctrl: None,
            },
        );
        let mut served = handlers.into_served();
        assert_send(&served);
        assert_eq!(
            served.iter().map(|q| q.index()).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "rx, tx, control"
        );
        // Transmit through the trait, as the loop does on a kick.
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(70, 12));
        let mut bytes = plain().to_vec();
        bytes.extend_from_slice(&frame);
        let segments = net_support::split_readable(&mut rig, &bytes, &[]);
        rig.add(1, &segments);
        served[1].handle_queue_notify().expect("tx");
        assert_eq!(socket.recv(WAIT).expect("frame"), frame);
        assert!(served[1].take_interrupt().expect("irq"));
        assert_eq!(served[1].next_avail(), 1);
        // A receive queue without buffers stops waiting on the tap (it
        // waits on its refill timer); one with buffers waits on it and
        // takes the frame when it is readable.
        let tap_fd = served[0].event_fd();
        assert!(tap_fd.is_some());
        served[0].handle_event().expect("rx");
        let refill = served[0].event_fd();
        assert!(refill.is_some(), "no buffers: the refill timer");
        assert_ne!(refill, tap_fd, "no buffers: not the tap");
        rig.post_rx(&[2048]);
        rig.post_rx(&[2048]);
        served[0].handle_queue_notify().expect("rx");
        assert_eq!(served[0].event_fd(), tap_fd);
        socket.send(&test_frame(GUEST_MAC, PEER_MAC, &pattern(30, 13)));
        std::thread::sleep(QUIET);
        served[0].handle_event().expect("rx");
        assert_eq!(rig.used(0).len(), 1);
        assert!(served[0].take_interrupt().expect("irq"));
        // A malformed tx chain is reported as refused.
        let short = rig.buffer(&[0u8; 4]);
        rig.add(
            1,
            &[Segment {
                addr: short,
                len: 4,
                device_writes: false,
            }],
        );
        served[1].handle_queue_notify().expect("tx");
        assert_eq!(served[1].take_refused(), 1);
        assert_eq!(served[1].take_refused(), 0);
    });
}

#[test]
fn a_tap_fd_handed_over_is_taken_and_a_multicast_mac_refused() {
    use blockdev::virtio::net::{NetOptions, Tap, VirtioNet};
    use std::os::fd::OwnedFd;
    in_netns(|| {
        let mut taps = Tap::open("fd0", 1).expect("tap");
        let fd: OwnedFd = taps.remove(0).into();
        let tap = Tap::from_fd(fd).expect("a tap fd");
        assert_eq!(tap.name(), "fd0");
        let options = NetOptions {
            mac: [0x01, 0, 0x5e, 0, 0, 1],
            ..NetOptions::default()
        };
        let err = VirtioNet::new(vec![tap], options).expect_err("multicast");
        assert!(err.to_string().contains("01:00:5e:00:00:01"), "{err}");
    });
}

#[test]
fn a_tso_frame_with_a_sound_header_is_taken_by_the_tap() {
    in_netns(|| {
        let mut rig = NetRig::new("tso0", 1, NetRig::all_features());
        let socket = PacketSocket::bind("tso0", 0x0800);
        let payload = pattern(3000, 14);
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
        // TCP: ports, seq, ack, data offset 5, ACK|PSH, window, csum, urg.
        frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0]);
        frame.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        frame.extend_from_slice(&payload);
        let header = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        rig.send(&header.to_bytes(), &frame, &[54, 1000]);
        let stats = rig.device.counters().snapshot();
        assert_eq!(
            (stats.tx_frames, stats.tx_dropped, stats.tx_errors),
            (1, 0, 0)
        );
        assert_eq!(stats.tx_bytes, frame.len() as u64);
        // The stack sees it (whole or segmented): its headers arrive.
        let got = socket.recv(WAIT).expect("the TSO frame reached the stack");
        assert_eq!(&got[..12], &frame[..12]);
        assert_eq!(got[23], 6, "TCP");
    });
}

/// The device of `rig` reset and set up again as a restore does: the
/// same features and rings, each queue of `positions` at its saved
/// (queue, next_avail, next_used), `resume` handed over, then activated.
fn restore_in_place(
    rig: &mut NetRig,
    positions: &[(u16, u16, u16)],
    resume: blockdev::virtio::net::NetResume,
) -> blockdev::Result<blockdev::virtio::net::NetHandlers<net_support::Mem>> {
    use blockdev::virtio::defs::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    };
    use virtio_queue::QueueT;
    let features = rig.device.driver_features();
    rig.device.reset();
    let device = &mut rig.device;
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    for (index, driver) in rig.drivers.iter().enumerate() {
        driver.configure(device.queue_mut(index as u16).expect("queue"));
    }
    for &(index, next_avail, next_used) in positions {
        let queue = device.queue_mut(index).expect("queue");
        queue.set_next_avail(next_avail);
        queue.set_next_used(next_used);
    }
    device.set_resume_state(resume)?;
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = (0..device.num_queues())
        .map(|_| blockdev::virtio::QueueEvents {
            notify: net_support::eventfd(),
        })
        .collect();
    device.activate(rig.mem.clone(), events)
}

#[test]
fn a_restored_device_takes_the_saved_pairs_and_receive_chains() {
    use blockdev::virtio::net::NetResume;
    in_netns(|| {
        let mut rig = NetRig::new("rs0", 2, NetRig::all_features());
        let set_two = [CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, 2, 0];
        assert_eq!(control(&mut rig, &set_two, true), (1, CTRL_OK));
        // Three chains taken from the ring and held (mergeable buffers:
        // the queue stashes room for the largest frame).
        for _ in 0..3 {
            rig.post_rx(&[2048]);
        }
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        let returned = rig.used(0).len();
        let heads = rig.handlers.rx[0].stashed_heads();
        assert_eq!(heads.len() + returned, 3, "{heads:?}");
        assert!(!heads.is_empty());
        let ctrl = rig.handlers.ctrl.as_ref().expect("ctrl");
        let positions = [
            (
                0,
                rig.handlers.rx[0].next_avail(),
                rig.handlers.rx[0].next_used(),
            ),
            (ctrl.index(), ctrl.next_avail(), ctrl.next_used()),
        ];
        let pairs = ctrl.active_pairs();
        // An announcement under way: the bit set, two rounds to come.
        let announce = SavedAnnounce {
            pending: true,
            rounds_left: 2,
        };
        let saved = NetResume {
            active_pairs: pairs,
            rx_stash: vec![heads.clone()],
            announce,
        };
        // What does not fit the device is refused before activation.
        for bad in [
            NetResume {
                active_pairs: 3,
                ..saved.clone()
            },
            NetResume {
                active_pairs: 0,
                ..saved.clone()
            },
            NetResume {
                rx_stash: vec![vec![]; 3],
                ..saved.clone()
            },
            NetResume {
                announce: SavedAnnounce {
                    pending: false,
                    rounds_left: 6,
                },
                ..saved.clone()
            },
        ] {
            assert!(rig.device.set_resume_state(bad).is_err());
        }
        // A head repeated or past the queue's size stops the activation.
        for bad_heads in [vec![heads[0], heads[0]], vec![64]] {
            rig.handlers = blockdev::virtio::net::NetHandlers {
                rx: Vec::new(),
                tx: Vec::new(),
                ctrl: None,
            };
            let bad = NetResume {
                rx_stash: vec![bad_heads],
                ..saved.clone()
            };
            assert!(restore_in_place(&mut rig, &positions, bad).is_err());
        }
        rig.handlers = restore_in_place(&mut rig, &positions, saved).expect("restore");
        assert_eq!(rig.handlers.rx[0].stashed_heads(), heads);
        // The announcement goes on where it was: the bit is set again,
        // its interrupt raised again, and the rounds are not reset.
        assert_eq!(config_status(&rig), NET_S_LINK_UP | NET_S_ANNOUNCE);
        assert!(rig.device.announce().expect("announce").config_changed);
        assert_eq!(rig.device.saved_announce(), announce);
        assert_eq!(rig.handlers.ctrl.as_ref().expect("ctrl").active_pairs(), 2);
        assert!(rig.handlers.rx[1].tap_wanted(), "pair 1 attached again");
        // Back to one pair (the kernel would steer the frame to either),
        // through the restored control queue.
        let set_one = [CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, 1, 0];
        assert_eq!(control(&mut rig, &set_one, true), (1, CTRL_OK));
        // A frame lands in the oldest held chain, which the guest gave
        // before the save and the restored device took over.
        let socket = PacketSocket::bind("rs0", TEST_ETHERTYPE);
        let frame = test_frame(GUEST_MAC, PEER_MAC, &pattern(60, 21));
        socket.send(&frame);
        std::thread::sleep(QUIET);
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let used = rig.used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].id, u32::from(heads[0]));
        assert_eq!(used[0].len as usize, NET_HDR_SIZE + frame.len());
    });
}
