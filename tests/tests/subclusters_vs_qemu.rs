//! Images with extended L2 entries (subclusters) against qemu-img: what
//! `rebase` (plain and `-c`) leaves allocated, growth over a longer backing
//! file with every preallocation mode, and measure's refusal of small
//! clusters.

use std::path::Path;

use integration_tests::{assert_qemu_clean, img, ok, qemu_img, qemu_io, require_qemu, run};

/// The subcluster bitmaps and flags (host offsets masked out) of the
/// first `count` entries of the image's first L2 table, found through its
/// header and L1 table.
fn l2_bitmaps(path: &Path, count: usize) -> Vec<(u64, u64)> {
    let data = std::fs::read(path).unwrap();
    let be = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().unwrap());
    let l1_offset = be(40) as usize;
    let l2_offset = (be(l1_offset) & 0x00ff_ffff_ffff_fe00) as usize;
    (0..count)
        .map(|i| {
            let entry = be(l2_offset + 16 * i);
            (entry & 0xc000_0000_0000_0001, be(l2_offset + 16 * i + 8))
        })
        .collect()
}

/// `qemu-img map --output=json` without host offsets (where the clusters
/// go is the allocation order's business, not the rebase's).
fn map_shape(dir: &Path, name: &str) -> String {
    let map = map_json(dir, name);
    map.split(", \"offset\": ")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.trim_start_matches(|c: char| c.is_ascii_digit())
            }
        })
        .collect()
}

fn map_json(dir: &Path, name: &str) -> String {
    ok(qemu_img(&["map", "--output=json", name]).current_dir(dir))
}

/// base <- mid <- top, all with 1 MiB clusters and extended L2 entries.
fn chain(dir: &Path, size: &str, mid_writes: &[&str], base_writes: &[&str]) {
    let opts = "cluster_size=1M,extended_l2=on";
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        "base.qcow2",
        size,
    ])
    .current_dir(dir));
    for (name, backing) in [("mid.qcow2", "base.qcow2"), ("top.qcow2", "mid.qcow2")] {
        ok(qemu_img(&[
            "create", "-q", "-f", "qcow2", "-o", opts, "-b", backing, "-F", "qcow2", name, size,
        ])
        .current_dir(dir));
    }
    if !base_writes.is_empty() {
        qemu_io("qcow2", &dir.join("base.qcow2"), base_writes);
    }
    qemu_io("qcow2", &dir.join("mid.qcow2"), mid_writes);
}

/// Rebases copies of top.qcow2 onto base.qcow2 with img and qemu-img and
/// checks that they allocate the same ranges and subclusters.
fn rebase_both(dir: &Path, extra: &[&str], clusters: usize) {
    std::fs::copy(dir.join("top.qcow2"), dir.join("ours.qcow2")).unwrap();
    std::fs::copy(dir.join("top.qcow2"), dir.join("theirs.qcow2")).unwrap();
    let mut args = vec!["rebase"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-b", "base.qcow2", "-F", "qcow2"]);
    ok(img(&args).arg("ours.qcow2").current_dir(dir));
    ok(qemu_img(&args).arg("theirs.qcow2").current_dir(dir));
    assert_qemu_clean(&dir.join("ours.qcow2"));
    assert_eq!(
        map_shape(dir, "ours.qcow2"),
        map_shape(dir, "theirs.qcow2"),
        "rebase {extra:?}"
    );
    assert_eq!(
        l2_bitmaps(&dir.join("ours.qcow2"), clusters),
        l2_bitmaps(&dir.join("theirs.qcow2"), clusters),
        "rebase {extra:?}: L2 entries"
    );
    let out = ok(qemu_img(&["compare", "top.qcow2", "ours.qcow2"]).current_dir(dir));
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn rebase_copies_only_the_subclusters_that_differ() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(
        d,
        "1M",
        &["write -P 0x11 32k 32k", "write -P 0x22 960k 32k"],
        &[],
    );
    rebase_both(d, &[], 1);
}

#[test]
fn rebase_with_compression_compresses_whole_clusters() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(
        d,
        "3M",
        &["write -P 0x22 992k 32k", "write -P 0x33 2048k 32k"],
        &["write -P 0x11 1M 1M"],
    );
    rebase_both(d, &["-c"], 3);
    let map = map_json(d, "ours.qcow2");
    assert_eq!(map.matches("\"compressed\": true").count(), 2, "{map}");
}

#[test]
fn growth_over_a_longer_backing_file_reads_zero_in_every_preallocation_mode() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "raw", "base.raw", "1M"]).current_dir(d));
    qemu_io("raw", &d.join("base.raw"), &["write -P 0xff 0 1M"]);
    for mode in ["off", "metadata", "falloc", "full"] {
        let _ = std::fs::remove_file(d.join("t.qcow2"));
        ok(qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "t.qcow2",
            "503k",
        ])
        .current_dir(d));
        let prealloc = format!("--preallocation={mode}");
        ok(img(&["resize", &prealloc, "t.qcow2", "1013k"]).current_dir(d));
        let out = run(std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "read -P 0xff 0 503k"])
            .args(["-c", "read -P 0x00 503k 510k", "t.qcow2"])
            .current_dir(d));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("Pattern verification failed"),
            "{mode}: {text}"
        );
        assert!(out.status.success(), "{mode}: {text}");
        assert_qemu_clean(&d.join("t.qcow2"));
    }
}

#[test]
fn measure_refuses_extended_l2_with_small_clusters_as_qemu_img_does() {
    require_qemu!();
    let args = [
        "measure",
        "--size",
        "1M",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=8k,extended_l2=on",
    ];
    let ours = run(&mut img(&args));
    let theirs = run(&mut qemu_img(&args));
    assert_eq!(ours.status.code(), theirs.status.code());
    let message = |o: &std::process::Output| {
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        text.split_once(": ")
            .map(|(_, m)| m.to_owned())
            .unwrap_or(text)
    };
    assert_eq!(message(&ours), message(&theirs));
    assert!(ours.stdout.is_empty());
}
