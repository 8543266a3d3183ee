//! Every file a running guest's disk uses is locked the way QEMU 10 locks
//! it, and QEMU's tools and a second vmm honour those locks both ways:
//! - the backing file of a running disk may be read (qemu-img info) and
//!   shared as the base of another running VM, but not written (qemu-io)
//!   nor used as another VM's writable disk;
//! - a disk's external data file may not be resized;
//! - a vmm whose backing file another process writes refuses to start with
//!   one line naming that file, and leaves every image as it was;
//! - once the guest is stopped every lock is gone.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

#[allow(dead_code)]
mod support;

use support::elf::waiting_guest;

fn have_kvm_and_qemu() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let qemu = Command::new("qemu-img").arg("--version").output().is_ok();
    if !(kvm && qemu) {
        assert!(
            std::env::var_os("REQUIRE_KVM").is_none(),
            "no /dev/kvm or qemu-img"
        );
    }
    kvm && qemu
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts the waiting guest with `disks` and returns once it has printed
/// its line (so every disk is open and locked).
fn start_vmm(dir: &Path, disks: &[&str]) -> Child {
    let mut args = vec!["--kernel", "guest.elf", "--memory", "64M"];
    for disk in disks {
        args.extend(["--disk", disk]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line != "waiting\n" {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("guest did not start: {line:?} {}", text(&out));
    }
    child
}

fn stop_vmm(child: Child) {
    // SAFETY: kill(2) on our own, still unreaped child: no memory is
    // involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn backing_and_data_files_are_locked_as_qemu_locks_them() {
    if !have_kvm_and_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("guest.elf"), waiting_guest()).unwrap();
    let q = |args: &[&str]| {
        let out = run(d, "qemu-img", args);
        assert!(out.status.success(), "qemu-img {args:?}: {}", text(&out));
    };
    q(&["create", "-q", "-f", "qcow2", "base.qcow2", "16M"]);
    for top in ["top.qcow2", "other.qcow2"] {
        q(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            top,
        ]);
    }
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=data.raw",
        "ext.qcow2",
        "16M",
    ]);

    let vm = start_vmm(d, &["path=top.qcow2", "path=ext.qcow2"]);
    let base_before = std::fs::read(d.join("base.qcow2")).unwrap();

    // Reading the backing file is fine; writing it is not.
    let info = run(d, "qemu-img", &["info", "base.qcow2"]);
    assert!(info.status.success(), "{}", text(&info));
    let write = run(d, "qemu-io", &["-c", "write 0 512", "base.qcow2"]);
    assert!(
        !write.status.success(),
        "qemu-io wrote a backing file in use"
    );
    assert!(text(&write).contains("lock"), "{}", text(&write));
    // The data file cannot be resized under the guest.
    let resize = run(d, "qemu-img", &["resize", "-f", "raw", "data.raw", "32M"]);
    assert!(
        !resize.status.success(),
        "qemu-img resized a data file in use"
    );
    assert!(text(&resize).contains("lock"), "{}", text(&resize));

    // Another VM may share the base read-only...
    let second = start_vmm(d, &["path=other.qcow2"]);
    stop_vmm(second);
    // ...but not write it.
    let writer = run(
        d,
        env!("CARGO_BIN_EXE_vmm"),
        &[
            "--kernel",
            "guest.elf",
            "--memory",
            "64M",
            "--disk",
            "path=base.qcow2",
        ],
    );
    assert_eq!(writer.status.code(), Some(1), "{}", text(&writer));
    assert!(text(&writer).contains("in use"), "{}", text(&writer));
    assert_eq!(text(&writer).lines().count(), 1, "{}", text(&writer));
    stop_vmm(vm);
    assert!(std::fs::read(d.join("base.qcow2")).unwrap() == base_before);

    // The other way round: while a vmm writes the base, a disk over it is
    // refused with one line naming the base, before any guest runs.
    let base_writer = start_vmm(d, &["path=base.qcow2"]);
    let top_before = std::fs::read(d.join("other.qcow2")).unwrap();
    let refused = run(
        d,
        env!("CARGO_BIN_EXE_vmm"),
        &[
            "--kernel",
            "guest.elf",
            "--memory",
            "64M",
            "--disk",
            "path=other.qcow2",
        ],
    );
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(refused.stdout.is_empty(), "the guest ran: {message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("base.qcow2"), "{message}");
    assert!(message.contains("write"), "{message}");
    assert!(std::fs::read(d.join("other.qcow2")).unwrap() == top_before);
    stop_vmm(base_writer);

    // Every lock is gone with the guests.
    let write = run(d, "qemu-io", &["-c", "write 0 512", "base.qcow2"]);
    assert!(write.status.success(), "{}", text(&write));
    let resize = run(d, "qemu-img", &["resize", "-f", "raw", "data.raw", "32M"]);
    assert!(resize.status.success(), "{}", text(&resize));
    for image in ["base.qcow2", "top.qcow2", "ext.qcow2"] {
        q(&["check", "-q", image]);
    }
}
