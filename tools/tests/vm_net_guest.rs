//! `vm` with network interfaces on the real `vmm` and the test guest
//! (`guest.mode=net`), in a fresh network namespace: a `type='bridge'`
//! interface (vm makes the tap, puts it on the bridge, and the tap is
//! gone once the domain is destroyed) and a `type='ethernet'` one on a
//! tap the user made; the host pings each guest, and `domifstat` and
//! `domstats --interface` report its traffic. Needs root, /dev/kvm, `ip`
//! and `ping` (skipped without them unless REQUIRE_KVM is set).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::cli::ok;
use support::guest::{build_guest, ensure_vmm, have_kvm};

fn have(program: &str) -> bool {
    Command::new(program).arg("-V").output().is_ok()
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if have_kvm() && root && have("ip") && have("ping") && Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var_os("REQUIRE_KVM").is_none(),
        "REQUIRE_KVM is set but root, /dev/kvm, /dev/net/tun, ip or ping is missing"
    );
    eprintln!("skipped: needs root, /dev/kvm, /dev/net/tun, ip and ping");
    false
}

fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the
        // calling thread.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn define(store: &Path, dir: &Path, name: &str, guest_ip: &str, interface: &str, guest: &Path) {
    let xml = format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>console=ttyS0 guest.mode=net guest.ip={guest_ip}</cmdline>\n  </os>\n  <devices>\n    {interface}\n    <serial type='pty'/>\n  </devices>\n</domain>\n",
        guest.display()
    );
    let file = dir.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    ok(store, &["define", file.to_str().unwrap()]);
}

