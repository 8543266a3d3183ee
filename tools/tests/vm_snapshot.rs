//! `vm snapshot-*` against the real `vmm` and the counting test guest, and
//! against virsh's test driver: snapshots of a shut-off, a running and a
//! paused domain; a revert continues the count from the snapshot's without
//! a gap or a repeat; listings, infos, messages and errors as virsh prints
//! them (creation times masked); the image clean and listed by qemu-img
//! with its VM state. Needs /dev/kvm (skipped without it unless
//! REQUIRE_KVM is set); the virsh comparison needs virsh.

mod support;

use std::path::Path;
use std::process::Command;

use support::cli::{define_counting_domain as define, ok, text, vm};
use support::count::{self, assert_consecutive, counts, next_count};
use support::guest::{build_guest, ensure_vmm, have_kvm};
use support::virsh::{have_virsh, virsh_default};

/// The console log from byte `from` once it holds a count >= `at_least`.
fn wait_count(log: &Path, from: usize, at_least: u64) -> String {
    count::wait_count(log, from, at_least, String::new)
}

/// Replaces every `YYYY-MM-DD HH:MM:SS +ZZZZ` with `TIME`.
fn mask_times(s: &str) -> String {
    let shape = "dddd-dd-dd dd:dd:dd sdddd";
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let fits = i + shape.len() <= chars.len()
            && shape.chars().zip(&chars[i..]).all(|(p, &c)| match p {
                'd' => c.is_ascii_digit(),
                's' => c == '+' || c == '-',
                other => other == c,
            });
        if fits {
            out.push_str("TIME");
            i += shape.len();
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The commands compared with virsh, in one virsh session (its test
/// driver keeps state within a session only), as `(args, ours only)`.
const SESSION: &[&[&str]] = &[
    &["snapshot-list", "test"],
    &["snapshot-list", "test", "--parent"],
    &["snapshot-info", "test", "off1"],
    &["snapshot-info", "test", "--current"],
    &["snapshot-current", "test", "--name"],
    &["snapshot-info", "test", "nope"],
    &["snapshot-revert", "test", "nope"],
    &["snapshot-delete", "test", "nope"],
    &["snapshot-info", "test"],
    &["snapshot-revert", "test", "p1", "--running", "--paused"],
    &["snapshot-create-as", "test", "s1"],
    &["snapshot-current", "test", "s1"],
    &["snapshot-delete", "test", "s1"],
    &["snapshot-list", "test", "--name"],
    &["snapshot-info", "test", "p1"],
    &["snapshot-revert", "test", "p1"],
    &["domstate", "test"],
];

fn compare_with_virsh(store: &Path, setup: &[&str]) {
    if !have_virsh(false) {
        return;
    }
    let mut script: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
    let mut ours_out = String::new();
    let mut ours_err = String::new();
    for args in SESSION {
        script.push(
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        script.push("echo @@".into());
        let out = vm(store, args);
        ours_out.push_str(&text(&out.stdout));
        ours_out.push_str("@@\n");
        ours_err.push_str(&text(&out.stderr));
    }
    let theirs = virsh_default(&[&script.join("; ")]);
    let their_out = text(&theirs.stdout);
    // The setup's own lines come first in virsh's output.
    let start = their_out.find(" Name ").expect(&their_out);
    assert_eq!(
        mask_times(&ours_out),
        mask_times(&their_out[start..]),
        "stdout (left: ours, right: virsh)"
    );
    assert_eq!(
        ours_err,
        text(&theirs.stderr),
        "stderr (left: ours, right: virsh)"
    );
}

#[test]
fn snapshots_of_a_counting_guest_as_virsh_takes_them() {
    if !have_kvm() {
        assert!(std::env::var_os("REQUIRE_KVM").is_none(), "no /dev/kvm");
        eprintln!("no /dev/kvm: skipping");
        return;
    }
    ensure_vmm();
    let guest = build_guest();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let image = define(dir.path(), &store, &guest);
    let log = store.join("run").join("test").join("console.log");

    // Shut off: a disk-only internal snapshot, with a description.
    assert_eq!(
        ok(
            &store,
            &["snapshot-create-as", "test", "off1", "before boot"]
        ),
        "Domain snapshot off1 created\n"
    );
    ok(&store, &["start", "test"]);
    wait_count(&log, 0, 5);
    // Running: a full snapshot; the guest keeps running.
    ok(&store, &["snapshot-create-as", "test", "--name", "r1"]);
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "running");
    // Paused: the count at the snapshot is known.
    ok(&store, &["suspend", "test"]);
    let at_pause = std::fs::read_to_string(&log).unwrap();
    let last = *counts(&at_pause).last().unwrap();
    let next = next_count(&at_pause);
    ok(&store, &["snapshot-create-as", "test", "p1"]);
    ok(&store, &["resume", "test"]);
    wait_count(&log, at_pause.len(), last + 10);

    // Revert to the paused one, then run: the count goes on from it. (The
    // log is measured once the revert has paused the running guest: what
    // it printed until then is not the reverted guest's.)
    assert_eq!(
        ok(&store, &["snapshot-revert", "test", "p1"]),
        "Domain snapshot p1 reverted\n\n"
    );
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "paused");
    let before = std::fs::read_to_string(&log).unwrap().len();
    ok(&store, &["resume", "test"]);
    let after = wait_count(&log, before, last + 10);
    let resumed = counts(&after);
    assert_eq!(resumed.first(), Some(&next), "{after:?}");
    assert_consecutive(&resumed, "after the revert");
    // --running straight from a running snapshot.
    ok(&store, &["snapshot-revert", "test", "r1", "--running"]);
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "running");
    ok(&store, &["snapshot-delete", "test", "r1"]);

    // The same history in virsh's test driver, then the same commands.
    ok(&store, &["snapshot-current", "test", "p1"]);
    compare_with_virsh(
        &store,
        &[
            "destroy test",
            "snapshot-create-as test off1 'before boot'",
            "start test",
            "suspend test",
            "snapshot-create-as test p1",
            "resume test",
        ],
    );
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "paused");

    // --halt: snapshot then shut off; a shut-off revert to a full
    // snapshot starts the VMM from it.
    ok(&store, &["snapshot-create-as", "test", "h1", "--halt"]);
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "shut off");
    ok(&store, &["snapshot-revert", "test", "h1", "--paused"]);
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "paused");
    ok(&store, &["destroy", "test"]);
    // A shut-off revert to the disk-only one, and its delete.
    ok(&store, &["snapshot-revert", "test", "off1"]);
    assert_eq!(ok(&store, &["-q", "domstate", "test"]).trim(), "shut off");
    assert_eq!(
        ok(&store, &["snapshot-info", "test", "off1"])
            .lines()
            .nth(3),
        Some("State:          shutoff")
    );

    if Command::new("qemu-img").arg("--version").output().is_ok() {
        let out = Command::new("qemu-img")
            .arg("check")
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let list = text(
            &Command::new("qemu-img")
                .args(["snapshot", "-l"])
                .arg(&image)
                .output()
                .unwrap()
                .stdout,
        );
        for name in ["off1", "p1", "h1"] {
            assert!(
                list.contains(&format!(" {name} ")),
                "{name} missing: {list}"
            );
        }
        assert!(!list.contains(" r1 ") && !list.contains(" s1 "), "{list}");
        let p1 = list.lines().find(|l| l.contains(" p1 ")).unwrap();
        assert!(!p1.contains(" 0 B "), "p1 has no VM state: {p1}");
        let off1 = list.lines().find(|l| l.contains(" off1 ")).unwrap();
        assert!(off1.contains(" 0 B "), "off1 has a VM state: {off1}");
    }
    ok(&store, &["snapshot-delete", "test", "--current"]);
    assert_eq!(
        ok(&store, &["snapshot-list", "test", "--name"]),
        "h1\np1\n\n"
    );
}

