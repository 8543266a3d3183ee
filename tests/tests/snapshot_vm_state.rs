//! The qcow library's VM-state area against qemu-img: a full snapshot
//! (disk plus VM state) written by the library is listed by `qemu-img
//! snapshot -l` with its VM SIZE, date and VM CLOCK exactly as `img
//! snapshot -l` lists it, `qemu-img check` stays clean through create,
//! revert and delete, the state reads back through the snapshot's own
//! tables, and qemu-img can delete it.

use std::path::Path;

use integration_tests::{assert_qemu_clean, img, ok, qemu_img, qemu_io, require_qemu, Rng};
use qcow::fs::{open_storage, FileOpener};
use qcow::image::{Qcow2, VmStateInfo};

fn open(path: &Path) -> Qcow2 {
    let storage = open_storage(path, true).expect("open image file");
    Qcow2::open(storage, true, &FileOpener::for_image(path)).expect("open qcow2")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}

/// Writes `state` as the VM state of a new snapshot `name`.
fn full_snapshot(image: &Qcow2, name: &str, state: &[u8], clock: u64) {
    let mut w = image.vm_state_writer().expect("start VM state");
    // Uneven pieces, to cross the writer's buffer at odd places.
    for piece in state.chunks(3_000_001) {
        w.write_all(piece).expect("append VM state");
    }
    let size = w.finish().expect("finish VM state");
    assert_eq!(size, state.len() as u64);
    image
        .create_snapshot_with_vm_state(
            name,
            VmStateInfo {
                vm_state_size: size,
                vm_clock_nsec: clock,
            },
        )
        .expect("create full snapshot");
}

fn read_state(image: &Qcow2, name: &str, len: usize) -> Vec<u8> {
    let mut back = vec![0u8; len];
    image
        .read_vm_state(name, 0, &mut back)
        .expect("read VM state");
    back
}

fn disk(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("disk.raw");
    ok(qemu_img(&["convert", "-O", "raw"]).arg(path).arg(&out));
    std::fs::read(out).unwrap()
}