fn wait_console(store: &Path, name: &str, text: &str) {
    let log = store.join("run").join(name).join("console.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never printed {text:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(address: &str) {
    let out = Command::new("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "5", address])
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "ping {address}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `ip -o link show dev NAME` (this namespace's view; /sys shows the
/// host's), or None when there is no such interface.
fn link_show(name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `name=value` of a domstats line.
fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn bridge_and_ethernet_interfaces_carry_the_guests_traffic() {
    if !can_run() {
        return;
    }
    ensure_vmm();
    let guest: PathBuf = build_guest();
    in_netns(move || {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.98.0.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        ip(&["tuntap", "add", "dev", "usertap", "mode", "tap", "vnet_hdr"]);
        ip(&["link", "set", "usertap", "addrgenmode", "none"]);
        ip(&["addr", "add", "10.97.0.1/24", "dev", "usertap"]);
        ip(&["link", "set", "usertap", "up"]);
        define(
            &store,
            dir.path(),
            "bridged",
            "10.98.0.2",
            "<interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/><model type='virtio'/></interface>",
            &guest,
        );
        define(
            &store,
            dir.path(),
            "wired",
            "10.97.0.2",
            "<interface type='ethernet'><mac address='52:54:00:00:00:03'/><target dev='usertap' managed='no'/><model type='virtio'/></interface>",
            &guest,
        );
        ok(&store, &["start", "bridged"]);
        ok(&store, &["start", "wired"]);
        wait_console(&store, "bridged", "guest: net ready mac=52:54:00:00:00:02");
        wait_console(&store, "wired", "guest: net ready mac=52:54:00:00:00:03");
        // vm made vnet0 and put it on br0.
        let link = link_show("vnet0").expect("vnet0 exists");
        assert!(link.contains(" master br0 "), "{link}");
        ping("10.98.0.2");
        ping("10.97.0.2");
        let stats = ok(&store, &["domifstat", "wired", "usertap"]);
        let rx: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("usertap rx_packets "))
            .and_then(|v| v.parse().ok())
            .expect("rx_packets");
        assert!(rx >= 2, "{stats}");
        let by_mac = ok(&store, &["domifstat", "wired", "52:54:00:00:00:03"]);
        assert!(
            by_mac.starts_with("52:54:00:00:00:03 rx_bytes "),
            "{by_mac}"
        );
        let domstats = ok(&store, &["domstats", "--interface", "bridged"]);
        assert_eq!(stat(&domstats, "net.count"), 1);
        assert!(stat(&domstats, "net.0.rx.pkts") >= 2, "{domstats}");
        assert!(stat(&domstats, "net.0.tx.pkts") >= 2, "{domstats}");
        assert!(stat(&domstats, "net.0.rx.bytes") > 0, "{domstats}");
        let list = ok(&store, &["domiflist", "wired"]);
        let row: Vec<&str> = list
            .lines()
            .nth(2)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            ["usertap", "ethernet", "-", "virtio", "52:54:00:00:00:03"],
            "{list}"
        );
        ok(&store, &["destroy", "bridged"]);
        ok(&store, &["destroy", "wired"]);
        // The tap vm made is gone with its VMM; the user's stays.
        let start = Instant::now();
        while link_show("vnet0").is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "vnet0 outlived its VMM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(link_show("usertap").is_some(), "the user's tap stays");
    });
}

/// Waits until interface `name` is gone (its VMM ended).
fn wait_link_gone(name: &str) {
    let start = Instant::now();
    while link_show(name).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} outlived its VMM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `type='bridge'` domain reverted to a running snapshot answers ping:
/// in place (the VMM keeps the tap vm handed it with vm.create and the
/// reverted device runs on it) and when shut off (vm makes a new tap on
/// the bridge for the new VMM, which restores onto it).
#[test]
fn bridge_interface_carries_traffic_after_snapshot_revert() {
    if !can_run() {
        return;
    }
    ensure_vmm();
    let guest: PathBuf = build_guest();
    in_netns(move || {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let image = dir.path().join("reverted.qcow2");
        let out = Command::new(env!("CARGO_BIN_EXE_img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("16M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.98.1.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        let devices = format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\n    <interface type='bridge'><mac address='52:54:00:00:01:02'/><source bridge='br0'/><model type='virtio'/></interface>",
            image.display()
        );
        define(
            &store,
            dir.path(),
            "reverted",
            "10.98.1.2",
            &devices,
            &guest,
        );
        ok(&store, &["start", "reverted"]);
        wait_console(&store, "reverted", "guest: net ready mac=52:54:00:00:01:02");
        ping("10.98.1.2");
        ok(&store, &["snapshot-create-as", "reverted", "s1"]);
        // In place: the running VMM's tap serves the reverted device.
        ok(&store, &["snapshot-revert", "reverted", "s1"]);
        assert!(link_show("vnet0")
            .expect("vnet0 stays")
            .contains(" master br0 "));
        ping("10.98.1.2");
        // Shut off: a new VMM with a new tap on br0.
        ok(&store, &["destroy", "reverted"]);
        wait_link_gone("vnet0");
        ok(&store, &["snapshot-revert", "reverted", "s1"]);
        let link = link_show("vnet0").expect("vm made vnet0 again");
        assert!(link.contains(" master br0 "), "{link}");
        ping("10.98.1.2");
        ok(&store, &["destroy", "reverted"]);
        wait_link_gone("vnet0");
    });
}

/// `ip netns exec NS PROGRAM ARGS`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

fn run_ok(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Named namespaces standing for two hosts, each with a bridge br0 of
/// the same address and MAC (the guest's ARP entry stays right); removed
/// on drop.
struct TwoHosts([String; 2]);

impl TwoHosts {
    fn new() -> TwoHosts {
        let hosts = TwoHosts([0, 1].map(|n| format!("vmnetmig{n}-{}", std::process::id())));
        for ns in &hosts.0 {
            ip(&["netns", "add", ns]);
            for args in [
                &["link", "set", "lo", "up"][..],
                &[
                    "link",
                    "add",
                    "br0",
                    "address",
                    "02:00:00:00:98:01",
                    "type",
                    "bridge",
                ],
                &["addr", "add", "10.98.2.1/24", "dev", "br0"],
                &["link", "set", "br0", "up"],
            ] {
                let mut command = in_ns(ns, "ip");
                command.args(args);
                run_ok(command);
            }
        }
        hosts
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A `type='bridge'` domain migrates with `vm migrate` to a host where
/// `migrate-listen --xml FILE` made a tap on that host's bridge for it;
/// without `--xml` the destination refuses in one line naming the option
/// and the guest runs on at the source.
#[test]
fn a_bridge_domain_migrates_onto_the_destinations_bridge() {
    if !can_run() {
        return;
    }
    ensure_vmm();
    let guest: PathBuf = build_guest();
    let hosts = TwoHosts::new();
    let [a, b] = hosts.0.clone();
    let dir = tempfile::tempdir().unwrap();
    let store_a = dir.path().join("store-a");
    let store_b = dir.path().join("store-b");
    let vm_in = |ns: &str, store: &Path, args: &[&str]| {
        let mut command = in_ns(ns, env!("CARGO_BIN_EXE_vm"));
        command.arg("-c").arg(store).args(args).env_remove("VM_VMM");
        command
    };
    let ping_in = |ns: &str| {
        let mut command = in_ns(ns, "ping");
        command.args(["-c", "2", "-i", "0.2", "-W", "5", "10.98.2.2"]);
        run_ok(command);
    };
    let xml = format!(
        "<domain type='kvm'>\n  <name>roamer</name>\n  <memory unit='MiB'>32</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>console=ttyS0 guest.mode=net guest.ip=10.98.2.2</cmdline>\n  </os>\n  <devices>\n    <interface type='bridge'><mac address='52:54:00:00:02:02'/><source bridge='br0'/><model type='virtio'/></interface>\n    <serial type='pty'/>\n  </devices>\n</domain>\n",
        guest.display()
    );
    let xml_file = dir.path().join("roamer.xml");
    std::fs::write(&xml_file, xml).unwrap();
    let xml_path = xml_file.to_str().unwrap();
    run_ok(vm_in(&a, &store_a, &["define", xml_path]));
    run_ok(vm_in(&a, &store_a, &["start", "roamer"]));
    wait_console(&store_a, "roamer", "guest: net ready mac=52:54:00:00:02:02");
    ping_in(&a);
    let uri = format!("unix:{}", dir.path().join("migrate.sock").display());
    let migrate = |listen: &[&str]| {
        let _ = std::fs::remove_file(dir.path().join("migrate.sock"));
        let listener = vm_in(&b, &store_b, listen)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let sent = loop {
            let out = vm_in(&a, &store_a, &["migrate", "roamer", &uri, "--live"])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success()
                || !said.contains("connecting")
                || start.elapsed() > Duration::from_secs(20)
            {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (sent, listener.wait_with_output().unwrap())
    };
    let (sent, received) = migrate(&["migrate-listen", &uri]);
    assert!(!sent.status.success() && !received.status.success());
    let said = String::from_utf8_lossy(&received.stderr);
    assert!(
        said.contains("interface 'net0' had its tap as a descriptor")
            && said.contains("give migrate-listen --xml FILE")
            && said.trim().lines().count() == 1,
        "{said}"
    );
    ping_in(&a);
    let (sent, received) = migrate(&["migrate-listen", &uri, "--xml", xml_path]);
    assert!(
        sent.status.success() && received.status.success(),
        "{sent:?} {received:?}"
    );
    let link = run_ok({
        let mut command = in_ns(&b, "ip");
        command.args(["-o", "link", "show", "dev", "vnet0"]);
        command
    });
    assert!(link.contains(" master br0 "), "{link}");
    ping_in(&b);
    run_ok(vm_in(&b, &store_b, &["destroy", "roamer"]));
}
