//! The virtio-net device against a plain model of what must come out,
//! over random batches (proptest), through a tap in a fresh network
//! namespace:
//!
//! - transmit: a batch of chains, each a frame behind a plain vnet header
//!   (with junk in `num_buffers`, which the device ignores) or one of the
//!   absurd headers, cut into random descriptors. Out on the tap must come
//!   exactly the plain frames, in order; the rest are counted as errors.
//! - receive with merged buffers: random chains (one or two buffers of
//!   random sizes), then random frames sent into the tap. The model fills
//!   chains in order: a frame takes chains until they hold its header and
//!   bytes, each chain returned with what it holds, `num_buffers` in the
//!   first; a frame larger than all the chains left is dropped and the
//!   chains stay for the next; once no chain is left, frames wait in the
//!   tap.
//!
//! Needs root and iproute2.

mod net_support;

use std::time::{Duration, Instant};

use blockdev::virtio::net::defs::*;
use blockdev::virtio::net::header::NetHeader;
use net_support::packet::{PacketSocket, WAIT};
use net_support::{in_netns, pattern, split_readable, test_frame, NetRig, GUEST_MAC};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vm_memory::GuestAddress;

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];

#[derive(Debug, Clone)]
struct TxChain {
    payload: usize,
    /// `None`: a plain header; `Some(k)`: absurd header number k.
    bad: Option<u8>,
    num_buffers: u16,
    cuts: Vec<usize>,
}

fn absurd_header(kind: u8) -> NetHeader {
    let tso = NetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    match kind % 6 {
        0 => NetHeader { gso_size: 0, ..tso },
        1 => NetHeader {
            gso_size: u16::MAX,
            ..tso
        },
        2 => NetHeader {
            csum_start: u16::MAX,
            ..tso
        },
        3 => NetHeader { gso_type: 9, ..tso },
        4 => NetHeader {
            flags: 0x40,
            ..NetHeader::default()
        },
        _ => NetHeader {
            hdr_len: u16::MAX,
            ..NetHeader::default()
        },
    }
}

fn tx_chain() -> impl Strategy<Value = TxChain> {
    (
        0usize..1600,
        prop_oneof![3 => Just(None), 1 => any::<u8>().prop_map(Some)],
        any::<u16>(),
        proptest::collection::vec(0usize..1700, 0..4),
    )
        .prop_map(|(payload, bad, num_buffers, cuts)| TxChain {
            payload,
            bad,
            num_buffers,
            cuts,
        })
}

fn rx_case() -> impl Strategy<Value = (Vec<Vec<u32>>, Vec<usize>)> {
    (
        proptest::collection::vec(proptest::collection::vec(12u32..3000, 1..3), 1..20),
        proptest::collection::vec(0usize..4000, 1..12),
    )
}

