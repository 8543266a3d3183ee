//! `img info`, `img map`, `img check` and `img compare` print exactly what
//! qemu-img prints (human and JSON) for the same images, and resize does
//! to an image what qemu-img resize does to a copy.

use std::path::Path;
use std::process::Command;

use integration_tests::{img, make_raw, ok, qemu_img, qemu_io, read, require_qemu, run};

/// Runs the same subcommand with both tools (from the image's folder, so
/// relative names agree) and compares stdout and exit codes.
fn same_output(dir: &Path, args: &[&str]) {
    let ours = run(img(args).current_dir(dir));
    let theirs = run(qemu_img(args).current_dir(dir));
    let (o, t) = (
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout),
    );
    assert_eq!(
        o,
        t,
        "`{}` differs\n--- img ---\n{o}\n--- qemu-img ---\n{t}\nimg stderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&ours.stderr)
    );
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "`{}` exit codes",
        args.join(" ")
    );
}

fn make_images(d: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let src = d.join("src.raw");
    make_raw(&src, 4 << 20, 21);
    names.push("src.raw".to_string());
    for (name, opts) in [
        ("plain.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10"),
        ("ext.qcow2", "extended_l2=on,cluster_size=64k"),
        ("small.qcow2", "cluster_size=4k,refcount_bits=8"),
        ("lazy.qcow2", "lazy_refcounts=on"),
        ("zstd.qcow2", "compression_type=zstd"),
    ] {
        let p = d.join(name);
        ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts])
            .arg(&p)
            .arg("5M"));
        qemu_io(
            "qcow2",
            &p,
            &[
                "write -P 1 0 100k",
                "write -z 1M 192k",
                "write -P 2 3M 64k",
                "discard 3M 64k",
                "write -P 3 4M 1k",
            ],
        );
        names.push(name.to_string());
    }
    let c = d.join("compressed.qcow2");
    ok(qemu_img(&["convert", "-q", "-c", "-O", "qcow2"])
        .arg(&src)
        .arg(&c));
    names.push("compressed.qcow2".to_string());
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "plain.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ])
    .current_dir(d));
    qemu_io("qcow2", &d.join("top.qcow2"), &["write -P 9 64k 64k"]);
    names.push("top.qcow2".to_string());
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "src.raw",
        "-F",
        "raw",
        "over-raw.qcow2",
        "6M",
    ])
    .current_dir(d));
    names.push("over-raw.qcow2".to_string());
    let m = d.join("prealloc.qcow2");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
    ])
    .arg(&m)
    .arg("3M"));
    names.push("prealloc.qcow2".to_string());
    names
}

#[test]
fn info_map_and_check_print_what_qemu_img_prints() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in make_images(d) {
        same_output(d, &["info", &name]);
        same_output(d, &["info", "--output=json", &name]);
        same_output(d, &["info", "--backing-chain", &name]);
        same_output(d, &["info", "--backing-chain", "--output=json", &name]);
        same_output(d, &["map", "--output=json", &name]);
        if name != "compressed.qcow2" {
            same_output(d, &["map", &name]);
        }
        if name.ends_with(".qcow2") {
            same_output(d, &["check", &name]);
            same_output(d, &["check", "--output=json", &name]);
        }
    }
}

#[test]
fn compare_agrees_with_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = make_images(d);
    // Pairs that are equal, differ, and differ in size.
    ok(qemu_img(&["convert", "-q", "-O", "qcow2", "src.raw", "copy.qcow2"]).current_dir(d));
    same_output(d, &["compare", "src.raw", "copy.qcow2"]);
    same_output(d, &["compare", "src.raw", "over-raw.qcow2"]);
    same_output(d, &["compare", "-s", "src.raw", "over-raw.qcow2"]);
    same_output(d, &["compare", "plain.qcow2", "v2.qcow2"]);
    same_output(d, &["compare", "plain.qcow2", "top.qcow2"]);
    same_output(d, &["compare", "src.raw", "compressed.qcow2"]);
    same_output(d, &["compare", "ext.qcow2", "plain.qcow2"]);
    assert!(names.len() > 5);
}

#[test]
fn resize_matches_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    make_raw(&base, 3 << 20, 4);
    let cases: &[(&str, &[&str])] = &[
        ("grow", &["+3M"]),
        ("shrink", &["--shrink", "1000k"]),
        ("shrink-grow", &["--shrink", "1536k"]),
    ];
    for fmt in ["qcow2", "raw"] {
        for (name, args) in cases {
            let a = d.join(format!("{name}-ours.{fmt}"));
            let b = d.join(format!("{name}-theirs.{fmt}"));
            ok(qemu_img(&["convert", "-q", "-O", fmt]).arg(&base).arg(&a));
            std::fs::copy(&a, &b).unwrap();
            let mut ours = img(&["resize", "-f", fmt]);
            let mut theirs = qemu_img(&["resize", "-f", fmt]);
            if args[0] == "--shrink" {
                ours.arg("--shrink");
                theirs.arg("--shrink");
            }
            ok(ours.arg(&a).arg(args[args.len() - 1]));
            ok(theirs.arg(&b).arg(args[args.len() - 1]));
            if *name == "shrink-grow" {
                ok(img(&["resize", "-f", fmt]).arg(&a).arg("4M"));
                ok(qemu_img(&["resize", "-f", fmt]).arg(&b).arg("4M"));
            }
            let ra = d.join("a.raw");
            let rb = d.join("b.raw");
            ok(qemu_img(&["convert", "-q", "-f", fmt, "-O", "raw"])
                .arg(&a)
                .arg(&ra));
            ok(qemu_img(&["convert", "-q", "-f", fmt, "-O", "raw"])
                .arg(&b)
                .arg(&rb));
            assert!(
                read(&ra) == read(&rb),
                "{name} {fmt}: contents differ after resize"
            );
            if fmt == "qcow2" {
                integration_tests::assert_qemu_clean(&a);
            }
        }
    }
    // Growing an overlay over a longer backing file reads zeros there.
    let over = d.join("over.qcow2");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "over.qcow2",
        "1M",
    ])
    .current_dir(d));
    ok(img(&["resize"]).arg(&over).arg("3M"));
    let out = d.join("over.raw");
    ok(qemu_img(&["convert", "-q", "-O", "raw"])
        .arg(&over)
        .arg(&out));
    let data = read(&out);
    let b = read(&base);
    assert_eq!(&data[..1 << 20], &b[..1 << 20]);
    assert!(
        data[1 << 20..].iter().all(|&x| x == 0),
        "grown area shows the backing file"
    );
    integration_tests::assert_qemu_clean(&over);
}

