//! Persistent bitmaps against qemu-img, both ways: bitmaps `img bitmap`
//! adds, changes and removes are what `qemu-img info` lists (and
//! `qemu-img check` finds the image clean); bitmaps qemu-img adds (and
//! QEMU fills through qemu-io writes) are what `img info` lists, and img
//! merges and removes them; refused operations get qemu-img's messages
//! and exit codes.

use std::path::Path;

use integration_tests::{assert_qemu_clean, img, ok, qemu_img, require_qemu, run};

/// `info --output=json`'s bitmaps of `path` by `tool`, as (name,
/// granularity, flags) triples.
fn bitmaps(info_json: &str) -> Vec<(String, u64, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(info_json).unwrap();
    let Some(list) = v["format-specific"]["data"]["bitmaps"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["granularity"].as_u64().unwrap(),
                b["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn qemu_bitmaps(path: &Path) -> Vec<(String, u64, Vec<String>)> {
    bitmaps(&ok(qemu_img(&["info", "--output=json"]).arg(path)))
}

fn our_bitmaps(path: &Path) -> Vec<(String, u64, Vec<String>)> {
    bitmaps(&ok(img(&["info", "--output=json"]).arg(path)))
}

fn b(name: &str, granularity: u64, flags: &[&str]) -> (String, u64, Vec<String>) {
    (
        name.to_string(),
        granularity,
        flags.iter().map(|f| f.to_string()).collect(),
    )
}

#[test]
fn bitmaps_img_makes_are_seen_by_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("a.qcow2");
    let p = path.to_str().unwrap();
    ok(&mut qemu_img(&["create", "-q", "-f", "qcow2", p, "64M"]));
    ok(&mut img(&["bitmap", "--add", p, "b0"]));
    ok(&mut img(&[
        "bitmap",
        "--add",
        "-g",
        "1k",
        "--disable",
        p,
        "b1",
    ]));
    ok(&mut img(&["bitmap", "--add", "-g", "2M", p, "b2"]));
    assert_eq!(
        qemu_bitmaps(&path),
        [
            b("b0", 65536, &["auto"]),
            b("b1", 1024, &[]),
            b("b2", 2 << 20, &["auto"])
        ]
    );
    assert_qemu_clean(&path);
    ok(&mut img(&["bitmap", "--remove", p, "b0"]));
    ok(&mut img(&["bitmap", "--enable", "--clear", p, "b1"]));
    ok(&mut img(&["bitmap", "--disable", p, "b2"]));
    assert_eq!(
        qemu_bitmaps(&path),
        [b("b1", 1024, &["auto"]), b("b2", 2 << 20, &[])]
    );
    assert_qemu_clean(&path);
    // QEMU keeps using what we stored: it tracks a write in b1, and the
    // image stays consistent.
    ok(std::process::Command::new("qemu-io").args(["-f", "qcow2", "-c", "write 0 64k", p]));
    assert_qemu_clean(&path);
    ok(&mut img(&["bitmap", "--remove", p, "b1"]));
    ok(&mut img(&["bitmap", "--remove", p, "b2"]));
    assert!(qemu_bitmaps(&path).is_empty());
    assert_qemu_clean(&path);
}

#[test]
fn bitmaps_qemu_img_makes_are_seen_and_changed_by_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("q.qcow2");
    let p = path.to_str().unwrap();
    ok(&mut qemu_img(&["create", "-q", "-f", "qcow2", p, "64M"]));
    ok(&mut qemu_img(&["bitmap", "--add", p, "dirty"]));
    ok(std::process::Command::new("qemu-io").args(["-f", "qcow2", "-c", "write 1M 3M", p]));
    ok(&mut qemu_img(&[
        "bitmap",
        "--add",
        "-g",
        "512",
        "--disable",
        p,
        "cold",
    ]));
    assert_eq!(our_bitmaps(&path), qemu_bitmaps(&path));
    assert_eq!(
        our_bitmaps(&path),
        [b("dirty", 65536, &["auto"]), b("cold", 512, &[])]
    );
    // A merge into an alike bitmap keeps the image clean; QEMU reads the
    // result (its merge of the same bitmaps into a copy agrees).
    ok(&mut img(&["bitmap", "--add", p, "copy"]));
    ok(&mut img(&["bitmap", "--merge", "dirty", p, "copy"]));
    assert_qemu_clean(&path);
    assert_eq!(our_bitmaps(&path).len(), 3);
    ok(&mut img(&["bitmap", "--remove", p, "dirty"]));
    assert_eq!(
        qemu_bitmaps(&path),
        [b("cold", 512, &[]), b("copy", 65536, &["auto"])]
    );
    assert_qemu_clean(&path);
}

