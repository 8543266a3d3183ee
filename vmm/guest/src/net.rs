//! `guest.mode=net` and `guest.mode=net-bad`: the NIC driven by
//! virtio-drivers' `VirtIONetRaw` (code we did not write), answering, for
//! the address `guest.ip=A.B.C.D` (default 10.0.2.15):
//! - ARP requests for it;
//! - ICMP echo requests (ping);
//! - UDP to port 7 (echo): the datagram comes back as it came;
//! - UDP to port 9 with the payload `reset`: the guest prints its
//!   counters and resets (the clean end of a test).
//!
//! It prints `guest: net ready mac=... ip=...` once its receive buffers
//! are posted: 32 of them, or `guest.rx_buffers=N` (1 to 64), fewer than
//! the device's receive batch of 16, which only its batch timer serves. `net-bad` first sends frames whose vnet headers the device
//! must refuse (an unknown GSO type, a checksum offset past the frame, a
//! GSO frame with a zero gso_size, a header alone), prints `guest: net-bad
//! sent N`, then serves as `net` does: the device survived if it answers.

use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::arch::{self, VIRTIO_VECTOR};
use crate::cmdline::{self, MmioDevice};
use crate::console::{put_dec, put_str};
use crate::disk::{error_name, wait_used, Failure};
use crate::hal::GuestHal;
use crate::mem::alloc_buffer;

/// Descriptors per queue.
const QUEUE_SIZE: usize = 64;
/// Receive buffers posted (one descriptor each) unless
/// `guest.rx_buffers=` says otherwise.
const RX_BUFFERS: usize = 32;
/// Bytes of each receive buffer: the 12-byte header and a 1514-byte frame
/// fit (virtio-drivers' minimum is 1526).
const RX_BUFFER_LEN: usize = 2048;
/// Bytes of the vnet header (VERSION_1).
const NET_HDR_LEN: usize = 12;
/// UDP payload bytes of each datagram the source port sends.
pub(crate) const SOURCE_PAYLOAD: usize = 1400;
/// Most datagrams one source request asks for.
const MAX_SOURCE_COUNT: u64 = 1 << 20;
/// Our default address (QEMU's user-network guest address).
const DEFAULT_IP: [u8; 4] = [10, 0, 2, 15];

type Net = VirtIONetRaw<GuestHal, MmioTransport<'static>, QUEUE_SIZE>;

/// What the guest answered, printed at the end.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) arp: u64,
    pub(crate) icmp: u64,
    pub(crate) udp: u64,
    pub(crate) ignored: u64,
    /// Datagrams to the discard port, and their payload bytes.
    discarded: u64,
    discarded_bytes: u64,
}

/// The first virtio-mmio device on the command line whose registers say
/// it is a network card (our VMM puts the disks' slots first, so a VM may
/// also have a disk, as an in-image snapshot needs; QEMU's microvm lists
/// empty transports too).
pub(crate) fn find_network_device(cmdline: &[u8]) -> Option<MmioDevice> {
    cmdline::mmio_devices(cmdline).find(|device| {
        if device.size < 0x200 || device.base == 0 || device.base >= 1 << 32 {
            return false;
        }
        let register = |offset: u64| {
            // SAFETY: the VMM maps a virtio-mmio register window of `size`
            // bytes (at least 0x200) at `base`, identity-mapped below 4 GiB;
            // reading its MagicValue and DeviceID has no side effect.
            unsafe { core::ptr::read_volatile((device.base + offset) as *const u32) }
        };
        register(0) == 0x7472_6976 && register(8) == 1
    })
}

