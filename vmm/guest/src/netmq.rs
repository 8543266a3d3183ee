//! `guest.mode=net-mq`: a virtio-net driver of our own (virtio-drivers'
//! `VirtIONet` never negotiates MQ or CTRL_VQ) that takes VERSION_1, MAC,
//! STATUS, CTRL_VQ, MQ and GUEST_ANNOUNCE, sets up every queue pair the
//! device has (up to [`MAX_PAIRS`], or `guest.pairs=N`) and the control
//! queue, and:
//! - sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET for them, then malformed
//!   control commands a device must refuse (an unknown class, an unknown
//!   MQ command, 0 pairs, more pairs than the device has, a command of one
//!   byte, VQ_PAIRS_SET with one data byte, a chain without an ack byte,
//!   ANNOUNCE_ACK with nothing to ack) and prints what each got:
//!   `guest: net-mq ctrl set=OK bad-class=ERR ... no-ack=unanswered ...`;
//! - prints `guest: net-mq ready pairs=N of M mac=... ip=...`, then
//!   answers ARP, ping and UDP (echo, discard, source, as `guest.mode=net`
//!   does: the same `net::answer`) on every pair's receive queue, each
//!   reply sent on the transmit queue of the pair it came in on;
//! - on a configuration interrupt whose `status` has
//!   VIRTIO_NET_S_ANNOUNCE (after a restore or a migration) sends a
//!   gratuitous ARP for its address on pair 0 and acks with
//!   VIRTIO_NET_CTRL_ANNOUNCE_ACK: `guest: net-mq announced ack=OK
//!   status=0x..` (the status read after the ack);
//! - on UDP `reset` to port 9 prints `guest: net-mq done pairs=N
//!   rx=a,b,.. tx=a,b,.. arp=.. icmp=.. udp=.. ignored=.. announced=..`
//!   (frames per pair) and resets.

use core::cell::Cell;