#[test]
fn raw_with_qcow2_magic_stays_raw_with_f_raw() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A raw disk whose first bytes are a qcow2 header.
    let q = d.join("inner.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"]).arg(&q).arg("1M"));
    let disk = d.join("disk.raw");
    let mut bytes = read(&q);
    bytes.resize(2 << 20, 0);
    std::fs::write(&disk, &bytes).unwrap();
    let info = ok(img(&["info", "-f", "raw", "--output=json"]).arg(&disk));
    assert!(info.contains("\"format\": \"raw\""), "{info}");
    assert!(info.contains("\"virtual-size\": 2097152"), "{info}");
    let out = d.join("out.raw");
    ok(img(&["convert", "-f", "raw", "-O", "raw"])
        .arg(&disk)
        .arg(&out));
    assert!(read(&out) == bytes);
    // As a backing file recorded as raw, it is read raw too.
    ok(img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "disk.raw",
        "-F",
        "raw",
        "over.qcow2",
    ])
    .current_dir(d));
    let out2 = d.join("out2.raw");
    ok(img(&["convert", "-O", "raw"])
        .arg(d.join("over.qcow2"))
        .arg(&out2));
    assert!(read(&out2) == bytes);
}

#[test]
fn dirty_lazy_refcount_image_is_repaired_on_write_open() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("lazy.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on"])
            .arg(&p)
            .arg("4M"),
    );
    // qemu-io's abort leaves the image dirty with stale refcounts.
    let _ = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "abort"])
        .arg(&p)
        .output();
    let info = ok(qemu_img(&["info", "--output=json"]).arg(&p));
    assert!(info.contains("\"dirty-flag\": true"), "{info}");
    // Opening for writing repairs it and clears the dirty bit.
    ok(img(&["resize"]).arg(&p).arg("+1M"));
    let info = ok(qemu_img(&["info", "--output=json"]).arg(&p));
    assert!(info.contains("\"dirty-flag\": false"), "{info}");
    integration_tests::assert_qemu_clean(&p);
    let out = d.join("out.raw");
    ok(img(&["convert", "-O", "raw"]).arg(&p).arg(&out));
    let data = read(&out);
    assert!(data[..1 << 20].iter().all(|&b| b == 7));
}

/// A write open of an image with a persistent bitmap (here a resize)
/// keeps the bitmaps in force as qemu-img does: the autoclear bit stays
/// set, the bitmap follows the new size, and the image checks clean.
#[test]
fn a_write_open_keeps_bitmaps_in_force_as_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theirs = d.join("theirs.qcow2");
    let ours = d.join("ours.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&theirs)
        .arg("4M"));
    ok(qemu_img(&["bitmap", "--add"]).arg(&theirs).arg("b0"));
    assert_eq!(
        read(&theirs)[95] & 1,
        1,
        "qemu-img set the bitmaps autoclear bit"
    );
    std::fs::copy(&theirs, &ours).unwrap();
    ok(qemu_img(&["resize"]).arg(&theirs).arg("+1M"));
    ok(img(&["resize"]).arg(&ours).arg("+1M"));
    assert_eq!(
        read(&ours)[95] & 1,
        read(&theirs)[95] & 1,
        "autoclear bitmaps bit"
    );
    let info = |p: &Path| {
        let out = ok(qemu_img(&["info", "--output=json"]).arg(p));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["virtual-size"].clone(),
            v["format-specific"]["data"]["bitmaps"].clone(),
        )
    };
    assert_eq!(info(&ours), info(&theirs), "left: ours, right: qemu-img");
    ok(qemu_img(&["check"]).arg(&ours));
}

#[test]
fn measure_prints_what_qemu_img_prints() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = make_images(d);
    for args in [
        vec!["measure", "-O", "qcow2", "--size", "1G"],
        vec!["measure", "-O", "qcow2", "--size", "1000", "--output=json"],
        vec![
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            "--size",
            "10G",
        ],
        vec![
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=512,refcount_bits=64",
            "--size",
            "3G",
        ],
        vec!["measure", "--size", "5M"],
        // Too large for 64 KiB clusters: refused, exit 1.
        vec!["measure", "-O", "qcow2", "--size", "7E"],
    ] {
        same_output(d, &args);
    }
    for name in &names {
        for opts in [
            "cluster_size=64k",
            "cluster_size=4k,refcount_bits=1",
            "cluster_size=2M",
            // Every cluster counts with preallocated data or a backing file.
            "preallocation=full",
            "preallocation=falloc",
            "backing_file=x,backing_fmt=raw",
        ] {
            same_output(d, &["measure", "-O", "qcow2", "-o", opts, name]);
        }
        same_output(d, &["measure", "-O", "raw", "--output=json", name]);
    }
}
