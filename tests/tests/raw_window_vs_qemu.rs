//! QEMU's raw driver with `offset`/`size` under a qcow2 image, held
//! against qemu-img: a `json:` name whose file is such a raw node reads
//! the same bytes, a `json:` backing file name opens as it is (not
//! relative to the image's folder), and bitmaps that cannot be stored when
//! the image closes (the window is full: ENOSPC) fail `bitmap` and
//! `commit` with qemu-img's lines and exit status, leaving a clean image.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

/// Where the qcow2 image starts in the container file.
const OFFSET: u64 = 1 << 20;

/// A `json:` name of the qcow2 image in `file` under a raw window.
fn json_name(file: &Path, offset: Option<u64>, size: Option<u64>) -> String {
    let mut raw = String::from(r#""driver": "raw""#);
    if let Some(o) = offset {
        raw.push_str(&format!(r#", "offset": {o}"#));
    }
    if let Some(s) = size {
        raw.push_str(&format!(r#", "size": {s}"#));
    }
    format!(
        r#"json:{{"driver": "qcow2", "file": {{{raw}, "file": {{"driver": "file", "filename": "{}"}}}}}}"#,
        file.display()
    )
}

/// A 4 MiB qcow2 image with a pattern, stored at [`OFFSET`] of
/// `c.bin` (the bytes before it are not zero); returns the image's length.
fn container(dir: &Path) -> u64 {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "q.qcow2", "4M"]).current_dir(dir));
    qemu_io("qcow2", &dir.join("q.qcow2"), &["write -P 9 64k 1M"]);
    let image = read(&dir.join("q.qcow2"));
    let mut bytes = vec![0xab; OFFSET as usize];
    bytes.extend_from_slice(&image);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    std::fs::write(dir.join("c.bin"), &bytes).unwrap();
    bytes.len() as u64 - OFFSET
}

/// Runs `args` with both tools; (status, stderr with the program name
/// and generated node names cut) of each.
fn both(dir: &Path, args: &[&str]) -> [(Option<i32>, String); 2] {
    [img as fn(&[&str]) -> _, qemu_img].map(|tool| {
        let out = run(tool(args).current_dir(dir));
        (out.status.code(), filtered(&out.stderr))
    })
}

fn filtered(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|l| {
            let l = l.split_once(": ").map_or(l, |(_, rest)| rest);
            // QEMU's generated node names: `#block` and 3 or more digits.
            match l.find("'#block") {
                Some(i) => {
                    let end = l[i + 7..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(l.len(), |e| i + 7 + e);
                    format!("{}'NODE_NAME{}", &l[..i], &l[end..])
                }
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_qcow2_image_inside_a_raw_window_reads_as_with_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let len = container(dir);
    let name = json_name(&dir.join("c.bin"), Some(OFFSET), Some(len));
    for (tool, out) in [(img as fn(&[&str]) -> _, "img.raw"), (qemu_img, "qemu.raw")] {
        ok(tool(&["convert", "-O", "raw", &name, out]).current_dir(dir));
    }
    let ours = read(&dir.join("img.raw"));
    assert_eq!(ours, read(&dir.join("qemu.raw")));
    assert_eq!(ours[64 << 10], 9, "the pattern is read through the window");

    // A window the file cannot hold, or whose size is not whole sectors,
    // is refused as qemu-img refuses it.
    for bad in [
        json_name(&dir.join("c.bin"), Some(OFFSET), Some(len + 512)),
        json_name(&dir.join("c.bin"), Some(OFFSET), Some(len - 1)),
        json_name(&dir.join("c.bin"), Some(OFFSET + len + 1), None),
    ] {
        let [ours, theirs] = both(dir, &["convert", "-O", "raw", &bad, "bad.raw"]);
        assert_eq!(ours, theirs, "{bad}");
        assert_eq!(ours.0, Some(1));
    }
}

#[test]
fn a_json_backing_name_is_opened_as_it_reads() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let len = container(dir);
    let base = json_name(&dir.join("c.bin"), Some(OFFSET), Some(len));
    // An overlay made by each tool over the json name, read by the other
    // tool too.
    for (tool, top) in [
        (img as fn(&[&str]) -> _, "img.qcow2"),
        (qemu_img, "qemu.qcow2"),
    ] {
        ok(tool(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", top,
        ])
        .current_dir(dir));
        qemu_io("qcow2", &dir.join(top), &["write -P 3 0 64k"]);
    }
    for top in ["img.qcow2", "qemu.qcow2"] {
        for (tool, out) in [(img as fn(&[&str]) -> _, "img.raw"), (qemu_img, "qemu.raw")] {
            ok(tool(&["convert", "-O", "raw", top, out]).current_dir(dir));
        }
        let ours = read(&dir.join("img.raw"));
        assert_eq!(ours, read(&dir.join("qemu.raw")), "{top}");
        assert_eq!((ours[0], ours[64 << 10]), (3, 9), "{top}");
    }
    let info = ok(qemu_img(&["info", "--output=json", "img.qcow2"]).current_dir(dir));
    assert!(info.contains("\"backing-filename\": \"json:{"), "{info}");
}

/// A 1 GiB qcow2 image whose file is held to its length plus `room`
/// clusters by a raw window: the `json:` name of each of two copies.
/// `bitmap_args` are the arguments of one `qemu-img bitmap` run each.
fn full_base(dir: &Path, room: u64, bitmap_args: &[&[&str]]) -> [String; 2] {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "b.qcow2", "1G"]).current_dir(dir));
    for one in bitmap_args {
        let mut args = vec!["bitmap"];
        args.extend_from_slice(one);
        ok(qemu_img(&args).current_dir(dir));
    }
    let len = std::fs::metadata(dir.join("b.qcow2")).unwrap().len();
    let size = len.next_multiple_of(64 << 10) + room * (64 << 10);
    qemu_io("raw", &dir.join("b.qcow2"), &[&format!("truncate {size}")]);
    ["img", "qemu"].map(|tool| {
        let copy = dir.join(format!("{tool}-b.qcow2"));
        std::fs::copy(dir.join("b.qcow2"), &copy).unwrap();
        json_name(&copy, None, Some(size))
    })
}