use crate::arch::{self, VIRTIO_VECTOR};
use crate::cmdline;
use crate::console::{put_dec, put_hex, put_str};
use crate::disk::{wait_used, Failure};
use crate::mem::alloc_buffer;
use crate::net::{
    answer, find_network_device, guest_ip, put_addresses, Answer, Tally, SOURCE_PAYLOAD,
};
use crate::virtq::{
    Regs, SplitQueue, DESC_F_NEXT, DESC_F_WRITE, INTERRUPT_ACK, INTERRUPT_STATUS, STATUS,
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// Most queue pairs this driver uses.
const MAX_PAIRS: usize = 8;
/// Entries of each queue, and receive buffers per receive queue.
const QUEUE_SIZE: u16 = 16;
/// Bytes of each receive buffer (the 12-byte header and a 1514-byte frame).
const RX_BUFFER_LEN: usize = 2048;
/// Bytes of the vnet header (VERSION_1).
const NET_HDR_LEN: usize = 12;
/// Our default address.
const DEFAULT_IP: [u8; 4] = [10, 0, 2, 15];

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_GUEST_ANNOUNCE: u64 = 1 << 21;
const F_MQ: u64 = 1 << 22;
const F_VERSION_1: u64 = 1 << 32;
const WANTED_FEATURES: u64 = F_VERSION_1 | F_MAC | F_STATUS | F_CTRL_VQ | F_MQ | F_GUEST_ANNOUNCE;

/// Configuration offsets: `status`, `max_virtqueue_pairs`.
const CONFIG_STATUS: usize = 6;
const CONFIG_MAX_PAIRS: usize = 8;
const S_ANNOUNCE: u16 = 2;

const CTRL_CLASS_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_CLASS_ANNOUNCE: u8 = 3;
const CTRL_ANNOUNCE_ACK: u8 = 0;
const CTRL_OK: u8 = 0;
/// What the ack byte holds before the device answers.
const ACK_UNWRITTEN: u8 = 0xee;

/// What a control command got back.
#[derive(Clone, Copy, PartialEq)]
enum Reply {
    /// The device wrote this ack byte.
    Ack(u8),
    /// The device returned the chain without writing an ack.
    Unanswered,
}

/// The control queue and its command and ack buffers.
struct Ctrl {
    queue: SplitQueue,
    command: &'static mut [u8],
    ack: &'static mut [u8],
}

impl Ctrl {
    /// Sends `bytes` (class, command, data) with an ack byte after them
    /// when `with_ack`, and waits for the device to return the chain.
    fn send(&mut self, regs: &Regs, bytes: &[u8], with_ack: bool) -> Result<Reply, Failure> {
        if bytes.is_empty() || bytes.len() > self.command.len() {
            return Err(Failure::Other("control command length", bytes.len() as u64));
        }
        self.command[..bytes.len()].copy_from_slice(bytes);
        self.ack[0] = ACK_UNWRITTEN;
        let flags = if with_ack { DESC_F_NEXT } else { 0 };
        self.queue.write_desc(
            0,
            self.command.as_ptr() as u64,
            bytes.len() as u32,
            flags,
            1,
        );
        self.queue
            .write_desc(1, self.ack.as_ptr() as u64, 1, DESC_F_WRITE, 0);
        let (_, written) = self.queue.submit_and_wait(regs, 0)?;
        // SAFETY: the ack byte is ours again once the chain came back; the
        // device wrote it through DMA, so read it volatile.
        let ack = unsafe { self.ack.as_ptr().read_volatile() };
        Ok(if written == 0 || ack == ACK_UNWRITTEN {
            Reply::Unanswered
        } else {
            Reply::Ack(ack)
        })
    }
}

/// One queue pair: its queues and receive buffers (buffer i under
/// descriptor i), and the frames it carried.
struct Pair {
    rx: SplitQueue,
    tx: SplitQueue,
    buffers: [usize; QUEUE_SIZE as usize],
    received: u64,
    sent: u64,
}

impl Pair {
    /// Posts receive buffer `slot`.
    fn post(&mut self, slot: u16) {
        let address = self.buffers[usize::from(slot)] as u64;
        self.rx
            .write_desc(slot, address, RX_BUFFER_LEN as u32, DESC_F_WRITE, 0);
        self.rx.push(slot);
    }

    /// Sends `frame` (vnet header included) and waits until the device
    /// has taken it.
    fn transmit(&mut self, regs: &Regs, frame: &[u8]) -> Result<(), Failure> {
        self.tx
            .write_desc(0, frame.as_ptr() as u64, frame.len() as u32, 0, 0);
        self.tx.submit_and_wait(regs, 0)?;
        self.sent += 1;
        Ok(())
    }
}

/// Runs the multiqueue NIC test; returns only on failure or at `reset`.
pub fn run(cmdline: &[u8]) -> Result<(), Failure> {
    let device = find_network_device(cmdline).ok_or(Failure::Other(
        "no virtio-net among the virtio_mmio.device entries, count",
        cmdline::mmio_device_count(cmdline) as u64,
    ))?;
    let ip = guest_ip(cmdline)?;
    let wanted_pairs = match cmdline::value(cmdline, b"guest.pairs=") {
        None => MAX_PAIRS as u64,
        Some(text) => cmdline::parse_number(text)
            .filter(|&n| n >= 1)
            .ok_or(Failure::Other(
                "bad guest.pairs=, length",
                text.len() as u64,
            ))?,
    };
    let regs = Regs::new(&device)?;
    // Reset, then negotiate (virtio 1.2, 3.1.1).
    regs.write(STATUS, 0);
    regs.write(STATUS, STATUS_ACKNOWLEDGE);
    regs.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let offered = regs.device_features();
    for (bit, what) in [
        (F_VERSION_1, "device lacks VERSION_1, features"),
        (F_CTRL_VQ, "device lacks CTRL_VQ, features"),
        (F_MQ, "device lacks MQ, features"),
    ] {
        if offered & bit == 0 {
            return Err(Failure::Other(what, offered));
        }
    }
    let features = offered & WANTED_FEATURES;
    regs.set_driver_features(features);
    regs.write(
        STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    if regs.read(STATUS) & STATUS_FEATURES_OK as u32 == 0 {
        return Err(Failure::Other("device refused our features", features));
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = regs.config_byte(i);
    }
    let max_pairs = regs.config_u16(CONFIG_MAX_PAIRS);
    if max_pairs < 2 {
        return Err(Failure::Other("max_virtqueue_pairs", u64::from(max_pairs)));
    }
    let pairs_used = u64::from(max_pairs).min(MAX_PAIRS as u64).min(wanted_pairs) as usize;
    // The queues: pair N's at 2N and 2N+1, the control queue after every
    // pair the device has.
    let mut pairs: [Option<Pair>; MAX_PAIRS] = [const { None }; MAX_PAIRS];
    for (index, slot) in pairs.iter_mut().enumerate().take(pairs_used) {
        let rx = SplitQueue::setup(&regs, 2 * index as u16, QUEUE_SIZE)?;
        let tx = SplitQueue::setup(&regs, 2 * index as u16 + 1, QUEUE_SIZE)?;
        let mut buffers = [0usize; QUEUE_SIZE as usize];
        for buffer in &mut buffers {
            *buffer = alloc_buffer(RX_BUFFER_LEN)
                .ok_or(Failure::Other("out of memory for rx", index as u64))?
                .as_mut_ptr() as usize;
        }
        *slot = Some(Pair {
            rx,
            tx,
            buffers,
            received: 0,
            sent: 0,
        });
    }
    let ctrl_buffer = alloc_buffer(128).ok_or(Failure::Other("out of memory for ctrl", 0))?;
    let (command, ack) = ctrl_buffer.split_at_mut(64);
    let mut ctrl = Ctrl {
        queue: SplitQueue::setup(&regs, 2 * max_pairs, QUEUE_SIZE)?,
        command,
        ack,
    };
    arch::route_gsi(device.irq, VIRTIO_VECTOR);
    regs.write(
        STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    for pair in pairs.iter_mut().flatten() {
        for slot in 0..QUEUE_SIZE {
            pair.post(slot);
        }
        pair.rx.notify(&regs);
    }
    control_commands(&regs, &mut ctrl, pairs_used as u16, max_pairs)?;
    put_str("guest: net-mq ready pairs=");
    put_dec(pairs_used as u64);
    put_str(" of ");
    put_dec(u64::from(max_pairs));
    put_addresses(&mac, &ip);
    let announce_frame =
        alloc_buffer(NET_HDR_LEN + 42).ok_or(Failure::Other("out of memory for garp", 0))?;
    let mut announced = 0u64;
    let mut tally = Tally::default();
    let config_changed = Cell::new(false);
    loop {
        let woken = wait_used(
            || config_changed.get() || pairs.iter().flatten().any(|p| p.rx.has_used()),
            || {
                let pending = regs.read(INTERRUPT_STATUS);
                if pending != 0 {
                    regs.write(INTERRUPT_ACK, pending);
                }
                if pending & 2 != 0 {
                    config_changed.set(true);
                }
            },
            1000,
        );
        if !woken {
            continue;
        }
        if config_changed.replace(false) && regs.config_u16(CONFIG_STATUS) & S_ANNOUNCE != 0 {
            let pair = pairs[0].as_mut().ok_or(Failure::Other("no pair 0", 0))?;
            gratuitous_arp(announce_frame, mac, ip);
            pair.transmit(&regs, announce_frame)?;
            let reply = ctrl.send(&regs, &[CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK], true)?;
            announced += 1;
            put_str("guest: net-mq announced");
            put_reply(" ack", reply);
            put_str(" status=");
            put_hex(u64::from(regs.config_u16(CONFIG_STATUS)));
            put_str("\n");
        }
        let mut done = false;
        for pair in pairs.iter_mut().flatten() {
            let mut reposted = false;
            while let Some((head, written)) = pair.rx.pop_used() {
                let slot = head % QUEUE_SIZE;
                let address = pair.buffers[usize::from(slot)];
                // SAFETY: the buffer posted under this descriptor, ours
                // again now that the device returned it; RX_BUFFER_LEN
                // bytes of RAM the allocator gave this pair alone.
                let buffer =
                    unsafe { core::slice::from_raw_parts_mut(address as *mut u8, RX_BUFFER_LEN) };
                let written = written as usize;
                if (NET_HDR_LEN..=RX_BUFFER_LEN).contains(&written) {
                    pair.received += 1;
                    let length = written - NET_HDR_LEN;
                    match answer(&mut buffer[NET_HDR_LEN..], length, mac, ip, &mut tally) {
                        Answer::Reply(len) => {
                            buffer[..NET_HDR_LEN].fill(0);
                            pair.transmit(&regs, &buffer[..NET_HDR_LEN + len])?;
                        }
                        Answer::Source { count, ip_header } => {
                            buffer[..NET_HDR_LEN].fill(0);
                            let payload = NET_HDR_LEN + 14 + ip_header + 8;
                            for seq in 0..count {
                                buffer[payload..payload + 8].copy_from_slice(&seq.to_le_bytes());
                                pair.transmit(&regs, &buffer[..payload + SOURCE_PAYLOAD])?;
                            }
                        }
                        Answer::Reset => done = true,
                        Answer::None => {}
                    }
                }
                pair.post(slot);
                reposted = true;
            }
            if reposted {
                pair.rx.notify(&regs);
            }
        }
        if done {
            finish(&pairs, &tally, announced);
            return Ok(());
        }
    }
}

/// VQ_PAIRS_SET for `pairs`, then the malformed commands; fails unless
/// the first is acked OK and every other one refused.
fn control_commands(regs: &Regs, ctrl: &mut Ctrl, pairs: u16, max: u16) -> Result<(), Failure> {
    let set = |n: u16| {
        let [low, high] = n.to_le_bytes();
        [CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, low, high]
    };
    let reply = ctrl.send(regs, &set(pairs), true)?;
    put_str("guest: net-mq ctrl");
    put_reply(" set", reply);
    let cases: [(&str, &[u8], bool); 8] = [
        (" bad-class", &[0x7f, 0, 1, 0], true),
        (" bad-command", &[CTRL_CLASS_MQ, 0x55, 1, 0], true),
        (" pairs-0", &set(0), true),
        (" pairs-over", &set(max + 1), true),
        (" short", &[CTRL_CLASS_MQ], true),
        (
            " short-data",
            &[CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, 1],
            true,
        ),
        (" no-ack", &set(1), false),
        (
            " ack-unasked",
            &[CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK],
            true,
        ),
    ];
    let mut all_refused = true;
    for (name, bytes, with_ack) in cases {
        let got = ctrl.send(regs, bytes, with_ack)?;
        put_reply(name, got);
        all_refused &= got != Reply::Ack(CTRL_OK);
    }
    put_str("\n");
    if reply != Reply::Ack(CTRL_OK) {
        return Err(Failure::Other(
            "VQ_PAIRS_SET refused for pairs",
            u64::from(pairs),
        ));
    }
    if !all_refused {
        return Err(Failure::Other(
            "a malformed control command was acked OK",
            0,
        ));
    }
    Ok(())
}

/// Prints ` name=OK`, `=ERR`, `=unanswered` or `=<ack byte>`.
fn put_reply(name: &str, reply: Reply) {
    put_str(name);
    put_str("=");
    match reply {
        Reply::Ack(0) => put_str("OK"),
        Reply::Ack(1) => put_str("ERR"),
        Reply::Ack(other) => put_dec(u64::from(other)),
        Reply::Unanswered => put_str("unanswered"),
    }
}

/// Writes a gratuitous ARP (a broadcast request for our own address, as
/// Linux's `netdev_notify_peers` sends) with a zero vnet header.
fn gratuitous_arp(frame: &mut [u8], mac: [u8; 6], ip: [u8; 4]) {
    frame[..NET_HDR_LEN].fill(0);
    let arp = &mut frame[NET_HDR_LEN..NET_HDR_LEN + 42];
    arp[0..6].fill(0xff);
    arp[6..12].copy_from_slice(&mac);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp[22..28].copy_from_slice(&mac);
    arp[28..32].copy_from_slice(&ip);
    arp[32..38].fill(0);
    arp[38..42].copy_from_slice(&ip);
}

/// The last line: frames per pair and the tally.
fn finish(pairs: &[Option<Pair>; MAX_PAIRS], tally: &Tally, announced: u64) {
    put_str("guest: net-mq done pairs=");
    put_dec(pairs.iter().flatten().count() as u64);
    for (name, received) in [(" rx=", true), (" tx=", false)] {
        put_str(name);
        for (i, pair) in pairs.iter().flatten().enumerate() {
            if i > 0 {
                put_str(",");
            }
            put_dec(if received { pair.received } else { pair.sent });
        }
    }
    put_str(" arp=");
    put_dec(tally.arp);
    put_str(" icmp=");
    put_dec(tally.icmp);
    put_str(" udp=");
    put_dec(tally.udp);
    put_str(" ignored=");
    put_dec(tally.ignored);
    put_str(" announced=");
    put_dec(announced);
    put_str("\n");
}
