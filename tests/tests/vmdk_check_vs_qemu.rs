//! `img check` of vmdk images whose clusters lie past the end of their
//! file: QEMU's vmdk check stops at the first one, prints its sector and
//! fails with `Check failed: Invalid argument`; img prints the same lines
//! and exits with the same status (stdout, stderr and status compared).

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, run};

/// `img check ARGS` and `qemu-img check ARGS` of `image` print the same
/// and exit alike.
fn assert_check_like_qemu(image: &Path, what: &str) {
    for args in [&["check"][..], &["check", "--output=json"]] {
        let ours = run(img(args).arg(image));
        let theirs = run(qemu_img(args).arg(image));
        let (err, their_err) = (
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr).replace("qemu-img:", "img:"),
        );
        assert_eq!(err, their_err, "{what}: {args:?} stderr");
        assert_eq!(ours.stdout, theirs.stdout, "{what}: {args:?} stdout");
        assert_eq!(ours.status.code(), theirs.status.code(), "{what}: {args:?}");
    }
}

#[test]
fn clusters_past_the_end_fail_check_as_in_qemu() {
    integration_tests::require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    // A monolithicSparse image with data in three grains (64 KiB each),
    // cut inside the second: the third lies past the end.
    let sparse = dir.path().join("s.vmdk");
    ok(qemu_img(&["create", "-q", "-f", "vmdk"])
        .arg(&sparse)
        .arg("4M"));
    qemu_io(
        "vmdk",
        &sparse,
        &["write -P 1 0 64k", "write -P 2 1M 64k", "write -P 3 2M 64k"],
    );
    assert_check_like_qemu(&sparse, "a whole sparse image");
    let len = std::fs::metadata(&sparse).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap();
    file.set_len(len - 64 * 1024 - 32 * 1024).unwrap();
    assert_check_like_qemu(&sparse, "a sparse image cut short");
    // A flat extent starting past the end of its file.
    std::fs::write(dir.path().join("f-flat.raw"), vec![7u8; 4096]).unwrap();
    let flat = dir.path().join("f.vmdk");
    std::fs::write(
        &flat,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\n\
         RW 8 FLAT \"f-flat.raw\" 0\nRW 8 FLAT \"f-flat.raw\" 8192\n",
    )
    .unwrap();
    assert_check_like_qemu(&flat, "a flat extent past the end");
}
