//! Images of the formats qemu-img probes but img cannot read yet (luks, parallels and qcow made by qemu-img; dmg,
//! cloop and bochs made by hand from their documented headers) are never
//! read as raw: without `-f`, every img command and blockdev's open refuse
//! them with one line naming the format, and leave the file as it was;
//! with `-f raw` they are read as raw, as qemu-img reads them. The probed
//! format is the one `qemu-img info` names for the same file.

use std::path::{Path, PathBuf};

use blockdev::backend::{open, OpenOptions};
use integration_tests::{img, ok, qemu_img, read, require_qemu, run};

/// A foreign image: its file name and the format qemu-img probes for it.
struct Foreign {
    name: String,
    format: &'static str,
}

/// Makes one image of each format with qemu-img (1 MiB, default options).
fn make_with_qemu(dir: &Path) -> Vec<Foreign> {
    let mut made = Vec::new();
    for (format, opts) in [
        ("parallels", ""),
        ("qcow", ""),
        ("luks", "key-secret=sec0,iter-time=10"),
    ] {
        let name = format!("disk{}.{format}", made.len());
        let mut cmd = qemu_img(&[
            "create",
            "-q",
            "--object",
            "secret,id=sec0,data=123456",
            "-f",
            format,
        ]);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        ok(cmd.arg(&name).arg("1M").current_dir(dir));
        made.push(Foreign { name, format });
    }
    made
}

/// Makes dmg, cloop and bochs files by hand: qemu-img cannot create them.
fn make_by_hand(dir: &Path) -> Vec<Foreign> {
    // dmg is probed by its name alone.
    let mut dmg = vec![0u8; 4096];
    dmg[..4].copy_from_slice(b"data");
    // cloop 2.0 starts with a shell script that mounts it.
    let mut cloop =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
            .to_vec();
    cloop.resize(4096, 0);
    // bochs: magic, type and subtype strings, then the version (2.0).
    let mut bochs = vec![0u8; 1024];
    bochs[..22].copy_from_slice(b"Bochs Virtual HD Image");
    bochs[32..39].copy_from_slice(b"Redolog");
    bochs[48..55].copy_from_slice(b"Growing");
    bochs[64..68].copy_from_slice(&0x0002_0000u32.to_le_bytes());
    let mut made = Vec::new();
    for (name, format, bytes) in [
        ("disk.dmg", "dmg", dmg),
        ("disk.cloop", "cloop", cloop),
        ("disk.bochs", "bochs", bochs),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
        made.push(Foreign {
            name: name.to_string(),
            format,
        });
    }
    made
}

/// The format `qemu-img info` names for a file, if it opens it.
fn qemu_format(dir: &Path, name: &str) -> Option<String> {
    let out = run(qemu_img(&["info", "--output=json", name]).current_dir(dir));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["format"].as_str().map(str::to_string)
}

fn refused_by_every_command(dir: &Path, f: &Foreign) {
    let before = read(&dir.join(&f.name));
    let want = format!(
        "'{}' is a {} image, which img cannot read yet",
        f.name, f.format
    );
    let n = f.name.as_str();
    for (args, code) in [
        (vec!["info", n], 1),
        (vec!["info", "--output=json", n], 1),
        (vec!["convert", "-O", "qcow2", n, "out.qcow2"], 1),
        (vec!["check", n], 1),
        (vec!["check", "-r", "all", n], 1),
        (vec!["compare", n, n], 2),
        (vec!["map", n], 1),
        (vec!["map", "--output=json", n], 1),
        (vec!["resize", n, "2M"], 1),
        (vec!["snapshot", "-c", "s1", n], 1),
    ] {
        let out = run(img(&args).current_dir(dir));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "img {args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "img {args:?}: one line: {stderr}"
        );
        assert!(stderr.trim_end().ends_with(&want), "img {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "img {args:?} printed to stdout");
        assert!(
            !dir.join("out.qcow2").exists(),
            "img {args:?} made a target"
        );
        assert!(
            read(&dir.join(n)) == before,
            "img {args:?} changed {}",
            f.name
        );
    }
    // The VMM's disks go through blockdev's open.
    for read_only in [true, false] {
        let err = open(
            &dir.join(n),
            &OpenOptions {
                read_only,
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("blockdev opened {} without a format", f.name));
        assert!(
            err.to_string()
                .contains(&format!("is a {} image", f.format)),
            "{}: {err}",
            f.name
        );
    }
    assert!(read(&dir.join(n)) == before, "open changed {}", f.name);
}

fn read_as_raw_when_asked(dir: &Path, f: &Foreign) {
    let n = f.name.as_str();
    let ours = ok(img(&["info", "-f", "raw", "--output=json", n]).current_dir(dir));
    let theirs = ok(qemu_img(&["info", "-f", "raw", "--output=json", n]).current_dir(dir));
    let (o, t): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&ours).unwrap(),
        serde_json::from_str(&theirs).unwrap(),
    );
    assert_eq!(o["format"], "raw", "{n}");
    // Raw images are sized in whole sectors (a vmdk descriptor is not).
    assert_eq!(o["virtual-size"], t["virtual-size"], "{n}");
    let disk = open(
        &dir.join(n),
        &OpenOptions {
            format: Some(qcow::fs::Format::Raw),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{n} as raw: {e}"));
    assert!(disk.size() >= read(&dir.join(n)).len() as u64, "{n}");
}

#[test]
fn foreign_images_are_refused_never_read_as_raw() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut images = make_with_qemu(dir);
    for f in &images {
        assert_eq!(
            qemu_format(dir, &f.name).as_deref(),
            Some(f.format),
            "qemu-img probes {}",
            f.name
        );
    }
    images.extend(make_by_hand(dir));
    for f in &images {
        refused_by_every_command(dir, f);
        read_as_raw_when_asked(dir, f);
    }
}

/// A fixed VHD has its `conectix` footer only at the end, where QEMU's
/// probe does not look: qemu-img takes it for raw, and so do we.
#[test]
fn fixed_vhd_probes_as_raw_like_qemu() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        "f.vhd",
        "1M",
    ])
    .current_dir(dir));
    assert_eq!(qemu_format(dir, "f.vhd").as_deref(), Some("raw"));
    let ours = ok(img(&["info", "--output=json", "f.vhd"]).current_dir(dir));
    let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
    assert_eq!(v["format"], "raw");
}

/// An empty file is raw whatever its name (QEMU does not probe it).
#[test]
fn empty_dmg_named_file_is_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let path: PathBuf = tmp.path().join("empty.dmg");
    std::fs::write(&path, b"").unwrap();
    let out = ok(img(&["info", "--output=json"]).arg(&path));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "raw");
}
