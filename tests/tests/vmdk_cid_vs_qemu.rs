//! A vmdk's CID as QEMU keeps it: the first write after each open puts a
//! new random CID into the descriptor (`vmdk_write_cid`), in the same
//! bytes QEMU edits, the rest of every file as qemu-img leaves it; and a
//! child whose `parentCID` no longer matches its parent's CID fails
//! reads from the parent and grain allocations with "Invalid argument",
//! as qemu-img's do, while its own grains still read and write.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

/// Bytes QEMU reads at byte 512 of a sparse file for its CIDs.
const DESC_SIZE: usize = 20 * 512;

/// `CID` and `parentCID` as `qemu-img info --output=json` shows them.
fn cids(image: &Path) -> (u64, u64) {
    let info: serde_json::Value =
        serde_json::from_str(&ok(
            qemu_img(&["info", "--output=json", "-f", "vmdk"]).arg(image)
        ))
        .unwrap();
    let data = &info["format-specific"]["data"];
    (
        data["cid"].as_u64().unwrap(),
        data["parent-cid"].as_u64().unwrap(),
    )
}

/// The descriptor area QEMU rewrites in `image`: (offset, length).
fn descriptor_area(image: &[u8]) -> (usize, usize) {
    if image.starts_with(b"KDMV") || image.starts_with(b"COWD") {
        (512, DESC_SIZE)
    } else {
        (0, image.len().div_ceil(512) * 512)
    }
}

/// The text of a descriptor area up to its NUL, its CID value replaced.
fn text_without_cid(area: &[u8]) -> (String, usize) {
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = String::from_utf8_lossy(&area[..end]).into_owned();
    let masked = text
        .lines()
        .map(|l| if l.starts_with("CID=") { "CID=X" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    (masked, end)
}

/// `ours` and `theirs`, both written from `original`, are equal but for
/// the CID each put into its descriptor area; each area's bytes past its
/// new text are the original's.
fn assert_same_but_cid(original: &[u8], ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    let (at, len) = descriptor_area(original);
    let mut padded = original.to_vec();
    padded.resize(padded.len().max(at + len), 0);
    assert!(
        ours[..at] == theirs[..at],
        "{what}: bytes before the descriptor differ"
    );
    assert!(
        ours[at + len..] == theirs[at + len..],
        "{what}: bytes after the descriptor area differ"
    );
    let (ours_text, ours_end) = text_without_cid(&ours[at..at + len]);
    let (theirs_text, theirs_end) = text_without_cid(&theirs[at..at + len]);
    assert_eq!(ours_text, theirs_text, "{what}: descriptor texts differ");
    for (file, end) in [(ours, ours_end), (theirs, theirs_end)] {
        assert!(
            file[at + end + 1..at + len] == padded[at + end + 1..at + len],
            "{what}: bytes past the new descriptor text changed"
        );
    }
}

/// Every file of `dir` by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path()),
            )
        })
        .collect();
    out.sort();
    out
}

/// `bench -w` of two 64 KiB writes in one open.
fn bench_write(tool: &str, image: &Path, offset: &str) -> std::process::Output {
    let args = [
        "bench", "-q", "-w", "-c", "2", "-s", "65536", "-o", offset, "-f", "vmdk",
    ];
    let mut cmd = if tool == "img" {
        img(&args)
    } else {
        qemu_img(&args)
    };
    run(cmd.arg(image))
}

