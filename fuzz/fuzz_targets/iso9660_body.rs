//! The iso9660 target's body, shared with the stable replay test
//! (iso/tests/iso_fuzz_regressions.rs): opens any bytes as an ISO 9660
//! image, walks the whole tree, looks up the paths an installer's kernel
//! is searched at and reads up to 64 files of at most 1 MiB. Every
//! refusal must be one line.

use iso9660::{IsoError, IsoImage};

/// Paths `vm install` looks up on a disc.
const PATHS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/grub/grub.cfg",
    "/install.amd/vmlinuz",
    "/casper/vmlinuz",
    "/images/pxeboot/vmlinuz",
    "/boot/vmlinuz-lts",
];

fn one_line(err: IsoError) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "two lines: {text:?}");
}

/// Runs the reader over `data`.
pub fn iso9660_body(data: &[u8]) {
    let iso = match IsoImage::open(data) {
        Ok(iso) => iso,
        Err(e) => return one_line(e),
    };
    let mut files = Vec::new();
    if let Err(e) = iso.walk(|entry| {
        if !entry.is_dir && files.len() < 64 {
            files.push(entry.clone());
        }
    }) {
        one_line(e);
    }
    for path in PATHS {
        match iso.lookup(path) {
            Ok(Some(entry)) if !entry.is_dir => files.push(entry),
            Ok(_) => {}
            Err(e) => one_line(e),
        }
    }
    for file in &files {
        match iso.read_file(file, 1 << 20) {
            Ok(bytes) => assert_eq!(bytes.len() as u64, file.size),
            Err(e) => one_line(e),
        }
    }
}
