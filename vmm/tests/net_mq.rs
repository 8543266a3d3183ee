//! Multiqueue and GUEST_ANNOUNCE with a guest that negotiates them: the
//! test guest's own driver (`guest.mode=net-mq`, vmm/guest/src/netmq.rs)
//! takes MQ, CTRL_VQ and GUEST_ANNOUNCE, sets its queue pairs with
//! VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET and answers on every pair. In a fresh
//! network namespace per test:
//! - with `--net tap=NAME,num_queues=8` (4 pairs) over a multiqueue tap,
//!   UDP flows from many source ports are echoed, and the device's
//!   per-pair counters (vm.counters `pairN_rx_frames`, `pairN_tx_frames`)
//!   and the guest's own per-pair tally show traffic on several pairs;
//!   malformed control commands (unknown class or command, 0 pairs or
//!   more than the device has, a one-byte command, a short
//!   VQ_PAIRS_SET, a chain without an ack byte, an ANNOUNCE_ACK nothing
//!   asked for) get VIRTIO_NET_ERR or come back unanswered, are logged,
//!   and change nothing;
//! - after an in-image snapshot is reverted, and after a snapshot to
//!   files is restored in a new VMM, the device sets
//!   VIRTIO_NET_S_ANNOUNCE with a configuration interrupt as the VM
//!   resumes (a plain pause and resume does not); the guest sends a
//!   gratuitous ARP, seen on the tap by a packet socket, and acks with
//!   VIRTIO_NET_CTRL_ANNOUNCE_ACK, which clears the bit; after a live
//!   migration the gratuitous ARP comes out of the destination's tap, in
//!   another namespace, after the RARP the VMM sends for the guest (as
//!   QEMU's `qemu_announce_self`).
//!
//! Needs what `net_guest` needs (root, /dev/kvm, iproute2, ping).

mod support;

use std::ffi::CString;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use support::guest::build_guest;
use support::net::*;

/// Source ports (one socket each) the echo test sends from: flows the
/// tap spreads over its queues by their hash.
const FLOWS: usize = 24;

/// The guest's exact answers to its control commands.
const CTRL_LINE: &str = "guest: net-mq ctrl set=OK bad-class=ERR bad-command=ERR pairs-0=ERR \
                         pairs-over=ERR short=ERR short-data=ERR no-ack=unanswered ack-unasked=ERR";

/// Echoes one datagram per flow through the guest's UDP echo port, each
/// resent until its echo comes back (10 s at most); every echo compared.
fn echo_flows(flows: usize) {
    let sockets: Vec<UdpSocket> = (0..flows)
        .map(|_| {
            let socket = UdpSocket::bind((HOST_IP, 0)).expect("bind");
            socket.connect((GUEST_IP, 7)).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            socket
        })
        .collect();
    let mut buf = [0u8; 2048];
    for (flow, socket) in sockets.iter().enumerate() {
        let payload: Vec<u8> = (0..200).map(|i| (i * 7 + flow) as u8).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "flow {flow} never echoed");
            socket.send(&payload).expect("send");
            match socket.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], &payload[..], "echo of flow {flow}");
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

/// The numbers after ` name=` in `line` (`a,b,c`).
fn list_field(line: &str, name: &str) -> Vec<u64> {
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .split(',')
        .map(|n| n.parse().expect("a number"))
        .collect()
}

#[test]
fn a_multiqueue_guest_uses_several_pairs_and_its_bad_control_commands_are_refused() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(|| {
        make_tap_queues("vq0", true);
        let mut vm = GuestVm::start(
            "net-mq",
            &format!("tap=vq0,mac={GUEST_MAC},num_queues=8,id=net0"),
        );
        let ctrl = vm.wait_line("guest: net-mq ctrl", Duration::from_secs(60));
        assert_eq!(ctrl, CTRL_LINE);
        let ready = vm.wait_line("guest: net-mq ready", Duration::from_secs(30));
        assert_eq!(
            ready,
            format!("guest: net-mq ready pairs=4 of 4 mac={GUEST_MAC} ip={GUEST_IP}")
        );
        let out = ping(2);
        assert!(
            out.status.success(),
            "ping: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        echo_flows(FLOWS);
        let counters = vm.counters("net0");
        let per_pair: Vec<(u64, u64)> = (0..4)
            .map(|p| {
                (
                    counters[&format!("pair{p}_rx_frames")],
                    counters[&format!("pair{p}_tx_frames")],
                )
            })
            .collect();
        eprintln!("net-mq: frames per pair (rx, tx): {per_pair:?}");
        let busy = per_pair
            .iter()
            .filter(|(rx, tx)| *rx > 0 && *tx > 0)
            .count();
        assert!(busy >= 2, "traffic on one pair only: {counters:?}");
        assert_eq!(
            per_pair.iter().map(|p| p.0).sum::<u64>(),
            counters["rx_frames"],
            "{counters:?}"
        );
        assert_eq!(counters["tx_errors"], 0, "{counters:?}");
        let (done, stderr) = vm.finish_with("guest: net-mq done");
        // The guest saw it too: frames on several of its receive queues,
        // each answered on the same pair.
        let rx = list_field(&done, "rx");
        let tx = list_field(&done, "tx");
        assert_eq!(rx.len(), 4, "{done}");
        assert!(rx.iter().filter(|&&n| n > 0).count() >= 2, "{done}");
        assert!(tx.iter().filter(|&&n| n > 0).count() >= 2, "{done}");
        assert!(done.contains(" icmp=2 "), "{done}");
        // Queue 8 is the control queue of a 4-pair device in slot 0; its
        // refusals are logged (one line per batch, bounded).
        assert!(
            stderr.contains("virtio-net 0 queue 8: refused"),
            "the refusals are logged: {stderr}"
        );
        assert!(!stderr.contains("panic"), "{stderr}");
    });
}

