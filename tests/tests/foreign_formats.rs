//! Images of the formats qemu-img probes but img cannot read yet (parallels and qcow made by qemu-img; dmg
//! and cloop made by hand from their documented headers) are never
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
    for (format, opts) in [("parallels", ""), ("qcow", "")] {
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

/// Makes dmg and cloop files by hand: qemu-img cannot create them.
fn make_by_hand(dir: &Path) -> Vec<Foreign> {
    // dmg is probed by its name alone.
    let mut dmg = vec![0u8; 4096];
    dmg[..4].copy_from_slice(b"data");
    // cloop 2.0 starts with a shell script that mounts it.
    let mut cloop =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
            .to_vec();
    cloop.resize(4096, 0);
    let mut made = Vec::new();
    for (name, format, bytes) in [("disk.dmg", "dmg", dmg), ("disk.cloop", "cloop", cloop)] {
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

/// A Bochs growing redolog of 16 KiB in 4 KiB extents, made by hand from
/// the header QEMU's bochs driver reads: extents 0 and 2 are stored (as
/// the file's extents 1 and 0), each with some sectors marked in its
/// bitmap; the rest reads as zeros.
fn bochs_image() -> Vec<u8> {
    const NOT_STORED: u32 = u32::MAX;
    let catalog = [1u32, NOT_STORED, 0, NOT_STORED];
    let mut file = vec![0u8; 512];
    file[..22].copy_from_slice(b"Bochs Virtual HD Image");
    file[32..39].copy_from_slice(b"Redolog");
    file[48..55].copy_from_slice(b"Growing");
    file[64..68].copy_from_slice(&0x0002_0000u32.to_le_bytes());
    file[68..72].copy_from_slice(&512u32.to_le_bytes()); // header size
    file[72..76].copy_from_slice(&(catalog.len() as u32).to_le_bytes());
    file[76..80].copy_from_slice(&512u32.to_le_bytes()); // bitmap bytes
    file[80..84].copy_from_slice(&4096u32.to_le_bytes()); // extent bytes
    file[88..96].copy_from_slice(&16384u64.to_le_bytes()); // disk bytes
    for entry in catalog {
        file.extend_from_slice(&entry.to_le_bytes());
    }
    // Two stored extents: a bitmap sector, then eight data sectors.
    for (stored, bits) in [(0u8, 0b1000_0001u8), (1, 0b0000_0110)] {
        let mut extent = vec![0u8; 512 + 4096];
        extent[0] = bits;
        for (i, sector) in extent[512..].chunks_mut(512).enumerate() {
            sector.fill(0x10 * (stored + 1) + i as u8);
        }
        file.extend_from_slice(&extent);
    }
    file
}

/// Bochs images read the same through img and qemu-img (`convert -O raw`
/// byte for byte, `info`'s format and size), refuse writing in one line,
/// and `convert -O bochs` gets qemu-img's refusal after the source opens.
#[test]
fn bochs_reads_as_qemu_reads_it() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("d.bochs"), bochs_image()).unwrap();
    assert_eq!(qemu_format(dir, "d.bochs").as_deref(), Some("bochs"));
    ok(img(&["convert", "-O", "raw", "d.bochs", "ours.raw"]).current_dir(dir));
    ok(qemu_img(&["convert", "-O", "raw", "d.bochs", "theirs.raw"]).current_dir(dir));
    let ours = read(&dir.join("ours.raw"));
    assert_eq!(ours.len(), 16384);
    assert!(
        ours == read(&dir.join("theirs.raw")),
        "converted bytes differ"
    );
    assert!(ours.iter().any(|&b| b != 0), "the stored sectors read back");
    let info = |out: String| -> (serde_json::Value, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["format"].clone(), v["virtual-size"].clone())
    };
    assert_eq!(
        info(ok(
            img(&["info", "--output=json", "d.bochs"]).current_dir(dir)
        )),
        info(ok(
            qemu_img(&["info", "--output=json", "d.bochs"]).current_dir(dir)
        ))
    );
    let before = read(&dir.join("d.bochs"));
    for args in [
        vec![
            "convert", "-f", "bochs", "-O", "bochs", "d.bochs", "x.bochs",
        ],
        vec!["resize", "d.bochs", "1M"],
    ] {
        let ours = run(img(&args).current_dir(dir));
        let theirs = run(qemu_img(&args).current_dir(dir));
        assert_eq!(ours.status.code(), Some(1), "img {args:?}");
        assert_eq!(theirs.status.code(), Some(1), "qemu-img {args:?}");
        let stderr = String::from_utf8_lossy(&ours.stderr);
        assert_eq!(stderr.lines().count(), 1, "img {args:?}: {stderr}");
    }
    let refusal =
        run(img(&["convert", "-f", "bochs", "-O", "bochs", "d.bochs", "x"]).current_dir(dir));
    assert!(String::from_utf8_lossy(&refusal.stderr)
        .contains("Format driver 'bochs' does not support image creation"));
    assert!(read(&dir.join("d.bochs")) == before, "d.bochs changed");
}

/// A probed LUKS volume opens as qemu-img opens it: `info` shows its
/// header without a key, byte for byte, and the commands that need its
/// data ask for the key in qemu-img's words; the VMM's open refuses it.
#[test]
fn probed_luks_behaves_as_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=123456",
        "-f",
        "luks",
        "-o",
        "key-secret=sec0,iter-time=10",
        "v.luks",
        "1M",
    ])
    .current_dir(dir));
    let before = read(&dir.join("v.luks"));
    for args in [
        vec!["info", "v.luks"],
        vec!["info", "--output=json", "v.luks"],
        vec!["convert", "-O", "raw", "v.luks", "out.raw"],
        vec!["map", "v.luks"],
        vec!["check", "v.luks"],
        vec!["compare", "v.luks", "v.luks"],
        vec!["resize", "v.luks", "2M"],
    ] {
        let ours = run(img(&args).current_dir(dir));
        let theirs = run(qemu_img(&args).current_dir(dir));
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "{args:?}"
        );
        let cut = |e: &[u8]| {
            let e = String::from_utf8_lossy(e);
            e.split_once(": ")
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        };
        assert_eq!(cut(&ours.stderr), cut(&theirs.stderr), "{args:?}");
    }
    assert!(read(&dir.join("v.luks")) == before, "v.luks changed");
    assert!(open(&dir.join("v.luks"), &OpenOptions::default()).is_err());
}
