//! Writes into a streamOptimized vmdk as QEMU 10 takes them: each grain
//! once and whole (or the disk's short last grain whole). A partial grain
//! fails with EINVAL after QEMU has taken a zeroed grain-sized slot for it
//! (the file grows by a grain), a grain already written fails with EIO
//! after "Could not write to allocated cluster for streamOptimized". img
//! and qemu-img run the same `bench` requests on copies of one image:
//! stderr, exit status and file size must agree, and the results must pass
//! `qemu-img check` and compare identical. Convert into streamOptimized
//! writes whole grains and grows its file as qemu-img's does.

use std::path::{Path, PathBuf};
use std::process::Output;

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
