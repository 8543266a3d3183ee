//! The VMM against the tiny test guest (built from vmm/guest at test time):
//! the guest finds its command line and e820 map through the Linux boot
//! protocol, drives a virtio-blk disk with the `virtio-drivers` crate over
//! virtio-mmio with interrupts, reads a pattern the test wrote into a
//! qcow2's backing file, writes across cluster boundaries, flushes and
//! resets; the image then checks clean with qemu-img and holds the writes.
//! Misbehaving guests (descriptors outside guest memory, reads past the
//! end, unknown ports and MMIO) are logged and survived. Bad input stops
//! the VMM before any vCPU runs, with one line and exit code 1, and leaves
//! every image as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::guest::build_guest;

fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

fn have_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Skips (returns) without /dev/kvm or qemu-img, unless REQUIRE_KVM is set.
macro_rules! require_kvm {
    () => {
        if !have_kvm() || Command::new("qemu-img").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("REQUIRE_KVM").is_none(),
                "REQUIRE_KVM is set but /dev/kvm or qemu-img is missing"
            );
            eprintln!("no /dev/kvm or qemu-img: skipping");
            return;
        }
    };
}

/// Runs the VMM with `args`, stdin closed, killed after 60 s.
fn vmm(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(vmm_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    assert_ne!(
        out.status.code(),
        Some(137),
        "vmm hung: {}",
        text(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn qemu_img(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A qcow2 over a raw backing file whose first 64 KiB hold the pattern the
/// guest checks (byte i = (i * 7 + 13) & 0xff).
fn disk_with_pattern(dir: &Path) -> PathBuf {
    let mut base = vec![0u8; 8 << 20];
    for (i, b) in base[..65536].iter_mut().enumerate() {
        *b = ((i * 7 + 13) & 0xff) as u8;
    }
    std::fs::write(dir.join("base.raw"), &base).unwrap();
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "disk.qcow2",
        ],
    );
    dir.join("disk.qcow2")
}

fn guest_path() -> String {
    build_guest().display().to_string()
}

#[test]
fn hello_guest_sees_our_command_line_and_e820_map() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let guest = guest_path();
    let cmdline = "console=ttyS0 guest.mode=hello some.word=1";
    let out = vmm(
        dir.path(),
        &["--kernel", &guest, "--memory", "128M", "--cmdline", cmdline],
    );
    // The guest ends its lines with CR LF, as a serial console does.
    let stdout = text(&out.stdout).replace("\r\n", "\n");
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("guest: hello"), "{stdout}");
    assert!(
        stdout.contains(&format!("guest: cmdline={cmdline}\n")),
        "{stdout}"
    );
    let map = vmm::boot::e820_map(128 << 20);
    assert!(
        stdout.contains(&format!("guest: e820 entries={}", map.len())),
        "{stdout}"
    );
    for (addr, size) in map {
        assert!(
            stdout.contains(&format!("guest: e820 addr={addr:#x} size={size:#x} type=1")),
            "{stdout}"
        );
    }
}

#[test]
fn guest_reads_and_writes_a_qcow2_through_virtio_blk() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = disk_with_pattern(d);
    let guest = guest_path();
    let spec = format!("path={},format=qcow2", disk.display());
    let out = vmm(
        d,
        &[
            "--kernel",
            &guest,
            "--memory",
            "128M",
            "--cmdline",
            "guest.mode=disk",
            "--disk",
            &spec,
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("guest: disk ok capacity=16384 read=65536 written=204800"),
        "{stdout}{}",
        text(&out.stderr)
    );
    // Clean, not dirty, and the guest's writes are in the image.
    let check = qemu_img(d, &["check", "--output=json", "disk.qcow2"]);
    assert!(text(&check.stdout).contains("\"check-errors\": 0"));
    let info = text(&qemu_img(d, &["info", "--output=json", "disk.qcow2"]).stdout);
    assert!(!info.contains("\"dirty-flag\": true"), "{info}");
    let image = qcow::fs::open_image(&disk, None, false).unwrap();
    let mut written = vec![0u8; 204_800];
    qcow::device::BlockRead::read_at(&image, &mut written, 127 * 512).unwrap();
    assert!(written
        .iter()
        .enumerate()
        .all(|(j, &b)| b == ((j * 5 + 3) & 0xff) as u8));
    // The pattern up to where the guest's write begins.
    let mut pattern = vec![0u8; 127 * 512];
    qcow::device::BlockRead::read_at(&image, &mut pattern, 0).unwrap();
    assert!(pattern
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((i * 7 + 13) & 0xff) as u8));
}

