//! `vm migrate` and `vm -c DIR migrate-listen URI` between two network
//! namespaces joined by a veth pair, standing for two hosts: each side has
//! its own `vm` store, the image folder is shared. The counting guest
//! (`guest.mode=count`) goes on at the destination from where the source
//! stopped, with no gap or repeat in its serial log; the source store
//! keeps the domain defined and shut off (migrated), the destination
//! store has it defined and running, and the image checks clean after it
//! is destroyed there. With `--copy-storage-all` the image folders are
//! not shared: the destination's is bind-mounted over the same path in
//! its own mount namespace (the images keep their paths, as libvirt
//! expects), and the copied image must compare equal to the source's
//! (qemu-img compare) and check clean. With `--copy-storage-inc` (the base
//! present on both hosts) only the top's clusters travel: the copy keeps
//! the backing file and reads the base's ranges through it; and a
//! destination VMM killed (SIGKILL) while it writes the copy leaves
//! nothing but the base at B, the source running with its image locked.
//! Needs root, iproute2 (scripts/ensure-net.sh) and
//! /dev/kvm: skipped with a line without them (unless REQUIRE_KVM is set).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::count::{self, counts};
use support::guest::{build_guest, ensure_vmm, have_kvm};

/// Two namespaces with a veth pair, 10.77.N.1 and 10.77.N.2; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn new() -> Option<Hosts> {
        // Tests of this file run at once: each pair of its own.
        static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pair = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = std::process::id() % 200;
        let hosts = Hosts {
            a: format!("vmmig-a-{}-{pair}", std::process::id()),
            b: format!("vmmig-b-{}-{pair}", std::process::id()),
        };
        let veth_a = format!("vma{tag}x{pair}");
        let veth_b = format!("vmb{tag}x{pair}");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), hosts.a.clone()],
            vec!["netns".into(), "add".into(), hosts.b.clone()],
            vec![
                "link".into(),
                "add".into(),
                veth_a.clone(),
                "netns".into(),
                hosts.a.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                veth_b.clone(),
                "netns".into(),
                hosts.b.clone(),
            ],
        ];
        for step in steps {
            let out = Command::new("ip").args(&step).output().ok()?;
            if !out.status.success() {
                eprintln!(
                    "skipped: ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
        }
        for (ns, dev, addr) in [
            (&hosts.a, &veth_a, format!("10.77.{tag}.1/24")),
            (&hosts.b, &veth_b, format!("10.77.{tag}.2/24")),
        ] {
            for args in [
                vec!["addr", "add", addr.as_str(), "dev", dev.as_str()],
                vec!["link", "set", dev.as_str(), "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "ip"])
                    .args(&args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{args:?}: {out:?}");
            }
        }
        Some(hosts)
    }

    fn destination_ip(&self) -> String {
        format!("10.77.{}.2", std::process::id() % 200)
    }

    /// `vm -c STORE ARGS` run inside namespace `ns`.
    fn vm(&self, ns: &str, store: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_vm"))
            .arg("-c")
            .arg(store)
            .args(args)
            .env_remove("VM_VMM");
        command
    }
}

/// The pids of the processes in namespace `ns` (`ip netns pids`).
fn pids_in(ns: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

impl Drop for Hosts {
    /// Kills every process left in the two namespaces (the VMMs `vm
    /// start` and `migrate-listen` ran, listeners and migrations a failed
    /// test left waiting), then removes the namespaces: a test that
    /// panics leaks no VMM.
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let start = Instant::now();
            loop {
                let pids = pids_in(ns);
                if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill has no memory arguments; the pid was
                    // listed in the test's own namespace just above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Two hosts (namespaces) and their folders under one temporary folder:
/// each host's `vm` store, host A's images at `images`, and host B's own
/// image folder `images_b` for the tests that share no storage (bound over
/// `images` in B's mount namespace by [`TwoHosts::listen_unshared`]).
/// Dropping it kills what runs in the namespaces before the folder goes.
struct TwoHosts {
    hosts: Hosts,
    guest: std::path::PathBuf,
    images: std::path::PathBuf,
    images_b: std::path::PathBuf,
    store_a: std::path::PathBuf,
    store_b: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl TwoHosts {
    /// None (with a line saying why) without root, iproute2, /dev/kvm, or
    /// qemu-img and qemu-io when `qemu` is set.
    fn new(qemu: bool) -> Option<TwoHosts> {
        if !is_root() || Command::new("ip").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("REQUIRE_KVM").is_none() || !is_root(),
                "REQUIRE_KVM is set but iproute2 is missing (scripts/ensure-net.sh)"
            );
            eprintln!("skipped: needs root and iproute2 for network namespaces");
            return None;
        }
        if !have_kvm() || (qemu && !have_qemu_img()) {
            return None;
        }
        ensure_vmm();
        let guest = build_guest();
        let hosts = Hosts::new()?;
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let images_b = dir.path().join("images-b");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&images_b).unwrap();
        Some(TwoHosts {
            hosts,
            guest,
            store_a: dir.path().join("store-a"),
            store_b: dir.path().join("store-b"),
            images,
            images_b,
            dir,
        })
    }

    /// `vm -c STORE_A ARGS` on host A.
    fn vm_a(&self, args: &[&str]) -> Command {
        self.hosts.vm(&self.hosts.a, &self.store_a, args)
    }

    /// `vm -c STORE_B ARGS` on host B.
    fn vm_b(&self, args: &[&str]) -> Command {
        self.hosts.vm(&self.hosts.b, &self.store_b, args)
    }

    /// Writes `xml` and has host A define and start its domain `name`;
    /// returns the domain's console log there.
    fn define_and_start_on_a(&self, name: &str, xml: &str) -> std::path::PathBuf {
        let xml_file = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&xml_file, xml).unwrap();
        ok(self.vm_a(&["define", xml_file.to_str().unwrap()]));
        ok(self.vm_a(&["start", name]));
        self.store_a.join(format!("run/{name}/console.log"))
    }

    /// `vm migrate-listen URI` on host B, with B's own image folder bound
    /// over `images` (so the images keep their paths).
    fn listen_unshared(&self, uri: &str) -> std::process::Child {
        self.listen_unshared_with(uri, &[])
    }

    /// [`TwoHosts::listen_unshared`] with `env` set for `vm` and the
    /// VMM it starts.
    fn listen_unshared_with(&self, uri: &str, env: &[(&str, &str)]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts.b, "sh", "-c"])
            .arg("mount --bind \"$1\" \"$2\" && exec \"$3\" -c \"$4\" migrate-listen \"$5\"")
            .arg("sh")
            .args([&self.images_b, &self.images])
            .arg(env!("CARGO_BIN_EXE_vm"))
            .arg(&self.store_b)
            .arg(uri)
            .env_remove("VM_VMM")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_count(log: &Path, at_least: u64) -> String {
    count::wait_count(log, 0, at_least, String::new)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_counting_guest_moves_between_two_hosts_with_shared_images() {
    let Some(two) = TwoHosts::new(false) else {
        return;
    };
    let (hosts, guest) = (&two.hosts, &two.guest);
    let store_b = &two.store_b;
    let image = two.images.join("mover.qcow2");
    let out = Command::new(env!("CARGO_BIN_EXE_img"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let xml = format!(
        "<domain type='kvm'>\n  <name>mover</name>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=count guest.every=20000</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
        guest.display(),
        image.display()
    );
    let log_a = two.define_and_start_on_a("mover", &xml);
    wait_count(&log_a, 5);

    let port = 4700 + std::process::id() % 1000;
    let uri = format!("tcp:{}:{port}", hosts.destination_ip());
    let listener = two
        .vm_b(&["migrate-listen", &uri])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The destination listens once its VMM is up: retry while refused.
    let start = Instant::now();
    loop {
        let out = two
            .vm_a(&["migrate", "mover", &uri, "--live"])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "\n",
                "virsh prints nothing"
            );
            break;
        }
        assert!(
            text(&out).contains("connecting") && start.elapsed() < Duration::from_secs(20),
            "vm migrate: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = listener.wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "migrate-listen: {}",
        text(&received)
    );
    assert!(
        String::from_utf8_lossy(&received.stdout).contains("Domain 'mover' migrated here"),
        "{}",
        text(&received)
    );

    // The source store keeps the domain, shut off (migrated).
    let state_a = ok(two.vm_a(&["domstate", "mover", "--reason"]));
    assert_eq!(state_a.trim(), "shut off (migrated)");
    let state_b = ok(two.vm_b(&["domstate", "mover", "--reason"]));
    assert_eq!(state_b.trim(), "running (migrated)");
    let uuid_a = ok(two.vm_a(&["domuuid", "mover"]));
    let uuid_b = ok(two.vm_b(&["domuuid", "mover"]));
    assert_eq!(uuid_a, uuid_b);

    // The guest goes on at the destination from where it was.
    let before = std::fs::read_to_string(&log_a).unwrap();
    let last = *counts(&before).last().unwrap();
    let log_b = store_b.join("run/mover/console.log");
    let after = wait_count(&log_b, last + 5);
    assert!(!after.contains("guest: start"), "started over: {after:?}");
    let all = counts(&format!("{before}{after}"));
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a repeat in {all:?}");
    }
    ok(two.vm_b(&["destroy", "mover"]));
    let check = Command::new(env!("CARGO_BIN_EXE_img"))
        .arg("check")
        .arg(&image)
        .output()
        .unwrap();
    assert!(check.status.success(), "img check: {}", text(&check));
}

fn qemu(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap()
}

fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("REQUIRE_QEMU").is_none(),
            "REQUIRE_QEMU is set but qemu-img or qemu-io is missing"
        );
        eprintln!("skipped: no qemu-img or qemu-io");
    }
    ok
}

