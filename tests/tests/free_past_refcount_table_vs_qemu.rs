//! Freeing a cluster that lies past what the refcount table covers (a
//! data cluster whose L2 entry points far past the end of the file), as
//! QEMU 10's update_refcount meets it in alloc_refcount_block: a new,
//! empty refcount block at the first free cluster, then a refcount table
//! grown into a self-describing area past the freed cluster's range, the
//! free failing with EAGAIN (the cluster leaks). Held against qemu-io's
//! `discard` and `write -z -u` on a copy of the same image: byte for byte
//! equal files and the same `qemu-img check` report.

use std::path::Path;

use integration_tests::{file_and_check_differences, require_qemu, run};

fn ours(path: &Path, discard: bool) -> Vec<String> {
    let image = integration_tests::open_qcow2_rw(path);
    if discard {
        image.discard(0, 512).unwrap();
    } else {
        image.write_zeroes(0, 512, true).unwrap();
    }
    image.flush().unwrap();
    image.take_notices().iter().map(|n| n.line()).collect()
}

#[test]
fn freeing_a_cluster_past_the_refcount_table_grows_it_as_qemu_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    // Past the table's 2 MiB: just past, and far past.
    for host_offset in [0x40_0000u64, 0x20_0000, 0x100_0000] {
        for discard in [true, false] {
            let (o, t) = (d.join("o.qcow2"), d.join("t.qcow2"));
            integration_tests::qcow2_512_mapped_at(&o, host_offset);
            std::fs::copy(&o, &t).unwrap();
            let command = if discard {
                "discard 0 512"
            } else {
                "write -z -u 0 512"
            };
            let out = run(std::process::Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", command])
                .arg(&t));
            let theirs_lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .filter(|l| l.starts_with("qcow2"))
                .map(str::to_string)
                .collect();
            let ours_lines = ours(&o, discard);
            let label = format!("{host_offset:#x} {command}");
            if ours_lines != theirs_lines {
                failures.push(format!("{label}: lines {ours_lines:?} vs {theirs_lines:?}"));
            }
            failures.extend(file_and_check_differences(&label, &o, &t));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
