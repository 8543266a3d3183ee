//! `img` takes QEMU's image locks as qemu-img takes them, both ways:
//! - while qemu-io holds an image open for writing, every `img` command
//!   that qemu-img refuses is refused with qemu-img's very lines and exit
//!   code, the image's bytes stay as they were, and `-U` reads anyway;
//! - while `img` holds an image (a long `img bench -w`), qemu-img and
//!   qemu-io refuse it, and its backing file may be read but not written;
//!   once img is gone, the image is free again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::holders::{hold_for_writing, outcome, Holder};
use integration_tests::{img, ok, qemu_img, require_qemu, run};

/// Waits until `qemu-img info FILE` fails: the holder has taken its locks.
fn wait_until_locked(dir: &Path, file: &str) {
    let start = Instant::now();
    loop {
        let out = run(qemu_img(&["info", file]).current_dir(dir));
        if !out.status.success() {
            return;
        }
        assert!(
            // Generous: a loaded machine starts qemu-io slowly.
            start.elapsed() < Duration::from_secs(180),
            "{file} never got locked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn make_chain(dir: &Path) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "16M"]).current_dir(dir));
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "t.qcow2",
    ])
    .current_dir(dir));
    ok(qemu_img(&["create", "-q", "-f", "raw", "r.raw", "1M"]).current_dir(dir));
}

#[test]
fn img_is_refused_an_image_qemu_io_writes_as_qemu_img_is() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    make_chain(d);
    let mut holder = hold_for_writing(d, "t.qcow2");
    let before = std::fs::read(d.join("t.qcow2")).unwrap();
    let commands: &[&[&str]] = &[
        &["info", "t.qcow2"],
        &["check", "t.qcow2"],
        &["check", "-r", "all", "t.qcow2"],
        &["map", "t.qcow2"],
        &["compare", "t.qcow2", "t.qcow2"],
        &["snapshot", "-l", "t.qcow2"],
        &["snapshot", "-c", "s1", "t.qcow2"],
        &["measure", "-O", "qcow2", "t.qcow2"],
        &["convert", "-O", "qcow2", "t.qcow2", "out.qcow2"],
        &["convert", "-O", "raw", "r.raw", "t.qcow2"],
        &["bench", "-c", "1", "t.qcow2"],
        &["bench", "-w", "-c", "1", "t.qcow2"],
        &["bench", "-U", "-w", "-c", "1", "t.qcow2"],
        &["resize", "t.qcow2", "32M"],
        &["commit", "t.qcow2"],
        &["amend", "-o", "compat=1.1", "t.qcow2"],
        &["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2"],
        &[
            "rebase",
            "-U",
            "-u",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "t.qcow2",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "t.qcow2",
        ],
        // The backing file of an image opened for writing: readable, not
        // writable.
        &["info", "base.qcow2"],
        &["resize", "base.qcow2", "32M"],
        // -U reads anyway.
        &["info", "-U", "t.qcow2"],
        &["map", "-U", "t.qcow2"],
        &["snapshot", "-l", "-U", "t.qcow2"],
        &["compare", "-U", "t.qcow2", "t.qcow2"],
    ];
    for args in commands {
        let theirs = outcome(qemu_img(args), d);
        let ours = outcome(img(args), d);
        assert_eq!(
            ours,
            theirs,
            "img {args:?} differs from qemu-img ({})",
            holder.state(&d.join("t.qcow2"))
        );
        assert_eq!(
            std::fs::read(d.join("t.qcow2")).unwrap(),
            before,
            "img {args:?} changed the image"
        );
    }
    // The refusals were real ones: the lines qemu-img prints.
    let (code, text) = outcome(img(&["resize", "t.qcow2", "32M"]), d);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "PROG: Could not open 't.qcow2': Failed to get \"write\" lock\n\
         Is another process using the image [t.qcow2]?"
    );
}

#[test]
fn qemu_refuses_an_image_img_holds_until_img_ends() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    make_chain(d);
    let mut bench = img(&["bench", "-w", "-d", "1", "-c", "2000000000", "t.qcow2"]);
    let holder = Holder(
        bench
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_locked(d, "t.qcow2");
    let (code, text) = outcome(qemu_img(&["info", "t.qcow2"]), d);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "PROG: Could not open 't.qcow2': Failed to get shared \"write\" lock\n\
         Is another process using the image [t.qcow2]?"
    );
    let io = run(Command::new("qemu-io")
        .args(["-c", "write 0 512", "t.qcow2"])
        .current_dir(d));
    let io_text = String::from_utf8_lossy(&io.stderr);
    assert!(
        io_text.contains("Failed to get \"write\" lock"),
        "qemu-io wrote an image img holds: {io_text}"
    );
    // The backing file: qemu-img reads it, may not resize it.
    ok(qemu_img(&["info", "base.qcow2"]).current_dir(d));
    let (code, text) = outcome(qemu_img(&["resize", "base.qcow2", "32M"]), d);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("Failed to get \"write\" lock"), "{text}");
    // Another img is refused as well, and -U still reads.
    let (code, text) = outcome(img(&["map", "t.qcow2"]), d);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("Failed to get shared \"write\" lock"),
        "{text}"
    );
    ok(img(&["map", "-U", "t.qcow2"]).current_dir(d));
    drop(holder);
    ok(qemu_img(&["resize", "base.qcow2", "32M"]).current_dir(d));
    ok(Command::new("qemu-io")
        .args(["-c", "write 0 512", "t.qcow2"])
        .current_dir(d));
}

#[test]
fn a_raw_image_read_by_qemu_io_stays_writable_as_qemu_img_finds_it() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    make_chain(d);
    let _holder = Holder::qemu_io(d, &["-r", "-f", "raw"], "r.raw", Stdio::null());
    // A raw reader shares writes, so no refusal tells when it holds its
    // locks: give it a moment to start.
    std::thread::sleep(Duration::from_secs(1));
    for args in [
        &["info", "-f", "raw", "r.raw"][..],
        &["bench", "-w", "-c", "1", "-f", "raw", "r.raw"],
        &["convert", "-O", "qcow2", "r.raw", "o.qcow2"],
    ] {
        assert_eq!(
            outcome(img(args), d),
            outcome(qemu_img(args), d),
            "img {args:?} differs from qemu-img"
        );
    }
}
