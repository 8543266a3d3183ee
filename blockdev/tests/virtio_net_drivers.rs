//! The virtio-net device driven by the `virtio-drivers` crate's
//! `VirtIONet` (a driver we did not write) over a tap in a fresh network
//! namespace: frames the driver sends arrive on the tap's kernel side
//! byte for byte, frames sent into the tap arrive at the driver byte for
//! byte, and the namespace's kernel answers the guest's ARP request and
//! ICMP echo. Needs root (network namespaces, /dev/net/tun) and iproute2.

mod net_support;
mod virtio_support;

use std::time::Instant;

use net_support::drivers_net::NetTransport;
use net_support::packet::{PacketSocket, QUIET, WAIT};
use net_support::{in_netns, ip, is_test_frame, open_tap, pattern, test_frame, GUEST_MAC};
use virtio_drivers::device::net::VirtIONet;
use virtio_support::drivers_hal::{install_guest, GuestHal};

type Net = VirtIONet<GuestHal, NetTransport, 16>;
const RX_BUF: usize = 2048;
const HOST_MAC_PLACEHOLDER: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const BROADCAST: [u8; 6] = [0xff; 6];

fn driver(tap: &str) -> (Net, NetTransport) {
    let taps = open_tap(tap, 1);
    let mem = install_guest();
    let transport = NetTransport::new(taps, GUEST_MAC, mem);
    let net = Net::new(transport.clone(), RX_BUF).expect("VirtIONet::new");
    (net, transport)
}

fn send(net: &mut Net, frame: &[u8]) {
    let mut tx = net.new_tx_buffer(frame.len());
    tx.packet_mut().copy_from_slice(frame);
    net.send(tx).expect("send");
}

/// The next frame the driver receives for which `wanted` holds, pumping
/// the device meanwhile.
fn receive(net: &mut Net, transport: &NetTransport, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let started = Instant::now();
    loop {
        transport.pump();
        match net.receive() {
            Ok(rx) => {
                let packet = rx.packet().to_vec();
                net.recycle_rx_buffer(rx).expect("recycle");
                if wanted(&packet) {
                    return packet;
                }
            }
            Err(virtio_drivers::Error::NotReady) => {
                assert!(started.elapsed() < WAIT, "no frame reached the driver");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("receive: {e:?}"),
        }
    }
}

#[test]
fn frames_cross_the_tap_both_ways_byte_identical() {
    in_netns(|| {
        let (mut net, transport) = driver("vnet0");
        assert_eq!(net.mac_address(), GUEST_MAC);
        let socket = PacketSocket::bind("vnet0", net_support::TEST_ETHERTYPE);
        for (n, len) in [0usize, 1, 46, 500, 1500].into_iter().enumerate() {
            let frame = test_frame(BROADCAST, GUEST_MAC, &pattern(len, n as u64));
            send(&mut net, &frame);
            let got = socket.recv(WAIT).expect("frame on the tap");
            assert_eq!(got, frame, "frame of {len} payload bytes");
        }
        assert!(socket.recv(QUIET).is_none(), "one frame per send");
        for (n, len) in [46usize, 777, 1500].into_iter().enumerate() {
            let frame = test_frame(
                GUEST_MAC,
                HOST_MAC_PLACEHOLDER,
                &pattern(len, 100 + n as u64),
            );
            socket.send(&frame);
            let got = receive(&mut net, &transport, is_test_frame);
            assert_eq!(got, frame, "frame of {len} payload bytes into the guest");
        }
        let stats = transport.inner.borrow().device.counters().snapshot();
        assert_eq!(stats.tx_frames, 5);
        assert_eq!(stats.tx_bytes, 5 * 14 + 1 + 46 + 500 + 1500);
        assert!(stats.rx_frames >= 3);
        assert_eq!(stats.tx_errors + stats.rx_errors, 0);
    });
}

/// The Internet checksum of `bytes`.
fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];

fn arp_request() -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&BROADCAST);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&GUEST_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&HOST_IP);
    frame
}

fn echo_request(dst_mac: [u8; 6], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let sum = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

#[test]
fn the_namespace_kernel_answers_arp_and_ping() {
    in_netns(|| {
        let (mut net, transport) = driver("vnet1");
        ip(&["addr", "add", "10.0.0.1/24", "dev", "vnet1"]);
        send(&mut net, &arp_request());
        let reply = receive(&mut net, &transport, |f| {
            f.len() >= 42 && f[12..14] == [8, 6]
        });
        assert_eq!(&reply[0..6], &GUEST_MAC, "ARP reply to the guest");
        assert_eq!(&reply[20..22], &[0, 2], "ARP opcode reply");
        assert_eq!(&reply[28..32], &HOST_IP, "sender is the host address");
        let host_mac: [u8; 6] = reply[22..28].try_into().expect("mac");
        assert_eq!(&reply[6..12], &host_mac);

        let payload = pattern(56, 7);
        send(&mut net, &echo_request(host_mac, 0x1234, 1, &payload));
        let reply = receive(&mut net, &transport, |f| {
            f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1
        });
        let icmp = &reply[34..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(&icmp[4..8], &[0x12, 0x34, 0, 1], "id and sequence");
        assert_eq!(&icmp[8..], &payload[..], "payload echoed");
        assert_eq!(inet_checksum(icmp), 0, "ICMP checksum");
        assert_eq!(inet_checksum(&reply[14..34]), 0, "IP header checksum");
    });
}
