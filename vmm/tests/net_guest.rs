//! The VMM's virtio-net device against the test guest (vmm/guest,
//! `guest.mode=net`), whose NIC is driven by virtio-drivers'
//! `VirtIONetRaw`: in a fresh network namespace (so no tap appears on
//! the host), the host pings the guest through its tap with iputils'
//! `ping`, and moves data to it and back over UDP echo with every
//! datagram compared and a checksum of the whole stream on each side
//! (2 MiB by default, about 7 s here: the test guest runs under this
//! host's instruction emulator at about 4 ms per datagram; `NET_GUEST_MB=100`
//! for the 100 MB). vm.counters
//! holds CH's rx/tx counters. A guest that first sends frames with
//! vnet headers the device must refuse (`guest.mode=net-bad`) is survived:
//! it still answers, the refusals are counted and logged. A guest that
//! keeps only two receive buffers posted, fewer than the device's batch
//! of 16, is served by the batch timer. A multiqueue
//! tap serves a guest that uses one pair. Two guests on one bridge
//! reach each other (ARP, then a UDP echo; `guest.peer=`). Bad `--net`
//! specifications stop the VMM with one line before any guest runs.
//! The NIC's state travels: the guest answers ping and echoes after an
//! in-image snapshot is reverted, after a snapshot to files is restored
//! in a new VMM, and after a live migration (over unix:) to a VMM in
//! another network namespace with a tap of its own. A NIC revert made to
//! fail half-way (`VMM_TEST_FAIL_NIC_REVERT`) ends by a rebuild that
//! answers ping and counts on from the snapshot.
//!
//! Needs root (unshare(CLONE_NEWNET), /dev/net/tun), /dev/kvm, `ip` and
//! `ping` (scripts/ensure-net.sh installs iproute2 and iputils-ping);
//! skips with a line without them, unless REQUIRE_KVM is set.

mod support;

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::guest::build_guest;
use support::net::*;