#[test]
fn a_write_puts_a_new_cid_where_qemu_puts_it() {
    require_qemu!();
    for subformat in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (made, q, o) = (
            dir.path().join("m"),
            dir.path().join("q"),
            dir.path().join("o"),
        );
        for d in [&made, &q, &o] {
            std::fs::create_dir(d).unwrap();
        }
        ok(qemu_img(&["create", "-q", "-f", "vmdk", "-o"])
            .arg(format!("subformat={subformat}"))
            .arg(made.join("a.vmdk"))
            .arg("4M"));
        for (name, bytes) in files(&made) {
            std::fs::write(q.join(&name), &bytes).unwrap();
            std::fs::write(o.join(&name), &bytes).unwrap();
        }
        let (cid, parent_cid) = cids(&made.join("a.vmdk"));
        for (tool, d) in [("qemu-img", &q), ("img", &o)] {
            let out = bench_write(tool, &d.join("a.vmdk"), "1048576");
            assert!(out.status.success(), "{subformat}: {tool} bench -w failed");
            let (new_cid, new_parent) = cids(&d.join("a.vmdk"));
            assert_ne!(new_cid, cid, "{subformat}: {tool} left the CID");
            assert_eq!(
                new_parent, parent_cid,
                "{subformat}: {tool} changed parentCID"
            );
        }
        let originals = files(&made);
        for ((name, ours), (_, theirs)) in files(&o).iter().zip(files(&q)) {
            let original = &originals.iter().find(|(n, _)| n == name).unwrap().1;
            if name == "a.vmdk" {
                assert_same_but_cid(original, ours, &theirs, &format!("{subformat} {name}"));
            } else {
                assert!(
                    *ours == theirs,
                    "{subformat}: {name} differs from qemu-img's"
                );
            }
        }
        // A second open that only reads keeps the CID; the next one that
        // writes changes it again.
        let before = cids(&o.join("a.vmdk")).0;
        ok(img(&["convert", "-f", "vmdk", "-O", "raw"])
            .arg(o.join("a.vmdk"))
            .arg(dir.path().join("out.raw")));
        assert_eq!(
            cids(&o.join("a.vmdk")).0,
            before,
            "{subformat}: a read changed the CID"
        );
        assert!(bench_write("img", &o.join("a.vmdk"), "0").status.success());
        assert_ne!(
            cids(&o.join("a.vmdk")).0,
            before,
            "{subformat}: a second open kept the CID"
        );
    }
}

/// Runs `args` (with `image` last) in both tools: the same exit code, and
/// both name EINVAL.
fn assert_fails_like_qemu(args: &[&str], image: &Path, what: &str) {
    let ours = run(img(args).arg(image));
    let theirs = run(qemu_img(args).arg(image));
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{what}: exit codes differ"
    );
    assert_ne!(ours.status.code(), Some(0), "{what}: succeeded");
    for out in [&ours, &theirs] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Invalid argument"), "{what}: {err}");
    }
}

#[test]
fn a_child_whose_parent_cid_is_stale_fails_as_in_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let (parent, child) = (dir.path().join("p.vmdk"), dir.path().join("c.vmdk"));
    ok(qemu_img(&["create", "-q", "-f", "vmdk"])
        .arg(&parent)
        .arg("4M"));
    qemu_io("vmdk", &parent, &["write -P 1 0 1M"]);
    ok(
        qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b"])
            .arg(&parent)
            .arg(&child),
    );
    qemu_io("vmdk", &child, &["write -P 2 1M 64k"]);
    let (child_cid, linked) = cids(&child);
    assert_eq!(cids(&parent).0, linked);

    // Our write to the parent gives it a new CID and leaves the child's
    // parentCID as it was.
    assert!(bench_write("img", &parent, "2097152").status.success());
    assert_ne!(cids(&parent).0, linked);
    assert_eq!(cids(&child), (child_cid, linked));

    // Reads of the parent through the child fail, in both tools.
    let out = dir.path().join("out.raw");
    let convert = ["convert", "-f", "vmdk", "-O", "raw"];
    let ours = run(img(&convert).arg(&child).arg(&out));
    let theirs = run(qemu_img(&convert).arg(&child).arg(&out));
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(theirs.status.code(), Some(1));
    let first = |o: &std::process::Output| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let line = err.lines().next().unwrap_or("").to_string();
        line.split_once(": ")
            .map(|(_, r)| r.to_string())
            .unwrap_or(line)
    };
    assert_eq!(first(&ours), first(&theirs));
    assert_eq!(
        first(&ours),
        "error while reading at byte 0: Invalid argument"
    );
    let compare = ["compare", "-f", "vmdk", "-F", "vmdk"];
    let ours = run(img(&compare).arg(&child).arg(&parent));
    let theirs = run(qemu_img(&compare).arg(&child).arg(&parent));
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "compare exit codes"
    );
    assert!(String::from_utf8_lossy(&ours.stderr).contains("Invalid argument"));
    assert_fails_like_qemu(
        &["bench", "-q", "-c", "1", "-s", "65536", "-f", "vmdk"],
        &child,
        "a read from the parent",
    );

    // A write that allocates a grain fails and leaves the child's CID; a
    // write into a grain the child has succeeds (and changes it).
    for tool in ["img", "qemu-img"] {
        let copy = dir.path().join(format!("{tool}.vmdk"));
        std::fs::copy(&child, &copy).unwrap();
        let out = bench_write(tool, &copy, "3145728");
        assert!(!out.status.success(), "{tool}: an allocation succeeded");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));
        assert_eq!(
            cids(&copy).0,
            child_cid,
            "{tool}: a failed write changed the CID"
        );
        let args = [
            "bench", "-q", "-w", "-c", "1", "-s", "65536", "-o", "1048576",
        ];
        let mut cmd = if tool == "img" {
            img(&args)
        } else {
            qemu_img(&args)
        };
        assert!(run(cmd.args(["-f", "vmdk"]).arg(&copy)).status.success());
        assert_ne!(cids(&copy).0, child_cid, "{tool}: the write kept the CID");
        assert_eq!(cids(&copy).1, linked);
    }
    // The child's own grains and its map still read in both tools.
    let map = ["map", "--output=json", "-f", "vmdk"];
    assert_eq!(ok(img(&map).arg(&child)), ok(qemu_img(&map).arg(&child)));
    let bench_own = [
        "bench", "-q", "-c", "1", "-s", "65536", "-o", "1048576", "-f", "vmdk",
    ];
    ok(img(&bench_own).arg(&child));
    ok(qemu_img(&bench_own).arg(&child));

    // qemu-io's write to the parent is seen the same way by our reads.
    let fresh = dir.path().join("p2.vmdk");
    let fresh_child = dir.path().join("c2.vmdk");
    ok(qemu_img(&["create", "-q", "-f", "vmdk"])
        .arg(&fresh)
        .arg("4M"));
    ok(
        qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b"])
            .arg(&fresh)
            .arg(&fresh_child),
    );
    ok(img(&convert).arg(&fresh_child).arg(&out));
    qemu_io("vmdk", &fresh, &["write 0 512"]);
    assert_fails_like_qemu(
        &["bench", "-q", "-c", "1", "-s", "512", "-f", "vmdk"],
        &fresh_child,
        "after qemu-io wrote the parent",
    );
}

