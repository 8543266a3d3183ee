//! Writes into a streamOptimized vmdk as QEMU 10 takes them: each grain
//! once and whole (or the disk's short last grain whole). A partial grain
//! fails with EINVAL after QEMU has taken a zeroed grain-sized slot for it
//! (the file grows by a grain), a grain already written fails with EIO
//! after "Could not write to allocated cluster for streamOptimized". img
//! and qemu-img run the same `bench` requests on copies of one image:
//! stderr, exit status and file size must agree, and the results must pass
//! `qemu-img check` and compare identical. Convert into streamOptimized
//! writes whole grains and grows its file as qemu-img's does. In a child
//! with a backing file, a grain's new slot first takes the parent's bytes
//! of the grain (QEMU's get_whole_cluster), refused write or not, and the
//! compressed record goes over its start unpadded: the files must agree
//! byte for byte but for the CID. qemu-io's zero writes on an image img
//! created (`zeroed_grain` on and off) leave the file qemu-img's would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{img, ok, qemu_img, qemu_io, run};

/// A fresh streamOptimized image of `size`, made by qemu-img.
fn stream_image(dir: &Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
    ])
    .arg(&path)
    .arg(size));
    path
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Runs `bench ARGS` with img on `ours` and qemu-img on `theirs` and
/// checks that both print the same errors, exit alike and leave files of
/// one size; returns img's output.
fn bench_alike(ours: &Path, theirs: &Path, args: &[&str], what: &str) -> Output {
    let mut full = vec!["bench", "-f", "vmdk", "-w"];
    full.extend_from_slice(args);
    let o = run(img(&full).arg(ours));
    let t = run(qemu_img(&full).arg(theirs));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&t.stderr).replace("qemu-img:", "img:"),
        "{what}: stderr"
    );
    assert_eq!(o.status.code(), t.status.code(), "{what}: status");
    assert_eq!(len(ours), len(theirs), "{what}: file size");
    o
}

/// Both files pass `qemu-img check` and hold the same disk.
fn assert_consistent(ours: &Path, theirs: &Path, what: &str) {
    for f in [ours, theirs] {
        ok(qemu_img(&["check", "-q", "-f", "vmdk"]).arg(f));
    }
    let out = ok(qemu_img(&["compare", "-f", "vmdk", "-F", "vmdk"])
        .arg(ours)
        .arg(theirs));
    assert!(out.contains("Images are identical"), "{what}: {out}");
}

#[test]
fn partial_grains_fail_with_einval_after_taking_a_slot() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = stream_image(d, "o.vmdk", "64M");
    let theirs = stream_image(d, "t.vmdk", "64M");
    // One request at a time: QEMU stops at the first failure.
    let o = bench_alike(&ours, &theirs, &["-d", "1", "-c", "16", "-s", "4k"], "4k");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Failed request: Invalid argument"));
    // The slot QEMU took for the refused write: one grain past 64 KiB.
    assert_eq!(len(&ours), 131_072);
    // Whole grains then go after the unreferenced slot, in both.
    let o = bench_alike(&ours, &theirs, &["-c", "2", "-s", "64k"], "after 4k");
    assert!(o.status.success());
    assert_consistent(&ours, &theirs, "after 4k");

    // At the default queue depth too: no request is issued after the
    // first failed one, as qemu-img exits there.
    let ours = stream_image(d, "o2.vmdk", "64M");
    let theirs = stream_image(d, "t2.vmdk", "64M");
    let o = bench_alike(&ours, &theirs, &["-c", "16", "-s", "4k"], "depth 64");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(len(&ours), 131_072);
}

#[test]
fn rewriting_a_grain_fails_with_eio_and_qemus_line() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = stream_image(d, "o.vmdk", "64M");
    let theirs = stream_image(d, "t.vmdk", "64M");
    let o = bench_alike(&ours, &theirs, &["-c", "4", "-s", "64k"], "first");
    assert!(o.status.success());
    let o = bench_alike(&ours, &theirs, &["-c", "4", "-s", "64k"], "again");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("img: Could not write to allocated cluster for streamOptimized\n"),
        "{err}"
    );
    assert!(err.contains("Failed request: Input/output error"), "{err}");
    assert_consistent(&ours, &theirs, "again");

    // Grains qemu-io wrote are refused alike, and new ones go after them.
    let ours = stream_image(d, "o3.vmdk", "64M");
    let theirs = stream_image(d, "t3.vmdk", "64M");
    for f in [&ours, &theirs] {
        qemu_io("vmdk", f, &["write -P 7 0 64k", "write -P 8 64k 64k"]);
    }
    let o = bench_alike(&ours, &theirs, &["-c", "1", "-s", "64k"], "qemu-io's");
    assert_eq!(o.status.code(), Some(1));
    let o = bench_alike(
        &ours,
        &theirs,
        &["-c", "2", "-s", "64k", "-o", "128k"],
        "after qemu-io's",
    );
    assert!(o.status.success());
    assert_consistent(&ours, &theirs, "after qemu-io's");
}

