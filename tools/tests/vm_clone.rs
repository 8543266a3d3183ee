//! `vm clone` as virt-clone: its messages for missing arguments, a taken
//! name and a running original; a paused original copied (not linked);
//! new MACs for every interface; a full clone (`--auto-clone` and
//! `--file`) whose disk reads the same as the original's (qemu-img
//! compare), is sparse and checks clean, under a new name and UUID; a
//! linked clone whose disk and the original's are qcow2 overlays of the
//! original image, now their read-only base. Needs qemu-img and qemu-io
//! (skipped without them unless REQUIRE_QEMU is set); the running-original
//! case needs /dev/kvm.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::cli::vm;
use support::guest::{build_guest, ensure_vmm, have_kvm};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert!(out.status.success(), "vm {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert_eq!(out.status.code(), Some(1), "vm {args:?}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

fn qemu(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap()
}

fn have_qemu() -> bool {
    let ok = qemu("qemu-img", &["--version"]).status.success()
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

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
}

/// A store with domain `orig` on `orig.qcow2` (64 MiB, 1 MiB of data at
/// 8 MiB) and a read-only raw cdrom.
fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = root.join("store");
    let disk = root.join("orig.qcow2");
    let cd = root.join("cd.raw");
    std::fs::write(&cd, vec![0u8; 1 << 20]).unwrap();
    let d = disk.to_str().unwrap();
    assert!(qemu("qemu-img", &["create", "-q", "-f", "qcow2", d, "64M"])
        .status
        .success());
    let w = qemu("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 8M 1M", d]);
    assert!(w.status.success(), "{}", text(&w));
    let kernel = if have_kvm() {
        build_guest()
    } else {
        PathBuf::from("/nonexistent-kernel")
    };
    let xml = format!(
        "<domain type='kvm'>\n  <name>orig</name>\n  <memory unit='MiB'>32</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=idle</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{d}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>\n  </devices>\n</domain>\n",
        kernel.display(),
        cd.display()
    );
    let file = root.join("orig.xml");
    std::fs::write(&file, xml).unwrap();
    ok(&store, &["define", file.to_str().unwrap()]);
    Bed {
        _dir: dir,
        root,
        store,
    }
}

fn disk_of(store: &Path, name: &str, dev: &str) -> String {
    let list = ok(store, &["-q", "domblklist", name]);
    list.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(dev)).then(|| f.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no {dev} in {list}"))
}