/// `CID` and `parentCID` as `img info --output=json` shows them.
fn our_cids(image: &Path) -> (u64, u64) {
    let info: serde_json::Value =
        serde_json::from_str(&ok(img(&["info", "--output=json", "-f", "vmdk"]).arg(image)))
            .unwrap();
    let data = &info["format-specific"]["data"];
    (
        data["cid"].as_u64().unwrap(),
        data["parent-cid"].as_u64().unwrap(),
    )
}

#[test]
fn cids_are_read_from_the_text_as_qemu_reads_them() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flat.img"), vec![0u8; 1 << 20]).unwrap();
    let extent = "createType=\"monolithicFlat\"\nRW 2048 FLAT \"flat.img\" 0\n";
    // QEMU looks for the first "CID" anywhere in the first 10 KiB of the
    // text (inside "parentCID", in a comment), skips the byte after it
    // and reads the rest as sscanf's %x does.
    let opened = [
        (
            "parentCID first",
            "parentCID=ffffffff\nCID=1234abcd\n".to_string(),
        ),
        (
            "CID in a comment",
            "# CID: fa (old)\nCID=1234abcd\nparentCID=ffffffff\n".into(),
        ),
        ("a negative CID", "CID=-5\nparentCID=+0x10\n".into()),
        (
            "blanks after the skipped byte",
            "CID=\t 77\nparentCID= 0xffffffff\n".into(),
        ),
        (
            "65 bits",
            "CID=1ffffffffffffffff\nparentCID=ffffffff\n".into(),
        ),
        ("CID only inside parentCID", "parentCID=fedc\n".into()),
    ];
    for (what, head) in &opened {
        let image = dir.path().join("a.vmdk");
        std::fs::write(
            &image,
            format!("# Disk DescriptorFile\nversion=1\n{head}{extent}"),
        )
        .unwrap();
        assert_eq!(our_cids(&image), cids(&image), "{what}");
    }
    // Without a parentCID QEMU refuses the image; so it does when the
    // CIDs lie past the 10 KiB it reads, or the text there is no number.
    let padding = format!("# {}\n", "x".repeat(DESC_SIZE));
    let refused = [
        ("no parentCID", "CID=1\n".to_string()),
        (
            "CIDs past the area",
            format!("{padding}CID=1\nparentCID=ffffffff\n"),
        ),
        ("CID no number", "CID=zz\nparentCID=ffffffff\n".into()),
        // The byte after "CID" is skipped whatever it is: here a blank,
        // which leaves "= 77" to sscanf.
        ("a blank before =", "CID = 77\nparentCID=ffffffff\n".into()),
    ];
    for (what, head) in &refused {
        let image = dir.path().join("a.vmdk");
        std::fs::write(
            &image,
            format!("# Disk DescriptorFile\nversion=1\n{head}{extent}"),
        )
        .unwrap();
        assert_fails_like_qemu(&["info", "-f", "vmdk"], &image, what);
    }
}