#[test]
fn the_device_matches_the_model() {
    in_netns(|| {
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &(proptest::collection::vec(tx_chain(), 1..16), rx_case()),
                |(tx, (chains, frames))| {
                    // A fresh device and tap per case (the tap goes away
                    // with the device's fds).
                    let mut rig = NetRig::new("model0", 1, NetRig::all_features());
                    // Frames up to 4 KB go into the tap.
                    net_support::ip(&["link", "set", "model0", "mtu", "9000"]);
                    let socket = PacketSocket::bind("model0", net_support::TEST_ETHERTYPE);
                    check_tx(&mut rig, &socket, &tx)?;
                    check_rx(&mut rig, &socket, &chains, &frames)?;
                    Ok(())
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
    });
}

fn check_tx(rig: &mut NetRig, socket: &PacketSocket, tx: &[TxChain]) -> Result<(), TestCaseError> {
    let before = rig.device.counters().snapshot();
    let mut expected = Vec::new();
    for (n, chain) in tx.iter().enumerate() {
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(chain.payload, n as u64));
        let header = match chain.bad {
            None => {
                expected.push(frame.clone());
                NetHeader {
                    num_buffers: chain.num_buffers,
                    ..NetHeader::default()
                }
            }
            Some(kind) => absurd_header(kind),
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        let segments = split_readable(rig, &bytes, &chain.cuts);
        rig.add(1, &segments);
    }
    rig.handlers.tx[0].handle_queue_notify().expect("tx");
    prop_assert_eq!(rig.used(1).len(), tx.len());
    for frame in &expected {
        let got = socket.recv(WAIT);
        prop_assert_eq!(got.as_ref(), Some(frame));
    }
    prop_assert!(socket.recv(Duration::from_millis(10)).is_none());
    let after = rig.device.counters().snapshot();
    prop_assert_eq!(after.tx_frames - before.tx_frames, expected.len() as u64);
    prop_assert_eq!(
        after.tx_errors - before.tx_errors,
        (tx.len() - expected.len()) as u64
    );
    Ok(())
}

/// Each chain's index and capacity.
fn capacities(chains: &[Vec<u32>]) -> Vec<(usize, u32)> {
    chains
        .iter()
        .enumerate()
        .map(|(n, sizes)| (n, sizes.iter().sum()))
        .collect()
}

/// The model's outcome of one frame: the chains it fills and what each
/// holds, or `None` when it is dropped.
fn model_rx(free: &mut Vec<(usize, u32)>, need: usize) -> Option<Vec<(usize, u32)>> {
    let total: usize = free.iter().map(|(_, cap)| *cap as usize).sum();
    if total < need {
        return None;
    }
    let mut used = Vec::new();
    let mut left = need;
    while left > 0 {
        let (chain, cap) = free.remove(0);
        let take = left.min(cap as usize);
        used.push((chain, take as u32));
        left -= take;
    }
    Some(used)
}

fn check_rx(
    rig: &mut NetRig,
    socket: &PacketSocket,
    chains: &[Vec<u32>],
    frames: &[usize],
) -> Result<(), TestCaseError> {
    let before = rig.device.counters().snapshot();
    let mut posted = Vec::new();
    for sizes in chains {
        posted.push(rig.post_rx(sizes));
    }
    rig.handlers.rx[0].handle_queue_notify().expect("rx");
    let mut sent = Vec::new();
    for (n, payload) in frames.iter().enumerate() {
        let frame = test_frame(GUEST_MAC, PEER_MAC, &pattern(*payload, 1000 + n as u64));
        socket.send(&frame);
        sent.push(frame);
    }
    // Frames the device takes from the tap: all until the chains run out
    // (then the rest wait in the tap for buffers).
    let mut free = capacities(chains);
    let mut taken = 0usize;
    for frame in &sent {
        if free.is_empty() {
            break;
        }
        model_rx(&mut free, NET_HDR_SIZE + frame.len());
        taken += 1;
    }
    let started = Instant::now();
    loop {
        rig.handlers.rx[0].handle_tap_event().expect("rx");
        let now = rig.device.counters().snapshot();
        let seen = (now.rx_frames + now.rx_dropped) - (before.rx_frames + before.rx_dropped);
        if seen == taken as u64 {
            break;
        }
        prop_assert!(started.elapsed() < WAIT, "frames did not all arrive");
        std::thread::sleep(Duration::from_millis(1));
    }
    let used_all = rig.used(0);
    let mut used = used_all.clone().into_iter();
    let mut free = capacities(chains);
    let mut delivered = 0u64;
    for frame in &sent[..taken] {
        let Some(fills) = model_rx(&mut free, NET_HDR_SIZE + frame.len()) else {
            continue;
        };
        delivered += 1;
        let mut got = Vec::new();
        for (chain, len) in &fills {
            let elem = used.next();
            let (head, bufs) = &posted[*chain];
            prop_assert_eq!(
                elem.map(|e| (e.id, e.len)),
                Some((u32::from(*head), *len)),
                "chains {:?} frames {:?} used {:?} heads {:?}",
                chains,
                frames,
                used_all,
                posted.iter().map(|p| p.0).collect::<Vec<_>>()
            );
            let mut left = *len as usize;
            for (addr, size) in bufs {
                let take = left.min(*size as usize);
                got.extend(rig.read(GuestAddress(addr.0), take));
                left -= take;
            }
        }
        let mut header = [0u8; NET_HDR_SIZE];
        header[10..12].copy_from_slice(&(fills.len() as u16).to_le_bytes());
        prop_assert_eq!(&got[..NET_HDR_SIZE], &header[..]);
        prop_assert_eq!(&got[NET_HDR_SIZE..], &frame[..]);
    }
    prop_assert!(
        used.next().is_none(),
        "more chains used than the model says"
    );
    let after = rig.device.counters().snapshot();
    prop_assert_eq!(after.rx_frames - before.rx_frames, delivered);
    Ok(())
}
