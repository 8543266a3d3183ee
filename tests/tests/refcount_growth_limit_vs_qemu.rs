//! How far a refcount table may grow, as QEMU 10 bounds it: its
//! qcow2_refcount_area refuses with EFBIG ("File too large") a table of
//! more than 8 Mi entries (QCOW_MAX_REFTABLE_SIZE, 8 MiB, compared with a
//! count of entries). Below that it grows the table even past the 8 MiB
//! that opening an image allows, so the image then opens in neither tool
//! ("Reference count table too large").
//!
//! The requests: freeing a cluster whose L2 entry points far past the
//! table (qemu-io's `discard`; the free fails and the cluster leaks) and
//! `snapshot -c` over such a cluster, on images of 512-byte clusters and
//! 64-bit refcounts (a refcount block covers 32 KiB, so a table of 8 Mi
//! entries, grown half as large again as needed, covers about 170 GiB).
//! Each file is sparse; compared where either holds data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use integration_tests::{img, qemu_img, require_qemu, run};
use vmm_sys_util::seek_hole::SeekHole;

/// The byte ranges of `path` that hold data (SEEK_DATA / SEEK_HOLE).
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let mut f = File::open(path).unwrap();
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(start) = f.seek_data(at).unwrap() {
        let end = f.seek_hole(start).unwrap().expect("a hole at the end");
        ranges.push((start, end));
        at = end;
    }
    ranges
}

/// Where two sparse files differ, reading only where either has data
/// (a hole reads as zeros): their lengths, or the first differing byte.
fn sparse_difference(a: &Path, b: &Path) -> Option<String> {
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    if la != lb {
        return Some(format!("lengths {la} vs {lb}"));
    }
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    for (start, end) in data_ranges(a).into_iter().chain(data_ranges(b)) {
        let mut at = start;
        while at < end {
            let n = (end - at).min(1 << 20) as usize;
            let (mut x, mut y) = (vec![0u8; n], vec![0u8; n]);
            fa.read_exact_at(&mut x, at).unwrap();
            fb.read_exact_at(&mut y, at).unwrap();
            if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
                return Some(format!("first difference at byte {}", at + i as u64));
            }
            at += n as u64;
        }
    }
    None
}

/// One tool's report on an image: stdout and stderr with the image's
/// path and the program's name taken out, and the exit code.
fn report(out: &std::process::Output, path: &Path) -> (String, Option<i32>) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&path.display().to_string(), "IMAGE")
    .replace("qemu-img: ", "")
    .replace("img: ", "");
    (text, out.status.code())
}

const GIB: u64 = 1 << 30;

#[test]
fn freeing_past_the_refcount_table_grows_it_up_to_qemus_limit() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    // 64 GiB and 160 GiB: QEMU grows the table past 8 MiB (1 Mi and
    // 7.5 Mi entries); 180 GiB and 1 TiB: past 8 Mi entries, EFBIG.
    for host_offset in [64 * GIB, 160 * GIB, 180 * GIB, 1024 * GIB] {
        let (o, t) = (d.join("o.qcow2"), d.join("t.qcow2"));
        integration_tests::qcow2_512_mapped_at(&o, host_offset);
        std::fs::copy(&o, &t).unwrap();
        let out = run(std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "discard 0 512"])
            .arg(&t));
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("qcow2"))
            .map(str::to_string)
            .collect();
        let ours: Vec<String> = {
            let image = integration_tests::open_qcow2_rw(&o);
            image.discard(0, 512).unwrap();
            image.flush().unwrap();
            image.take_notices().iter().map(|n| n.line()).collect()
        };
        let label = format!("{} GiB", host_offset / GIB);
        if ours != theirs {
            failures.push(format!("{label}: lines {ours:?} vs {theirs:?}"));
        }
        if let Some(diff) = sparse_difference(&o, &t) {
            failures.push(format!("{label}: files differ: {diff}"));
        }
        // Ours checked by img, theirs by qemu-img: the same report (for
        // a table past 8 MiB, the same refusal to open).
        let ca = report(&run(img(&["check"]).arg(&o)), &o);
        let cb = report(&run(qemu_img(&["check"]).arg(&t)), &t);
        if ca != cb {
            failures.push(format!("{label}: check\nours:   {ca:?}\ntheirs: {cb:?}"));
        }
        std::fs::remove_file(&o).unwrap();
        std::fs::remove_file(&t).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn snapshot_over_a_cluster_past_the_limit_fails_as_qemu_img_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    // Below the limit QEMU grows the table and fails with EAGAIN; past
    // it, EFBIG.
    for host_offset in [64 * GIB, 160 * GIB, 180 * GIB, 1024 * GIB] {
        let (o, t) = (d.join("o.qcow2"), d.join("t.qcow2"));
        integration_tests::qcow2_512_mapped_at(&o, host_offset);
        std::fs::copy(&o, &t).unwrap();
        let a = report(&run(img(&["snapshot", "-c", "s"]).arg(&o)), &o);
        let b = report(&run(qemu_img(&["snapshot", "-c", "s"]).arg(&t)), &t);
        if a != b {
            failures.push(format!(
                "{} GiB: ours {a:?}, theirs {b:?}",
                host_offset / GIB
            ));
        }
        std::fs::remove_file(&o).unwrap();
        std::fs::remove_file(&t).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