/// UDP payload bytes per datagram (a 1442-byte frame).
const DATAGRAM: usize = 1400;
/// Datagrams in flight at once (`NET_GUEST_WINDOW` to change; the guest
/// posts 32 receive buffers).
fn window() -> u64 {
    std::env::var("NET_GUEST_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Datagram `seq`'s payload: the sequence number, then bytes that
/// differ per datagram.
fn datagram(seq: u64) -> Vec<u8> {
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend((8..DATAGRAM).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    bytes
}

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

/// Sends `total` datagrams to the guest's echo port with up to
/// [`window`] in flight, resending any not echoed within 300 ms;
/// every echo is compared with what was sent. Returns the bytes moved
/// each way and the time taken.
fn echo_stream(total: u64) -> (u64, Duration) {
    echo_stream_within(total, Duration::from_secs(600))
}

/// [`echo_stream`] that fails once `limit` has passed with datagrams not
/// echoed: a stalled receive queue ends the test, not the run.
fn echo_stream_within(total: u64, limit: Duration) -> (u64, Duration) {
    let socket = UdpSocket::bind((HOST_IP, 0)).expect("bind");
    socket.connect((GUEST_IP, 7)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let started = Instant::now();
    let mut sent_at: std::collections::BTreeMap<u64, Instant> = Default::default();
    let mut echoed = vec![false; total as usize];
    let mut next = 0u64;
    let mut done = 0u64;
    let mut sent_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut echo_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut echo_order = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut resends = 0u64;
    let window = window();
    while done < total {
        while next < total && (sent_at.len() as u64) < window {
            let payload = datagram(next);
            sent_hash = fnv(sent_hash, &payload);
            socket.send(&payload).expect("send");
            sent_at.insert(next, Instant::now());
            next += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                assert!(n >= 8, "a {n}-byte echo");
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                assert!(seq < total, "echo of datagram {seq} never sent");
                assert_eq!(
                    buf[..n],
                    datagram(seq)[..],
                    "echo of datagram {seq} differs"
                );
                if !echoed[seq as usize] {
                    echoed[seq as usize] = true;
                    echo_order.push(seq);
                    sent_at.remove(&seq);
                    done += 1;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
        let now = Instant::now();
        for (seq, at) in sent_at.iter_mut() {
            if now.duration_since(*at) > Duration::from_millis(300) {
                socket.send(&datagram(*seq)).expect("resend");
                *at = now;
                resends += 1;
            }
        }
        assert!(
            started.elapsed() < limit,
            "{done} of {total} datagrams echoed in {limit:?}"
        );
    }
    let elapsed = started.elapsed();
    // The stream as the guest sent it back, in sequence order, against
    // the stream sent.
    echo_order.sort_unstable();
    for seq in echo_order {
        echo_hash = fnv(echo_hash, &datagram(seq));
    }
    assert_eq!(echo_hash, sent_hash, "stream checksums");
    eprintln!(
        "net guest: {} bytes each way in {elapsed:?} ({:.1} MB/s each way), {resends} resent, checksum {sent_hash:#x}",
        total * DATAGRAM as u64,
        (total * DATAGRAM as u64) as f64 / elapsed.as_secs_f64() / 1e6
    );
    (total * DATAGRAM as u64, elapsed)
}

#[test]
fn guest_answers_ping_and_echoes_a_stream_through_its_tap() {
    if !can_run() {
        return;
    }
    build_guest();
    let megabytes: u64 = std::env::var("NET_GUEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    in_netns(move || {
        make_tap("vt0");
        let mut vm = GuestVm::start("net", &format!("tap=vt0,mac={GUEST_MAC},id=net0"));
        let ready = vm.wait_line("guest: net ready", Duration::from_secs(60));
        assert_eq!(
            ready,
            format!("guest: net ready mac={GUEST_MAC} ip={GUEST_IP}")
        );
        let out = ping(3);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ping: {text}");
        assert!(text.contains("3 received"), "{text}");
        let datagrams = (megabytes << 20).div_ceil(DATAGRAM as u64);
        let (bytes, _) = echo_stream(datagrams);
        assert!(bytes >= megabytes << 20);
        let counters = vm.counters("net0");
        // Frames to the guest: ARP, 3 echo requests, the datagrams (and
        // any resent); from it the answers.
        assert!(counters["rx_frames"] >= datagrams + 3, "{counters:?}");
        assert!(counters["tx_frames"] >= datagrams + 3, "{counters:?}");
        assert!(
            counters["rx_bytes"] >= datagrams * (DATAGRAM as u64 + 42),
            "{counters:?}"
        );
        assert!(
            counters["tx_bytes"] >= datagrams * (DATAGRAM as u64 + 42),
            "{counters:?}"
        );
        assert_eq!(counters["tx_errors"], 0, "{counters:?}");
        let (done, stderr) = vm.finish();
        assert!(done.contains(" icmp=3 "), "{done}");
        let udp: u64 = done
            .split(" udp=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("udp count");
        assert!(udp >= datagrams, "{done}");
        assert!(!stderr.contains("refused"), "{stderr}");
    });
}

#[test]
fn a_guest_posting_fewer_buffers_than_a_batch_is_served_by_the_batch_timer() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(|| {
        make_tap("vt0");
        // Two buffers: the device asks for a kick after 16 reposted ones
        // once the queue ran dry, which this guest never reaches, so every
        // frame after the first two waits for the 500 µs batch timer.
        let cmdline = format!("{} guest.rx_buffers=2", guest_cmdline("net"));
        let mut vm = GuestVm::start_cmdline(&cmdline, &format!("tap=vt0,mac={GUEST_MAC},id=net0"));
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        let datagrams = 300;
        // Generous for a loaded host (the guest echoes ~1000 a second
        // here); a queue that waits for a kick never comes back at all.
        echo_stream_within(datagrams, Duration::from_secs(120));
        let counters = vm.counters("net0");
        assert!(counters["rx_frames"] >= datagrams, "{counters:?}");
        let (done, _) = vm.finish();
        let udp: u64 = done
            .split(" udp=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("udp count");
        assert!(udp >= datagrams, "{done}");
    });
}

#[test]
fn a_guest_sending_malformed_frames_is_survived() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(|| {
        make_tap("vt1");
        let mut vm = GuestVm::start("net-bad", &format!("tap=vt1,mac={GUEST_MAC}"));
        vm.wait_line("guest: net-bad sent 4", Duration::from_secs(60));
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        let out = ping(2);
        assert!(
            out.status.success(),
            "ping after malformed frames: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let counters = vm.counters("_net0");
        assert_eq!(counters["tx_errors"], 4, "{counters:?}");
        let (_, stderr) = vm.finish();
        assert!(
            stderr.contains("virtio-net 0 queue 1: refused"),
            "the refusals are logged: {stderr}"
        );
    });
}

#[test]
fn bad_net_options_stop_the_vmm_with_one_line() {
    let guest = build_guest();
    for (spec, expected) in [
        ("tap=", "invalid net.tap"),
        ("tap=t0,mac=01:02:03:04:05:06", "invalid net.mac"),
        ("tap=t0,num_queues=3", "invalid net.num_queues"),
        ("fd=987654", "network interface '_net0': fd 987654"),
    ] {
        let out = Command::new(vmm_bin())
            .arg("--kernel")
            .arg(&guest)
            .args(["--memory", "32M", "--net", spec])
            .stdin(Stdio::null())
            .output()
            .expect("run vmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{spec}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{spec}: {stderr}");
        assert!(stderr.contains(expected), "{spec}: {stderr}");
    }
}

#[test]
fn a_tap_fd_handed_over_with_vm_create_serves_the_guest() {
    if !can_run() {
        return;
    }
    let guest = build_guest();
    in_netns(move || {
        make_tap("vt2");
        let tap: std::os::fd::OwnedFd = blockdev::virtio::net::Tap::open("vt2", 1)
            .expect("open the tap")
            .remove(0)
            .into();
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        let config: vmapi::VmConfig = serde_json::from_value(serde_json::json!({
            "memory": {"size": 32u64 << 20},
            "payload": {"kernel": guest, "cmdline": guest_cmdline("net")},
            "serial": {"mode": "Tty"},
            "net": [{"fd": [-1], "mac": GUEST_MAC, "id": "eth0"}],
        }))
        .expect("config");
        let client = vmapi::Client::new(&vm.api);
        // A descriptor named but not sent, and one sent to the wrong
        // request, are refused.
        let err = client.create(&config).expect_err("no fd sent");
        assert!(err.to_string().contains("SCM_RIGHTS"), "{err}");
        let response = client
            .request_with_fds(vmapi::Method::Get, "/api/v1/vm.info", b"", &[tap.as_fd()])
            .expect("vm.info");
        assert_eq!(response.status, 400);
        client
            .create_with_fds(&config, &[tap.as_fd()])
            .expect("vm.create");
        drop(tap);
        client.boot(false).expect("vm.boot");
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        let out = ping(2);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let counters = vm.counters("eth0");
        assert!(counters["rx_frames"] >= 2, "{counters:?}");
        let info = client.info().expect("vm.info");
        let net = &info.config.net.expect("net in vm.info")[0];
        assert_eq!(net.mac.as_deref(), Some(GUEST_MAC));
        vm.finish();
    });
}

#[test]
fn a_multiqueue_interface_serves_a_guest_on_its_first_pair() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(|| {
        make_tap_queues("vt3", true);
        // Two pairs offered (MQ, CTRL_VQ); virtio-drivers takes neither and
        // drives pair 0, the one the device attaches at activation.
        let mut vm = GuestVm::start(
            "net",
            &format!("tap=vt3,mac={GUEST_MAC},num_queues=4,queue_size=128"),
        );
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        let out = ping(2);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let counters = vm.counters("_net0");
        assert!(
            counters["rx_frames"] >= 2 && counters["tx_frames"] >= 2,
            "{counters:?}"
        );
        let info = vmapi::Client::new(&vm.api).info().expect("vm.info");
        let net = &info.config.net.expect("net")[0];
        assert_eq!((net.num_queues, net.queue_size), (4, 128));
        vm.finish();
    });
}

#[test]
fn two_guests_on_one_bridge_reach_each_other() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(|| {
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "set", "br0", "up"]);
        let mut vms = Vec::new();
        for (tap, me, peer, mac) in [
            ("vta", "10.95.0.2", "10.95.0.3", "52:54:00:00:00:0a"),
            ("vtb", "10.95.0.3", "10.95.0.2", "52:54:00:00:00:0b"),
        ] {
            ip(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
            ip(&["link", "set", tap, "addrgenmode", "none"]);
            ip(&["link", "set", tap, "master", "br0"]);
            ip(&["link", "set", tap, "up"]);
            let cmdline = format!("console=ttyS0 guest.mode=net guest.ip={me} guest.peer={peer}");
            vms.push((
                GuestVm::start_cmdline(&cmdline, &format!("tap={tap},mac={mac}")),
                peer,
            ));
        }
        for (vm, peer) in &mut vms {
            let line = vm.wait_line("guest: peer reached", Duration::from_secs(60));
            assert_eq!(line, format!("guest: peer reached {peer}"));
        }
        for (vm, _) in &vms {
            let counters = vm.counters("_net0");
            assert!(
                counters["tx_frames"] >= 2 && counters["rx_frames"] >= 2,
                "{counters:?}"
            );
        }
    });
}

/// Pings the guest `count` times; all must be answered.
fn ping_ok(count: u32, after: &str) {
    let out = ping(count);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping after {after}: {text}"
    );
}

#[test]
fn the_nic_works_after_an_in_image_revert_and_a_snapshot_restore() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(move || {
        let images = tempfile::tempdir().expect("tempdir");
        let mut vm = GuestVm::start_with_disk("net", images.path(), "vs0", 2, "guest: net ready");
        ping_ok(2, "boot");
        let client = vmapi::Client::new(&vm.api);
        client.pause().expect("pause");
        client
            .snapshot("qcow2:up")
            .expect("in-image snapshot with a NIC");
        client.resume().expect("resume");
        ping_ok(2, "the snapshot");
        client.pause().expect("pause");
        client.restore("qcow2:up").expect("revert with a NIC");
        client.resume().expect("resume");
        ping_ok(3, "the revert");
        echo_stream(64);
        // Then to files, and into a VMM of its own (which opens the tap
        // by name again: the tap is not state).
        let dir = images.path().join("snap");
        client.pause().expect("pause");
        client
            .snapshot(&format!("file://{}", dir.display()))
            .expect("snapshot to files with a NIC");
        assert_reverted_in_place(&vm.shut_down());
        drop(vm);
        let mut restored = GuestVm::spawn(&[]);
        restored.wait_api();
        let client = vmapi::Client::new(&restored.api);
        // The same state for an interface with another MAC is refused
        // (the guest's driver read the saved one), and nothing is left.
        let other = images.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        for entry in std::fs::read_dir(&dir).expect("snapshot files") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_owned();
            let mut bytes = std::fs::read(&path).expect("read");
            if name == "config.json" {
                let text = String::from_utf8(bytes).expect("UTF-8");
                assert!(text.contains(GUEST_MAC), "{text}");
                bytes = text.replace(GUEST_MAC, "52:54:00:65:43:21").into_bytes();
            }
            std::fs::write(other.join(name), bytes).expect("write");
        }
        let err = client
            .restore(&format!("file://{}", other.display()))
            .expect_err("another MAC");
        let text = err.to_string();
        assert!(
            text.contains("MAC address 52:54:00:12:34:56, the interface 52:54:00:65:43:21")
                && !text.contains('\n'),
            "{text}"
        );
        client
            .restore(&format!("file://{}", dir.display()))
            .expect("restore with a NIC");
        client.resume().expect("resume");
        ping_ok(3, "the restore");
        echo_stream(64);
        let (done, stderr) = restored.finish();
        // The guest counts every echo request since its boot: 2 before
        // the snapshot it was reverted to, then 3 and 3.
        assert!(done.contains(" icmp=8 "), "{done}");
        assert!(!stderr.contains("refused"), "{stderr}");
    });
}

