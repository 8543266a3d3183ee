//! vmdk descriptors with bytes after a NUL: QEMU reads a descriptor as one
//! C string, so its text ends at the first NUL. Extent lines, a parent
//! hint or a broken line past it are not read; `img info` and `img
//! convert` of the same files equal qemu-img's.

use std::path::Path;

use integration_tests::{img, make_raw, ok, qemu_img, read, require_qemu, run};

/// `img info --output=json` and `img info` equal qemu-img's.
fn assert_info_like_qemu(image: &Path, what: &str) {
    let args = ["info", "--output=json", "-f", "vmdk"];
    let ours: serde_json::Value = serde_json::from_str(&ok(img(&args).arg(image))).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&ok(qemu_img(&args).arg(image))).unwrap();
    assert_eq!(ours, theirs, "{what}: info differs");
    let ours = ok(img(&["info", "-f", "vmdk"]).arg(image));
    let theirs = ok(qemu_img(&["info", "-f", "vmdk"]).arg(image));
    assert_eq!(ours, theirs, "{what}: human info differs");
}

/// Both tools convert `image` to raw; the two files are equal.
fn assert_converts_like_qemu(image: &Path, dir: &Path, what: &str) {
    let (ours, theirs) = (dir.join("ours.raw"), dir.join("theirs.raw"));
    ok(img(&["convert", "-f", "vmdk", "-O", "raw"])
        .arg(image)
        .arg(&ours));
    ok(qemu_img(&["convert", "-f", "vmdk", "-O", "raw"])
        .arg(image)
        .arg(&theirs));
    assert!(read(&ours) == read(&theirs), "{what}: conversions differ");
}

/// A monolithicFlat descriptor naming `a.raw` (1 MiB); after a NUL, a
/// second extent line and then `tail`.
fn flat_descriptor_with_nul(tail: &str) -> Vec<u8> {
    let mut text = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"a.raw\" 0\n"
        .to_vec();
    text.push(0);
    text.extend_from_slice(b"RW 2048 FLAT \"b.raw\" 0\n");
    text.extend_from_slice(tail.as_bytes());
    text
}

#[test]
fn a_descriptor_file_ends_at_its_first_nul_as_in_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    make_raw(&dir.path().join("a.raw"), 1 << 20, 1);
    make_raw(&dir.path().join("b.raw"), 1 << 20, 2);
    let cases = [
        ("an extent line after the NUL", ""),
        (
            "a parent hint after the NUL",
            "parentFileNameHint=\"base.vmdk\"\n",
        ),
        // A line our parser refuses (an extent with no offset).
        ("a broken extent line after the NUL", "RW 10 FLAT \"x\"\n"),
    ];
    for (what, tail) in cases {
        let image = dir.path().join("d.vmdk");
        std::fs::write(&image, flat_descriptor_with_nul(tail)).unwrap();
        assert_info_like_qemu(&image, what);
        assert_converts_like_qemu(&image, dir.path(), what);
    }
}

#[test]
fn an_embedded_descriptor_ends_at_its_first_nul_as_in_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("s.vmdk");
    ok(qemu_img(&["create", "-q", "-f", "vmdk"])
        .arg(&image)
        .arg("1M"));
    // The descriptor at byte 512 is NUL-padded to its 20 sectors; text
    // written into the padding lies after its first NUL.
    let mut bytes = read(&image);
    let end = 512 + bytes[512..].iter().position(|&b| b == 0).unwrap();
    let hint = b"\nparentFileNameHint=\"base.vmdk\"\nparentCID=0badcafe\n";
    bytes[end + 16..end + 16 + hint.len()].copy_from_slice(hint);
    std::fs::write(&image, &bytes).unwrap();
    assert_info_like_qemu(&image, "an embedded descriptor with a parent after its NUL");
    let out = run(img(&["convert", "-f", "vmdk", "-O", "raw"])
        .arg(&image)
        .arg(dir.path().join("ours.raw")));
    assert!(
        out.status.success(),
        "img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
