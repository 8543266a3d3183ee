//! Bad input around internal snapshots: names too long, empty or taken,
//! snapshots that do not exist, and snapshot tables that point outside the
//! file or claim more entries than fit. Every command refuses with one
//! `img: ...` line and exit code 1, and the file keeps every byte.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

/// A qcow2 image with data and one snapshot, "s1".
fn image_with_snapshot(d: &Path, name: &str) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", name, "16M"]).current_dir(d));
    qemu_io("qcow2", &d.join(name), &["write -P 9 0 256k"]);
    ok(qemu_img(&["snapshot", "-c", "s1", name]).current_dir(d));
}

/// Runs `img ARGS` in `d` and asserts one error line containing `needle`,
/// exit code 1 and `file` unchanged.
fn refused(d: &Path, file: &str, args: &[&str], needle: &str) {
    let before = read(&d.join(file));
    let out = run(img(args).current_dir(d));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "img {args:?}: {err}");
    assert!(err.starts_with("img: "), "img {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "img {args:?}: {err}");
    assert!(
        err.len() < 400,
        "img {args:?}: an error line of {} bytes",
        err.len()
    );
    assert!(
        err.contains(needle),
        "img {args:?}: {err:?} lacks {needle:?}"
    );
    assert!(read(&d.join(file)) == before, "img {args:?} changed {file}");
}

#[test]
fn bad_snapshot_names_are_refused_without_change() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image_with_snapshot(d, "a.qcow2");
    refused(
        d,
        "a.qcow2",
        &["snapshot", "-c", "s1", "a.qcow2"],
        "Snapshot with name 's1' already exists",
    );
    let long = "n".repeat(70_000);
    refused(
        d,
        "a.qcow2",
        &["snapshot", "-c", &long, "a.qcow2"],
        "must be 1 to 65535 bytes long",
    );
    refused(
        d,
        "a.qcow2",
        &["snapshot", "-c", "", "a.qcow2"],
        "must be 1 to 65535 bytes long",
    );
    for action in ["-a", "-d"] {
        refused(
            d,
            "a.qcow2",
            &["snapshot", action, "nope", "a.qcow2"],
            "snapshot 'nope'",
        );
    }
    refused(
        d,
        "a.qcow2",
        &[
            "convert",
            "-l",
            "snapshot.name=nope",
            "-O",
            "raw",
            "a.qcow2",
            "out.raw",
        ],
        // qemu-img's words name no snapshot (messages_vs_qemu).
        "Can't find snapshot",
    );
    assert!(!d.join("out.raw").exists());
    // The image still works afterwards.
    ok(img(&["snapshot", "-c", "s2", "a.qcow2"]).current_dir(d));
    ok(qemu_img(&["check", "a.qcow2"]).current_dir(d));
}

/// Sets the header's snapshot count and table offset.
fn patch_table(d: &Path, file: &str, count: Option<u32>, offset: Option<u64>) {
    let path = d.join(file);
    let mut bytes = read(&path);
    if let Some(c) = count {
        bytes[60..64].copy_from_slice(&c.to_be_bytes());
    }
    if let Some(o) = offset {
        bytes[64..72].copy_from_slice(&o.to_be_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn hostile_snapshot_tables_are_refused_without_change() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, Option<u32>, Option<u64>, &str); 2] = [
        ("huge.qcow2", Some(70_000), None, "Snapshot table too large"),
        ("unaligned.qcow2", None, Some(0x10001), "snapshot table"),
    ];
    for (file, count, offset, needle) in cases {
        image_with_snapshot(d, file);
        patch_table(d, file, count, offset);
        for args in [
            vec!["info", file],
            vec!["snapshot", "-l", file],
            vec!["snapshot", "-c", "new", file],
            vec!["snapshot", "-a", "s1", file],
            vec!["snapshot", "-d", "s1", file],
            vec!["convert", "-O", "raw", file, "out.raw"],
            vec!["amend", "-o", "compat=0.10", file],
            vec!["resize", file, "32M"],
        ] {
            refused(d, file, &args, needle);
        }
        assert!(!d.join("out.raw").exists());
    }
}

/// A snapshot table running past the end of the file opens, as with
/// qemu-img (its entries there read as zero), and lists as qemu-img lists
/// it; rewriting it is refused without change, since the clusters it
/// claims past the end are not its own (qemu-img marks such an image
/// corrupt, or frees clusters it does not own).
#[test]
fn snapshot_tables_past_the_end_open_and_are_not_rewritten() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (file, count, offset) in [
        ("far.qcow2", None, Some(1u64 << 40)),
        // qemu-img reads a table in time quadratic in its entries: 3000
        // take it a moment, 60000 twenty seconds.
        ("many.qcow2", Some(3000), None),
    ] {
        image_with_snapshot(d, file);
        patch_table(d, file, count, offset);
        for args in [vec!["info", file], vec!["snapshot", "-l", file]] {
            let ours = run(img(&args).current_dir(d));
            let theirs = run(qemu_img(&args).current_dir(d));
            assert!(ours.status.success(), "img {args:?}: {ours:?}");
            assert_eq!(
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&theirs.stdout),
                "img {args:?}"
            );
        }
        let needle = "extends beyond the end of the file";
        refused(d, file, &["snapshot", "-c", "new", file], needle);
    }
    refused(
        d,
        "many.qcow2",
        &["snapshot", "-d", "s1", "many.qcow2"],
        "extends beyond the end of the file",
    );
}