/// Ethertype of ARP.
const ETH_P_ARP: u16 = 0x0806;
/// Ethertype of RARP (what the VMM announces a guest with).
const ETH_P_RARP: u16 = 0x8035;

/// A raw packet socket on interface `name` for ARP frames (what the
/// guest sends comes up the tap into it).
fn arp_socket(name: &str) -> OwnedFd {
    packet_socket(name, ETH_P_ARP)
}

/// A raw packet socket on interface `name` for frames of `ethertype`.
fn packet_socket(name: &str, ethertype: u16) -> OwnedFd {
    let cname = CString::new(name).expect("name");
    // SAFETY: a NUL-terminated string, alive for the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {name}");
    // SAFETY: no pointers.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        )
    };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain integers and arrays; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a sockaddr_ll of the size passed, alive for the call.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

/// The frames `socket` receives within `timeout`.
fn arp_frames(socket: &OwnedFd, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return frames;
        }
        let mut poll_fd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        if unsafe { libc::poll(&mut poll_fd, 1, left.as_millis() as i32) } <= 0 {
            return frames;
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: `buf` is writable for its length for the call.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if got > 0 {
            buf.truncate(got as usize);
            frames.push(buf);
        }
    }
}

/// Whether `frame` is a gratuitous ARP from `mac` for `ip`: a broadcast
/// request whose sender and target address are both `ip`.
fn is_gratuitous_arp(frame: &[u8], mac: [u8; 6], ip: [u8; 4]) -> bool {
    frame.len() >= 42
        && frame[0..6] == [0xff; 6]
        && frame[6..12] == mac
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 1]
        && frame[22..28] == mac
        && frame[28..32] == ip
        && frame[38..42] == ip
}

/// Rounds of an announcement (QEMU's announce-rounds).
const ANNOUNCE_ROUNDS: usize = 5;

/// Waits for the guest's announce lines, one per round of QEMU's five
/// (each acked, which schedules the next), and its gratuitous ARPs on the
/// tap (`socket`), after `what`.
fn expect_announcement(vm: &mut GuestVm, socket: &OwnedFd, what: &str) {
    for round in 0..ANNOUNCE_ROUNDS {
        let line = vm.wait_line("guest: net-mq announced", Duration::from_secs(30));
        assert_eq!(
            line, "guest: net-mq announced ack=OK status=0x1",
            "{what}, round {round}"
        );
    }
    let mac: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let ip: [u8; 4] = [10, 99, 0, 2];
    let frames = arp_frames(socket, Duration::from_secs(1));
    let gratuitous = frames
        .iter()
        .filter(|f| is_gratuitous_arp(f, mac, ip))
        .count();
    assert_eq!(
        gratuitous,
        ANNOUNCE_ROUNDS,
        "gratuitous ARPs on the tap after {what} among {} ARP frames: {frames:02x?}",
        frames.len()
    );
}

/// How many RARPs for the guest's MAC (the VMM's own announcement)
/// `socket` (an ETH_P_RARP packet socket) receives within `timeout`.
fn guest_rarps(socket: &OwnedFd, timeout: Duration) -> usize {
    let mac: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    arp_frames(socket, timeout)
        .iter()
        .filter(|f| f.len() >= 42 && f[6..12] == mac && f[20..22] == [0, 3] && f[32..38] == mac)
        .count()
}

/// The net-mq guest with a qcow2 disk (in `images`) on a new multiqueue
/// tap `tap` (4 queues), once it has set its pairs.
fn start_net_mq_with_disk(images: &std::path::Path, tap: &str) -> GuestVm {
    GuestVm::start_with_disk("net-mq", images, tap, 4, "guest: net-mq ready pairs=2")
}

