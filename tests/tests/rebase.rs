//! `img rebase` against qemu-img rebase on copies of the same image: the
//! guest sees the same disk before and after, both tools agree, both
//! images check clean; `-u` only rewrites the name.

use integration_tests::{
    assert_qemu_clean, img, make_raw, ok, qemu_img, qemu_io, read, require_qemu, run,
};

#[test]
fn rebase_keeps_the_guest_view_like_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("base1.raw"), 4 << 20, 31);
    // base2 shares the first half with base1 and differs in the rest.
    let mut b2 = read(&d.join("base1.raw"));
    for (i, b) in b2[2 << 20..].iter_mut().enumerate() {
        *b = b.wrapping_add(i as u8 | 1);
    }
    b2.truncate(3 << 20);
    std::fs::write(d.join("base2.raw"), &b2).unwrap();
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base1.raw",
        "-F",
        "raw",
        "top.qcow2",
    ])
    .current_dir(d));
    qemu_io(
        "qcow2",
        &d.join("top.qcow2"),
        &["write -P 7 100k 200k", "write -z 3M 64k"],
    );
    let view = |name: &str| {
        let out = d.join(format!("{name}.view"));
        ok(qemu_img(&["convert", "-O", "raw", name, out.to_str().unwrap()]).current_dir(d));
        read(&out)
    };
    let before = view("top.qcow2");
    for target in ["base2.raw", ""] {
        std::fs::copy(d.join("top.qcow2"), d.join("ours.qcow2")).unwrap();
        std::fs::copy(d.join("top.qcow2"), d.join("theirs.qcow2")).unwrap();
        let mut a = img(&["rebase", "-b", target]);
        let mut b = qemu_img(&["rebase", "-b", target]);
        if !target.is_empty() {
            a.args(["-F", "raw"]);
            b.args(["-F", "raw"]);
        }
        ok(a.arg("ours.qcow2").current_dir(d));
        ok(b.arg("theirs.qcow2").current_dir(d));
        assert_qemu_clean(&d.join("ours.qcow2"));
        assert!(
            view("ours.qcow2") == before,
            "rebase onto {target:?} changed the guest view"
        );
        assert!(view("theirs.qcow2") == before);
        let ia = ok(qemu_img(&["info", "--output=json", "ours.qcow2"]).current_dir(d));
        let ib = ok(qemu_img(&["info", "--output=json", "theirs.qcow2"]).current_dir(d));
        let strip = |s: &str| {
            s.lines()
                .filter(|l| {
                    !l.contains("actual-size")
                        && !l.contains("\"filename\"")
                        && !l.contains("file length")
                        && !l.contains("virtual-size\": 2")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&ia).contains("base2.raw"), !target.is_empty(), "{ia}");
        assert_eq!(
            strip(&ia).contains("backing-filename"),
            strip(&ib).contains("backing-filename")
        );
    }
    // -u rewrites only the name: the view now comes from the new file.
    std::fs::copy(d.join("top.qcow2"), d.join("unsafe.qcow2")).unwrap();
    ok(img(&[
        "rebase",
        "-u",
        "-b",
        "base2.raw",
        "-F",
        "raw",
        "unsafe.qcow2",
    ])
    .current_dir(d));
    let info = ok(qemu_img(&["info", "--output=json", "unsafe.qcow2"]).current_dir(d));
    assert!(
        info.contains("\"backing-filename\": \"base2.raw\""),
        "{info}"
    );
    assert_qemu_clean(&d.join("unsafe.qcow2"));
}