/// A NIC revert that fails half-way (VMM_TEST_FAIL_NIC_REVERT, once the
/// interface's device took its saved state) ends by a rebuild: the VMM
/// says so, the NIC answers, and the guest counts on from the snapshot.
#[test]
fn a_nic_revert_failing_half_way_ends_by_a_rebuild() {
    if !can_run() {
        return;
    }
    build_guest();
    in_netns(move || {
        let images = tempfile::tempdir().expect("tempdir");
        let vm = GuestVm::start_with_disk_env(
            "net",
            images.path(),
            "vr0",
            2,
            "guest: net ready",
            &[("VMM_TEST_FAIL_NIC_REVERT", "1")],
        );
        ping_ok(2, "boot");
        let client = vmapi::Client::new(&vm.api);
        client.pause().expect("pause");
        client.snapshot("qcow2:up").expect("in-image snapshot");
        client.resume().expect("resume");
        ping_ok(2, "the snapshot");
        client.pause().expect("pause");
        client.restore("qcow2:up").expect("revert by a rebuild");
        client.resume().expect("resume");
        ping_ok(3, "the rebuilt revert");
        let (done, stderr) = vm.finish();
        // 2 echo requests before the snapshot, 3 after the revert.
        assert!(done.contains(" icmp=5 "), "{done}");
        assert!(
            stderr.contains("VMM_TEST_FAIL_NIC_REVERT is set")
                && stderr.contains("rebuilding the VM")
                && !stderr.contains("vmm: revert in place:"),
            "{stderr}"
        );
    });
}

