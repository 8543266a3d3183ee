//! `vm clone --from-snapshot` against the real `vmm` and the counting test
//! guest: a fork of a running, a paused and a shut-off original from a
//! full snapshot taken while it was paused (so its count is known); the
//! fork's count goes on from the snapshot's with no gap or repeat while
//! the original's goes on from its own; the fork's disk is a qcow2
//! overlay on a read-only base extracted from the snapshot, both clean in
//! `qemu-img check`, and the original's image stays clean; errors in one
//! line (an unknown snapshot in virsh's words, a disk-only one, a name in
//! use, a target file that exists) change nothing. Prints the time from
//! the command to the fork's first count. A fork of a domain with a
//! bridge interface gets a new MAC and answers ping. The guest's VM
//! generation ID stays through a pause and a resume and is new in every
//! fork and after a revert. Needs /dev/kvm
//! (skipped without it unless REQUIRE_KVM is set); the image checks need
//! qemu-img; the interface test needs root, `ip` and `ping`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::cli::{define_counting_domain, ok, text, vm};
use support::count::{self, assert_consecutive, counts, next_count};
use support::guest::{build_guest, ensure_vmm, have_kvm};

/// The one-line error of a refused command.
fn fails(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "vm {args:?}: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// The VM generation IDs the counting guest printed, in order.
fn genids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("guest: vmgenid "))
        .map(|id| id.trim().to_string())
        .collect()
}

/// The console log from byte `from` once it holds a count >= `at_least`.
fn wait_count(log: &Path, from: usize, at_least: u64) -> String {
    count::wait_count(log, from, at_least, String::new)
}

/// Destroys the domains that may run when dropped, so a failed test
/// leaves no VMM behind.
struct DestroyOnDrop<'a>(&'a Path);

impl Drop for DestroyOnDrop<'_> {
    fn drop(&mut self) {
        for name in ["test", "f1", "f2", "f3"] {
            let _ = vm(self.0, &["destroy", name]);
        }
    }
}

fn console_log(store: &Path, name: &str) -> std::path::PathBuf {
    store.join("run").join(name).join("console.log")
}

fn state(store: &Path, name: &str) -> String {
    ok(store, &["-q", "domstate", name]).trim().to_string()
}

