//! Encrypted images for the encryption tests: the secret both tools are
//! given, qemu-io on an image opened by option string as QEMU's own tests
//! open encrypted ones, and our library opening a LUKS qcow2 with the key.

use std::path::Path;
use std::process::Command;

use qcow::device::BlockRead;
use qcow::fs::{open_image_keyed, AnyImage, Format};

use crate::ok;

/// The `--object` every encrypted image of the tests is made and opened
/// with.
pub const SECRET: &str = "secret,id=sec0,data=astrochicken";

/// The password [`SECRET`] holds, as our library takes it.
pub const PASSWORD: &[u8] = b"astrochicken";

/// qemu-io on an image opened by option string (`--image-opts`) with
/// [`SECRET`], running `cmds`; returns stdout and fails the test when a
/// `read -P` finds other bytes.
pub fn qemu_io_with_secret(opts: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["--object", SECRET]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.args(["--image-opts", opts]);
    let out = ok(&mut c);
    assert!(
        !out.contains("Pattern verification failed"),
        "{opts}: {out}"
    );
    out
}

/// qemu-io's `--image-opts` for the LUKS qcow2 at `path`.
pub fn luks_qcow2_opts(path: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=sec0",
        path.display()
    )
}

/// Opens the LUKS qcow2 at `path` with our library, unlocked with
/// [`PASSWORD`].
pub fn open_luks_qcow2(path: &Path, writable: bool) -> AnyImage {
    open_image_keyed(
        path,
        Some(Format::Qcow2),
        writable,
        vec![Some(PASSWORD.to_vec())],
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `len` bytes at `offset` of `image`.
pub fn read_image(image: &AnyImage, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    image
        .read_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {len} at {offset}: {e}"));
    buf
}
