//! `img commit` where qemu-img's commit job (a mirror) writes zeros other
//! than as qcow2 zero clusters, held against qemu-img on two copies of
//! each chain:
//! - into a raw base: zeros the top holds over whole granules (64 KiB) go
//!   down as write-zeroes with unmap, which QEMU's file driver turns into
//!   a punched hole. The bases must agree byte for byte, in `qemu-img
//!   map` (holes and data, offsets included) and in the blocks the file
//!   allocates (within 64 KiB).
//! - from a top of 512-byte clusters: QEMU's block status of the top ends
//!   with each of its L2 tables (32 KiB), so a run of zeros reaches the
//!   mirror in pieces shorter than a granule, which it copies as data.
//!   The bases, raw or qcow2, must agree as above (qcow2: content, map
//!   without host offsets).
//!
//! The tops' maps must agree after the commit too.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use integration_tests::{img, map_ranges, ok, qemu_img, qemu_io, require_qemu, run};

/// How the base is made: its format, size in bytes and contents.
#[derive(Clone, Copy)]
struct Base {
    format: &'static str,
    size: u64,
    fill: &'static [&'static str],
}

struct Case {
    base: Base,
    top_opts: &'static str,
    /// The top's size, when it is not the base's.
    top_size: Option<&'static str>,
    top_ops: &'static [&'static str],
}

/// A raw base with data at both ends and holes between.
const PART: &[&str] = &["write -P 0x11 60k 200k", "write -P 0x44 1M 1000k"];
/// A raw base all data (its size rounded down to a sector).
const FULL_4000001: &[&str] = &["write -P 0x11 0 3999744"];
const FULL_4M: &[&str] = &["write -P 0x11 0 4M"];

/// Data, zeros and discards, on and off the granules.
const MIXED: &[&str] = &[
    "write -P 0x22 8k 4k",
    "write -z 128k 64k",
    "write -P 0x33 2000k 96k",
    "write -z 1M 8k",
    "write -z -u 2M 192k",
    "discard 3M 64k",
    "write -z 3900k 6k",
    "write -z 3840k 64k",
];

/// Zeros only.
const ZEROS: &[&str] = &[
    "write -z 128k 64k",
    "write -z -u 2M 192k",
    "discard 3M 64k",
    "write -z 3840k 32k",
];

/// Zero runs over a 512-byte-cluster top's L2 tables (32 KiB each).
const SMALL_CLUSTER_ZEROS: &[&str] = &[
    "write -z 0 64k",
    "write -z 128k 128k",
    "write -z 1M 96k",
    "write -P 0x55 2M 4k",
];

fn base_path(d: &Path, side: &str, base: Base) -> PathBuf {
    d.join(format!("{side}-base.{}", base.format))
}

fn make_chain(d: &Path, side: &str, case: &Case) {
    let base = base_path(d, side, case.base);
    let top = d.join(format!("{side}-top.qcow2"));
    let _ = std::fs::remove_file(&base);
    let _ = std::fs::remove_file(&top);
    if case.base.format == "raw" {
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(case.base.size).unwrap();
    } else {
        ok(qemu_img(&["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg(case.base.size.to_string()));
    }
    if !case.base.fill.is_empty() {
        qemu_io(case.base.format, &base, case.base.fill);
    }
    let mut create = qemu_img(&["create", "-q", "-f", "qcow2", "-F", case.base.format, "-o"]);
    create.arg(case.top_opts).arg("-b").arg(&base).arg(&top);
    if let Some(size) = case.top_size {
        create.arg(size);
    }
    ok(&mut create);
    qemu_io("qcow2", &top, case.top_ops);
}

/// What must agree between the two bases, one line per difference.
fn base_differences(label: &str, ours: &Path, theirs: &Path, format: &str) -> Vec<String> {
    let mut failures = Vec::new();
    if format == "raw" {
        if std::fs::read(ours).unwrap() != std::fs::read(theirs).unwrap() {
            failures.push(format!("{label}: base files differ"));
        }
        let map = |p: &Path| ok(qemu_img(&["map", "--output=json", "-f", "raw"]).arg(p));
        let (om, tm) = (map(ours), map(theirs));
        if om != tm {
            failures.push(format!("{label}: base maps\nours:\n{om}theirs:\n{tm}"));
        }
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        let (ob, tb) = (blocks(ours), blocks(theirs));
        if ob.abs_diff(tb) > 64 << 10 {
            failures.push(format!(
                "{label}: base allocates {ob} bytes, qemu-img's {tb}"
            ));
        }
    } else {
        let same = run(qemu_img(&["compare"]).arg(ours).arg(theirs));
        if same.status.code() != Some(0) {
            failures.push(format!(
                "{label}: bases differ: {}",
                String::from_utf8_lossy(&same.stdout).trim()
            ));
        }
        let (om, tm) = (map_ranges(ours), map_ranges(theirs));
        if om != tm {
            failures.push(format!(
                "{label}: base maps\nours:   {om:?}\ntheirs: {tm:?}"
            ));
        }
    }
    failures
}

fn cases() -> Vec<Case> {
    let raw = |size, fill| Base {
        format: "raw",
        size,
        fill,
    };
    let mut cases = Vec::new();
    for base in [
        raw(4 << 20, FULL_4M),
        raw(4 << 20, PART),
        raw(4 << 20, &[]),
        raw(4_000_001, FULL_4000001),
    ] {
        for top_ops in [MIXED, ZEROS] {
            cases.push(Case {
                base,
                top_opts: "cluster_size=64k",
                top_size: None,
                top_ops,
            });
        }
    }
    // A base smaller than the top: commit grows it first.
    cases.push(Case {
        base: raw(3 << 20, PART),
        top_opts: "cluster_size=64k",
        top_size: Some("4M"),
        top_ops: MIXED,
    });
    for base in [
        raw(4 << 20, FULL_4M),
        Base {
            format: "qcow2",
            size: 4 << 20,
            fill: FULL_4M,
        },
    ] {
        for top_opts in ["cluster_size=512", "cluster_size=4k"] {
            cases.push(Case {
                base,
                top_opts,
                top_size: None,
                top_ops: SMALL_CLUSTER_ZEROS,
            });
        }
    }
    cases
}

#[test]
fn commit_zeroes_into_raw_bases_and_from_small_cluster_tops_vs_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let label = format!(
            "{} base of {} bytes with {} writes, top {} with {} writes",
            case.base.format,
            case.base.size,
            case.base.fill.len(),
            case.top_opts,
            case.top_ops.len()
        );
        make_chain(d, "o", case);
        make_chain(d, "t", case);
        let ours = run(img(&["commit"]).arg(d.join("o-top.qcow2")));
        let theirs = run(qemu_img(&["commit"]).arg(d.join("t-top.qcow2")));
        if (ours.status.code(), &ours.stdout) != (theirs.status.code(), &theirs.stdout) {
            failures.push(format!("{label}: commit {ours:?} vs {theirs:?}"));
            continue;
        }
        failures.extend(base_differences(
            &label,
            &base_path(d, "o", case.base),
            &base_path(d, "t", case.base),
            case.base.format,
        ));
        let (ot, tt) = (
            map_ranges(&d.join("o-top.qcow2")),
            map_ranges(&d.join("t-top.qcow2")),
        );
        if ot != tt {
            failures.push(format!("{label}: top maps\nours:   {ot:?}\ntheirs: {tt:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