/// `rebase -u` opens neither the old nor the new backing file, as
/// qemu-img's (`BDRV_O_NO_BACKING`): a missing old base, a missing new
/// one, or a chain that loops are all fine; without `-F` both tools
/// refuse alike and leave the image as it was.
#[test]
fn unsafe_rebase_opens_no_backing_file() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make = |fmt: &str, top: &str| {
        ok(qemu_img(&["create", "-q", "-f", "qcow2", "gone.qcow2", "1M"]).current_dir(d));
        ok(qemu_img(&[
            "create",
            "-q",
            "-f",
            fmt,
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            top,
            "1M",
        ])
        .current_dir(d));
        std::fs::remove_file(d.join("gone.qcow2")).unwrap();
    };
    let info = |name: &str| {
        let out = ok(qemu_img(&["info", "-U", "--output=json", name]).current_dir(d));
        out.lines()
            .filter(|l| l.contains("backing-filename") || l.contains("backing-filename-format"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for fmt in ["qcow2", "qed"] {
        make(fmt, &format!("top.{fmt}"));
        let cases: [&[&str]; 3] = [
            &["-b", "missing.qcow2", "-F", "qcow2"],
            &["-b", ""],
            &["-b", "missing.qcow2"],
        ];
        for case in cases {
            let mut results = Vec::new();
            for (side, tool) in [("ours", img as fn(&[&str]) -> _), ("theirs", qemu_img)] {
                let name = format!("{side}.{fmt}");
                std::fs::copy(d.join(format!("top.{fmt}")), d.join(&name)).unwrap();
                let before = read(&d.join(&name));
                let out = run(tool(&["rebase", "-u", "-f", fmt])
                    .args(case)
                    .arg(&name)
                    .current_dir(d));
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.status.success() {
                    assert!(err.is_empty(), "{side} {fmt} {case:?}: {err}");
                } else {
                    assert_eq!(read(&d.join(&name)), before, "{side} {fmt} {case:?}");
                }
                // Each tool names itself first ("img: ", "qemu-img: ").
                let message = err
                    .split_once(": ")
                    .map_or("", |(_, m)| m)
                    .replace(&name, "X");
                results.push((out.status.code(), message, info(&name)));
            }
            assert_eq!(results[0], results[1], "{fmt} {case:?}");
        }
    }
    // A chain that loops (a on b on a): -u still only rewrites the name.
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]).current_dir(d));
    ok(qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ])
    .current_dir(d));
    ok(img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]).current_dir(d));
    assert!(
        info("a.qcow2").contains("\"b.qcow2\""),
        "{}",
        info("a.qcow2")
    );
    ok(img(&["rebase", "-u", "-b", "", "a.qcow2"]).current_dir(d));
    assert_qemu_clean(&d.join("a.qcow2"));
}

#[test]
fn commit_matches_qemu_img_commit() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for base_fmt in ["raw", "qcow2"] {
        for keep in [false, true] {
            for side in ["ours", "theirs"] {
                let base = format!("{side}-base.{base_fmt}");
                make_raw(&d.join("seed.raw"), 3 << 20, 41);
                ok(qemu_img(&["convert", "-q", "-O", base_fmt, "seed.raw", &base]).current_dir(d));
                let top = format!("{side}-top.qcow2");
                ok(qemu_img(&[
                    "create", "-q", "-f", "qcow2", "-b", &base, "-F", base_fmt, &top, "4M",
                ])
                .current_dir(d));
                qemu_io(
                    "qcow2",
                    &d.join(&top),
                    &[
                        "write -P 5 64k 300k",
                        "write -z 1M 128k",
                        "write -P 6 3584k 64k",
                    ],
                );
            }
            let view = |name: &str| {
                let out = d.join(format!("{name}.view"));
                let _ = std::fs::remove_file(&out);
                ok(qemu_img(&["convert", "-O", "raw", name, out.to_str().unwrap()]).current_dir(d));
                read(&out)
            };
            let before = view("ours-top.qcow2");
            let mut a = img(&["commit"]);
            let mut b = qemu_img(&["commit"]);
            if keep {
                a.arg("-d");
                b.arg("-d");
            }
            let out = ok(a.arg("ours-top.qcow2").current_dir(d));
            assert_eq!(out, "Image committed.\n");
            ok(b.arg("theirs-top.qcow2").current_dir(d));
            assert!(
                view("ours-top.qcow2") == before,
                "commit changed the overlay's view"
            );
            let ours_base = view(&format!("ours-base.{base_fmt}"));
            let theirs_base = view(&format!("theirs-base.{base_fmt}"));
            assert!(
                ours_base == theirs_base,
                "{base_fmt} keep={keep}: bases differ after commit"
            );
            assert_qemu_clean(&d.join("ours-top.qcow2"));
            if base_fmt == "qcow2" {
                assert_qemu_clean(&d.join("ours-base.qcow2"));
            }
            let map_a = ok(qemu_img(&["map", "--output=json", "ours-top.qcow2"]).current_dir(d));
            let map_b = ok(qemu_img(&["map", "--output=json", "theirs-top.qcow2"]).current_dir(d));
            let top_data = |m: &str| {
                m.contains("\"depth\": 0, \"present\": true, \"zero\": false, \"data\": true")
            };
            assert_eq!(
                top_data(&map_a),
                top_data(&map_b),
                "emptied overlay differs:\n{map_a}\n{map_b}"
            );
            assert_eq!(top_data(&map_a), keep);
            if !keep {
                // qemu-img resets an emptied v3 top to header, refcount
                // table, refcount block and L1 table and truncates it
                // there; only the header's backing name differs here.
                let (a, b) = (
                    read(&d.join("ours-top.qcow2")),
                    read(&d.join("theirs-top.qcow2")),
                );
                assert_eq!(a.len(), b.len(), "{base_fmt}: emptied tops' lengths");
                assert!(a[65536..] == b[65536..], "{base_fmt}: emptied tops differ");
            }
        }
    }
}