#[test]
fn the_nic_works_after_a_migration_to_another_namespace() {
    if !can_run() {
        return;
    }
    build_guest();
    // Both "hosts" give their tap the same MAC and address: the guest's
    // ARP entry for its peer stays right (virtio-drivers takes no
    // GUEST_ANNOUNCE: the guest sends no gratuitous ARP, the VMM only a
    // RARP).
    let host_side = |name: &'static str| {
        move || {
            make_tap(name);
            ip(&["link", "set", name, "address", "02:00:00:00:99:01"]);
        }
    };
    let mut source = in_netns(move || {
        host_side("vm0")();
        let mut vm = GuestVm::start("net", &format!("tap=vm0,mac={GUEST_MAC},id=net0"));
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        ping_ok(2, "boot");
        vm
    });
    let dest = in_netns(move || {
        host_side("vm0")();
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        vm
    });
    migrate_over_unix(&source, &dest, receive_on_tty);
    let _ = source.child.wait();
    let pid = dest.child.id();
    in_netns_of(pid, || {
        ping_ok(3, "the migration");
        echo_stream(64);
    });
    let (done, _) = in_netns_of(pid, move || dest.finish());
    assert!(done.contains(" icmp=5 "), "{done}");
    drop(source);
}

#[test]
fn vm_add_net_adds_an_interface_before_boot_and_refuses_a_running_vm() {
    if !can_run() {
        return;
    }
    let guest = build_guest();
    in_netns(move || {
        make_tap("va0");
        let tap: std::os::fd::OwnedFd = blockdev::virtio::net::Tap::open("va0", 1)
            .expect("open the tap")
            .remove(0)
            .into();
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        let client = vmapi::Client::new(&vm.api);
        let net = |value: serde_json::Value| -> vmapi::NetConfig {
            serde_json::from_value(value).expect("NetConfig")
        };
        let one_line = |err: vmapi::Error, status: u16, says: &str| {
            assert_eq!(err.status(), Some(status), "{err}");
            let text = err.to_string();
            assert!(text.contains(says) && !text.contains('\n'), "{text}");
        };
        // No VM yet.
        let added = net(serde_json::json!({"tap": "va0"}));
        one_line(client.add_net(&added).unwrap_err(), 404, "not created");
        let config: vmapi::VmConfig = serde_json::from_value(serde_json::json!({
            "memory": {"size": 32u64 << 20},
            "payload": {"kernel": guest, "cmdline": guest_cmdline("net")},
            "serial": {"mode": "Tty"},
        }))
        .expect("config");
        client.create(&config).expect("vm.create");
        // Bad interfaces are refused with one line and change nothing.
        let bad = net(serde_json::json!({"tap": "va0", "num_queues": 3}));
        one_line(client.add_net(&bad).unwrap_err(), 400, "num_queues");
        let unsent = net(serde_json::json!({"fd": [-1], "id": "eth0"}));
        one_line(client.add_net(&unsent).unwrap_err(), 400, "SCM_RIGHTS");
        // The tap's fd comes with the request, as with vm.create.
        let eth0 = net(serde_json::json!({"fd": [-1], "mac": GUEST_MAC, "id": "eth0"}));
        client
            .add_net_with_fds(&eth0, &[tap.as_fd()])
            .expect("vm.add-net");
        drop(tap);
        let twice = net(serde_json::json!({"tap": "va1", "id": "eth0"}));
        one_line(client.add_net(&twice).unwrap_err(), 400, "used twice");
        let info = client.info().expect("vm.info");
        let nets = info.config.net.expect("net in vm.info");
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].id.as_deref(), Some("eth0"));
        assert_eq!(nets[0].mac.as_deref(), Some(GUEST_MAC));
        client.boot(false).expect("vm.boot");
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        ping_ok(2, "vm.add-net");
        // virtio-mmio has no hotplug: a running VM takes no interface.
        one_line(
            client.add_net(&added).unwrap_err(),
            405,
            "virtio-mmio has no hotplug",
        );
        assert_eq!(client.info().unwrap().config.net.unwrap().len(), 1);
        vm.finish();
    });
}