/// `qemu-img check` finds nothing wrong with the copy each tool changed,
/// and `qemu-img info` lists the same bitmaps in both.
fn same_clean_result(dir: &Path) {
    let mut infos = Vec::new();
    for tool in ["img", "qemu"] {
        let copy = dir.join(format!("{tool}-b.qcow2"));
        let check = run(&mut qemu_img(&["check", copy.to_str().unwrap()]));
        assert!(
            check.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let info = ok(&mut qemu_img(&[
            "info",
            "--output=json",
            copy.to_str().unwrap(),
        ]));
        let bitmaps: Vec<&str> = info
            .lines()
            .filter(|l| l.contains("\"name\":"))
            .map(str::trim)
            .collect();
        infos.push(format!("{bitmaps:?}"));
    }
    assert_eq!(infos[0], infos[1]);
}

#[test]
fn a_bitmap_that_cannot_be_stored_on_close_fails_bitmap_as_with_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No room at all: the new bitmap's table cannot be written.
    let [ours, theirs] = full_base(dir, 0, &[]);
    let out_ours = run(img(&["bitmap", "--add", &ours, "b1"]).current_dir(dir));
    let out_theirs = run(qemu_img(&["bitmap", "--add", &theirs, "b1"]).current_dir(dir));
    let (ours, theirs) = (
        (out_ours.status.code(), filtered(&out_ours.stderr)),
        (out_theirs.status.code(), filtered(&out_theirs.stderr)),
    );
    assert_eq!(ours, theirs);
    assert_eq!(ours.0, Some(1));
    assert_eq!(
        ours.1,
        "Lost persistent bitmaps during inactivation of node 'NODE_NAME': \
         Failed to write bitmap 'b1' to file: No space left on device\n\
         Error while closing the image: Invalid argument\n\
         Lost persistent bitmaps during inactivation of node 'NODE_NAME': \
         Failed to write bitmap 'b1' to file: No space left on device"
    );
    same_clean_result(dir);
}

#[test]
fn a_bitmap_that_cannot_be_stored_on_close_fails_commit_as_with_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Room for the committed cluster and its L2 table, not for the
    // (disabled, so unchanged by the commit) bitmap's new table.
    let names = full_base(dir, 2, &[&["--add", "b.qcow2", "b0", "--disable"]]);
    let mut results = Vec::new();
    for (tool, name) in [(img as fn(&[&str]) -> _, &names[0]), (qemu_img, &names[1])] {
        let top = dir.join("t.qcow2");
        ok(
            qemu_img(&["create", "-q", "-f", "qcow2", "-b", name, "-F", "qcow2"])
                .arg(&top)
                .current_dir(dir),
        );
        qemu_io("qcow2", &top, &["write -P 5 0 64k"]);
        let out = run(tool(&["commit", "-d", "t.qcow2"]).current_dir(dir));
        results.push((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            filtered(&out.stderr),
        ));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0].0, Some(1));
    assert_eq!(results[0].1, "", "no 'Image committed.'");
    assert!(results[0]
        .2
        .ends_with("Error while closing the image: Invalid argument"));
    same_clean_result(dir);
}

#[test]
fn commit_data_skips_free_gaps_shorter_than_its_runs_as_qemu_img() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Seven bitmaps leave free gaps of two clusters between their tables
    // (the 7-bitmap half of iotest qemu-img-close-errors, scaled down).
    // QEMU allocates each data run of the commit in one piece, so the
    // gaps stay free and the 32 committed clusters plus the L2 table
    // leave 14 clusters at the end: the 7 new bitmap tables and 7 data
    // clusters fit, the directory the close stores does not. Had the
    // data filled the gaps, the store would fit and the commit succeed.
    let names: Vec<String> = (1..=7).map(|i| format!("stale-bitmap-{i}")).collect();
    let adds: Vec<[&str; 3]> = names.iter().map(|n| ["--add", "b.qcow2", n]).collect();
    let adds: Vec<&[&str]> = adds.iter().map(|a| &a[..]).collect();
    let bases = full_base(dir, 46, &adds);
    let mut results = Vec::new();
    for (tool, name) in [(img as fn(&[&str]) -> _, &bases[0]), (qemu_img, &bases[1])] {
        let top = dir.join("t.qcow2");
        ok(
            qemu_img(&["create", "-q", "-f", "qcow2", "-b", name, "-F", "qcow2"])
                .arg(&top)
                .current_dir(dir),
        );
        ok(qemu_img(&["bitmap", "--add", "t.qcow2", "good-bitmap"]).current_dir(dir));
        qemu_io("qcow2", &top, &["write 0 2M"]);
        let commit = run(tool(&["commit", "-d", "t.qcow2"]).current_dir(dir));
        let add = run(tool(&["bitmap", "--add", name, "good-bitmap"]).current_dir(dir));
        results.push((
            commit.status.code(),
            String::from_utf8_lossy(&commit.stdout).into_owned(),
            filtered(&commit.stderr),
            add.status.code(),
            filtered(&add.stderr),
        ));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0].0, Some(1), "{:?}", results[0]);
    assert!(
        results[0]
            .2
            .contains("Failed to update bitmap extension: No space left on device"),
        "{:?}",
        results[0]
    );
    assert_eq!(results[0].3, Some(0), "{:?}", results[0]);
    same_clean_result(dir);
}
