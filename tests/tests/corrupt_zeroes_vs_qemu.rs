//! `Qcow2::write_zeroes` and `Qcow2::discard` that meet a bad L1 or L2
//! entry signal corruption as QEMU does, held against qemu-io's
//! `write -z` and `discard` on a copy of the same image: the same event
//! (`qcow2: Marking image as corrupt: ...`, the image open for writing),
//! the same failure or success, and the two files byte for byte equal
//! afterwards (the corrupt bit set, nothing else written; a data cluster
//! at an unaligned offset leaked, not freed; a discarded cluster a zero
//! cluster, as QEMU's guest discard leaves it). Entries past the end of
//! the file are written through, the file growing, with plain writes
//! held too, and `qemu-img check` of both files afterwards agrees. What a
//! successful operation reports (QEMU's non-fatal event line, a failed
//! refcount decrement) comes from `Qcow2::take_notices`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use integration_tests::{ok, qemu_img, qemu_io, require_qemu, run};

const L1_OFFSET: u64 = 0x30000;
const L2_OFFSET: u64 = 0x40000;

/// A 64 MiB image whose first cluster holds data, with `value` poked at
/// `offset` (an L1 or L2 entry).
fn make_image(path: &Path, offset: u64, value: u64) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M"));
    qemu_io("qcow2", path, &["write -P 0x11 0 64k"]);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_be_bytes(), offset).unwrap();
}

/// An operation both sides run: qemu-io's command and the library call.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `write -z [-u] OFFSET LEN` / `write_zeroes(OFFSET, LEN, unmap)`.
    Zero { offset: u64, len: u64, unmap: bool },
    /// `discard OFFSET LEN` / `discard(OFFSET, LEN)`.
    Discard { offset: u64, len: u64 },
    /// `write -P 0x33 OFFSET LEN` / `write_at` of those bytes.
    Write { offset: u64, len: u64 },
}

impl Op {
    fn qemu_io_command(self) -> String {
        match self {
            Op::Zero { offset, len, unmap } => {
                format!("write -z {}{offset} {len}", if unmap { "-u " } else { "" })
            }
            Op::Discard { offset, len } => format!("discard {offset} {len}"),
            Op::Write { offset, len } => format!("write -P 0x33 {offset} {len}"),
        }
    }
}

/// What qemu-io printed on stdout and stderr for `op` on `path`: the
/// qcow2 driver's lines (corruption events, failed refcount decrements),
/// and the error after `write failed: ` or `discard failed: ` (None when
/// it succeeded).
fn qemu_io_run(path: &Path, op: Op) -> (Vec<String>, Option<String>) {
    let out = run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &op.qemu_io_command()])
        .arg(path));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = text
        .lines()
        .filter(|l| l.starts_with("qcow2"))
        .map(str::to_string)
        .collect();
    let failure = text.lines().find_map(|l| {
        l.strip_prefix("write failed: ")
            .or_else(|| l.strip_prefix("discard failed: "))
            .map(str::to_string)
    });
    (events, failure)
}

/// The same for the library: the event line of a corruption error and
/// the lines of the image's notices, and the error's words (None when it
/// succeeded).
fn ours_run(path: &Path, op: Op) -> (Vec<String>, Option<String>) {
    let image = integration_tests::open_qcow2_rw(path);
    let result = match op {
        Op::Zero { offset, len, unmap } => image.write_zeroes(offset, len, unmap),
        Op::Discard { offset, len } => image.discard(offset, len),
        Op::Write { offset, len } => image.write_at(&vec![0x33; len as usize], offset),
    };
    let _ = image.flush();
    let mut events: Vec<String> = result
        .as_ref()
        .err()
        .and_then(|e| e.corruption_event_line())
        .into_iter()
        .collect();
    events.extend(image.take_notices().iter().map(|n| n.line()));
    drop(image);
    (events, result.err().map(|e| e.to_string()))
}

