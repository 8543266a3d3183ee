//! Reads that meet a bad qcow2 L1 or L2 entry, held against qemu-img 10:
//! each image is made by qemu-img and one entry poked (an L1 entry
//! unaligned or past the end of the file, an L2 entry unaligned or past
//! the end, a compressed entry past the end); each command runs with img
//! on one copy and qemu-img on another, and what both print on stderr
//! (QEMU's `qcow2: Image is corrupt: ...` event line, then the command's
//! own error), on stdout, their exit codes and the header's corrupt bit
//! afterwards are held equal. QEMU marks the image corrupt only when it
//! opened it for writing (rebase, commit, bench -w).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu, run};

const L1_OFFSET: u64 = 0x30000;
const L2_OFFSET: u64 = 0x40000;

/// The entries poked: (what, offset in the file, big-endian value).
const BAD_ENTRIES: [(&str, u64, u64); 5] = [
    ("L1 entry unaligned", L1_OFFSET, 0x8000_0000_0004_8200),
    ("L1 entry past the end", L1_OFFSET, 0x8000_0001_0000_0000),
    ("L2 entry unaligned", L2_OFFSET, 0x8000_0000_0005_0200),
    ("L2 entry past the end", L2_OFFSET, 0x8000_0001_0000_0000),
    (
        "compressed entry past the end",
        L2_OFFSET,
        0x4000_0001_0000_0000,
    ),
];

fn poke(path: &Path, offset: u64, value: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_be_bytes(), offset).unwrap();
}

/// base.qcow2 (1 MiB of data) under top.qcow2 (64 KiB of its own), both
/// 64 MiB, with `value` poked at `offset` of the top.
fn make_chain(dir: &Path, offset: u64, value: u64) {
    make_chain_with(dir, &[], offset, value);
}

/// [`make_chain`] with the top created with `top_opts` too.
fn make_chain_with(dir: &Path, top_opts: &[&str], offset: u64, value: u64) {
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M"));
    qemu_io("qcow2", &base, &["write -P 0x22 0 1M"]);
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
    ])
    .args(top_opts)
    .arg(&top)
    .current_dir(dir));
    qemu_io("qcow2", &top, &["write -P 0x11 0 64k"]);
    poke(&top, offset, value);
}

/// stderr and stdout with the program's name taken off, and the exit code.
fn outcome(out: &Output) -> (String, String, Option<i32>) {
    let neutral = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(|l| {
                // bench's timing differs run to run.
                if l.starts_with("Run completed in ") {
                    return "Run completed in T seconds.".to_string();
                }
                l.strip_prefix("img: ")
                    .or_else(|| l.strip_prefix("qemu-img: "))
                    .unwrap_or(l)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    (
        neutral(&out.stderr),
        neutral(&out.stdout),
        out.status.code(),
    )
}

/// The corrupt bit of `path`, as qemu-img reads it.
fn corrupt_bit(path: &Path) -> bool {
    ok(Command::new("qemu-img").args(["info", "-U"]).arg(path)).contains("corrupt: true")
}

/// Runs `args` (with `@` for the top image) with img and with qemu-img,
/// each on a fresh copy of the chain in `dir`, and holds the outcomes and
/// the corrupt bit afterwards equal; returns the two tops' paths (img's
/// first).
fn same_outcome(dir: &Path, case: &str, args: &[&str]) -> [std::path::PathBuf; 2] {
    let mut results = Vec::new();
    for (program, tool) in [
        ("img", img as fn(&[&str]) -> Command),
        ("qemu-img", qemu_img),
    ] {
        let work = dir.join(program);
        std::fs::create_dir_all(&work).unwrap();
        for f in ["base.qcow2", "top.qcow2", "new.qcow2"] {
            std::fs::copy(dir.join(f), work.join(f)).unwrap();
        }
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "@" { "top.qcow2" } else { a })
            .collect();
        let out = run(tool(&args).current_dir(&work));
        results.push((outcome(&out), corrupt_bit(&work.join("top.qcow2"))));
    }
    assert_eq!(results[0], results[1], "{case}: img {args:?} vs qemu-img");
    ["img", "qemu-img"].map(|p| dir.join(p).join("top.qcow2"))
}

#[test]
fn reads_of_bad_l1_and_l2_entries_fail_as_qemu_img_fails() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "new.qcow2", "64M"]).current_dir(d));
    let commands: &[&[&str]] = &[
        &["convert", "-O", "raw", "@", "out.raw"],
        &["convert", "-O", "qcow2", "@", "out.qcow2"],
        &["map", "@"],
        &["map", "--output=json", "@"],
        &["compare", "@", "@"],
        &["compare", "@", "base.qcow2"],
        &["info", "@"],
        &["dd", "if=@", "of=out.raw", "bs=64k", "count=2"],
        &["bench", "-c", "1", "@"],
        // Opened for writing: QEMU marks the image corrupt.
        &["bench", "-w", "-c", "1", "@"],
        &["rebase", "-b", "new.qcow2", "-F", "qcow2", "@"],
    ];
    for (case, offset, value) in BAD_ENTRIES {
        make_chain(d, offset, value);
        for args in commands {
            same_outcome(d, case, args);
        }
    }
}