#[test]
fn misbehaving_guests_are_logged_and_survived() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = disk_with_pattern(d);
    let guest = guest_path();
    let spec = format!("path={},format=qcow2", disk.display());
    for (mode, expect) in [
        ("bad-desc", "guest: after bad-desc read ok"),
        ("past-end", "guest: past-end status=1"),
        ("bad-io", "guest: bad-io survived"),
    ] {
        let cmdline = format!("guest.mode={mode}");
        let out = vmm(
            d,
            &[
                "--kernel",
                &guest,
                "--memory",
                "128M",
                "--cmdline",
                &cmdline,
                "--disk",
                &spec,
            ],
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{mode}: {stdout}{stderr}");
        assert!(stdout.contains(expect), "{mode}: {stdout}{stderr}");
        assert!(!stdout.contains("FAIL"), "{mode}: {stdout}");
        if mode != "bad-io" {
            assert!(
                stderr.contains("refused 1 malformed request"),
                "{mode}: {stderr}"
            );
        }
        if mode == "bad-io" {
            assert!(stderr.contains("unknown port address 0x510"), "{stderr}");
            assert!(stderr.contains("unknown MMIO address"), "{stderr}");
        }
        qemu_img(d, &["check", "disk.qcow2"]);
    }
}

#[test]
fn bad_input_stops_before_the_guest_and_touches_nothing() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = disk_with_pattern(d);
    let guest = guest_path();
    std::fs::write(d.join("garbage"), vec![0x5a; 100_000]).unwrap();
    std::fs::write(d.join("big.initrd"), vec![0u8; 40 << 20]).unwrap();
    // A corrupt image: its L1 table offset points past the end.
    std::fs::copy(&disk, d.join("corrupt.qcow2")).unwrap();
    let mut bytes = std::fs::read(d.join("corrupt.qcow2")).unwrap();
    bytes[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(d.join("corrupt.qcow2"), &bytes).unwrap();
    let spec = format!("path={},format=qcow2", disk.display());
    let before = std::fs::read(&disk).unwrap();
    let corrupt_before = std::fs::read(d.join("corrupt.qcow2")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", "missing", "--disk", &spec],
            "cannot load kernel",
        ),
        (
            vec!["--kernel", "garbage", "--disk", &spec],
            "cannot load kernel",
        ),
        (
            vec!["--kernel", &guest, "--memory", "0", "--disk", &spec],
            "--memory",
        ),
        (
            vec!["--kernel", &guest, "--memory", "64T", "--disk", &spec],
            "more than the host",
        ),
        (
            vec![
                "--kernel",
                &guest,
                "--memory",
                "32M",
                "--initrd",
                "big.initrd",
                "--disk",
                &spec,
            ],
            "cannot load initrd",
        ),
        (
            vec!["--kernel", &guest, "--disk", "path=missing.qcow2"],
            "missing.qcow2",
        ),
        (
            vec![
                "--kernel",
                &guest,
                "--disk",
                "path=corrupt.qcow2,format=qcow2",
            ],
            "corrupt.qcow2",
        ),
        (
            vec!["--kernel", &guest, "--disk", "format=qcow2"],
            "path=IMG is required",
        ),
        (vec!["--kernel", &guest, "--cpus", "0"], "--cpus"),
    ];
    for (args, needle) in cases {
        let out = vmm(d, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: the guest ran");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("vmm: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the good disk changed"
    );
    assert!(
        std::fs::read(d.join("corrupt.qcow2")).unwrap() == corrupt_before,
        "the corrupt disk changed"
    );
}