#[test]
fn a_counting_guest_and_its_disk_move_between_two_hosts_that_share_no_storage() {
    // Host A's images at `images`; host B's own folder is mounted over
    // the same path in B's mount namespace.
    let Some(two) = TwoHosts::new(true) else {
        return;
    };
    let (hosts, guest) = (&two.hosts, &two.guest);
    let (images, images_b) = (&two.images, &two.images_b);
    let store_b = &two.store_b;
    // A backing file with data, an overlay with some of its own.
    let base = images.join("base.qcow2");
    let top = images.join("top.qcow2");
    let (base_s, top_s) = (base.to_str().unwrap(), top.to_str().unwrap());
    assert!(
        qemu("qemu-img", &["create", "-q", "-f", "qcow2", base_s, "4M"])
            .status
            .success()
    );
    assert!(qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 768k", base_s]
    )
    .status
    .success());
    assert!(qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", base_s, "-F", "qcow2", top_s]
    )
    .status
    .success());
    assert!(qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x33 1536k 64k", top_s]
    )
    .status
    .success());
    let xml = format!(
        "<domain type='kvm'>\n  <name>carrier</name>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=count guest.every=2000</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
        guest.display(),
        top.display()
    );
    let log_a = two.define_and_start_on_a("carrier", &xml);
    wait_count(&log_a, 50);

    let port = 5700 + std::process::id() % 1000;
    let uri = format!("tcp:{}:{port}", hosts.destination_ip());
    // Host B: its own image folder at the same path, then the listener.
    let listen = || two.listen_unshared(&uri);
    let migrate = |args: &[&str]| {
        let start = Instant::now();
        loop {
            let mut all = vec!["migrate", "carrier", uri.as_str()];
            all.extend_from_slice(args);
            let out = two.vm_a(&all).output().unwrap();
            if out.status.success() || !text(&out).contains("connecting") {
                return out;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{}", text(&out));
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // An image already at the path on B: refused, the source runs on,
    // B's image untouched.
    std::fs::write(images_b.join("top.qcow2"), b"not to be touched").unwrap();
    let listener = listen();
    let out = migrate(&["--live", "--copy-storage-all"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let refused = listener.wait_with_output().unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert_eq!(
        std::fs::read(images_b.join("top.qcow2")).unwrap(),
        b"not to be touched"
    );
    std::fs::remove_file(images_b.join("top.qcow2")).unwrap();
    let state_a = ok(two.vm_a(&["domstate", "carrier"]));
    assert_eq!(state_a.trim(), "running");
    let going = counts(&std::fs::read_to_string(&log_a).unwrap());
    wait_count(&log_a, going.last().unwrap() + 20);

    // The real one: the guest keeps writing during the copy, and stays
    // paused at B (--suspend) so that the images can be compared.
    let listener = listen();
    let out = migrate(&["--live", "--copy-storage-all", "--suspend"]);
    assert!(out.status.success(), "vm migrate: {}", text(&out));
    let received = listener.wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "migrate-listen: {}",
        text(&received)
    );
    let state_b = ok(two.vm_b(&["domstate", "carrier", "--reason"]));
    assert_eq!(state_b.trim(), "paused (migrating)");
    let state_a = ok(two.vm_a(&["domstate", "carrier", "--reason"]));
    assert_eq!(state_a.trim(), "shut off (migrated)");

    // B's copy: a standalone image of the same format, size and cluster
    // size, reading the same as A's whole chain.
    let copy = images_b.join("top.qcow2");
    let copy_s = copy.to_str().unwrap();
    let info = qemu("qemu-img", &["info", "-U", "--output=json", copy_s]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(info.contains("\"virtual-size\": 4194304"), "{info}");
    assert!(info.contains("\"cluster-size\": 65536"), "{info}");
    assert!(!info.contains("backing-filename"), "{info}");
    let same = qemu("qemu-img", &["compare", "-U", top_s, copy_s]);
    assert!(same.status.success(), "qemu-img compare: {}", text(&same));
    let check = qemu("qemu-img", &["check", "-U", copy_s]);
    assert!(check.status.success(), "qemu-img check: {}", text(&check));
    // The guest counted (and wrote its counts to the disk) during the
    // copy, so the comparison above covered blocks sent again.
    let before = std::fs::read_to_string(&log_a).unwrap();
    let last = *counts(&before).last().unwrap();
    assert!(last > going.last().unwrap() + 20);

    // It goes on at B from where it stopped at A.
    ok(two.vm_b(&["resume", "carrier"]));
    let log_b = store_b.join("run/carrier/console.log");
    let after = wait_count(&log_b, last + 20);
    assert!(!after.contains("guest: start"), "started over: {after:?}");
    let all = counts(&format!("{before}{after}"));
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a repeat in {all:?}");
    }
    ok(two.vm_b(&["destroy", "carrier"]));
    for image in [copy_s, top_s, base_s] {
        let check = qemu("qemu-img", &["check", image]);
        assert!(
            check.status.success(),
            "qemu-img check {image}: {}",
            text(&check)
        );
    }
}

#[test]
fn a_destination_killed_once_it_said_ready_leaves_whole_clean_copies() {
    // The source lets go of its disks once the destination says Ready:
    // the copies must be durable by then. The destination's VMM kills
    // itself (SIGKILL, nothing flushed after) right after Ready.
    let Some(two) = TwoHosts::new(true) else {
        return;
    };
    let (hosts, guest) = (&two.hosts, &two.guest);
    let (images, images_b) = (&two.images, &two.images_b);
    let disk = images.join("kept.qcow2");
    let disk_s = disk.to_str().unwrap();
    assert!(
        qemu("qemu-img", &["create", "-q", "-f", "qcow2", disk_s, "4M"])
            .status
            .success()
    );
    assert!(qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 768k", disk_s]
    )
    .status
    .success());
    let xml = format!(
        "<domain type='kvm'>\n  <name>kept</name>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=count guest.every=2000</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
        guest.display(),
        disk.display()
    );
    let log_a = two.define_and_start_on_a("kept", &xml);
    wait_count(&log_a, 50);
    let port = 5700 + (std::process::id() + 500) % 1000;
    let uri = format!("tcp:{}:{port}", hosts.destination_ip());
    let listener = two.listen_unshared_with(&uri, &[("VMM_TEST_KILL_AFTER_READY", "1")]);
    let start = Instant::now();
    let out = loop {
        let out = two
            .vm_a(&["migrate", "kept", &uri, "--live", "--copy-storage-all"])
            .output()
            .unwrap();
        if out.status.success() || !text(&out).contains("connecting") {
            break out;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", text(&out));
        std::thread::sleep(Duration::from_millis(50));
    };
    let received = listener.wait_with_output().unwrap();
    assert!(
        !received.status.success(),
        "the destination should have died: {}",
        text(&received)
    );
    // The source committed: it let go of its disk and shut off.
    let state_a = ok(two.vm_a(&["domstate", "kept"]));
    assert_eq!(state_a.trim(), "shut off", "vm migrate: {}", text(&out));
    // B's copy is clean and reads as A's disk at the switch.
    let copy = images_b.join("kept.qcow2");
    let copy_s = copy.to_str().unwrap();
    let check = qemu("qemu-img", &["check", copy_s]);
    assert!(check.status.success(), "qemu-img check: {}", text(&check));
    let same = qemu("qemu-img", &["compare", disk_s, copy_s]);
    assert!(same.status.success(), "qemu-img compare: {}", text(&same));
    // The guest had written its counts during the copy.
    let before = std::fs::read_to_string(&log_a).unwrap();
    assert!(*counts(&before).last().unwrap() >= 50);
}

/// The pid of a process in namespace `ns` holding an unnamed (O_TMPFILE)
/// file open ("#INODE (deleted)", its folder as seen from `ns`'s mount
/// namespace): a destination VMM in the middle of a disk copy.
fn copying_pid(ns: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .ok()?;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if target.contains("/#") && target.ends_with(" (deleted)") {
                    return pid.parse().ok();
                }
            }
        }
    }
    None
}

