//! Debian's stock cloud kernel under the VMM, on demand (slow here, and it
//! downloads packages): `cargo test -p vmm --test stock_kernel -- --ignored`.
//! Runs scripts/stock-kernel.sh, which asserts the kernel's banner, our
//! exact command line, our e820 map and our ACPI tables in its log (and,
//! with STOCK_KERNEL_FULL=1 on a real KVM host, that the initramfs loads
//! the virtio modules, mounts the disk's ext4 file system and writes a
//! file that then reads back from the image). A second test runs the same
//! guest under QEMU's microvm with TCG (`--qemu`), the reference for the
//! guest side, which this machine can run to the end.

use std::process::Command;

#[test]
#[ignore = "downloads a kernel and boots it for up to 10 minutes"]
fn stock_kernel_boots_far_enough() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/scripts/stock-kernel.sh")).args([
        "--vmm",
        env!("CARGO_BIN_EXE_vmm"),
        "--timeout",
        "600",
    ]);
    if std::env::var_os("STOCK_KERNEL_FULL").is_some() {
        cmd.arg("--full");
    }
    assert_script_passes(&mut cmd);
}

#[test]
#[ignore = "downloads a kernel and needs qemu-system-x86 from bookworm-backports"]
fn stock_kernel_guest_side_under_qemu_tcg() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/scripts/stock-kernel.sh"))
        .args(["--qemu", "--timeout", "600"]);
    assert_script_passes(&mut cmd);
}

fn assert_script_passes(cmd: &mut Command) {
    let out = cmd.output().expect("run scripts/stock-kernel.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all expected lines seen"), "{text}");
    if cmd.get_args().any(|a| a == "--qemu" || a == "--full") {
        assert!(text.contains("reads back from the image"), "{text}");
    }
}