#[test]
fn the_short_last_grain_is_written_whole() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = (1u64 << 20) + 512;
    let ours = stream_image(d, "o.vmdk", &size.to_string());
    let theirs = stream_image(d, "t.vmdk", &size.to_string());
    // From the last grain's start to the end of the disk: accepted.
    let o = bench_alike(
        &ours,
        &theirs,
        &["-c", "1", "-s", "512", "-o", "1M"],
        "last",
    );
    assert!(o.status.success());
    assert_consistent(&ours, &theirs, "last");
    // qemu-io reads img's grain back.
    qemu_io("vmdk", &ours, &["read -P 0 1M 512"]);
}

#[test]
fn convert_into_stream_optimized_grows_as_qemu_img() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Data in parts of grains, a grain of zeros between, a short last
    // grain: convert must still write whole grains.
    let raw = d.join("s.raw");
    let mut data = vec![0u8; (4 << 20) + 1000];
    data[70_000..70_005].copy_from_slice(b"hello");
    for (i, b) in data[(1 << 20)..(1 << 20) + 4096].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let n = data.len();
    data[n - 10..].fill(0x5a);
    std::fs::write(&raw, &data).unwrap();
    let ours = d.join("o.vmdk");
    let theirs = d.join("t.vmdk");
    let opts = [
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
    ];
    ok(img(&opts).arg(&raw).arg(&ours));
    ok(qemu_img(&opts).arg(&raw).arg(&theirs));
    assert_eq!(len(&ours), len(&theirs), "file size");
    assert_consistent(&ours, &theirs, "convert");
    let out = ok(qemu_img(&["compare", "-f", "raw", "-F", "vmdk"])
        .arg(&raw)
        .arg(&ours));
    assert!(out.contains("Images are identical"), "{out}");
}

/// The file's bytes but its descriptor area, and the descriptor's text
/// with the random `CID=` value taken out (its length varies, and the new
/// text leaves the old one's tail past its end, as in QEMU).
fn bytes_but_cid(path: &Path) -> (Vec<u8>, String) {
    let mut bytes = std::fs::read(path).unwrap();
    let sector =
        |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize * 512;
    let (desc_at, desc_len) = (sector(28), sector(36));
    let area: Vec<u8> = bytes.drain(desc_at..desc_at + desc_len).collect();
    let text_end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = String::from_utf8_lossy(&area[..text_end])
        .lines()
        .filter(|line| !line.starts_with("CID="))
        .collect::<Vec<_>>()
        .join("\n");
    (bytes, text)
}

fn assert_same_but_cid(ours: &Path, theirs: &Path, what: &str) {
    assert_eq!(len(ours), len(theirs), "{what}: file size");
    let ((o, o_text), (t, t_text)) = (bytes_but_cid(ours), bytes_but_cid(theirs));
    assert_eq!(o_text, t_text, "{what}: descriptor");
    let first = o.iter().zip(&t).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "{what}: files differ at byte {first:?} (descriptor cut out)"
    );
}

/// Both tools convert `image` to the same raw bytes.
fn assert_reads_alike(image: &Path, what: &str) {
    let dir = image.parent().unwrap();
    let (a, b) = (dir.join("img.raw"), dir.join("qemu.raw"));
    for (tool, out) in [
        (img as fn(&[&str]) -> std::process::Command, &a),
        (qemu_img, &b),
    ] {
        ok(tool(&["convert", "-f", "vmdk", "-O", "raw"])
            .arg(image)
            .arg(out));
    }
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "{what}: img and qemu-img read different disks"
    );
}

/// A 1 MiB vmdk base full of a pattern, and a streamOptimized child of
/// `size` over it made by `tool`.
fn child_over_base(
    dir: &Path,
    tool: fn(&[&str]) -> std::process::Command,
    name: &str,
    size: &str,
) -> PathBuf {
    let base = dir.join("base.vmdk");
    if !base.exists() {
        ok(qemu_img(&["create", "-q", "-f", "vmdk"])
            .arg(&base)
            .arg("1M"));
        qemu_io("vmdk", &base, &["write -P 0xab 0 1M"]);
    }
    let child = dir.join(name);
    ok(tool(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
    ])
    .arg(&child)
    .arg(size));
    child
}

