//! Throughput of the virtio-net device model's data paths over a tap in a
//! network namespace, with our low-level driver in the same thread (no
//! guest, no VM exits): frames per second and MB/s each way. Ignored by
//! default (a measurement, not a check):
//!
//!     cargo test -p blockdev --release --test virtio_net_throughput -- --ignored --nocapture
//!
//! Transmit: batches of 32 chains of a 1514-byte frame, one kick each;
//! the kernel drops the frames after the tap (nobody listens). Receive: a
//! second thread sends 1514-byte frames into the tap with a packet
//! socket while the device reads them into 64 merged-buffer chains of
//! 2 KiB, reposted as they come back; the figure is bounded by the
//! sender, a packet socket write per frame.

mod net_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::virtio::driver::Segment;
use blockdev::virtio::net::defs::NET_HDR_SIZE;
use blockdev::virtio::net::header::NetHeader;
use net_support::packet::PacketSocket;
use net_support::{in_netns, pattern, test_frame, NetRig, GUEST_MAC, TEST_ETHERTYPE};

const FRAME: usize = 1514;
const RUN: Duration = Duration::from_secs(2);

#[test]
#[ignore]
fn device_paths_throughput() {
    in_netns(|| {
        let mut rig = NetRig::new("tput0", 1, NetRig::all_features());
        // Transmit.
        let frame = test_frame([0xff; 6], GUEST_MAC, &pattern(FRAME - 14, 1));
        let mut bytes = NetHeader::default().to_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        let addr = rig.buffer(&bytes);
        let segment = Segment {
            addr,
            len: bytes.len() as u32,
            device_writes: false,
        };
        let started = Instant::now();
        let mut frames = 0u64;
        while started.elapsed() < RUN {
            for _ in 0..32 {
                rig.add(1, &[segment]);
            }
            rig.handlers.tx[0].handle_queue_notify().expect("tx");
            frames += rig.used(1).len() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        let stats = rig.device.counters().snapshot();
        assert_eq!(stats.tx_frames, frames);
        println!(
            "tx: {:.0} frames/s, {:.0} MB/s of frames",
            frames as f64 / secs,
            (frames * FRAME as u64) as f64 / secs / 1e6
        );

        // Receive.
        // Head -> its buffer, reposted as it comes back.
        let mut buffers = std::collections::HashMap::new();
        for _ in 0..64 {
            let (head, bufs) = rig.post_rx(&[2048]);
            buffers.insert(u32::from(head), bufs[0].0);
        }
        rig.handlers.rx[0].handle_queue_notify().expect("rx");
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let socket = PacketSocket::bind("tput0", TEST_ETHERTYPE);
                let frame = test_frame(GUEST_MAC, [2, 0, 0, 0, 0, 3], &pattern(FRAME - 14, 2));
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    socket.send(&frame);
                    sent += 1;
                }
                sent
            })
        };
        let started = Instant::now();
        let mut frames = 0u64;
        while started.elapsed() < RUN {
            rig.handlers.rx[0].handle_tap_event().expect("rx");
            let used = rig.used(0);
            frames += used.len() as u64;
            // Take every returned buffer back before reposting any (a new
            // chain may reuse a returned head).
            let returned: Vec<_> = used
                .iter()
                .map(|elem| {
                    assert_eq!(elem.len as usize, NET_HDR_SIZE + FRAME);
                    buffers.remove(&elem.id).expect("posted")
                })
                .collect();
            for addr in returned {
                let head = rig.add(
                    0,
                    &[Segment {
                        addr,
                        len: 2048,
                        device_writes: true,
                    }],
                );
                buffers.insert(u32::from(head), addr);
            }
            rig.handlers.rx[0].handle_queue_notify().expect("rx");
        }
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("sender");
        let stats = rig.device.counters().snapshot();
        println!(
            "rx: {:.0} frames/s, {:.0} MB/s of frames ({sent} sent, {} dropped for lack of buffers or room)",
            frames as f64 / secs,
            (frames * FRAME as u64) as f64 / secs / 1e6,
            stats.rx_dropped
        );
        assert!(frames > 0);
    });
}
