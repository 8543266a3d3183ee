//! Running `vm` the way the tests do: against a store of their own
//! (`vm -c STORE`), with the `vmm` found next to `vm` (`VM_VMM` unset).

use std::path::Path;
use std::process::{Command, Output};

/// `vm -c STORE ARGS...`, its output.
pub fn vm(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm"))
        .arg("-c")
        .arg(store)
        .args(args)
        .env_remove("VM_VMM")
        .output()
        .expect("vm can be started")
}

/// Bytes of output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vm -c STORE ARGS...`, which must succeed; its standard output.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert!(
        out.status.success(),
        "vm {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Defines domain `test` in `store`: the counting test guest `guest`
/// (32 MiB, a count printed every 20000 steps) with one 16 MiB qcow2 disk,
/// `DIR/test.qcow2`, made by `img`, and its XML in `DIR/test.xml`. Returns
/// the image's path.
pub fn define_counting_domain(dir: &Path, store: &Path, guest: &Path) -> std::path::PathBuf {
    let image = dir.join("test.qcow2");
    let made = Command::new(env!("CARGO_BIN_EXE_img"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M")
        .output()
        .expect("img can be started");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let xml = format!(
        "<domain type='kvm'>\n  <name>test</name>\n  <memory unit='MiB'>32</memory>\n  <os>\n    <type>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>guest.mode=count guest.every=20000</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <serial type='pty'/>\n  </devices>\n</domain>\n",
        guest.display(),
        image.display()
    );
    let file = dir.join("test.xml");
    std::fs::write(&file, xml).expect("domain XML written");
    ok(store, &["define", file.to_str().expect("a UTF-8 path")]);
    image
}
