//! `vm` against the real `vmm` and the test guest: every command on a
//! running guest, exact disk counters after `guest.mode=io`, kill -9 then
//! list and start, two racing starts, a hung VMM, the console, and 20 idle
//! guests started, listed, domstats'd and shut down with their images
//! clean afterwards. Needs /dev/kvm (skipped without it unless REQUIRE_KVM
//! is set).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::cli::vm;
use support::guest::{build_guest, ensure_vmm, have_kvm};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert!(
        out.status.success(),
        "vm {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn img() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_img"))
}

/// A test bed: a store and a folder of images, with the guest built.
struct Bed {
    dir: tempfile::TempDir,
    store: PathBuf,
    guest: PathBuf,
}

impl Drop for Bed {
    /// A failed test leaves no VMM running: every running domain of the
    /// store is destroyed.
    fn drop(&mut self) {
        let names = vm(&self.store, &["list", "--name"]);
        for name in stdout(&names).lines().filter(|l| !l.trim().is_empty()) {
            let _ = vm(&self.store, &["destroy", name.trim()]);
        }
    }
}

fn bed() -> Option<Bed> {
    if !have_kvm() {
        return None;
    }
    ensure_vmm();
    let guest = build_guest();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Some(Bed { dir, store, guest })
}

impl Bed {
    /// Defines `name` with a new 16 MiB qcow2 disk and `cmdline`.
    fn define(&self, name: &str, cmdline: &str, mib: u64) -> PathBuf {
        let image = self.dir.path().join(format!("{name}.qcow2"));
        let out = Command::new(img())
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
        let xml = format!(
            "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>{mib}</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>{cmdline}</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <serial type='pty'/>\n  </devices>\n</domain>\n",
            self.guest.display(),
            image.display()
        );
        let file = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        ok(&self.store, &["define", file.to_str().unwrap()]);
        image
    }