/// Runs the NIC test on the first network device (see
/// [`find_network_device`]); returns only on failure.
pub fn run(cmdline: &[u8], bad_first: bool) -> Result<(), Failure> {
    let device = find_network_device(cmdline).ok_or(Failure::Other(
        "no virtio-net among the virtio_mmio.device entries, count",
        cmdline::mmio_device_count(cmdline) as u64,
    ))?;
    let ip = guest_ip(cmdline)?;
    let mut peer = crate::peer::Peer::from_cmdline(cmdline)?;
    let mut net = open(&device)?;
    let mac = net.mac_address();
    let probe = alloc_buffer(RX_BUFFER_LEN).ok_or(Failure::Other("out of memory for probes", 0))?;
    if bad_first {
        let sent = send_malformed(&mut net)?;
        put_str("guest: net-bad sent ");
        put_dec(sent);
        put_str("\n");
    }
    // Receive buffers, each posted under the token (descriptor head) the
    // driver returns.
    let mut buffers: [Option<&'static mut [u8]>; QUEUE_SIZE] = [const { None }; QUEUE_SIZE];
    for _ in 0..rx_buffers(cmdline)? {
        let buffer =
            alloc_buffer(RX_BUFFER_LEN).ok_or(Failure::Other("out of memory for rx", 0))?;
        post(&mut net, &mut buffers, buffer)?;
    }
    put_str("guest: net ready");
    put_addresses(&mac, &ip);
    let mut tally = Tally::default();
    let net_ptr: *mut Net = &mut *net;
    loop {
        // SAFETY: the closures run one after the other on this single
        // thread, never while another borrow of the driver is live.
        let ready = || unsafe { (*net_ptr).poll_receive().is_some() };
        let ack = || {
            // SAFETY: as above.
            unsafe { (*net_ptr).ack_interrupt() };
        };
        let timeout = if peer.as_ref().is_some_and(|p| p.pending()) {
            20
        } else {
            1000
        };
        let woken = wait_used(ready, ack, timeout);
        if let Some(peer) = peer.as_mut() {
            let written = net
                .fill_buffer_header(probe)
                .map_err(|e| Failure::Driver("tx header", e))?;
            if let Some(len) = peer.probe(mac, ip, &mut probe[written..]) {
                transmit(&mut net, &probe[..written + len])?;
            }
        }
        if !woken {
            continue;
        }
        while let Some(token) = net.poll_receive() {
            let buffer = buffers
                .get_mut(usize::from(token))
                .and_then(Option::take)
                .ok_or(Failure::Other("unknown rx token", u64::from(token)))?;
            // SAFETY: the buffer posted under this token.
            let (header, length) = unsafe { net.receive_complete(token, buffer) }
                .map_err(|e| Failure::Driver("receive", e))?;
            if header > buffer.len() || length > buffer.len() - header {
                return Err(Failure::Other("bad receive length", length as u64));
            }
            if let Some(peer) = peer.as_mut() {
                if peer.observe(&buffer[header..header + length]) {
                    post(&mut net, &mut buffers, buffer)?;
                    continue;
                }
            }
            let frame = &mut buffer[header..];
            match answer(frame, length, mac, ip, &mut tally) {
                Answer::Reply(len) => {
                    // The reply's header is the size the request's was
                    // (12 bytes, or 10 on a legacy device).
                    let written = net
                        .fill_buffer_header(buffer)
                        .map_err(|e| Failure::Driver("tx header", e))?;
                    transmit(&mut net, &buffer[..written + len])?;
                }
                Answer::Source { count, ip_header } => {
                    let written = net
                        .fill_buffer_header(buffer)
                        .map_err(|e| Failure::Driver("tx header", e))?;
                    let payload = written + 14 + ip_header + 8;
                    for seq in 0..count {
                        buffer[payload..payload + 8].copy_from_slice(&seq.to_le_bytes());
                        transmit(&mut net, &buffer[..payload + SOURCE_PAYLOAD])?;
                    }
                }
                Answer::Reset => {
                    put_str("guest: net done arp=");
                    put_dec(tally.arp);
                    put_str(" icmp=");
                    put_dec(tally.icmp);
                    put_str(" udp=");
                    put_dec(tally.udp);
                    put_str(" ignored=");
                    put_dec(tally.ignored);
                    put_str(" irqs=");
                    put_dec(arch::virtio_irqs());
                    put_str(" ticks=");
                    put_dec(arch::ticks());
                    put_str("\n");
                    return Ok(());
                }
                Answer::None => {}
            }
            post(&mut net, &mut buffers, buffer)?;
        }
    }
}

/// The receive buffers to post: `guest.rx_buffers=N`, 1 to the queue's
/// size, or [`RX_BUFFERS`].
fn rx_buffers(cmdline: &[u8]) -> Result<usize, Failure> {
    let Some(text) = cmdline::value(cmdline, b"guest.rx_buffers=") else {
        return Ok(RX_BUFFERS);
    };
    match cmdline::parse_number(text) {
        Some(n) if (1..=QUEUE_SIZE as u64).contains(&n) => Ok(n as usize),
        Some(n) => Err(Failure::Other("guest.rx_buffers= out of 1..=64", n)),
        None => Err(Failure::Other(
            "bad guest.rx_buffers=, length",
            text.len() as u64,
        )),
    }
}

/// The guest's address: `guest.ip=` of the command line, or the default.
pub(crate) fn guest_ip(cmdline: &[u8]) -> Result<[u8; 4], Failure> {
    match cmdline::value(cmdline, b"guest.ip=") {
        None => Ok(DEFAULT_IP),
        Some(text) => {
            parse_ip(text).ok_or(Failure::Other("bad guest.ip=, length", text.len() as u64))
        }
    }
}

/// Prints ` mac=AA:BB:CC:DD:EE:FF ip=A.B.C.D` and the line's end: the
/// address part of a ready line.
pub(crate) fn put_addresses(mac: &[u8; 6], ip: &[u8; 4]) {
    put_str(" mac=");
    for (i, byte) in mac.iter().enumerate() {
        if i > 0 {
            put_str(":");
        }
        put_hex2(*byte);
    }
    put_str(" ip=");
    for (i, byte) in ip.iter().enumerate() {
        if i > 0 {
            put_str(".");
        }
        put_dec(u64::from(*byte));
    }
    put_str("\n");
}

pub(crate) fn put_hex2(byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    crate::console::put_byte(DIGITS[usize::from(byte >> 4)]);
    crate::console::put_byte(DIGITS[usize::from(byte & 15)]);
}

pub(crate) fn parse_ip(text: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for byte in &mut ip {
        let value = cmdline::parse_number(parts.next()?)?;
        *byte = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// Routes the interrupt and initialises the driver; never dropped (see
/// `disk::open`).
fn open(device: &MmioDevice) -> Result<ManuallyDrop<Net>, Failure> {
    if device.size < 0x200 || device.base == 0 || device.base >= 1 << 32 {
        return Err(Failure::Other(
            "bad virtio_mmio.device window at",
            device.base,
        ));
    }
    arch::route_gsi(device.irq, VIRTIO_VECTOR);
    let header = NonNull::new(device.base as *mut VirtIOHeader)
        .ok_or(Failure::Other("virtio_mmio.device at", 0))?;
    // SAFETY: the VMM maps a virtio-mmio register window of `size` bytes at
    // `base` (identity-mapped), used by nothing else for the guest's life.
    let transport = unsafe { MmioTransport::new(header, device.size as usize) }
        .map_err(|_| Failure::Other("no virtio-mmio device at", device.base))?;
    if transport.device_type() != DeviceType::Network {
        return Err(Failure::Other("not a network device at", device.base));
    }
    let mut net = Net::new(transport).map_err(|error| Failure::Driver("init", error))?;
    net.enable_interrupts();
    Ok(ManuallyDrop::new(net))
}

/// Posts `buffer` for receiving, remembering it under its token.
fn post(
    net: &mut Net,
    buffers: &mut [Option<&'static mut [u8]>; QUEUE_SIZE],
    buffer: &'static mut [u8],
) -> Result<(), Failure> {
    // SAFETY: the buffer is 'static and not touched until its token comes
    // back from poll_receive.
    let token = unsafe { net.receive_begin(buffer) }.map_err(|e| Failure::Driver("post rx", e))?;
    let slot = buffers
        .get_mut(usize::from(token))
        .ok_or(Failure::Other("rx token out of range", u64::from(token)))?;
    *slot = Some(buffer);
    Ok(())
}

/// Sends `frame` (vnet header included) and waits until the device has
/// taken it. Whether the device sent or refused the frame, it returns the
/// chain; that is all a driver sees.
fn transmit(net: &mut Net, frame: &[u8]) -> Result<(), Failure> {
    // SAFETY: `frame` is not touched until the token comes back below.
    let token = unsafe { net.transmit_begin(frame) }.map_err(|e| Failure::Driver("transmit", e))?;
    let mut spins: u64 = 0;
    while net.poll_transmit() != Some(token) {
        spins += 1;
        if spins > 100_000_000 {
            return Err(Failure::Other(
                "transmit never completed, token",
                u64::from(token),
            ));
        }
        core::hint::spin_loop();
    }
    // SAFETY: the same buffer as submitted.
    unsafe { net.transmit_complete(token, frame) }
        .map(|_| ())
        .map_err(|e| {
            put_str("guest: net transmit_complete ");
            put_str(error_name(&e));
            put_str("\n");
            Failure::Driver("transmit complete", e)
        })
}

/// Frames with vnet headers a device must refuse, each sent and waited
/// for; how many.
fn send_malformed(net: &mut Net) -> Result<u64, Failure> {
    let frame = alloc_buffer(RX_BUFFER_LEN).ok_or(Failure::Other("out of memory for bad", 0))?;
    // A broadcast frame of an unused ethertype with 100 bytes of payload.
    let frame_len = NET_HDR_LEN + 14 + 100;
    let mut sent = 0;
    // (flags, gso_type, gso_size, csum_start, csum_offset, length)
    let cases: [(u8, u8, u16, u16, u16, usize); 4] = [
        (0, 0x7f, 0, 0, 0, frame_len), // unknown GSO type
        (1, 0, 0, 100, 60, frame_len), // checksum past the frame
        (0, 1, 0, 0, 0, frame_len),    // TCPv4 GSO, gso_size 0
        (0, 0, 0, 0, 0, NET_HDR_LEN),  // a header and no frame
    ];
    for (flags, gso_type, gso_size, csum_start, csum_offset, length) in cases {
        frame[..RX_BUFFER_LEN].fill(0);
        frame[0] = flags;
        frame[1] = gso_type;
        frame[4..6].copy_from_slice(&gso_size.to_le_bytes());
        frame[6..8].copy_from_slice(&csum_start.to_le_bytes());
        frame[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        frame[NET_HDR_LEN..NET_HDR_LEN + 6].fill(0xff);
        frame[NET_HDR_LEN + 12] = 0x88;
        frame[NET_HDR_LEN + 13] = 0xb5;
        transmit(net, &frame[..length])?;
        sent += 1;
    }
    Ok(sent)
}

/// What to do about a frame.
pub(crate) enum Answer {
    /// Send the first N bytes of the reply buffer.
    Reply(usize),
    /// Send `count` datagrams of [`SOURCE_PAYLOAD`] bytes (the frame is
    /// their header).
    Source { count: u64, ip_header: usize },
    /// The test is over.
    Reset,
    /// Nothing.
    None,
}

/// Makes the IPv4 frame's reply addressing: MACs and IP addresses
/// swapped (the IP header checksum does not change when its words swap),
/// and for UDP (`payload` is where the IP payload starts) the ports
/// swapped and the checksum cleared (allowed over IPv4).
fn swap_addresses(frame: &mut [u8], payload: usize, mac: [u8; 6], ip: [u8; 4], peer_mac: &[u8; 6]) {
    frame[0..6].copy_from_slice(peer_mac);
    frame[6..12].copy_from_slice(&mac);
    let mut peer_ip = [0u8; 4];
    peer_ip.copy_from_slice(&frame[26..30]);
    frame[26..30].copy_from_slice(&ip);
    frame[30..34].copy_from_slice(&peer_ip);
    if frame[23] == 17 {
        let mut ports = [0u8; 4];
        ports.copy_from_slice(&frame[payload..payload + 4]);
        frame[payload..payload + 2].copy_from_slice(&ports[2..4]);
        frame[payload + 2..payload + 4].copy_from_slice(&ports[0..2]);
        frame[payload + 6] = 0;
        frame[payload + 7] = 0;
    }
}

/// The ones' complement sum of `bytes` as 16-bit big-endian words.
pub(crate) fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sets a UDP datagram's IP total length (and header checksum) and UDP
/// length for `payload_len` bytes of payload, with no UDP checksum.
fn resize_udp(frame: &mut [u8], ip_header: usize, payload_len: usize) {
    let total = (ip_header + 8 + payload_len) as u16;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24] = 0;
    frame[25] = 0;
    let sum = checksum(&frame[14..14 + ip_header]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    let udp = 14 + ip_header;
    frame[udp + 4..udp + 6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    frame[udp + 6] = 0;
    frame[udp + 7] = 0;
}

/// Turns the frame of `length` bytes at the start of `frame` (without
/// the vnet header; the rest of the slice is room) into its answer in
/// place (no copy of the payload: the guest runs under an emulator that
/// pays for every byte it moves). UDP ports: 7 echo, 9 discard (`count`
/// answers the datagrams and bytes discarded, `reset` ends the test), 19
/// source (a little-endian u32 N asks for N datagrams).
pub(crate) fn answer(
    frame: &mut [u8],
    length: usize,
    mac: [u8; 6],
    ip: [u8; 4],
    tally: &mut Tally,
) -> Answer {
    if length < 14 || frame.len() < 14 + 60 + 8 + SOURCE_PAYLOAD {
        tally.ignored += 1;
        return Answer::None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut peer_mac = [0u8; 6];
    peer_mac.copy_from_slice(&frame[6..12]);
    match ethertype {
        0x0806
            if length >= 42 && frame[14..22] == [0, 1, 8, 0, 6, 4, 0, 1] && frame[38..42] == ip =>
        {
            // ARP request for us: the reply goes to the asker.
            let mut peer_ip = [0u8; 4];
            peer_ip.copy_from_slice(&frame[28..32]);
            frame[0..6].copy_from_slice(&peer_mac);
            frame[6..12].copy_from_slice(&mac);
            frame[20..22].copy_from_slice(&[0, 2]);
            frame[22..28].copy_from_slice(&mac);
            frame[28..32].copy_from_slice(&ip);
            frame[32..38].copy_from_slice(&peer_mac);
            frame[38..42].copy_from_slice(&peer_ip);
            tally.arp += 1;
            Answer::Reply(42)
        }
        0x0800 if length >= 34 && frame[14] >> 4 == 4 && frame[30..34] == ip => {
            let header_len = usize::from(frame[14] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if header_len < 20 || total < header_len + 8 || 14 + total > length {
                tally.ignored += 1;
                return Answer::None;
            }
            let frame_len = 14 + total;
            let payload = 14 + header_len;
            let protocol = frame[23];
            if protocol == 17 {
                let port = u16::from_be_bytes([frame[payload + 2], frame[payload + 3]]);
                let data = &frame[payload + 8..frame_len];
                match port {
                    9 if data == b"reset" => return Answer::Reset,
                    9 if data == b"count" => {
                        let mut counts = [0u8; 16];
                        counts[..8].copy_from_slice(&tally.discarded.to_le_bytes());
                        counts[8..].copy_from_slice(&tally.discarded_bytes.to_le_bytes());
                        frame[payload + 8..payload + 24].copy_from_slice(&counts);
                        resize_udp(frame, header_len, 16);
                    }
                    9 => {
                        tally.discarded += 1;
                        tally.discarded_bytes += data.len() as u64;
                        return Answer::None;
                    }
                    19 if data.len() >= 4 => {
                        let count =
                            u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
                                .min(MAX_SOURCE_COUNT);
                        resize_udp(frame, header_len, SOURCE_PAYLOAD);
                        for (i, byte) in frame[payload + 8..payload + 8 + SOURCE_PAYLOAD]
                            .iter_mut()
                            .enumerate()
                        {
                            *byte = i as u8;
                        }
                        swap_addresses(frame, payload, mac, ip, &peer_mac);
                        return Answer::Source {
                            count,
                            ip_header: header_len,
                        };
                    }
                    7 => {}
                    _ => {
                        tally.ignored += 1;
                        return Answer::None;
                    }
                }
            } else if protocol != 1 || frame[payload] != 8 {
                tally.ignored += 1;
                return Answer::None;
            }
            let reply_len = 14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if protocol == 17 {
                swap_addresses(frame, payload, mac, ip, &peer_mac);
                tally.udp += 1;
                return Answer::Reply(reply_len);
            }
            swap_addresses(frame, payload, mac, ip, &peer_mac);
            if protocol == 1 {
                frame[payload] = 0;
                frame[payload + 2] = 0;
                frame[payload + 3] = 0;
                let sum = checksum(&frame[payload..frame_len]);
                frame[payload + 2..payload + 4].copy_from_slice(&sum.to_be_bytes());
                tally.icmp += 1;
            }
            Answer::Reply(frame_len)
        }
        _ => {
            tally.ignored += 1;
            Answer::None
        }
    }
}
