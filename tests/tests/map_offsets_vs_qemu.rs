//! The host offsets `img map` shows, against qemu-img 10, where QEMU's
//! qcow2 driver decides them by the cluster's state: a zero subcluster of
//! an allocated cluster (extended L2, QCOW2_SUBCLUSTER_ZERO_ALLOC) keeps
//! its cluster's offset; an encrypted image shows none (and so its human
//! map fails as qemu-img's does).

use std::path::Path;

use integration_tests::encrypted::{luks_qcow2_opts, qemu_io_with_secret, SECRET};
use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu, run};

/// stdout, stderr and the exit code, the program's name taken out.
fn outcome(out: &std::process::Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace("qemu-img: ", "img: "),
        out.status.code(),
    )
}

fn same(d: &Path, args: &[&str], failures: &mut Vec<String>) {
    let ours = outcome(&run(img(args).current_dir(d)));
    let theirs = outcome(&run(qemu_img(args).current_dir(d)));
    if ours != theirs {
        failures.push(format!(
            "{}\n  ours:   {ours:?}\n  theirs: {theirs:?}",
            args.join(" ")
        ));
    }
}

#[test]
fn map_offsets_of_zero_subclusters_and_encrypted_clusters_vs_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ext = d.join("ext.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", "extended_l2=on"])
            .arg(&ext)
            .arg("1M"),
    );
    qemu_io(
        "qcow2",
        &ext,
        &["write -P 1 0 8k", "write -z 2k 2k", "write -z -u 6k 2k"],
    );
    let enc = d.join("enc.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "--object", SECRET, "-o"])
            .arg("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")
            .arg(&enc)
            .arg("1M"),
    );
    qemu_io_with_secret(
        &luks_qcow2_opts(&enc),
        &["write -P 2 0 64k", "write -z 64k 64k", "write -P 3 192k 4k"],
    );
    let enc_opts = luks_qcow2_opts(Path::new("enc.qcow2"));
    let mut failures = Vec::new();
    for output in ["--output=json", "--output=human"] {
        same(d, &["map", output, "ext.qcow2"], &mut failures);
        same(
            d,
            &["map", output, "--object", SECRET, "--image-opts", &enc_opts],
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