#[test]
fn a_childs_new_grain_slot_takes_the_parents_grain_like_qemu() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A child larger than its base (zeros past 1 MiB) with a short last
    // grain: img bench and qemu-img bench on copies of qemu-img's child.
    let size = ((2u64 << 20) + 512).to_string();
    let ours = child_over_base(d, qemu_img, "o.vmdk", &size);
    let theirs = d.join("t.vmdk");
    std::fs::copy(&ours, &theirs).unwrap();
    // (bench arguments, what, succeeds, the same bytes)
    for (args, what, success, same_bytes) in [
        // Refused as partial, after the parent's grain filled its slot.
        ("-d 1 -c 1 -s 4k -o 64k", "partial", false, true),
        // Whole grains: the last record's sector keeps parent bytes.
        ("-c 2 -s 64k -o 128k", "whole", true, true),
        // Over the base's end: the slot takes zeros.
        ("-c 1 -s 64k -o 1M", "past the base", true, true),
        // Into the slot the refused write left unreferenced.
        (
            "-c 1 -s 64k -o 64k --pattern 7",
            "after the refused",
            true,
            true,
        ),
        // The short last grain, whole: zlib-rs deflates 512 bytes a few
        // bits apart from QEMU's zlib (whole grains come out alike), so
        // only the sizes and the disks are held equal.
        ("-c 1 -s 512 -o 2M", "last", true, false),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        let o = bench_alike(&ours, &theirs, &args, what);
        assert_eq!(o.status.success(), success, "{what}");
        if same_bytes {
            assert_same_but_cid(&ours, &theirs, what);
        }
    }
    assert_consistent(&ours, &theirs, "bench");
    assert_reads_alike(&ours, "bench");

    // qemu-io's writes into img's child and into qemu-img's (one name,
    // in folders of their own, so the descriptors match): the same bytes
    // but for the CID, read alike by both tools.
    let (ours_dir, theirs_dir) = (d.join("ours"), d.join("theirs"));
    for sub in [&ours_dir, &theirs_dir] {
        std::fs::create_dir(sub).unwrap();
        // One base (one CID) for both.
        std::fs::copy(d.join("base.vmdk"), sub.join("base.vmdk")).unwrap();
    }
    let ours = child_over_base(&ours_dir, img, "c.vmdk", "3M");
    let theirs = child_over_base(&theirs_dir, qemu_img, "c.vmdk", "3M");
    assert_same_but_cid(&ours, &theirs, "created");
    for f in [&ours, &theirs] {
        let partial = run(Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", "write -P 1 70k 4k"])
            .arg(f));
        assert!(!partial.status.success(), "a partial grain is refused");
        qemu_io(
            "vmdk",
            f,
            &[
                "write -P 2 128k 64k",
                "write -P 3 320k 128k",
                "write -P 4 2M 64k",
            ],
        );
    }
    assert_same_but_cid(&ours, &theirs, "qemu-io");
    assert_consistent(&ours, &theirs, "qemu-io");
    assert_reads_alike(&ours, "qemu-io");
}

#[test]
fn a_child_whose_parent_changed_takes_no_slot_like_qemu() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = child_over_base(d, qemu_img, "o.vmdk", "1M");
    let theirs = d.join("t.vmdk");
    std::fs::copy(&ours, &theirs).unwrap();
    // A write into the base gives it a new CID: the child's parentCID no
    // longer matches, and QEMU fails the allocation before the slot.
    qemu_io("vmdk", &d.join("base.vmdk"), &["write -P 5 0 512"]);
    let o = bench_alike(&ours, &theirs, &["-c", "1", "-s", "64k"], "stale parent");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(len(&ours), 65_536);
    assert_same_but_cid(&ours, &theirs, "stale parent");
}

/// qemu-io's `write -z` (whole grains, with and without `-u`, a partial
/// grain, a grain already written, the short last grain) on a
/// streamOptimized image img created and on one qemu-img created, with
/// `zeroed_grain` on and off: the same answers, and files equal byte for
/// byte but for the CID, read alike by both tools.
#[test]
fn zeroed_grains_in_a_stream_optimized_image_img_created_match_qemu_img() {
    integration_tests::require_qemu!();
    let commands = [
        "write -z 0 64k",
        "write -P 0x11 64k 64k",
        "write -z -u 128k 64k",
        "write -z 256k 4k",
        "write -z 64k 64k",
        "write -z 1024k 36k",
    ];
    for zeroed_grain in ["on", "off"] {
        let dir = tempfile::tempdir().unwrap();
        let (o_dir, t_dir) = (dir.path().join("img"), dir.path().join("qemu"));
        let (ours, theirs) = (o_dir.join("s.vmdk"), t_dir.join("s.vmdk"));
        let opts = format!("subformat=streamOptimized,zeroed_grain={zeroed_grain}");
        for (tool, d, path) in [
            (img as fn(&[&str]) -> Command, &o_dir, &ours),
            (qemu_img, &t_dir, &theirs),
        ] {
            std::fs::create_dir(d).unwrap();
            ok(tool(&["create", "-q", "-f", "vmdk", "-o", &opts])
                .arg(path)
                .arg("1060k"));
        }
        let what = format!("zeroed_grain={zeroed_grain}");
        assert_same_but_cid(&ours, &theirs, &format!("{what}, created"));
        for command in commands {
            let answers: Vec<String> = [&ours, &theirs]
                .iter()
                .map(|path| {
                    let out = run(Command::new("qemu-io")
                        .args(["-f", "vmdk", "-c", command])
                        .arg(path));
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .chain(String::from_utf8_lossy(&out.stderr).lines())
                        .filter(|l| !l.contains("ops/sec"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            assert_eq!(answers[0], answers[1], "{what}, {command}");
            assert_same_but_cid(&ours, &theirs, &format!("{what}, {command}"));
        }
        assert_reads_alike(&ours, &what);
        assert_consistent(&ours, &theirs, &what);
    }
}
