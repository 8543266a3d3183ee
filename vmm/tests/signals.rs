//! SIGTERM and SIGINT stop a running guest, whose disks are locked the way
//! QEMU locks images while it runs: the vCPUs are stopped, every
//! disk is flushed and closed clean (qemu-img check finds nothing), and the
//! VMM exits 0. The guest is a hand-made ELF that prints a line and halts
//! with interrupts off, so it never ends by itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[allow(dead_code)]
mod support;

use support::elf::{elf, waiting_guest};

#[test]
fn termination_signals_close_disks_clean() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        assert!(std::env::var_os("REQUIRE_KVM").is_none(), "no /dev/kvm");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("guest.elf"), waiting_guest()).unwrap();
    let made = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "disk.qcow2",
            "16M",
        ])
        .current_dir(d)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("REQUIRE_KVM").is_none(), "no qemu-img");
        return;
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args([
                "--kernel",
                "guest.elf",
                "--memory",
                "64M",
                "--disk",
                "path=disk.qcow2",
            ])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "waiting\n");
        // While it runs the disk is locked as QEMU locks images: another
        // vmm and qemu-img both refuse it, and it is left alone.
        let before = std::fs::read(d.join("disk.qcow2")).unwrap();
        let second = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args([
                "--kernel",
                "guest.elf",
                "--memory",
                "64M",
                "--disk",
                "path=disk.qcow2",
            ])
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{err}");
        assert!(second.stdout.is_empty() && err.contains("in use"), "{err}");
        let info = Command::new("qemu-img")
            .args(["info", "disk.qcow2"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!info.status.success(), "qemu-img info opened a disk in use");
        assert!(String::from_utf8_lossy(&info.stderr).contains("lock"));
        assert!(std::fs::read(d.join("disk.qcow2")).unwrap() == before);
        let pid = child.id() as i32;
        // SAFETY: kill(2) on our own, still unreaped child: no memory is
        // involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains(&format!("stopped by signal {signal}")),
            "{stderr}"
        );
        let check = Command::new("qemu-img")
            .args(["check", "disk.qcow2"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "disk.qcow2"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&info.stdout).contains("\"dirty-flag\": true"));
    }
}

/// A guest running an instruction this machine's emulated ring 0 cannot
/// (popcnt), then resetting: on a host that runs it, a clean reset (exit
/// 0); here, an emulation failure reported with the instruction bytes and
/// exit 1. Either way the disk is closed clean.
#[test]
fn emulation_failures_are_reported_and_disks_closed() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let code = [
        0xf3, 0x48, 0x0f, 0xb8, 0xc3, // popcnt rax, rbx
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al (i8042 reset)
        0xf4, // hlt
    ];
    std::fs::write(d.join("popcnt.elf"), elf(&code)).unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "disk.qcow2", "16M"])
        .current_dir(d)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "--kernel",
            "popcnt.elf",
            "--memory",
            "64M",
            "--disk",
            "path=disk.qcow2",
        ])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            assert!(stderr.contains("emulation failure"), "{stderr}");
            assert!(
                stderr.contains("instruction bytes f3 48 0f b8 c3"),
                "{stderr}"
            );
            assert!(stderr.contains("rip 0x200078"), "{stderr}");
        }
        other => panic!("exit {other:?}: {stderr}"),
    }
    let check = Command::new("qemu-img")
        .args(["check", "disk.qcow2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Job control (Ctrl-Z then `fg`, or a debugger attaching) stops and
/// continues every thread; a thread asleep in `poll`, `nanosleep` or a timed
/// futex then resumes through `restart_syscall`, which the seccomp filters
/// must allow, or the VMM dies of SIGSYS. After SIGSTOP and SIGCONT the VMM
/// still serves its API and ends cleanly on SIGTERM.
#[test]
fn stop_and_continue_leave_the_vmm_running() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("guest.elf"), waiting_guest()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "--kernel",
            "guest.elf",
            "--memory",
            "64M",
            "--api-socket",
            "path=api.sock",
        ])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "waiting\n");
    let pid = child.id() as i32;
    for _ in 0..3 {
        // SAFETY: kill(2) on our own, still unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VMM died after SIGSTOP and SIGCONT: {:?}",
        child
            .wait_with_output()
            .map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
    );
    let ping = vmapi::Client::new(d.join("api.sock"))
        .with_io_timeout(std::time::Duration::from_secs(10))
        .ping();
    assert!(ping.is_ok(), "{ping:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
