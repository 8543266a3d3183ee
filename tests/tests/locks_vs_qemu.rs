//! `img` takes QEMU's image locks as qemu-img takes them, both ways:
//! - while qemu-io holds an image open for writing, every `img` command
//!   that qemu-img refuses is refused with qemu-img's very lines and exit
//!   code, the image's bytes stay as they were, and `-U` reads anyway;
//! - while `img` holds an image (a long `img bench -w`), qemu-img and
//!   qemu-io refuse it, and its backing file may be read but not written;
//!   once img is gone, the image is free again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{img, ok, qemu_img, require_qemu, run};

/// Runs `program ARGS` in `dir` and returns (exit code, stdout + stderr)
/// with the program's name prefix made neutral (`img: ` and `qemu-img: `
/// both become `PROG: `) and bench's timing left out.
fn outcome(mut cmd: Command, dir: &Path) -> (Option<i32>, String) {
    let out = run(cmd.current_dir(dir).stdin(Stdio::null()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text
        .lines()
        .map(|l| {
            // bench's timing differs run to run.
            if l.starts_with("Run completed in ") {
                return "Run completed in T seconds.".to_string();
            }
            l.strip_prefix("qemu-img: ")
                .or_else(|| l.strip_prefix("img: "))
                .map_or_else(|| l.to_string(), |rest| format!("PROG: {rest}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.code(), text)
}

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

/// A child process killed when the test ends, pass or fail.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let _holder = Holder(
        Command::new("qemu-io")
            .args(["-c", "sleep 600000", "t.qcow2"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_locked(d, "t.qcow2");
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
        assert_eq!(ours, theirs, "img {args:?} differs from qemu-img");
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
    let _holder = Holder(
        Command::new("qemu-io")
            .args(["-r", "-f", "raw", "-c", "sleep 600000", "r.raw"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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

/// Waits until qemu-img `args` fails in `dir`: a holder has taken its
/// locks on a file the command opens.
fn wait_until_refused(dir: &Path, args: &[&str]) {
    let start = Instant::now();
    while run(qemu_img(args).current_dir(dir)).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "qemu-img {args:?} was never refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `qemu-io -f raw -c 'sleep' FILE` in `dir` until dropped: it holds
/// FILE open for writing and shares everything, as QEMU's raw node does.
fn hold_raw(dir: &Path, file: &str) -> Holder {
    Holder(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "sleep 600000", file])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// An outcome without its `disk size:` lines: img's disk size of a qcow2
/// image with a data file counts the data file's blocks, qemu-img's does
/// not (an info difference of its own, not a lock's).
fn without_disk_size((code, text): (Option<i32>, String)) -> (Option<i32>, String) {
    let text = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("disk size:"))
        .collect::<Vec<_>>()
        .join("\n");
    (code, text)
}

#[test]
fn data_files_and_vmdk_extents_are_locked_as_qemu_img_locks_them() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=d.raw",
        "a.qcow2",
        "1M",
    ])
    .current_dir(d));
    for (name, sub) in [
        ("s.vmdk", "twoGbMaxExtentSparse"),
        ("f.vmdk", "twoGbMaxExtentFlat"),
    ] {
        let sub = format!("subformat={sub}");
        ok(qemu_img(&["create", "-q", "-f", "vmdk", "-o", &sub, name, "1M"]).current_dir(d));
    }
    // The data file and the flat extent hold guest data (QEMU's data role:
    // a writer sharing writes conflicts only with a convert source, which
    // shares no writes); the sparse extent holds metadata, which no one
    // may write while any image over it is open.
    let _holders = [
        hold_raw(d, "d.raw"),
        hold_raw(d, "s-s001.vmdk"),
        hold_raw(d, "f-f001.vmdk"),
    ];
    wait_until_refused(d, &["info", "s.vmdk"]);
    for image in ["a.qcow2", "f.vmdk"] {
        wait_until_refused(d, &["convert", "-O", "raw", image, "probe.raw"]);
    }
    let held = [
        "a.qcow2",
        "d.raw",
        "s.vmdk",
        "s-s001.vmdk",
        "f.vmdk",
        "f-f001.vmdk",
    ];
    let before: Vec<Vec<u8>> = held
        .iter()
        .map(|f| std::fs::read(d.join(f)).unwrap())
        .collect();
    for image in ["a.qcow2", "s.vmdk", "f.vmdk"] {
        let commands: [&[&str]; 9] = [
            &["info", image],
            &["info", "-U", image],
            &["check", image],
            &["check", "-U", image],
            &["map", image],
            &["map", "-U", image],
            &["convert", "-O", "raw", image, "out.raw"],
            &["convert", "-U", "-O", "raw", image, "out.raw"],
            &["compare", "-U", image, image],
        ];
        for args in commands {
            let theirs = without_disk_size(outcome(qemu_img(args), d));
            let ours = without_disk_size(outcome(img(args), d));
            if args[0] == "map" && theirs.0 == Some(0) {
                // img names a flat extent's data by the descriptor in a
                // map, qemu-img by the extent (a map difference of its
                // own): only the lock's verdict is compared here.
                assert_eq!(ours.0, Some(0), "img {args:?} failed: {}", ours.1);
                continue;
            }
            assert_eq!(ours, theirs, "img {args:?} differs from qemu-img");
        }
    }
    // A write command on the vmdk whose sparse extent is held.
    let args = ["resize", "s.vmdk", "2M"];
    assert_eq!(outcome(img(&args), d), outcome(qemu_img(&args), d));
    let after: Vec<Vec<u8>> = held
        .iter()
        .map(|f| std::fs::read(d.join(f)).unwrap())
        .collect();
    assert!(after == before, "a refused command changed an image");
    // The refusals were real ones: the lines qemu-img prints.
    let (code, text) = outcome(img(&["convert", "-O", "raw", "a.qcow2", "out.raw"]), d);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "PROG: Could not open 'a.qcow2': Failed to get shared \"write\" lock\n\
         Is another process using the image [d.raw]?"
    );
    let (code, text) = outcome(img(&["info", "s.vmdk"]), d);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "PROG: Could not open 's.vmdk': Failed to get shared \"write\" lock\n\
         Is another process using the image [s-s001.vmdk]?"
    );
}