fn full_snapshot_round_trip(create_opts: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("vm.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .args(create_opts)
        .arg(&p)
        .arg("9M"));
    qemu_io("qcow2", &p, &["write -P 7 1M 3M"]);
    let before = disk(&p, d);
    let one = random(10_000_019, 1);
    let two = random(65_536 * 3, 2);
    {
        let image = open(&p);
        full_snapshot(&image, "one", &one, 1_500_000_000);
        // A second full snapshot while the first holds its state.
        full_snapshot(&image, "two", &two, 61_000_000_000);
        image.create_snapshot("disk-only").unwrap();
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
    let ours = ok(img(&["snapshot", "-l"]).arg(&p));
    let theirs = ok(qemu_img(&["snapshot", "-l"]).arg(&p));
    assert_eq!(ours, theirs);
    let one_line = theirs.lines().find(|l| l.contains(" one ")).unwrap();
    assert!(one_line.contains("9.54 MiB"), "VM SIZE of one: {one_line}");
    assert!(
        one_line.contains("00:00:01.500"),
        "VM CLOCK of one: {one_line}"
    );
    let two_line = theirs.lines().find(|l| l.contains(" two ")).unwrap();
    assert!(two_line.contains("192 KiB"), "VM SIZE of two: {two_line}");
    assert!(
        two_line.contains("00:01:01.000"),
        "VM CLOCK of two: {two_line}"
    );
    let info_ours = ok(img(&["info", "--output=json"]).arg(&p));
    let info_theirs = ok(qemu_img(&["info", "--output=json"]).arg(&p));
    assert_eq!(info_ours, info_theirs);
    // The active disk does not show the VM state.
    assert_eq!(disk(&p, d), before);
    qemu_io("qcow2", &p, &["write -P 9 0 8M"]);
    {
        let image = open(&p);
        assert_eq!(read_state(&image, "one", one.len()), one);
        assert_eq!(read_state(&image, "two", two.len()), two);
        let mut part = vec![0u8; 5000];
        image.read_vm_state("one", 123_457, &mut part).unwrap();
        assert_eq!(part, one[123_457..128_457]);
        // Past the recorded size is refused; a disk-only snapshot has none.
        let mut over = vec![0u8; 2];
        assert!(image
            .read_vm_state("one", one.len() as u64 - 1, &mut over)
            .is_err());
        assert!(image.read_vm_state("disk-only", 0, &mut over).is_err());
        image.apply_snapshot("one").unwrap();
        // Reverting leaves the state where it was, readable again.
        assert_eq!(read_state(&image, "one", one.len()), one);
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
    assert_eq!(disk(&p, d), before);
    {
        let image = open(&p);
        image.delete_snapshot("one").unwrap();
        assert_eq!(read_state(&image, "two", two.len()), two);
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
    ok(qemu_img(&["snapshot", "-d", "two"]).arg(&p));
    ok(qemu_img(&["snapshot", "-d", "disk-only"]).arg(&p));
    assert_qemu_clean(&p);
    // Clean means no leak either: every cluster of the states went back.
    assert_eq!(ok(qemu_img(&["snapshot", "-l"]).arg(&p)), "");
}

#[test]
fn full_snapshot_matches_qemu_img_default_clusters() {
    require_qemu!();
    full_snapshot_round_trip(&[]);
}

#[test]
fn full_snapshot_matches_qemu_img_small_clusters() {
    require_qemu!();
    full_snapshot_round_trip(&["-o", "cluster_size=4096"]);
}

#[test]
fn full_snapshot_matches_qemu_img_extended_l2() {
    require_qemu!();
    full_snapshot_round_trip(&["-o", "cluster_size=16384,extended_l2=on"]);
}

#[test]
fn interrupted_state_is_dropped_by_the_next_one() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"]).arg(&p).arg("4M"));
    {
        let image = open(&p);
        // A state written but never made a snapshot (a crash in between).
        let mut w = image.vm_state_writer().unwrap();
        w.write_all(&random(1 << 20, 3)).unwrap();
        w.finish().unwrap();
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
    let state = random(300_000, 4);
    {
        let image = open(&p);
        full_snapshot(&image, "s", &state, 0);
        assert_eq!(read_state(&image, "s", state.len()), state);
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
}

/// An image whose snapshot QEMU's savevm wrote (qemu-system-x86_64 -M
/// microvm, stopped, HMP savevm): `img snapshot -l` lists it as qemu-img
/// does, the library finds QEMU's state where QEMU put it (its stream
/// starts with QEMU's magic "QEVM"), a full snapshot of ours sits beside
/// it, and `img snapshot -d` deletes QEMU's, leaving the image clean.
/// Skipped without qemu-system-x86_64.
#[test]
fn a_snapshot_saved_by_qemu_savevm() {
    require_qemu!();
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("qemu-system-x86_64 not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("qemu.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("16M"));
    qemu_io("qcow2", &p, &["write -P 5 0 1M"]);
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-S", "-monitor", "stdio", "-drive"])
        .arg(format!("file={},if=none,id=d0,format=qcow2", p.display()))
        .args(["-device", "virtio-blk-device,drive=d0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"savevm qsnap\nquit\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "qemu-system-x86_64 failed");
    let theirs = ok(qemu_img(&["snapshot", "-l"]).arg(&p));
    assert!(theirs.contains("qsnap"), "{theirs}");
    assert_eq!(ok(img(&["snapshot", "-l"]).arg(&p)), theirs);
    let ours_state = random(200_000, 9);
    {
        let image = open(&p);
        let qsnap = image.find_snapshot_entry("qsnap").unwrap();
        assert!(qsnap.vm_state_size > 4, "{qsnap:?}");
        let mut magic = [0u8; 4];
        image.read_vm_state("qsnap", 0, &mut magic).unwrap();
        assert_eq!(&magic, b"QEVM", "QEMU's state is not where QEMU put it");
        full_snapshot(&image, "ours", &ours_state, 7);
        image.flush().unwrap();
    }
    assert_qemu_clean(&p);
    assert_eq!(
        ok(img(&["snapshot", "-l"]).arg(&p)),
        ok(qemu_img(&["snapshot", "-l"]).arg(&p))
    );
    ok(img(&["snapshot", "-d", "qsnap"]).arg(&p));
    assert_qemu_clean(&p);
    let image = open(&p);
    assert_eq!(read_state(&image, "ours", ours_state.len()), ours_state);
}
