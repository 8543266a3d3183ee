//! `img convert -S 0` and `-C` copy a file's data with copy_file_range
//! (qemu-img's copy offloading): the output must equal qemu-img's byte for
//! byte and be allocated as qemu-img allocates it, from raw and qcow2
//! sources, including a tail that is not a whole block.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use integration_tests::{img, make_raw, ok, qemu_img, read, require_qemu};

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn copy_offload_matches_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Data, written zeros, text and a hole, then a 1000-byte tail.
    make_raw(&d.join("src.raw"), (8 << 20) + 1000, 5);
    ok(qemu_img(&["convert", "-O", "qcow2", "src.raw", "src.qcow2"]).current_dir(d));
    for (fmt, src) in [("raw", "src.raw"), ("qcow2", "src.qcow2")] {
        for opts in [&["-S", "0"][..], &["-C"], &[]] {
            for (name, tool) in [
                ("ours.raw", img as fn(&[&str]) -> _),
                ("theirs.raw", qemu_img),
            ] {
                let _ = std::fs::remove_file(d.join(name));
                ok(tool(&["convert", "-f", fmt, "-O", "raw"])
                    .args(opts)
                    .args([src, name])
                    .current_dir(d));
            }
            let (ours, theirs) = (d.join("ours.raw"), d.join("theirs.raw"));
            assert!(
                read(&ours) == read(&theirs),
                "{fmt} {opts:?}: contents differ"
            );
            let (a, b) = (allocated(&ours), allocated(&theirs));
            // Equal but for the tail's block and file system rounding.
            assert!(
                a.abs_diff(b) <= 64 << 10,
                "{fmt} {opts:?}: {a} bytes allocated, qemu-img {b}"
            );
            if opts == ["-S", "0"] {
                // Fully allocated but for the source's own hole, as
                // qemu-img leaves it.
                assert!(a >= 6 << 20, "{fmt} -S 0: only {a} bytes allocated");
            }
        }
    }
}
