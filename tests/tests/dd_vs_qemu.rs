//! `img dd` against `qemu-img dd`: for each set of operands and output
//! format, both print the same lines, exit alike and make outputs of the
//! same size and contents (operand errors and skips past the end
//! included).

use std::path::Path;
use std::process::{Command, Stdio};

use integration_tests::{img, ok, qemu_img, require_qemu, run};

/// (exit code, stderr with the program name made neutral, output size).
fn dd(mut cmd: Command, dir: &Path, output: &str) -> (Option<i32>, String, Option<u64>) {
    let _ = std::fs::remove_file(dir.join(output));
    let out = run(cmd.current_dir(dir).stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            l.strip_prefix("qemu-img: ")
                .or_else(|| l.strip_prefix("img: "))
                .map_or_else(|| l.to_string(), |rest| format!("PROG: {rest}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let size = std::fs::metadata(dir.join(output)).ok().map(|m| m.len());
    (out.status.code(), text, size)
}

#[test]
fn img_dd_copies_and_refuses_as_qemu_img_dd() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "in.qcow2", "1M"]).current_dir(d));
    ok(Command::new("qemu-io")
        .args(["-c", "write -P 0xa 24 512k", "in.qcow2"])
        .current_dir(d));
    let cases: &[&[&str]] = &[
        &[],
        &["skip=1"],
        &["skip=30"],
        &["skip=30K"],
        &["skip=4096"],
        &["skip=0x10", "bs=4k"],
        &["bs=4k", "count=3", "skip=1"],
        &["bs=64k", "count=100"],
        &["-O", "qcow2", "skip=2"],
        &["-O", "vmdk", "bs=1M"],
        &["bs=0"],
        &["bs=3G"],
        &["count=-1"],
        &["nope"],
        &["sk=1"],
    ];
    for extra in cases {
        let mut ours = img(&["dd", "-f", "qcow2", "if=in.qcow2", "of=ours.out"]);
        ours.args(*extra);
        let mut theirs = qemu_img(&["dd", "-f", "qcow2", "if=in.qcow2", "of=theirs.out"]);
        theirs.args(*extra);
        let theirs_result = dd(theirs, d, "theirs.out");
        let ours_result = dd(ours, d, "ours.out");
        assert_eq!(ours_result, theirs_result, "dd {extra:?}");
        if theirs_result.2.is_some() {
            let fmt = extra
                .iter()
                .position(|a| *a == "-O")
                .map_or("raw", |i| extra[i + 1]);
            ok(
                qemu_img(&["compare", "-f", fmt, "-F", fmt, "ours.out", "theirs.out"])
                    .current_dir(d),
            );
            if fmt != "raw" {
                ok(qemu_img(&["check", "-f", fmt, "ours.out"]).current_dir(d));
            }
        }
    }
    // Both operands are needed.
    let theirs = dd(qemu_img(&["dd", "if=in.qcow2"]), d, "none");
    let ours = dd(img(&["dd", "if=in.qcow2"]), d, "none");
    assert_eq!(ours, theirs);
}
