//! qemu-img's command-line habits that scripts (and QEMU's iotests) rely
//! on, held against the real qemu-img: the program name in messages comes
//! from argv[0], a repeated option takes its last value, raw images are
//! sized in whole sectors, `-p` prints its lines off a terminal too, and a
//! closed output pipe is ignored as qemu-img 10 ignores SIGPIPE (the
//! command ends with its own status and no message).

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use integration_tests::{img_bin, ok, qemu_img, require_qemu, run};

/// img run through a symlink named `qemu-img` in `dir`.
fn img_as_qemu_img(dir: &Path, args: &[&str]) -> Command {
    let link = dir.join("qemu-img");
    if !link.exists() {
        std::os::unix::fs::symlink(img_bin(), &link).unwrap();
    }
    let mut c = Command::new(link);
    c.args(args).current_dir(dir);
    c
}

/// Runs the same command with both tools from `dir` and compares exit
/// codes, stdout and stderr byte for byte.
fn same_as_qemu_img(dir: &Path, args: &[&str]) {
    let ours = run(&mut img_as_qemu_img(dir, args));
    let theirs = run(qemu_img(args).current_dir(dir));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{args:?}: exit code"
    );
    assert_eq!(text(&ours.stdout), text(&theirs.stdout), "{args:?}: stdout");
    assert_eq!(text(&ours.stderr), text(&theirs.stderr), "{args:?}: stderr");
}

#[test]
fn messages_usage_and_sizes_match_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for args in [
        // The program name comes from argv[0].
        &["info", "missing.qcow2"][..],
        &["info", "--no-such-option", "x"],
        &["check", "-f", "raw", "missing.raw"],
        &["create", "-q", "-f", "bochs", "x.bochs", "1M"],
        // getopt: the last of a repeated option wins.
        &["create", "-f", "raw", "-f", "qcow2", "twice.qcow2", "1M"],
        // Raw images are whole sectors.
        &["create", "-f", "raw", "odd.raw", "1234"],
        &["info", "-f", "raw", "odd.raw"],
        // Backing file errors and their hint lines.
        &["create", "-f", "qcow2", "-b", "", "e.qcow2", "1M"],
        &["create", "-f", "qcow2", "-b", "gone.qcow2", "e.qcow2", "1M"],
        &["create", "-f", "qcow2", "-b", "odd.raw", "e.qcow2", "1M"],
        &[
            "create", "-f", "qcow2", "-u", "-b", "odd.raw", "e.qcow2", "1M",
        ],
        // The file protocol's options under both formats.
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extent_size_hint=0,nocow=off",
            "h.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "extent_size_hint=1M",
            "h.raw",
            "1M",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "extent_size_hint=8G",
            "h.raw",
            "1M",
        ],
        &["create", "-f", "raw", "-o", "help", "h.raw"],
        // Images named by json:, --image-opts and file: (a name with a colon).
        &["create", "-f", "qcow2", "file:a:b.qcow2", "1M"],
        &["info", "file:a:b.qcow2"],
        &[
            "info",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"a:b.qcow2"}}"#,
        ],
        &["info", "json:{ 'driver': 'raw', 'file.filename': 'h.raw' }"],
        &[
            "map",
            "--output=json",
            "--image-opts",
            "driver=raw,file.driver=file,file.filename=h.raw,cache.direct=on",
        ],
        // -B makes no sense when concatenating.
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "h.raw",
            "-F",
            "raw",
            "h.raw",
            "h.raw",
            "cat.qcow2",
        ],
        // Values the driver refuses come after the Formatting line.
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.42",
            "v.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=1234",
            "v.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=metadata",
            "v.raw",
            "1M",
        ],
        // Preallocation only grows.
        &[
            "resize",
            "-f",
            "raw",
            "--shrink",
            "--preallocation=falloc",
            "h.raw",
            "-512",
        ],
    ] {
        same_as_qemu_img(d, args);
        let _ = std::fs::remove_file(d.join("twice.qcow2"));
    }
}

#[test]
fn progress_lines_off_a_terminal_match_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "src.qcow2", "64M"]).current_dir(d));
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for at in ["0", "2M", "4M", "32M"] {
        io.args(["-c", &format!("write {at} 1M")]);
    }
    ok(io.arg(d.join("src.qcow2")));
    let ours = run(&mut img_as_qemu_img(
        d,
        &["convert", "-p", "-O", "qcow2", "src.qcow2", "ours.qcow2"],
    ));
    let theirs = run(
        qemu_img(&["convert", "-p", "-O", "qcow2", "src.qcow2", "theirs.qcow2"]).current_dir(d),
    );
    assert!(ours.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout)
    );
}

/// `img map X | head -1`: once the reader is gone, img ends as qemu-img
/// 10 does, which ignores SIGPIPE: status 0 and no message. Both tools run
/// on the same image and their endings are compared.
#[test]
fn closed_pipe_ends_as_qemu_img_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("striped.raw");
    // 2048 data extents: far more JSON than a pipe buffer holds.
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(256 << 20).unwrap();
    for i in 0..2048u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], i * (128 << 10)).unwrap();
    }
    let ending = |program: &std::path::Path| {
        let mut child = Command::new(program)
            .args(["map", "--output=json", "-f", "raw"])
            .arg(&raw)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut first).unwrap();
        assert!(first.starts_with("[{"), "{first}");
        drop(reader);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    require_qemu!();
    let ours = ending(&img_bin());
    let theirs = ending(std::path::Path::new("qemu-img"));
    assert_eq!(ours, theirs);
    assert_eq!(ours, (Some(0), None, String::new()));
}