/// A subcluster both allocated and zero in an extended L2 entry: QEMU's
/// "Invalid cluster entry found" (with its two spaces).
#[test]
fn an_invalid_subcluster_bitmap_fails_as_qemu_img_fails() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "new.qcow2", "64M"]).current_dir(d));
    // The bitmap follows the entry: all 32 subclusters allocated, the
    // first one zero too.
    make_chain_with(
        d,
        &["-o", "extended_l2=on"],
        L2_OFFSET + 8,
        0x0000_0001_ffff_ffff,
    );
    for args in [
        &["convert", "-O", "raw", "@", "out.raw"][..],
        &["map", "--output=json", "@"],
        &["compare", "@", "base.qcow2"],
        &["rebase", "-b", "new.qcow2", "-F", "qcow2", "@"],
    ] {
        same_outcome(d, "invalid subcluster bitmap", args);
    }
}

/// `img commit` of a top whose L1 entry is unaligned: QEMU marks the image
/// corrupt and then fails an assertion (block.c's `!child->frozen`, exit
/// 134); img prints the same event line and fails the job cleanly.
#[test]
fn commit_of_a_corrupt_top_marks_it_and_fails_the_job() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, offset, value) = BAD_ENTRIES[0];
    make_chain(d, offset, value);
    let base_before = std::fs::read(d.join("base.qcow2")).unwrap();
    let out = run(img(&["commit", "top.qcow2"]).current_dir(d));
    let (err, _, code) = outcome(&out);
    assert_eq!(
        err,
        "qcow2: Marking image as corrupt: L2 table offset 0x48200 unaligned (L1 index: 0); \
         further corruption events will be suppressed\nBlock job failed: Input/output error"
    );
    assert_eq!(code, Some(1));
    assert!(corrupt_bit(&d.join("top.qcow2")));
    assert_eq!(std::fs::read(d.join("base.qcow2")).unwrap(), base_before);
}

/// `convert -n` of zeros into a top whose data entry is unaligned or past
/// the end of the file: the zeros unmap the cluster, which QEMU cannot
/// free; the command succeeds with QEMU's lines for it (`qcow2: Image is
/// corrupt: Cannot free unaligned cluster 0x50200; ...`, `qcow2_free_clusters
/// failed: Invalid argument`), and the tops are equal byte for byte. A
/// rebase and a `bench -w` through a table or cluster past the end write
/// there as QEMU does (the test above).
#[test]
fn convert_into_a_top_that_cannot_free_a_cluster_reports_it_as_qemu_img_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "new.qcow2", "64M"]).current_dir(d));
    for (case, value) in [
        ("L2 entry unaligned", 0x8000_0000_0005_0200u64),
        ("L2 entry at 1 MiB, past the end", 0x8000_0000_0010_0000),
    ] {
        make_chain(d, L2_OFFSET, value);
        let [ours, theirs] =
            same_outcome(d, case, &["convert", "-n", "-O", "qcow2", "new.qcow2", "@"]);
        assert!(
            std::fs::read(ours).unwrap() == std::fs::read(theirs).unwrap(),
            "{case}: the tops differ afterwards"
        );
    }
}