/// Opens queue 0 of tap `name` (made in this thread's namespace) as a
/// descriptor to hand over.
fn open_tap_fd(name: &str) -> std::os::fd::OwnedFd {
    blockdev::virtio::net::Tap::open(name, 1)
        .expect("open the tap")
        .remove(0)
        .into()
}

/// An interface whose tap came as a descriptor (as `vm` hands a bridge's
/// taps over): a file:// restore and a migration are refused in one line
/// without a new descriptor, and work with the one handed over with
/// vm.restore or vm.receive-migration (`net_fds`, CH's restore body).
#[test]
fn an_fd_backed_nic_is_restored_and_migrated_with_descriptors_of_their_own() {
    if !can_run() {
        return;
    }
    let guest = build_guest();
    let host_side = |name: &'static str| {
        make_tap(name);
        ip(&["link", "set", name, "address", "02:00:00:00:99:02"]);
    };
    let images = tempfile::tempdir().expect("tempdir");
    let dir = images.path().join("snap");
    let snapshot_url = format!("file://{}", dir.display());
    let config: vmapi::VmConfig = serde_json::from_value(serde_json::json!({
        "memory": {"size": 32u64 << 20},
        "payload": {"kernel": guest, "cmdline": guest_cmdline("net")},
        "serial": {"mode": "Tty"},
        "net": [{"fd": [-1], "mac": GUEST_MAC, "id": "eth0"}],
    }))
    .expect("config");
    let net_fds = || {
        vec![vmapi::RestoredNetConfig {
            id: "eth0".into(),
            num_fds: 1,
            fds: None,
        }]
    };
    let source = in_netns(move || {
        host_side("vf0");
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        let client = vmapi::Client::new(&vm.api);
        client
            .create_with_fds(&config, &[open_tap_fd("vf0").as_fd()])
            .expect("vm.create");
        client.boot(false).expect("vm.boot");
        vm.wait_line("guest: net ready", Duration::from_secs(60));
        ping_ok(2, "boot");
        client.pause().expect("pause");
        client.snapshot(&snapshot_url).expect("snapshot to files");
        let _ = client.vmm_shutdown();
        let _ = vm.child.wait();
        drop(vm);
        let mut restored = GuestVm::spawn(&[]);
        restored.wait_api();
        let client = vmapi::Client::new(&restored.api);
        let err = client.restore(&snapshot_url).expect_err("no descriptor");
        let text = err.to_string();
        assert!(
            text.contains("interface 'eth0' had its tap as a descriptor") && !text.contains('\n'),
            "{text}"
        );
        client
            .restore_with_fds(&snapshot_url, net_fds(), &[open_tap_fd("vf0").as_fd()])
            .expect("vm.restore with a new tap descriptor");
        client.resume().expect("resume");
        ping_ok(3, "the restore");
        restored
    });
    let dest = in_netns(move || {
        host_side("vf1");
        let mut vm = GuestVm::spawn(&[]);
        vm.wait_api();
        (vm, open_tap_fd("vf1"))
    });
    let (dest, dest_tap) = dest;
    migrate_over_unix(&source, &dest, move |client, url| {
        let tty = vmapi::ConsoleConfig::of_mode(vmapi::ConsoleMode::Tty);
        client.receive_migration_with_fds(url, Some(tty), net_fds(), &[dest_tap.as_fd()])
    });
    let mut source = source;
    let _ = source.child.wait();
    let pid = dest.child.id();
    in_netns_of(pid, || ping_ok(3, "the migration"));
    let (done, _) = in_netns_of(pid, move || dest.finish());
    assert!(done.contains(" icmp=8 "), "{done}");
    drop(source);
}
