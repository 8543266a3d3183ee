//! `img bench` prints what `qemu-img bench` prints for the same arguments
//! (apart from the elapsed time), fails with qemu-img's messages and exit
//! code on bad options and failed requests, and writes what qemu-img bench
//! writes.

use std::path::Path;

use integration_tests::{assert_qemu_clean, img, make_raw, ok, qemu_img, read, require_qemu, run};

/// stdout with the "Run completed in X seconds." figure blanked out.
fn without_time(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            if l.starts_with("Run completed in ") {
                "Run completed in N seconds."
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs both tools with `args` from `dir` and compares stdout (time
/// blanked), stderr (program name aside) and exit codes.
fn same(dir: &Path, args: &[&str]) {
    let ours = run(img(args).current_dir(dir));
    let theirs = run(qemu_img(args).current_dir(dir));
    let what = args.join(" ");
    assert_eq!(
        without_time(&ours.stdout),
        without_time(&theirs.stdout),
        "stdout of `{what}`"
    );
    let ours_err = String::from_utf8_lossy(&ours.stderr).replace("img: ", "qemu-img: ");
    let theirs_err = String::from_utf8_lossy(&theirs.stderr);
    assert_eq!(ours_err, theirs_err, "stderr of `{what}`");
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "exit code of `{what}`"
    );
}

#[test]
fn output_and_errors_match_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    make_raw(&d.join("r.raw"), 1 << 20, 3);
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "q.qcow2", "4M"]).current_dir(d));
    let cases: &[&[&str]] = &[
        &["bench", "-c", "100", "-f", "qcow2", "q.qcow2"],
        &[
            "bench", "-c", "100", "-d", "8", "-s", "1k", "-f", "raw", "r.raw",
        ],
        &[
            "bench", "-c", "0x20", "-d", "010", "-o", "64k", "-S", "8k", "q.qcow2",
        ],
        &[
            "bench", "-c", "10", "-t", "none", "-i", "io_uring", "q.qcow2",
        ],
        &["bench", "-c", "10", "-t", "directsync", "-n", "q.qcow2"],
        &[
            "bench",
            "-c",
            "300",
            "-w",
            "--pattern",
            "7",
            "-f",
            "qcow2",
            "q.qcow2",
        ],
        &[
            "bench",
            "-c",
            "300",
            "-d",
            "4",
            "-w",
            "--flush-interval",
            "16",
            "q.qcow2",
        ],
        &[
            "bench",
            "-c",
            "300",
            "-d",
            "4",
            "-w",
            "--flush-interval",
            "4",
            "--no-drain",
            "-t",
            "writethrough",
            "q.qcow2",
        ],
        &[
            "bench", "-c", "30", "-w", "-t", "unsafe", "-f", "raw", "r.raw",
        ],
        // Bad values, one option at a time.
        &["bench", "-c", "abc", "q.qcow2"],
        &["bench", "-c", "0", "q.qcow2"],
        &["bench", "-c", "2147483648", "q.qcow2"],
        &["bench", "-d", "1k", "q.qcow2"],
        &["bench", "-d", "-1", "q.qcow2"],
        &["bench", "-s", "abc", "q.qcow2"],
        &["bench", "-s", "0", "q.qcow2"],
        &["bench", "-s", "2G", "q.qcow2"],
        &["bench", "-o", "abc", "q.qcow2"],
        &["bench", "-o", "-5", "q.qcow2"],
        &["bench", "-S", "3G", "q.qcow2"],
        &["bench", "-t", "foo", "q.qcow2"],
        &["bench", "-i", "foo", "q.qcow2"],
        &["bench", "-i", "native", "-c", "1", "q.qcow2"],
        &["bench", "-w", "--pattern", "256", "q.qcow2"],
        &["bench", "-w", "--pattern", "x", "q.qcow2"],
        &["bench", "-w", "--flush-interval", "3G", "q.qcow2"],
        &["bench", "--flush-interval", "64", "q.qcow2"],
        &[
            "bench",
            "-w",
            "--flush-interval",
            "5",
            "-d",
            "10",
            "q.qcow2",
        ],
        &["bench", "-f", "foo", "q.qcow2"],
        &["bench", "-c", "1", "missing.qcow2"],
        // Requests past the end fail as in qemu-img 10.0.
        &["bench", "-c", "2", "-d", "1", "-S", "4192256", "q.qcow2"],
        &["bench", "-c", "1", "-o", "1G", "q.qcow2"],
    ];
    for args in cases {
        same(d, args);
    }
    assert_qemu_clean(&d.join("q.qcow2"));
}

#[test]
fn writes_what_qemu_img_bench_writes() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    for (name, fmt) in [("a.qcow2", "qcow2"), ("b.qcow2", "qcow2")] {
        ok(qemu_img(&[
            "create",
            "-q",
            "-f",
            fmt,
            "-o",
            "cluster_size=4k",
            name,
            "1M",
        ])
        .current_dir(d));
    }
    // 700 writes of 5 KiB every 8 KiB from 2 KiB wrap around the 1 MiB
    // disk five times (unaligned, partial clusters).
    let args = |name: &'static str| -> Vec<&'static str> {
        vec![
            "bench",
            "-w",
            "-c",
            "700",
            "-d",
            "16",
            "-s",
            "5k",
            "-S",
            "8k",
            "-o",
            "2k",
            "--pattern",
            "0xa5",
            "-f",
            "qcow2",
            name,
        ]
    };
    ok(img(&args("a.qcow2")).current_dir(d));
    ok(qemu_img(&args("b.qcow2")).current_dir(d));
    ok(qemu_img(&["compare", "a.qcow2", "b.qcow2"]).current_dir(d));
    assert_qemu_clean(&d.join("a.qcow2"));
    // The same on a raw file through cache=none.
    make_raw(&d.join("a.raw"), 1 << 20, 5);
    std::fs::copy(d.join("a.raw"), d.join("b.raw")).unwrap();
    let raw_args = |name: &'static str| -> Vec<&'static str> {
        vec![
            "bench",
            "-w",
            "-c",
            "300",
            "-d",
            "32",
            "-s",
            "8k",
            "-S",
            "16k",
            "-t",
            "none",
            "--pattern",
            "3",
            "-f",
            "raw",
            name,
        ]
    };
    ok(img(&raw_args("a.raw")).current_dir(d));
    ok(qemu_img(&raw_args("b.raw")).current_dir(d));
    assert_eq!(read(&d.join("a.raw")), read(&d.join("b.raw")));
}