#[test]
fn an_announcement_waits_while_the_vm_is_paused() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(move || {
        let images = tempfile::tempdir().expect("tempdir");
        let mut vm = start_net_mq_with_disk(images.path(), "vq3");
        let client = vmapi::Client::new(&vm.api);
        client.pause().expect("pause");
        client.snapshot("qcow2:up").expect("in-image snapshot");
        let rarp = packet_socket("vq3", ETH_P_RARP);
        let arp = arp_socket("vq3");
        client.restore("qcow2:up").expect("revert");
        // The announcement starts at this resume (RARPs at 0, 50, 200,
        // 450 and 800 ms) and is paused at once.
        client.resume().expect("resume");
        client.pause().expect("pause");
        // What was sent before the pause took effect, then nothing
        // while paused (QEMU's announce timer stops with the VM).
        let before = guest_rarps(&rarp, Duration::from_millis(200));
        assert!(
            before < ANNOUNCE_ROUNDS,
            "every RARP was sent before the pause (a loaded machine?)"
        );
        let paused = guest_rarps(&rarp, Duration::from_millis(1500));
        assert_eq!(paused, 0, "RARPs while paused ({before} before)");
        // The rest after the resume, and the guest's five rounds.
        client.resume().expect("resume");
        expect_announcement(&mut vm, &arp, "the paused announcement");
        let after = guest_rarps(&rarp, Duration::from_millis(1500));
        assert_eq!(
            before + after,
            ANNOUNCE_ROUNDS,
            "{before} RARPs before the pause, {after} after"
        );
        let (done, stderr) = vm.finish_with("guest: net-mq done");
        assert!(done.contains(" announced=5"), "{done}");
        assert_reverted_in_place(&stderr);
    });
}

#[test]
fn after_a_revert_and_a_restore_the_guest_announces_itself_with_a_gratuitous_arp() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(move || {
        let images = tempfile::tempdir().expect("tempdir");
        let mut vm = start_net_mq_with_disk(images.path(), "vq1");
        let out = ping(2);
        assert!(out.status.success(), "ping before the snapshot");
        let client = vmapi::Client::new(&vm.api);
        // An in-image snapshot, a resume (no restore: nothing to
        // announce), then the revert, whose resume announces.
        client.pause().expect("pause");
        client.snapshot("qcow2:up").expect("in-image snapshot");
        client.resume().expect("resume");
        let socket = arp_socket("vq1");
        client.pause().expect("pause");
        client.restore("qcow2:up").expect("revert");
        client.resume().expect("resume");
        expect_announcement(&mut vm, &socket, "the revert");
        // Then to files, restored in a VMM of its own.
        let dir = images.path().join("snap");
        client.pause().expect("pause");
        client
            .snapshot(&format!("file://{}", dir.display()))
            .expect("snapshot to files");
        assert_reverted_in_place(&vm.shut_down());
        drop(vm);
        let mut restored = GuestVm::spawn(&[]);
        restored.wait_api();
        let client = vmapi::Client::new(&restored.api);
        client
            .restore(&format!("file://{}", dir.display()))
            .expect("restore");
        client.resume().expect("resume");
        expect_announcement(&mut restored, &socket, "the restore");
        // The NIC serves on; a pause and resume announces nothing more.
        client.pause().expect("pause");
        client.resume().expect("resume");
        let out = ping(3);
        assert!(
            out.status.success(),
            "ping after the restore: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let (done, stderr) = restored.finish_with("guest: net-mq done");
        // Five rounds after the revert (the snapshot was taken before
        // any), then five after the restore (the snapshot to files after
        // the revert's had ended).
        assert!(done.contains(" announced=10"), "{done}");
        // The acks are not refused (the malformed commands were sent at
        // boot, by the first VMM).
        assert!(!stderr.contains("refused"), "{stderr}");
    });
}

#[test]
fn after_a_migration_the_guest_announces_itself_on_the_destinations_tap() {
    if !can_run() {
        return;
    }
    build_guest();
    let source = in_netns(|| {
        make_tap_queues("vq2", true);
        let mut vm = GuestVm::start(
            "net-mq",
            &format!("tap=vq2,mac={GUEST_MAC},num_queues=4,id=net0"),
        );
        vm.wait_line("guest: net-mq ready pairs=2", Duration::from_secs(60));
        vm
    });
    // The destination "host": a tap of its own in another namespace,
    // watched from before the migration.
    let (mut dest, socket, rarp) = in_netns(|| {
        make_tap_queues("vq2", true);
        let socket = arp_socket("vq2");
        let rarp = packet_socket("vq2", ETH_P_RARP);
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        (vm, socket, rarp)
    });
    migrate_over_unix(&source, &dest, receive_on_tty);
    expect_announcement(&mut dest, &socket, "the migration");
    // The VMM announced the guest's MAC itself too (QEMU's RARP).
    let ours = guest_rarps(&rarp, Duration::from_millis(500));
    assert_eq!(ours, ANNOUNCE_ROUNDS, "RARPs from the guest's MAC");
    let pid = dest.child.id();
    let (done, _) = in_netns_of(pid, move || {
        let out = ping(2);
        assert!(
            out.status.success(),
            "ping after the migration: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        dest.finish_with("guest: net-mq done")
    });
    assert!(done.contains(" announced=5"), "{done}");
    drop(source);
}
