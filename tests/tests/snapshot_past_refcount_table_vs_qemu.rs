//! `snapshot -c` over a data cluster that lies past what the refcount
//! table covers (its L2 entry points past the end of the file), as
//! qemu-img 10 does it: raising the tree's refcounts, QEMU's
//! alloc_refcount_block adds an empty refcount block for that cluster,
//! grows the table into a self-describing area past it, and fails with
//! EAGAIN; the snapshot's L1 table leaks. Held against qemu-img on a copy
//! of the same image: the same message and exit code, byte-equal files
//! and the same `qemu-img check` report.

use integration_tests::{file_and_check_differences, img, qemu_img, require_qemu, run};

/// stdout, stderr and the exit code, the program's name taken out.
fn outcome(out: &std::process::Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace("qemu-img: ", "img: "),
        out.status.code(),
    )
}

#[test]
fn snapshot_over_a_cluster_past_the_refcount_table_vs_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    // Past the one-cluster table's 2 MiB: at its end, past it, far past.
    for host_offset in [0x20_0000u64, 0x40_0000, 0x100_0000] {
        let (o, t) = (d.join("o.qcow2"), d.join("t.qcow2"));
        integration_tests::qcow2_512_mapped_at(&o, host_offset);
        std::fs::copy(&o, &t).unwrap();
        let ours = outcome(&run(img(&["snapshot", "-c", "s"]).arg(&o)));
        let theirs = outcome(&run(qemu_img(&["snapshot", "-c", "s"]).arg(&t)));
        let label = format!("{host_offset:#x}");
        if ours != theirs {
            failures.push(format!("{label}: ours {ours:?}, theirs {theirs:?}"));
        }
        failures.extend(file_and_check_differences(&label, &o, &t));
        std::fs::remove_file(&o).unwrap();
        std::fs::remove_file(&t).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