    fn console_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.store.join("run").join(name).join("console.log"))
            .unwrap_or_default()
    }

    fn pid(&self, name: &str) -> i32 {
        let text = std::fs::read_to_string(self.store.join("run").join(name).join("pid")).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Waits until `domstate NAME` prints `state`.
    fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let now = ok(&self.store, &["-q", "domstate", name]);
            if now.trim() == state {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{name} stayed '{}' (waited for '{state}')",
                now.trim()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the guest listens for the power button (it prints
    /// `guest: idle` once its GED interrupt is routed; a button pressed
    /// before that is lost, as on a guest whose ACPI driver is not up).
    fn wait_ready(&self, name: &str) {
        self.wait_console(name, "guest: idle", Duration::from_secs(20));
    }

    /// Waits until the guest printed `text`.
    fn wait_console(&self, name: &str, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.console_log(name).contains(text) {
            assert!(
                start.elapsed() < timeout,
                "{name} never printed {text:?}: {}",
                self.console_log(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn img_check_clean(image: &Path) {
    let out = Command::new(img())
        .arg("check")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of `key=` in a domstats record.
fn stat(record: &str, key: &str) -> u64 {
    record
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from:\n{record}"))
        .parse()
        .unwrap()
}

#[test]
fn every_command_on_a_running_guest() {
    let Some(bed) = bed() else { return };
    let image = bed.define("one", "guest.mode=idle", 32);
    assert_eq!(
        ok(&bed.store, &["start", "one"]),
        "Domain 'one' started\n\n"
    );
    let listing = ok(&bed.store, &["list", "--all"]);
    let id = ok(&bed.store, &["-q", "domid", "one"]).trim().to_string();
    assert_eq!(
        listing,
        format!(
            " Id   Name   State\n{}\n {id:<4} one    running\n\n",
            "-".repeat(22)
        )
    );
    assert_eq!(
        ok(&bed.store, &["domstate", "one", "--reason"]),
        "running (booted)\n\n"
    );
    let info = ok(&bed.store, &["dominfo", "one"]);
    assert!(
        info.starts_with(&format!("Id:             {id}\nName:           one\n")),
        "{info}"
    );
    assert!(info.contains("State:          running\n"), "{info}");
    assert!(
        info.contains("Max memory:     32768 KiB\nUsed memory:    32768 KiB\n"),
        "{info}"
    );
    assert!(
        ok(&bed.store, &["dumpxml", "one"]).starts_with(&format!("<domain type='kvm' id='{id}'>"))
    );
    assert_eq!(
        ok(&bed.store, &["vcpucount", "one"]),
        "maximum      config         1\nmaximum      live           1\ncurrent      config         1\ncurrent      live           1\n\n"
    );
    let vcpu = ok(&bed.store, &["vcpuinfo", "one"]);
    assert!(
        vcpu.starts_with("VCPU:           0\nCPU:            "),
        "{vcpu}"
    );
    assert!(
        vcpu.contains("State:          running\nCPU time:       "),
        "{vcpu}"
    );
    let mem = ok(&bed.store, &["dommemstat", "one"]);
    assert!(mem.starts_with("actual 32768\nrss "), "{mem}");
    let blk = ok(&bed.store, &["domblkstat", "one", "vda"]);
    assert!(blk.starts_with("vda rd_req "), "{blk}");
    let human = ok(&bed.store, &["domblkstat", "one", "vda", "--human"]);
    assert!(
        human.starts_with("Device: vda\n number of read operations:      "),
        "{human}"
    );
    let info = ok(&bed.store, &["domblkinfo", "one", "vda"]);
    assert!(
        info.starts_with("Capacity:       16777216\nAllocation:     "),
        "{info}"
    );
    let record = ok(&bed.store, &["domstats", "one"]);
    assert!(
        record.starts_with("Domain: 'one'\n  state.state=1\n  state.reason=1\n  cpu.time="),
        "{record}"
    );
    for key in [
        "cpu.user",
        "cpu.system",
        "balloon.rss",
        "vcpu.0.time",
        "block.0.rd.reqs",
        "block.0.fl.times",
    ] {
        stat(&record, key);
    }
    assert_eq!(stat(&record, "balloon.maximum"), 32768);
    assert_eq!(stat(&record, "vcpu.0.state"), 1);
    assert_eq!(stat(&record, "block.count"), 1);

    assert_eq!(
        ok(&bed.store, &["suspend", "one"]),
        "Domain 'one' suspended\n\n"
    );
    assert_eq!(
        ok(&bed.store, &["domstate", "one", "--reason"]),
        "paused (user)\n\n"
    );
    assert_eq!(
        ok(&bed.store, &["list", "--state-paused", "--name"]),
        "one\n\n"
    );
    assert_eq!(
        ok(&bed.store, &["resume", "one"]),
        "Domain 'one' resumed\n\n"
    );
    assert_eq!(
        ok(&bed.store, &["domstate", "one", "--reason"]),
        "running (unpaused)\n\n"
    );
    let again = vm(&bed.store, &["start", "one"]);
    assert_eq!(
        (stdout(&again), stderr(&again)),
        (
            "\n".to_string(),
            "error: Domain is already active\n".to_string()
        )
    );
    // Undefining a running domain leaves it running and transient, as
    // libvirt does; defining it again makes it persistent.
    assert_eq!(
        ok(&bed.store, &["undefine", "one"]),
        "Domain 'one' has been undefined\n\n"
    );
    assert!(ok(&bed.store, &["dominfo", "one"]).contains("Persistent:     no\n"));
    assert_eq!(
        ok(&bed.store, &["list", "--transient", "--name"]),
        "one\n\n"
    );
    assert_eq!(ok(&bed.store, &["list", "--persistent", "--name"]), "\n");
    let xml = bed.dir.path().join("one-live.xml");
    std::fs::write(&xml, ok(&bed.store, &["dumpxml", "one"])).unwrap();
    ok(&bed.store, &["define", xml.to_str().unwrap()]);
    assert!(ok(&bed.store, &["dominfo", "one"]).contains("Persistent:     yes\n"));

    assert_eq!(
        ok(&bed.store, &["shutdown", "one"]),
        "Domain 'one' is being shutdown\n\n"
    );
    bed.wait_state("one", "shut off", Duration::from_secs(10));
    assert_eq!(
        ok(&bed.store, &["domstate", "one", "--reason"]),
        "shut off (shutdown)\n\n"
    );
    let run = bed.store.join("run/one");
    assert!(!run.join("api.sock").exists() && !run.join("pid").exists());
    img_check_clean(&image);

    // start --paused, then destroy.
    ok(&bed.store, &["start", "one", "--paused"]);
    assert_eq!(ok(&bed.store, &["domstate", "one"]), "paused\n\n");
    assert_eq!(
        ok(&bed.store, &["destroy", "one"]),
        "Domain 'one' destroyed\n\n"
    );
    assert_eq!(
        ok(&bed.store, &["domstate", "one", "--reason"]),
        "shut off (destroyed)\n\n"
    );
    let stopped = vm(&bed.store, &["shutdown", "one"]);
    assert_eq!(
        stderr(&stopped),
        "error: Failed to shutdown domain 'one'\nerror: Requested operation is not valid: domain is not running\n"
    );
    img_check_clean(&image);
}

#[test]
fn an_undefined_running_domain_is_forgotten_when_it_stops() {
    let Some(bed) = bed() else { return };
    let image = bed.define("gone", "console=ttyS0 guest.mode=idle", 32);
    ok(&bed.store, &["start", "gone"]);
    ok(&bed.store, &["undefine", "gone"]);
    assert_eq!(
        ok(&bed.store, &["list", "--all", "--name"]),
        "gone\n\n",
        "a transient domain is listed while it runs"
    );
    assert_eq!(
        ok(&bed.store, &["destroy", "gone"]),
        "Domain 'gone' destroyed\n\n"
    );
    assert_eq!(ok(&bed.store, &["list", "--all", "--name"]), "\n");
    let info = vm(&bed.store, &["dominfo", "gone"]);
    assert_eq!(stderr(&info), "error: failed to get domain 'gone'\n");
    assert!(
        std::fs::read_dir(bed.store.join("domains"))
            .unwrap()
            .next()
            .is_none(),
        "no definition is left behind"
    );
    img_check_clean(&image);
}

#[test]
fn domstats_counts_the_guests_reads_writes_and_flushes_exactly() {
    let Some(bed) = bed() else { return };
    let (reads, writes, flushes) = (7, 5, 3);
    let image = bed.define(
        "io",
        &format!("guest.mode=io guest.reads={reads} guest.writes={writes} guest.flushes={flushes}"),
        32,
    );
    ok(&bed.store, &["start", "io"]);
    bed.wait_console("io", "io done", Duration::from_secs(20));
    let record = ok(&bed.store, &["domstats", "--block", "io"]);
    assert_eq!(stat(&record, "block.0.rd.reqs"), reads);
    assert_eq!(stat(&record, "block.0.rd.bytes"), reads * 4096);
    assert_eq!(stat(&record, "block.0.wr.reqs"), writes);
    assert_eq!(stat(&record, "block.0.wr.bytes"), writes * 4096);
    assert_eq!(stat(&record, "block.0.fl.reqs"), flushes);
    let blk = ok(&bed.store, &["domblkstat", "io", "vda"]);
    assert!(blk.starts_with(&format!(
        "vda rd_req {reads}\nvda rd_bytes {}\nvda wr_req {writes}\nvda wr_bytes {}\nvda flush_operations {flushes}\n",
        reads * 4096,
        writes * 4096
    )), "{blk}");
    bed.wait_ready("io");
    ok(&bed.store, &["shutdown", "io"]);
    bed.wait_state("io", "shut off", Duration::from_secs(10));
    img_check_clean(&image);
}

#[test]
fn a_killed_vmm_shows_shut_off_crashed_and_starts_again() {
    let Some(bed) = bed() else { return };
    let image = bed.define("k9", "guest.mode=idle", 32);
    ok(&bed.store, &["start", "k9"]);
    let pid = bed.pid("k9");
    // SAFETY: killing the VMM this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    // Gone, or a zombie whose last thread has ended (stat field 20 is the
    // thread count): only then are its files, and its image locks, closed.
    let ended = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        stat.is_empty() || (fields.first() == Some(&"Z") && fields.get(17) == Some(&"1"))
    };
    while !ended() {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(ok(&bed.store, &["list", "--all"]).contains(" -    k9     shut off\n"));
    assert_eq!(
        ok(&bed.store, &["domstate", "k9", "--reason"]),
        "shut off (crashed)\n\n"
    );
    let run = bed.store.join("run/k9");
    assert!(!run.join("api.sock").exists(), "stale socket left");
    assert!(!run.join("pid").exists(), "stale pid left");
    ok(&bed.store, &["start", "k9"]);
    assert_eq!(ok(&bed.store, &["-q", "domstate", "k9"]), "running\n");
    ok(&bed.store, &["destroy", "k9"]);
    img_check_clean(&image);
}

#[test]
fn two_racing_starts_start_one_vmm() {
    let Some(bed) = bed() else { return };
    bed.define("race", "guest.mode=idle", 32);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_vm"))
            .arg("-c")
            .arg(&bed.store)
            .args(["start", "race"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let started = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        started,
        1,
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let refused = outs.iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(stderr(refused), "error: Domain is already active\n");
    let vmms = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .map(|c| c.contains(&*bed.store.join("run/race/api.sock").to_string_lossy()))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(vmms, 1);
    ok(&bed.store, &["destroy", "race"]);
}

#[test]
fn a_hung_vmm_costs_list_a_bounded_wait_and_destroy_still_works() {
    let Some(bed) = bed() else { return };
    bed.define("hung", "guest.mode=idle", 32);
    bed.define("fine", "guest.mode=idle", 32);
    ok(&bed.store, &["start", "hung"]);
    ok(&bed.store, &["start", "fine"]);
    let pid = bed.pid("hung");
    // SAFETY: stopping the VMM this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let start = Instant::now();
    let out = vm(&bed.store, &["list", "--all"]);
    let took = start.elapsed();
    assert!(out.status.success());
    assert!(took < Duration::from_secs(5), "list took {took:?}");
    assert!(
        stderr(&out).contains(&format!("domain 'hung' (vmm pid {pid}) did not answer")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("fine   running"), "{}", stdout(&out));
    let stats = vm(&bed.store, &["domstats", "--state"]);
    assert_eq!(stats.status.code(), Some(1));
    assert!(stdout(&stats).contains("Domain: 'fine'"));
    assert!(stderr(&stats).contains("'hung'"));
    assert_eq!(
        ok(&bed.store, &["destroy", "hung"]),
        "Domain 'hung' destroyed\n\n"
    );
    assert_eq!(ok(&bed.store, &["-q", "domstate", "hung"]), "shut off\n");
    ok(&bed.store, &["destroy", "fine"]);
}

#[test]
fn console_shows_the_guest_and_ctrl_bracket_detaches() {
    let Some(bed) = bed() else { return };
    bed.define("con", "guest.mode=hello", 32);
    ok(&bed.store, &["start", "con"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm"))
        .arg("-c")
        .arg(&bed.store)
        .args(["console", "con"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Connected to domain 'con'\nEscape character is ^] (Ctrl + ])\n"),
        "{text}"
    );
    assert!(text.contains("guest: hello"), "{text}");
    ok(&bed.store, &["destroy", "con"]);
}

#[test]
fn twenty_idle_guests_start_list_report_and_shut_down_clean() {
    let Some(bed) = bed() else { return };
    let names: Vec<String> = (0..20).map(|i| format!("idle{i:02}")).collect();
    let images: Vec<PathBuf> = names
        .iter()
        .map(|n| bed.define(n, "guest.mode=idle", 32))
        .collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_vm"))
                .arg("-c")
                .arg(&bed.store)
                .args(["start", n])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let listing = ok(&bed.store, &["-q", "list", "--all"]);
    assert_eq!(
        listing.lines().filter(|l| l.ends_with("running")).count(),
        20,
        "{listing}"
    );
    let stats = ok(&bed.store, &["domstats", "--state", "--balloon"]);
    assert_eq!(stats.matches("Domain: 'idle").count(), 20);
    assert_eq!(stats.matches("state.state=1\n").count(), 20);
    for n in &names {
        bed.wait_ready(n);
        ok(&bed.store, &["shutdown", n]);
    }
    for n in &names {
        bed.wait_state(n, "shut off", Duration::from_secs(20));
    }
    assert_eq!(ok(&bed.store, &["-q", "list"]), "");
    for image in &images {
        img_check_clean(image);
    }
}

#[test]
fn start_says_in_one_line_why_it_cannot() {
    let Some(bed) = bed() else { return };
    let image = bed.define("holder", "guest.mode=idle", 32);
    ok(&bed.store, &["start", "holder"]);
    let cases = [
        ("nokernel", "<kernel>/nonexistent/vmlinux</kernel>", "", 32,
         "error: Cannot access storage file '/nonexistent/vmlinux': No such file or directory"),
        ("hugemem", "", "", 1u64 << 20,
         "error: unsupported configuration: <memory> of 1073741824 KiB is over the host's"),
        ("nic", "", "<interface type='network'><source network='default'/></interface>", 32,
         "error: unsupported configuration: <interface type='network'>: only ethernet and bridge interfaces are supported"),
        ("sata", "", "<disk type='file' device='disk'><source file='/var/tmp/x.img'/><target dev='sda' bus='sata'/></disk>", 32,
         "error: unsupported configuration: <disk> 'sda' on bus 'sata': only virtio disks are supported"),
        ("locked", "", &format!("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>", image.display()), 32,
         "error: operation failed: "),
    ];
    for (name, kernel, device, mib, expected) in cases {
        let kernel = if kernel.is_empty() {
            format!("<kernel>{}</kernel>", bed.guest.display())
        } else {
            kernel.to_string()
        };
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>{mib}</memory><os><type>hvm</type>{kernel}<cmdline>guest.mode=idle</cmdline></os><devices>{device}<graphics type='vnc'/></devices></domain>"
        );
        let file = bed.dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        ok(&bed.store, &["define", file.to_str().unwrap()]);
        let out = vm(&bed.store, &["start", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = stderr(&out);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("warning: "))
            .collect();
        assert_eq!(lines.len(), 2, "{name}: {err}");
        assert_eq!(
            lines[0],
            format!("error: Failed to start domain '{name}'"),
            "{name}: {err}"
        );
        assert!(lines[1].starts_with(expected), "{name}: {err}");
        assert_eq!(
            ok(&bed.store, &["-q", "domstate", name]),
            "shut off\n",
            "{name}"
        );
        assert!(
            !bed.store.join("run").join(name).join("pid").exists(),
            "{name}"
        );
    }
    // The host-side device was ignored with one warning line.
    let out = vm(&bed.store, &["start", "locked"]);
    assert_eq!(
        stderr(&out)
            .lines()
            .filter(
                |l| *l == "warning: ignoring <graphics>: host-side device, not given to the guest"
            )
            .count(),
        1
    );
    ok(&bed.store, &["destroy", "holder"]);
    img_check_clean(&image);
}

/// The same domains in libvirt's test driver: `(name, runstate)`.
fn test_driver_node(bed: &Bed, domains: &[(&str, u32)]) -> PathBuf {
    let mut node = String::from("<node>\n");
    for (name, runstate) in domains {
        let dumped = ok(&bed.store, &["-q", "dumpxml", "--inactive", name]);
        let body = dumped
            .replacen(
                "<domain type='kvm'>",
                "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>",
                1,
            )
            .replacen(
                "</domain>",
                &format!("<test:runstate>{runstate}</test:runstate></domain>"),
                1,
            );
        node.push_str(&body);
    }
    node.push_str("</node>\n");
    let path = bed.dir.path().join("node.xml");
    std::fs::write(&path, node).unwrap();
    path
}

#[test]
fn listings_of_running_and_paused_guests_match_virsh() {
    let Some(bed) = bed() else { return };
    let have_virsh = Command::new("virsh").arg("--version").output().is_ok();
    if !have_virsh {
        assert!(
            std::env::var_os("REQUIRE_LIBVIRT").is_none(),
            "virsh is required (REQUIRE_LIBVIRT is set)"
        );
        eprintln!("skipped: no virsh");
        return;
    }
    for name in ["run-a", "paused-b", "off-c"] {
        bed.define(name, "guest.mode=idle", 32);
    }
    ok(&bed.store, &["start", "run-a"]);
    ok(&bed.store, &["start", "paused-b", "--paused"]);
    let node = test_driver_node(&bed, &[("run-a", 1), ("paused-b", 3), ("off-c", 5)]);
    for args in [
        &["list", "--all"][..],
        &["list"],
        &["list", "--inactive"],
        &["list", "--all", "--name"],
        &["list", "--all", "--id"],
        &["list", "--state-paused"],
        &["list", "--state-running", "--name"],
        &["-q", "list", "--all"],
        &["domid", "run-a"],
        &["domid", "paused-b"],
        &["domstate", "paused-b"],
        &["domname", "1"],
        &["vcpucount", "run-a"],
        &["domblklist", "run-a"],
        &["start", "run-a"],
    ] {
        let ours = vm(&bed.store, args);
        let theirs = Command::new("virsh")
            .arg("-c")
            .arg(format!("test://{}", node.display()))
            .args(args)
            .output()
            .unwrap();
        let show = |o: &Output| {
            (
                stdout(o).replace(&*bed.dir.path().to_string_lossy(), "DIR"),
                stderr(o),
                o.status.code(),
            )
        };
        assert_eq!(
            show(&ours),
            show(&theirs),
            "vm {args:?} (left: ours, right: virsh)"
        );
    }
    ok(&bed.store, &["destroy", "run-a"]);
    ok(&bed.store, &["destroy", "paused-b"]);
}
