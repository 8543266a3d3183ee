//! `img convert` puts the target's clusters where `qemu-img convert` puts
//! them: the same scenario is converted by both tools and `qemu-img map`
//! (human and JSON, host offsets included) must print the same for both
//! targets, and qemu-io must read the same bytes. Covers the allocation
//! order (an L2 table before its data, chunks written in guest order),
//! `-c` with clusters only partly written or spanning two sources, `-c -S 0`,
//! `-S 0`, zeros kept in a `-B` overlay, and `-n` into a target with a
//! backing file (zero clusters in v3, written zeros in v2).

use std::path::Path;
use std::process::Command;

use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu, run};

/// Runs `args` (a convert command line, target last) with both tools, into
/// `ours.qcow2` and `theirs.qcow2`, each first made by `prepare` when the
/// scenario converts into an existing target (`-n`).
fn convert_both(dir: &Path, args: &[&str], prepare: &dyn Fn(&Path)) {
    for (tool, target) in [
        (img as fn(&[&str]) -> Command, "ours.qcow2"),
        (qemu_img, "theirs.qcow2"),
    ] {
        let t = dir.join(target);
        let _ = std::fs::remove_file(&t);
        prepare(&t);
        let out = run(tool(args).arg(&t).current_dir(dir));
        assert!(
            out.status.success(),
            "convert {args:?} into {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `qemu-img map` of both targets, human and JSON, must be equal.
fn same_layout(dir: &Path, what: &str) {
    for output in ["--output=human", "--output=json"] {
        // (The human layout refuses compressed clusters: then both must.)
        let map = |name: &str| {
            let out = run(qemu_img(&["map", output, name]).current_dir(dir));
            format!(
                "{}{}exit {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                out.status.code()
            )
            .replace(name, "TARGET")
        };
        let (ours, theirs) = (map("ours.qcow2"), map("theirs.qcow2"));
        assert_eq!(
            ours, theirs,
            "{what}: map {output} differs\n--- img ---\n{ours}\n--- qemu-img ---\n{theirs}"
        );
    }
    let (ours, theirs) = (dir.join("ours.qcow2"), dir.join("theirs.qcow2"));
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&ours)
        .arg(&theirs));
    assert_eq!(cmp.status.code(), Some(0), "{what}: contents differ");
}

/// `qemu-img create -q -f qcow2 ARGS` in `dir`.
fn create(dir: &Path, args: &[&str]) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .args(args)
        .current_dir(dir));
}

fn nothing(_: &Path) {}

#[test]
fn allocation_order_and_full_allocation() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    create(dir, &["base.qcow2", "64M"]);
    qemu_io("qcow2", &dir.join("base.qcow2"), &["write -P 0x11 0 32M"]);
    create(dir, &["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
    qemu_io("qcow2", &dir.join("top.qcow2"), &["write -P 0x22 0 3M"]);

    convert_both(
        dir,
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
        &nothing,
    );
    same_layout(dir, "-B overlay of 3M");
    for (what, args) in [
        (
            "-S 0",
            &["convert", "-O", "qcow2", "-S", "0", "top.qcow2"][..],
        ),
        (
            "-c -S 0",
            &["convert", "-O", "qcow2", "-c", "-S", "0", "top.qcow2"],
        ),
        ("plain", &["convert", "-O", "qcow2", "top.qcow2"]),
    ] {
        convert_both(dir, args, &nothing);
        same_layout(dir, what);
    }
}

#[test]
fn zeros_written_into_an_overlay_stay_zero() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    create(dir, &["base.qcow2", "8M"]);
    qemu_io("qcow2", &dir.join("base.qcow2"), &["write -P 0x11 0 8M"]);
    create(dir, &["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
    qemu_io(
        "qcow2",
        &dir.join("top.qcow2"),
        &["write -P 0 0 3M", "write -z 4M 1M"],
    );
    for (what, args) in [
        (
            "-B",
            &[
                "convert",
                "-O",
                "qcow2",
                "-B",
                "base.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
            ][..],
        ),
        (
            "-c -B",
            &[
                "convert",
                "-O",
                "qcow2",
                "-c",
                "-B",
                "base.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
            ],
        ),
    ] {
        convert_both(dir, args, &nothing);
        same_layout(dir, what);
    }
}

#[test]
fn compressed_partial_clusters_and_concatenated_sources() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for name in ["a.qcow2", "b.qcow2"] {
        create(dir, &["-o", "cluster_size=1024", name, "1023k"]);
    }
    qemu_io(
        "qcow2",
        &dir.join("a.qcow2"),
        &[
            "write -P 0x11 16k 16k",
            "write -P 0x22 130k 130k",
            "write -P 0x33 1022k 1k",
        ],
    );
    qemu_io("qcow2", &dir.join("b.qcow2"), &["write -P 0x44 0 1k"]);
    convert_both(
        dir,
        &["convert", "-c", "-O", "qcow2", "a.qcow2", "b.qcow2"],
        &nothing,
    );
    same_layout(dir, "-c of two misaligned sources");
    // A disk that ends inside its last cluster is compressed to its end.
    create(dir, &["c.qcow2", "100k"]);
    qemu_io("qcow2", &dir.join("c.qcow2"), &["write -P 0x55 64k 36k"]);
    convert_both(dir, &["convert", "-c", "-O", "qcow2", "c.qcow2"], &nothing);
    same_layout(dir, "-c of a disk ending inside a cluster");
}

#[test]
fn no_create_into_a_target_with_a_backing_file() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    create(dir, &["src.qcow2", "8M"]);
    create(dir, &["base.qcow2", "8M"]);
    qemu_io("qcow2", &dir.join("base.qcow2"), &["write -P 0x11 0 8M"]);
    for compat in ["1.1", "0.10"] {
        let prepare = |t: &Path| {
            ok(qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "-o",
            ])
            .arg(format!("compat={compat}"))
            .arg(t)
            .arg("8M")
            .current_dir(dir));
        };
        convert_both(
            dir,
            &["convert", "-O", "qcow2", "-n", "src.qcow2"],
            &prepare,
        );
        same_layout(dir, &format!("-n into an overlay, compat={compat}"));
    }
}

/// `-S 0` allocates every cluster, even where the source's data clusters
/// lie in holes of its file (preallocated metadata): qemu-img writes
/// their zeros, and so does `img` (it left them unallocated before).
#[test]
fn s0_allocates_data_clusters_in_holes_of_the_source_file() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    create(dir, &["-o", "preallocation=metadata", "pre.qcow2", "8M"]);
    qemu_io("qcow2", &dir.join("pre.qcow2"), &["write -P 0x33 1M 1M"]);
    convert_both(
        dir,
        &["convert", "-O", "qcow2", "-S", "0", "pre.qcow2"],
        &nothing,
    );
    same_layout(dir, "-S 0 of preallocated metadata");
    // And into raw: the whole file is allocated, as qemu-img's.
    for (tool, name) in [
        (img as fn(&[&str]) -> Command, "ours.raw"),
        (qemu_img, "theirs.raw"),
    ] {
        ok(tool(&["convert", "-O", "raw", "-S", "0", "pre.qcow2", name]).current_dir(dir));
    }
    let blocks = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(name)).unwrap().blocks()
    };
    assert_eq!(blocks("ours.raw"), blocks("theirs.raw"), "allocated blocks");
    assert!(blocks("ours.raw") >= 8 << 11, "fully allocated");
}