#[test]
fn commit_into_a_deeper_base_matches_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // base (raw or qcow2) <- mid1 <- mid2 <- top, each writing its own
    // overlapping range, the top larger than the rest.
    for base_fmt in ["raw", "qcow2"] {
        for side in ["ours", "theirs"] {
            let base = format!("{side}-b0.{base_fmt}");
            make_raw(&d.join("seed.raw"), 4 << 20, 43);
            ok(qemu_img(&["convert", "-q", "-O", base_fmt, "seed.raw", &base]).current_dir(d));
            let mut below = (base.clone(), base_fmt.to_string());
            for (level, cmds) in [
                (1, vec!["write -P 2 1M 1M"]),
                (2, vec!["write -P 3 1536k 1M", "write -z 3M 64k"]),
                (3, vec!["write -P 4 0 100k", "write -P 5 5M 64k"]),
            ] {
                let name = format!("{side}-l{level}.qcow2");
                let mut c = qemu_img(&["create", "-q", "-f", "qcow2", "-b", &below.0, "-F"]);
                c.args([below.1.as_str(), name.as_str()]);
                if level == 3 {
                    c.arg("6M");
                }
                ok(c.current_dir(d));
                qemu_io("qcow2", &d.join(&name), &cmds);
                below = (name, "qcow2".to_string());
            }
        }
        let view = |name: &str| {
            let out = d.join(format!("{name}.view"));
            let _ = std::fs::remove_file(&out);
            ok(qemu_img(&["convert", "-O", "raw", name, out.to_str().unwrap()]).current_dir(d));
            read(&out)
        };
        let before = view("ours-l3.qcow2");
        let out = ok(img(&[
            "commit",
            "-b",
            &format!("ours-b0.{base_fmt}"),
            "ours-l3.qcow2",
        ])
        .current_dir(d));
        assert_eq!(out, "Image committed.\n");
        ok(qemu_img(&[
            "commit",
            "-b",
            &format!("theirs-b0.{base_fmt}"),
            "theirs-l3.qcow2",
        ])
        .current_dir(d));
        // -b keeps the top's contents, and the base now holds the view.
        assert!(view("ours-l3.qcow2") == before, "commit -b changed the top");
        let ours_base = view(&format!("ours-b0.{base_fmt}"));
        assert!(
            ours_base == view(&format!("theirs-b0.{base_fmt}")),
            "{base_fmt}: bases differ"
        );
        assert!(
            ours_base == before,
            "{base_fmt}: the base does not hold the top's view"
        );
        for name in ["l1", "l2", "l3"] {
            assert_qemu_clean(&d.join(format!("ours-{name}.qcow2")));
        }
        let out = run(img(&["commit", "-b", "elsewhere.raw", "ours-l3.qcow2"]).current_dir(d));
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "img: Did not find 'elsewhere.raw' in the backing chain of 'ours-l3.qcow2'\n"
        );
    }
}