/// `undefine` of a shut-off domain with snapshots, as libvirt: refused
/// naming how many, unless `--snapshots-metadata` removes the metadata
/// too (a domain defined again under the name starts with none); held
/// against virsh's test driver. Shut-off snapshots are disk-only, so no
/// VMM runs.
#[test]
fn undefine_with_snapshots_as_virsh() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, b"not run").unwrap();
    define(dir.path(), &store, &kernel);
    ok(&store, &["snapshot-create-as", "test", "s1"]);
    ok(&store, &["snapshot-create-as", "test", "s2"]);
    let refused = vm(&store, &["undefine", "test"]);
    assert!(!refused.status.success());
    let ours_err = text(&refused.stderr);
    assert_eq!(
        ours_err,
        "error: Failed to undefine domain 'test'\nerror: Requested operation is not valid: \
         cannot delete inactive domain with 2 snapshots\n"
    );
    assert_eq!(
        ok(&store, &["snapshot-list", "test", "--name"]),
        "s1\ns2\n\n"
    );
    if have_virsh(false) {
        let theirs = virsh_default(&[
            "destroy test; snapshot-create-as test s1; snapshot-create-as test s2; undefine test",
        ]);
        assert_eq!(ours_err, text(&theirs.stderr), "left: ours, right: virsh");
        let theirs = virsh_default(&[
            "destroy test; snapshot-create-as test s1; undefine test --snapshots-metadata",
        ]);
        assert!(
            text(&theirs.stdout).ends_with("Domain 'test' has been undefined\n\n"),
            "{}",
            text(&theirs.stdout)
        );
    }
    assert_eq!(
        ok(&store, &["undefine", "test", "--snapshots-metadata"]),
        "Domain 'test' has been undefined\n\n"
    );
    assert_eq!(ok(&store, &["list", "--all", "--name"]), "\n");
    // The images keep their internal snapshots; the store forgot them.
    define(dir.path(), &store, &kernel);
    assert_eq!(ok(&store, &["snapshot-list", "test", "--name"]), "\n");
}