#[test]
fn refused_operations_match_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ours = dir.path().join("o.qcow2");
    let theirs = dir.path().join("t.qcow2");
    for p in [&ours, &theirs] {
        ok(&mut qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            p.to_str().unwrap(),
            "16M",
        ]));
        ok(&mut qemu_img(&[
            "bitmap",
            "--add",
            p.to_str().unwrap(),
            "b0",
        ]));
    }
    let cases: &[&[&str]] = &[
        &["--add"],
        &["--remove"],
        &["--add", "-g", "100"],
        &["--add", "-g", "4G"],
        &["--merge", "nope"],
        &["--clear", "-g", "1k"],
        &[],
    ];
    for args in cases {
        for name in ["b0", "zz"] {
            let mut a: Vec<&str> = vec!["bitmap"];
            a.extend_from_slice(args);
            let o = run(img(&a).arg(&ours).arg(name));
            let t = run(qemu_img(&a).arg(&theirs).arg(name));
            let strip = |s: &[u8], p: &Path| {
                String::from_utf8_lossy(s)
                    .replace(p.to_str().unwrap(), "FILE")
                    .replacen("img:", "qemu-img:", 1)
                    .replace("qemu-qemu-img", "qemu-img")
            };
            assert_eq!(
                strip(&o.stderr, &ours),
                strip(&t.stderr, &theirs),
                "{a:?} {name}"
            );
            assert_eq!(o.status.code(), t.status.code(), "{a:?} {name}");
        }
    }
    assert_eq!(our_bitmaps(&ours), qemu_bitmaps(&theirs));
}

/// QEMU stores every bitmap anew when it closes an image it opened for
/// writing (new data clusters and tables, then a new directory, the old
/// ones freed after): after each command the file must end where
/// qemu-img's ends (iotest 190 measures such a file as raw).
#[test]
fn bitmap_commands_leave_the_file_as_long_as_qemu_img_leaves_it() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "start.qcow2", "64M"]).current_dir(d));
    ok(qemu_img(&["bitmap", "--add", "start.qcow2", "b0"]).current_dir(d));
    // Dirty some of b0's bits, so that it has data clusters.
    ok(std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 1M", "-c", "write 40M 64k"])
        .arg("start.qcow2")
        .current_dir(d));
    std::fs::copy(d.join("start.qcow2"), d.join("ours.qcow2")).unwrap();
    std::fs::copy(d.join("start.qcow2"), d.join("theirs.qcow2")).unwrap();
    let steps: [&[&str]; 6] = [
        &["--add", "b1"],
        &["--add", "-g", "2M", "b2"],
        &["--merge", "b0", "b1"],
        &["--clear", "b0"],
        &["--remove", "b2"],
        &["--disable", "b1"],
    ];
    for step in steps {
        let (name, args) = step.split_last().unwrap();
        let mut ours = img(&["bitmap"]);
        ours.args(args).args(["ours.qcow2", name]).current_dir(d);
        let mut theirs = qemu_img(&["bitmap"]);
        theirs
            .args(args)
            .args(["theirs.qcow2", name])
            .current_dir(d);
        ok(&mut ours);
        ok(&mut theirs);
        let len = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
        assert_eq!(len("ours.qcow2"), len("theirs.qcow2"), "after {step:?}");
        assert_qemu_clean(&d.join("ours.qcow2"));
        assert_eq!(
            qemu_bitmaps(&d.join("ours.qcow2")),
            qemu_bitmaps(&d.join("theirs.qcow2")),
            "after {step:?}"
        );
    }
    let out = ok(qemu_img(&["compare", "ours.qcow2", "theirs.qcow2"]).current_dir(d));
    assert!(out.contains("identical"), "{out}");
}