#[test]
fn zeroes_and_discards_that_meet_a_bad_entry_signal_it_as_qemu_io_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = |unmap| Op::Zero {
        offset: 0,
        len: 65536,
        unmap,
    };
    // (entry poked, value, operation, whether qemu-io's error words are
    // ours too).
    let cases = [
        // The L2 table's offset unaligned: every whole-cluster operation
        // meets it, marks the image corrupt and fails with EIO.
        (L1_OFFSET, 0x8000_0000_0004_8200u64, cluster(false), true),
        (L1_OFFSET, 0x8000_0000_0004_8200, cluster(true), true),
        (
            L1_OFFSET,
            0x8000_0000_0004_8200,
            Op::Discard {
                offset: 0,
                len: 65536,
            },
            true,
        ),
        // A partial cluster is written as zeros: the same event; the
        // fallback write then finds the node without a driver ("No
        // medium found").
        (
            L1_OFFSET,
            0x8000_0000_0004_8200,
            Op::Zero {
                offset: 0,
                len: 4096,
                unmap: false,
            },
            true,
        ),
        // A partial discard is advisory: nothing read, nothing signalled.
        (
            L1_OFFSET,
            0x8000_0000_0004_8200,
            Op::Discard {
                offset: 0,
                len: 4096,
            },
            true,
        ),
        // The data cluster's offset unaligned: zeroing the whole cluster
        // keeps the allocation and reads nothing (no event), zeroing part
        // of it copies the cluster and meets the offset.
        (L2_OFFSET, 0x8000_0000_0005_0200, cluster(false), true),
        (
            L2_OFFSET,
            0x8000_0000_0005_0200,
            Op::Zero {
                offset: 0,
                len: 4096,
                unmap: false,
            },
            true,
        ),
    ];
    for (entry, value, op, same_words) in cases {
        compare_one(d, entry, value, op, same_words, true);
    }
    // Unmapping a data cluster whose offset is unaligned: QEMU leaks the
    // cluster, says so in a non-fatal event line (`Cannot free unaligned
    // cluster 0x50200`) and the operation succeeds; ours leaks it too
    // rather than freeing the cluster beneath, with the same line.
    for op in [
        cluster(true),
        Op::Discard {
            offset: 0,
            len: 65536,
        },
    ] {
        compare_one(d, L2_OFFSET, 0x8000_0000_0005_0200, op, true, true);
    }
    // The same on a healthy entry (the value qemu-io wrote there): a
    // discarded cluster becomes a zero cluster, no backing file needed.
    for op in [
        cluster(true),
        Op::Discard {
            offset: 0,
            len: 65536,
        },
    ] {
        compare_one(d, L2_OFFSET, 0x8000_0000_0005_0000, op, true, true);
    }
}

/// Runs `op` with qemu-io and with the library on copies of one image
/// with `value` poked at `entry`, and holds the outcomes (the event line
/// only when `same_event`) and the files afterwards equal.
fn compare_one(d: &Path, entry: u64, value: u64, op: Op, same_words: bool, same_event: bool) {
    let theirs_path = d.join("theirs.qcow2");
    let ours_path = d.join("ours.qcow2");
    for p in [&theirs_path, &ours_path] {
        let _ = std::fs::remove_file(p);
    }
    make_image(&theirs_path, entry, value);
    std::fs::copy(&theirs_path, &ours_path).unwrap();
    let theirs = qemu_io_run(&theirs_path, op);
    let ours = ours_run(&ours_path, op);
    let case = format!("entry {value:#x} at {entry:#x}, {op:?}");
    if same_event {
        assert_eq!(ours.0, theirs.0, "{case}: the event line");
    }
    assert_eq!(
        ours.1.is_some(),
        theirs.1.is_some(),
        "{case}: {ours:?} vs {theirs:?}"
    );
    if same_words {
        assert_eq!(ours.1, theirs.1, "{case}: the error");
    }
    assert!(
        std::fs::read(&ours_path).unwrap() == std::fs::read(&theirs_path).unwrap(),
        "{case}: the files differ afterwards"
    );
}

/// An L2 table (L1 entry) or a data cluster (L2 entry) at 1 MiB, past the
/// end of a 384 KiB file: QEMU reads zeros there and writes there, the
/// file growing; freeing such a cluster, whose refcount is zero, fails in
/// QEMU's words (`qcow2_free_clusters failed: Invalid argument`) and the
/// operation goes on. Each case: the same lines, the same outcome, the
/// files byte for byte and `qemu-img check` of both alike.
#[test]
fn writes_through_entries_past_the_end_grow_the_file_as_qemu_io_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ops = [
        Op::Write {
            offset: 0,
            len: 4096,
        },
        Op::Write {
            offset: 65536,
            len: 4096,
        },
        Op::Zero {
            offset: 0,
            len: 65536,
            unmap: false,
        },
        Op::Zero {
            offset: 0,
            len: 65536,
            unmap: true,
        },
        Op::Zero {
            offset: 0,
            len: 4096,
            unmap: false,
        },
        Op::Discard {
            offset: 0,
            len: 65536,
        },
        Op::Discard {
            offset: 0,
            len: 4096,
        },
    ];
    let mut cases: Vec<(u64, u64, Op)> = Vec::new();
    for entry in [L1_OFFSET, L2_OFFSET] {
        cases.extend(ops.map(|op| (entry, 0x8000_0000_0010_0000u64, op)));
    }
    // A data cluster at 4 GiB, where no refcount block covers it: freeing
    // it makes QEMU allocate an empty refcount block for it and then fail
    // (`qcow2_free_clusters failed: Resource temporarily unavailable`).
    // (The other operations there would grow the files to 4 GiB.)
    for op in [ops[3], ops[5]] {
        cases.push((L2_OFFSET, 0x8000_0001_0000_0000, op));
    }
    for (entry, value, op) in cases {
        compare_one(d, entry, value, op, true, true);
        assert_eq!(
            check_of(&d.join("ours.qcow2")),
            check_of(&d.join("theirs.qcow2")),
            "entry {value:#x} at {entry:#x}, {op:?}: qemu-img check"
        );
    }
}

/// `qemu-img check`'s output and exit code for `path`.
fn check_of(path: &Path) -> (String, Option<i32>) {
    let out = run(Command::new("qemu-img").arg("check").arg(path));
    (
        String::from_utf8_lossy(&out.stdout).replace(&path.display().to_string(), "IMG")
            + &String::from_utf8_lossy(&out.stderr),
        out.status.code(),
    )
}