/// A full snapshot killed between disks leaves its name on the second
/// disk only (the first disk, holding the state, is written last): the
/// next snapshot of that name replaces that orphan, as QEMU's savevm
/// replaces a name, and both images stay clean.
#[test]
fn an_orphan_on_a_second_disk_is_replaced() {
    if !have_kvm() {
        assert!(std::env::var_os("REQUIRE_KVM").is_none(), "no /dev/kvm");
        eprintln!("no /dev/kvm: skipping");
        return;
    }
    ensure_vmm();
    let guest = build_guest();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // define writes test.xml (defined in a scratch store), extended here.
    let first = define(dir.path(), &dir.path().join("scratch"), &guest);
    let second = dir.path().join("second.qcow2");
    let img = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_img"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let second_s = second.to_str().unwrap();
    img(&["create", "-q", "-f", "qcow2", second_s, "16M"]);
    let xml = std::fs::read_to_string(dir.path().join("test.xml")).unwrap().replace(
        "    <serial",
        &format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{second_s}'/>\n      <target dev='vdb' bus='virtio'/>\n    </disk>\n    <serial"
        ),
    );
    let xml_file = dir.path().join("two.xml");
    std::fs::write(&xml_file, xml).unwrap();
    ok(&store, &["define", xml_file.to_str().unwrap()]);
    // The orphan: a snapshot of the second disk alone.
    img(&["snapshot", "-c", "s1", second_s]);
    ok(&store, &["start", "test"]);
    assert_eq!(
        ok(&store, &["snapshot-create-as", "test", "s1"]),
        "Domain snapshot s1 created\n"
    );
    ok(&store, &["destroy", "test"]);
    let first_s = first.to_str().unwrap();
    for image in [first_s, second_s] {
        let list = img(&["snapshot", "-l", image]);
        assert_eq!(list.matches(" s1 ").count(), 1, "{list}");
        img(&["check", "-q", image]);
    }
    // The one on the first disk holds the VM state.
    assert!(!img(&["snapshot", "-l", first_s]).contains(" 0 B "));
}