fn qemu_img_check(path: &Path) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        path.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Forks `fork` from snapshot p1 of `test` into `DIR/fork.qcow2` with
/// `extra` options; checks that its guest counts on from `at_snapshot`
/// once it runs. Returns the milliseconds from the command to the fork's
/// first count (when it starts running).
fn fork_and_check(store: &Path, dir: &Path, fork: &str, extra: &[&str], at_snapshot: u64) -> u128 {
    let overlay = dir.join(format!("{fork}.qcow2"));
    let mut args = vec![
        "clone",
        "--original",
        "test",
        "--name",
        fork,
        "--from-snapshot",
        "p1",
        "--file",
        overlay.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = ok(store, &args);
    let log = console_log(store, fork);
    if state(store, fork) == "paused" {
        assert!(
            counts(&std::fs::read_to_string(&log).unwrap_or_default()).is_empty(),
            "a paused fork counted"
        );
        ok(store, &["resume", fork]);
    }
    let first = wait_count(&log, 0, at_snapshot + 1);
    let elapsed = started.elapsed().as_millis();
    assert!(
        out.contains(&format!("Clone '{fork}' created successfully.")),
        "{out}"
    );
    let base = dir.join(format!("{fork}-base.qcow2"));
    assert!(out.contains(&base.display().to_string()), "{out}");
    let after = wait_count(&log, 0, at_snapshot + 10);
    let fork_counts = counts(&after);
    assert_eq!(
        fork_counts.first(),
        Some(&(at_snapshot + 1)),
        "{fork} does not go on from the snapshot: {first:?}"
    );
    assert_consecutive(&fork_counts, fork);
    assert_ne!(
        ok(store, &["domuuid", "test"]),
        ok(store, &["domuuid", fork])
    );
    elapsed
}

#[test]
fn forks_go_on_from_the_snapshot_while_the_original_goes_on() {
    if !have_kvm() {
        assert!(std::env::var_os("REQUIRE_KVM").is_none(), "no /dev/kvm");
        eprintln!("no /dev/kvm: skipping");
        return;
    }
    ensure_vmm();
    let guest = build_guest();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let image = define_counting_domain(dir, &store, &guest);
    let _destroy = DestroyOnDrop(&store);
    ok(&store, &["snapshot-create-as", "test", "off1"]);
    ok(&store, &["start", "test"]);
    let log = console_log(&store, "test");
    wait_count(&log, 0, 5);
    ok(&store, &["suspend", "test"]);
    let at_pause = std::fs::read_to_string(&log).unwrap();
    // The count the guest is at (a line the pause cut included).
    assert!(!counts(&at_pause).is_empty(), "{at_pause:?}");
    let at_snapshot = next_count(&at_pause) - 1;
    ok(&store, &["snapshot-create-as", "test", "p1"]);
    ok(&store, &["resume", "test"]);

    // Refusals, each in one line, leaving nothing behind.
    let before = std::fs::read_dir(dir).unwrap().count();
    let fork_args = |name: &'static str, snap: &'static str| {
        vec![
            "clone",
            "--original",
            "test",
            "--name",
            name,
            "--from-snapshot",
            snap,
            "--auto-clone",
        ]
    };
    assert_eq!(
        fails(&store, &fork_args("f", "nope")),
        "error: Domain snapshot not found: no domain snapshot with matching name 'nope'\n"
    );
    let err = fails(&store, &fork_args("f", "off1"));
    assert!(err.contains("holds no VM state"), "{err}");
    let err = fails(&store, &fork_args("test", "p1"));
    assert!(
        err.contains("Guest name 'test' is already in use."),
        "{err}"
    );
    let taken = dir.join("taken.qcow2");
    std::fs::write(&taken, b"keep me").unwrap();
    let err = fails(
        &store,
        &[
            "clone",
            "--original",
            "test",
            "--name",
            "f",
            "--from-snapshot",
            "p1",
            "--file",
            taken.to_str().unwrap(),
        ],
    );
    assert!(err.contains("Could not use path"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    std::fs::remove_file(&taken).unwrap();
    let after = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(before, after, "a refused fork left files");
    assert_eq!(ok(&store, &["list", "--all", "--name"]).trim(), "test");

    // The original running: the fork runs (--running), both count on,
    // the original from where it was (its whole log one run of counts).
    let before_fork = std::fs::read_to_string(&log).unwrap();
    let last_before = counts(&before_fork).last().copied().unwrap_or(at_snapshot);
    let ms = fork_and_check(&store, dir, "f1", &["--running"], at_snapshot);
    eprintln!("fork of a running original, command to the fork's first count: {ms} ms");
    assert_eq!(state(&store, "test"), "running");
    wait_count(&log, before_fork.len(), last_before + 10);
    let original = counts(&std::fs::read_to_string(&log).unwrap());
    assert_consecutive(&original, "the original");

    // The generation ID: one for the original through its pause, resume
    // and snapshots; a new one in the fork.
    let original_ids = genids(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(original_ids.len(), 1, "{original_ids:?}");
    let f1_ids = genids(&std::fs::read_to_string(console_log(&store, "f1")).unwrap());
    assert_eq!(f1_ids.len(), 1, "{f1_ids:?}");
    assert_ne!(f1_ids[0], original_ids[0], "the fork kept its parent's ID");
    assert_eq!(f1_ids[0].len(), 32);

    // The original paused: the fork is left paused as asked.
    ok(&store, &["suspend", "test"]);
    let ms = fork_and_check(&store, dir, "f2", &["--paused"], at_snapshot);
    eprintln!("fork of a paused original (then resumed): {ms} ms");
    assert_eq!(state(&store, "test"), "paused");
    ok(&store, &["resume", "test"]);

    // A revert of the running original gives it a new ID too.
    let before_revert = std::fs::read_to_string(&log).unwrap().len();
    ok(&store, &["snapshot-revert", "test", "p1", "--running"]);
    // (The original may have printed a few counts before the revert.)
    let started = Instant::now();
    let reverted = loop {
        let tail = wait_count(&log, before_revert, 0);
        let after_id = tail.find("guest: vmgenid").map(|at| &tail[at..]);
        if let Some(after_id) = after_id.filter(|t| counts(t).len() >= 3) {
            break after_id.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{tail}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(counts(&reverted)[0], at_snapshot + 1, "{reverted}");
    let reverted_ids = genids(&reverted);
    assert_eq!(reverted_ids.len(), 1, "{reverted}");
    let f2_ids = genids(&std::fs::read_to_string(console_log(&store, "f2")).unwrap());
    let mut all = [&original_ids, &f1_ids, &f2_ids, &reverted_ids].map(|ids| ids[0].clone());
    all.sort();
    assert!(
        all.windows(2).all(|pair| pair[0] != pair[1]),
        "a generation ID repeats: {all:?}"
    );

    // The original shut off: a snapshot taken paused forks paused.
    ok(&store, &["destroy", "test"]);
    let ms = fork_and_check(&store, dir, "f3", &[], at_snapshot);
    eprintln!("fork of a shut-off original (then resumed): {ms} ms");

    for name in ["f1", "f2", "f3"] {
        ok(&store, &["destroy", name]);
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("no qemu-img: image checks skipped");
        return;
    }
    qemu_img_check(&image);
    for name in ["f1", "f2", "f3"] {
        let overlay = dir.join(format!("{name}.qcow2"));
        let base = dir.join(format!("{name}-base.qcow2"));
        qemu_img_check(&overlay);
        qemu_img_check(&base);
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let info = text(&info.stdout);
        assert!(
            info.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
            "{info}"
        );
        let list = Command::new("qemu-img")
            .args(["snapshot", "-l"])
            .arg(&base)
            .output()
            .unwrap();
        assert!(text(&list.stdout).is_empty(), "the base has snapshots");
    }
}

fn can_run_net() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let have = |program: &str| Command::new(program).arg("-V").output().is_ok();
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

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn ping(address: &str) {
    let out = Command::new("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "5", address])
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "ping {address}: {}",
        text(&out.stdout)
    );
}

/// The MAC of a domain's only interface, from `domiflist`.
fn mac_of(store: &Path, name: &str) -> String {
    let list = ok(store, &["-q", "domiflist", name]);
    list.split_whitespace()
        .find(|w| w.starts_with("52:54:00:"))
        .unwrap_or_else(|| panic!("no MAC in {list}"))
        .to_string()
}

/// A fork of a domain with a `type='bridge'` interface, in a network
/// namespace of its own: the fork gets a new MAC (its restored device
/// takes it, where a restore would refuse a state of another MAC) and
/// answers ping on the bridge in place of its parent, shut off first
/// since the two share the guest's IP address.
#[test]
fn a_fork_with_an_interface_gets_a_new_mac_and_answers() {
    if !can_run_net() {
        return;
    }
    ensure_vmm();
    let guest = build_guest();
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the
        // calling thread.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let store = dir.join("store");
        let image = dir.join("net.qcow2");
        let made = Command::new(env!("CARGO_BIN_EXE_img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("16M")
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made.stderr));
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.98.7.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        let xml = format!(
            "<domain type='kvm'>\n  <name>test</name>\n  <memory unit='MiB'>32</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>console=ttyS0 guest.mode=net guest.ip=10.98.7.2</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\n    <interface type='bridge'><mac address='52:54:00:00:07:02'/><source bridge='br0'/><model type='virtio'/></interface>\n    <serial type='pty'/>\n  </devices>\n</domain>\n",
            guest.display(),
            image.display()
        );
        std::fs::write(dir.join("test.xml"), xml).unwrap();
        ok(&store, &["define", dir.join("test.xml").to_str().unwrap()]);
        let _destroy = DestroyOnDrop(&store);
        ok(&store, &["start", "test"]);
        let log = console_log(&store, "test");
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("guest: net ready")
        {
            assert!(start.elapsed() < Duration::from_secs(60), "no net ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        ping("10.98.7.2");
        ok(&store, &["snapshot-create-as", "test", "s1"]);
        ok(&store, &["destroy", "test"]);
        let overlay = dir.join("f1.qcow2");
        ok(
            &store,
            &[
                "clone",
                "--original",
                "test",
                "--name",
                "f1",
                "--from-snapshot",
                "s1",
                "--file",
                overlay.to_str().unwrap(),
            ],
        );
        assert_eq!(state(&store, "f1"), "running");
        let (parent, fork) = (mac_of(&store, "test"), mac_of(&store, "f1"));
        assert_eq!(parent, "52:54:00:00:07:02");
        assert_ne!(fork, parent);
        ping("10.98.7.2");
        ok(&store, &["destroy", "f1"]);
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