/// The `depth` of each `qemu-img map` entry covering `offset`.
fn map_depth(image: &str, offset: u64) -> u64 {
    let out = qemu("qemu-img", &["map", "-U", "--output=json", image]);
    assert!(out.status.success(), "qemu-img map: {}", text(&out));
    let map: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    map.iter()
        .find(|e| {
            let start = e["start"].as_u64().unwrap();
            (start..start + e["length"].as_u64().unwrap()).contains(&offset)
        })
        .and_then(|e| e["depth"].as_u64())
        .unwrap()
}

#[test]
fn copy_storage_inc_sends_the_top_only_and_a_destination_killed_mid_copy_leaves_nothing() {
    let Some(two) = TwoHosts::new(true) else {
        return;
    };
    let (hosts, guest) = (&two.hosts, &two.guest);
    let (images, images_b) = (&two.images, &two.images_b);
    // A backing file with data (on both hosts, as copy-storage-inc
    // expects), an overlay with 24 MiB of its own, so that the copy
    // lasts long enough to be interrupted.
    let base = images.join("base.qcow2");
    let top = images.join("top.qcow2");
    let (base_s, top_s) = (base.to_str().unwrap(), top.to_str().unwrap());
    for args in [
        vec!["create", "-q", "-f", "qcow2", base_s, "32M"],
        vec![
            "create", "-q", "-f", "qcow2", "-b", base_s, "-F", "qcow2", top_s,
        ],
    ] {
        let out = qemu("qemu-img", &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    for (image, write) in [
        (base_s, "write -P 0x5a 1M 768k"),
        (top_s, "write -P 0x33 8M 24M"),
    ] {
        let out = qemu("qemu-io", &["-f", "qcow2", "-c", write, image]);
        assert!(out.status.success(), "{write}: {}", text(&out));
    }
    std::fs::copy(&base, images_b.join("base.qcow2")).unwrap();
    let xml = format!(
        "<domain type='kvm'>\n  <name>carrier</name>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=count guest.every=2000</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
        guest.display(),
        top.display()
    );
    let log_a = two.define_and_start_on_a("carrier", &xml);
    wait_count(&log_a, 20);

    let port = 6700 + std::process::id() % 1000;
    let uri = format!("tcp:{}:{port}", hosts.destination_ip());
    let listen = || two.listen_unshared(&uri);
    let migrate = |args: &[&str]| {
        let mut all = vec!["migrate", "carrier", uri.as_str(), "--live"];
        all.extend_from_slice(args);
        two.vm_a(&all)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // The destination's VMM killed while it writes the copy: nothing is
    // left at B but the backing file, the source runs on with its image
    // locked.
    let listener = listen();
    let start = Instant::now();
    let mut source = migrate(&["--copy-storage-inc"]);
    let pid = loop {
        if let Some(pid) = copying_pid(&hosts.b) {
            break pid;
        }
        if source.try_wait().unwrap().is_some() {
            // Too early for the listener: again.
            let out = source.wait_with_output().unwrap();
            assert!(text(&out).contains("connecting"), "{}", text(&out));
            source = migrate(&["--copy-storage-inc"]);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no unnamed image at B"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: kill has no memory arguments; pid is B's VMM, found above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let out = source.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!listener.wait_with_output().unwrap().status.success());
    let left: Vec<_> = std::fs::read_dir(images_b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("base.qcow2")]);
    let state_a = ok(two.vm_a(&["domstate", "carrier"]));
    assert_eq!(state_a.trim(), "running");
    let going = counts(&std::fs::read_to_string(&log_a).unwrap());
    wait_count(&log_a, going.last().unwrap() + 10);
    let locked = qemu("qemu-img", &["info", top_s]);
    assert!(
        !locked.status.success() && text(&locked).contains("lock"),
        "the source's image is not locked: {}",
        text(&locked)
    );

    // Again to the end: the top's clusters only, over B's own base.
    let listener = listen();
    let out = loop {
        let out = migrate(&["--copy-storage-inc", "--suspend"])
            .wait_with_output()
            .unwrap();
        if out.status.success() || !text(&out).contains("connecting") {
            break out;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "{}", text(&out));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.status.success(), "vm migrate: {}", text(&out));
    let received = listener.wait_with_output().unwrap();
    assert!(received.status.success(), "{}", text(&received));
    let copy = images_b.join("top.qcow2");
    let copy_s = copy.to_str().unwrap();
    let info = qemu("qemu-img", &["info", "-U", "--output=json", copy_s]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("\"backing-filename\""), "{info}");
    assert!(
        info.contains("\"backing-filename-format\": \"qcow2\""),
        "{info}"
    );
    // The base's data is read through B's base, the top's from the copy.
    assert_eq!(map_depth(copy_s, 1 << 20), 1);
    assert_eq!(map_depth(copy_s, 8 << 20), 0);
    let same = qemu("qemu-img", &["compare", "-U", top_s, copy_s]);
    assert!(same.status.success(), "qemu-img compare: {}", text(&same));
    ok(two.vm_b(&["destroy", "carrier"]));
    let check = qemu("qemu-img", &["check", copy_s]);
    assert!(check.status.success(), "qemu-img check: {}", text(&check));
}
