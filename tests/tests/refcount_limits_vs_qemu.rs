//! Narrow refcounts at their limit, as qemu-iotests 112 drives them: a
//! snapshot whose refcounts would overflow fails with qemu-img's words and
//! leaves what qemu-img leaves (the snapshot's L1 table, leaked), and
//! `amend -o refcount_bits=N` of an image with a refcount too small copies
//! the stored counts as qemu-img does, so `check -r all` then finds and
//! repairs the same. Each scenario runs on two copies of one image, one
//! per tool, and `qemu-img check` must print the same for both.

use std::path::Path;
use std::process::{Command, Output};

use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu, run};

/// stderr with the program's name taken off, stdout, and the exit code.
fn outcome(out: &Output) -> (String, String, Option<i32>) {
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    (
        err,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// Runs `args` + the image with both tools, each on its own copy of
/// `image`, and holds their outcomes and the copies' checks equal.
fn same_on_copies(dir: &Path, image: &str, args: &[&str], then_check: &[&str]) {
    let ours = dir.join("ours.qcow2");
    let theirs = dir.join("theirs.qcow2");
    std::fs::copy(dir.join(image), &ours).unwrap();
    std::fs::copy(dir.join(image), &theirs).unwrap();
    let a = outcome(&run(img(args).arg(&ours)));
    let b = outcome(&run(qemu_img(args).arg(&theirs)));
    assert_eq!(a, b, "{args:?}: img vs qemu-img");
    let check = |p: &Path| {
        let out = run(Command::new("qemu-img")
            .arg("check")
            .args(then_check)
            .arg(p));
        outcome(&out)
    };
    let (ca, cb) = (check(&ours), check(&theirs));
    assert_eq!(
        ca.1.replace("ours.qcow2", "X"),
        cb.1.replace("theirs.qcow2", "X"),
        "{args:?}: qemu-img check {then_check:?} afterwards"
    );
    assert_eq!(ca.2, cb.2, "{args:?}: check exit codes");
}

#[test]
fn snapshot_that_would_overflow_a_refcount() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for bits in ["1", "2"] {
        let name = format!("r{bits}.qcow2");
        ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("refcount_bits={bits}"))
            .arg(dir.join(&name))
            .arg("64M"));
        qemu_io("qcow2", &dir.join(&name), &["write 0 512"]);
        // Up to the width's limit, then one more.
        let limit = if bits == "1" { 0 } else { 2 };
        for i in 0..limit {
            ok(qemu_img(&["snapshot", "-c"])
                .arg(format!("s{i}"))
                .arg(dir.join(&name)));
        }
        same_on_copies(dir, &name, &["snapshot", "-c", "over"], &[]);
    }
}

#[test]
fn amend_copies_a_refcount_that_is_too_small() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p = dir.join("two_refs.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", "refcount_bits=1"])
            .arg(&p)
            .arg("64M"),
    );
    qemu_io("qcow2", &p, &["write 0 64k"]);
    // The L2 table is at 0x40000 and its first entry points at 0x50000:
    // make the second entry point there too (two references, count 1).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&0x8000_0000_0005_0000u64.to_be_bytes(), 0x40008)
            .unwrap();
    }
    same_on_copies(
        dir,
        "two_refs.qcow2",
        &["amend", "-f", "qcow2", "-o", "refcount_bits=2"],
        &["-r", "all"],
    );
}