#[test]
fn virt_clone_messages() {
    if !have_qemu() {
        return;
    }
    let bed = bed();
    let s = &bed.store;
    assert!(fails(s, &["clone", "--original", "orig", "--name", "x"]).contains(
        "Either --auto-clone or --file is required, use '--auto-clone or --file' and try again."
    ));
    assert!(fails(s, &["clone", "--name", "x", "--auto-clone"])
        .contains("An original machine name is required"));
    assert!(fails(s, &["clone", "--original", "nope", "--auto-clone"])
        .contains("Domain 'nope' was not found."));
    assert!(fails(
        s,
        &[
            "clone",
            "--original",
            "orig",
            "--name",
            "orig",
            "--auto-clone"
        ]
    )
    .contains("Invalid name for new guest: Guest name 'orig' is already in use."));
    let taken = bed.root.join("taken.qcow2");
    std::fs::write(&taken, b"keep me").unwrap();
    let err = fails(
        s,
        &[
            "clone",
            "--original",
            "orig",
            "--name",
            "x",
            "--file",
            taken.to_str().unwrap(),
        ],
    );
    assert!(err.contains("Could not use path"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    assert!(!ok(s, &["list", "--all", "--name"]).contains('x'));
}

#[test]
fn full_clones_copy_sparsely_under_a_new_name_and_uuid() {
    if !have_qemu() {
        return;
    }
    let bed = bed();
    let s = &bed.store;
    let out = ok(s, &["clone", "--original", "orig", "--auto-clone"]);
    assert_eq!(out, "\nClone 'orig-clone' created successfully.\n\n");
    let copy = disk_of(s, "orig-clone", "vda");
    assert_eq!(copy, bed.root.join("orig-clone.qcow2").to_str().unwrap());
    // The cdrom is shared.
    assert_eq!(disk_of(s, "orig-clone", "vdb"), disk_of(s, "orig", "vdb"));
    assert_ne!(
        ok(s, &["domuuid", "orig"]),
        ok(s, &["domuuid", "orig-clone"])
    );
    let original = disk_of(s, "orig", "vda");
    let same = qemu("qemu-img", &["compare", &original, &copy]);
    assert!(same.status.success(), "{}", text(&same));
    assert!(qemu("qemu-img", &["check", &copy]).status.success());
    let allocated = std::fs::metadata(&copy).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(allocated.blocks() * 512 < 8 << 20, "not sparse");

    // Again: the next auto name; then an explicit --file.
    let out = ok(s, &["clone", "--original", "orig", "--auto-clone"]);
    assert!(
        out.contains("Clone 'orig-clone1' created successfully."),
        "{out}"
    );
    let file = bed.root.join("chosen.qcow2");
    ok(
        s,
        &[
            "clone",
            "--original",
            "orig",
            "--name",
            "third",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(disk_of(s, "third", "vda"), file.to_str().unwrap());
}

#[test]
fn linked_clones_share_the_original_as_a_read_only_base() {
    if !have_qemu() {
        return;
    }
    let bed = bed();
    let s = &bed.store;
    let base = disk_of(s, "orig", "vda");
    let out = ok(
        s,
        &[
            "clone",
            "--original",
            "orig",
            "--name",
            "fork",
            "--auto-clone",
            "--linked",
        ],
    );
    assert!(out.contains("Clone 'fork' created successfully."), "{out}");
    let fork = disk_of(s, "fork", "vda");
    let top = disk_of(s, "orig", "vda");
    assert_ne!(top, base, "the original now writes an overlay");
    for overlay in [&fork, &top] {
        let info = qemu("qemu-img", &["info", "--output=json", overlay]);
        let json = String::from_utf8_lossy(&info.stdout);
        assert!(
            json.contains(&format!("\"backing-filename\": \"{base}\"")),
            "{json}"
        );
        let same = qemu("qemu-img", &["compare", &base, overlay]);
        assert!(same.status.success(), "{}", text(&same));
    }
}

#[test]
fn a_running_original_is_refused_and_a_paused_one_copied() {
    if !have_qemu() || !have_kvm() {
        return;
    }
    ensure_vmm();
    let bed = bed();
    let s = &bed.store;
    ok(s, &["start", "orig"]);
    let err = fails(s, &["clone", "--original", "orig", "--auto-clone"]);
    assert!(
        err.contains("Domain with devices to clone must be paused or shutoff."),
        "{err}"
    );
    ok(s, &["suspend", "orig"]);
    let err = fails(
        s,
        &["clone", "--original", "orig", "--auto-clone", "--linked"],
    );
    assert!(err.contains("--linked needs it shut off"), "{err}");
    let out = ok(s, &["clone", "--original", "orig", "--auto-clone"]);
    assert!(
        out.contains("Clone 'orig-clone' created successfully."),
        "{out}"
    );
    // The copy reads as the paused VM's disk, which its VMM still holds.
    let original = disk_of(s, "orig", "vda");
    let copy = disk_of(s, "orig-clone", "vda");
    let same = qemu("qemu-img", &["compare", "-U", &original, &copy]);
    assert!(same.status.success(), "{}", text(&same));
    assert!(qemu("qemu-img", &["check", &copy]).status.success());
    assert!(ok(s, &["domstate", "orig"]).starts_with("paused"));
    ok(s, &["destroy", "orig"]);
}

/// The `<mac address>` values of `name`'s definition, in order.
fn macs(store: &Path, name: &str) -> Vec<String> {
    let xml = ok(store, &["dumpxml", name]);
    xml.split("<mac address='")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_interface_of_a_clone_gets_a_new_mac() {
    if !have_qemu() {
        return;
    }
    let bed = bed();
    let s = &bed.store;
    let xml = ok(s, &["dumpxml", "orig"]).replace(
        "</devices>",
        "  <interface type='bridge'>\n      <mac address='52:54:00:12:34:56'/>\n      <source bridge='br0'/>\n    </interface>\n    <interface type='bridge'>\n      <source bridge='br1'/>\n    </interface>\n  </devices>",
    );
    let file = bed.root.join("nics.xml");
    std::fs::write(&file, xml).unwrap();
    ok(s, &["define", file.to_str().unwrap()]);
    assert_eq!(macs(s, "orig"), ["52:54:00:12:34:56"]);
    ok(s, &["clone", "--original", "orig", "--auto-clone"]);
    let new = macs(s, "orig-clone");
    assert_eq!(new.len(), 2, "{new:?}");
    for mac in &new {
        assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
        assert_ne!(mac, "52:54:00:12:34:56");
    }
    assert_ne!(new[0], new[1]);
    // The original keeps its own.
    assert_eq!(macs(s, "orig"), ["52:54:00:12:34:56"]);
}
