//! `img amend` against `qemu-img amend` on copies of the same image: both
//! succeed or both refuse; after a change the guest sees the same disk
//! (in the active image and in every snapshot), qemu-img reports the same
//! format options, and `qemu-img check` finds nothing in ours. A refused
//! amendment leaves the file byte for byte as it was.

use std::path::Path;

use integration_tests::{
    assert_qemu_clean, img, make_raw, ok, qemu_img, qemu_io, read, require_qemu, run,
};

/// The guest view of `name` (or of snapshot `snap` in it) as raw bytes,
/// read by qemu-img.
fn view(d: &Path, name: &str, snap: Option<&str>) -> Vec<u8> {
    let out = d.join(format!("{name}.{}.view", snap.unwrap_or("active")));
    let mut c = qemu_img(&["convert", "-O", "raw"]);
    if let Some(s) = snap {
        c.args(["-l", &format!("snapshot.name={s}")]);
    }
    ok(c.args([name, out.to_str().unwrap()]).current_dir(d));
    read(&out)
}

/// qemu-img's "Format specific information" and virtual size, which an
/// amendment changes.
fn format_info(d: &Path, name: &str) -> serde_json::Value {
    let out = ok(qemu_img(&["info", "--output=json", name]).current_dir(d));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::json!({
        "size": v["virtual-size"],
        "specific": v["format-specific"],
        "backing": v["backing-filename"],
        "snapshots": v["snapshots"].as_array().map(|a| a.len()),
    })
}

/// A v3 image with data, zero clusters (plain and allocated), a compressed
/// cluster and a snapshot taken in the middle of it all, over a backing
/// file when `backed`.
fn make_image(d: &Path, name: &str, create_opts: &str, backed: bool) {
    let mut c = qemu_img(&["create", "-q", "-f", "qcow2", "-o", create_opts]);
    if backed {
        make_raw(&d.join("base.raw"), 8 << 20, 5);
        c.args(["-b", "base.raw", "-F", "raw"]);
    }
    ok(c.args([name, "8M"]).current_dir(d));
    let p = d.join(name);
    qemu_io(
        "qcow2",
        &p,
        &[
            "write -P 1 0 1M",
            "write -z 256k 128k",
            "write -z 2M 192k",
            "write -c -P 3 3M 64k",
        ],
    );
    ok(qemu_img(&["snapshot", "-c", "s1"]).arg(&p));
    qemu_io(
        "qcow2",
        &p,
        &[
            "write -P 2 512k 64k",
            "write -z 0 64k",
            "write -z 3M 64k",
            "write -P 4 5M 100k",
        ],
    );
}

/// Runs one amendment on copies with both tools and compares.
///
/// Expects a source image with the given snapshots.
fn compare_amend(d: &Path, source: &str, opts: &str, snapshots: &[&str]) {
    std::fs::copy(d.join(source), d.join("ours.qcow2")).unwrap();
    std::fs::copy(d.join(source), d.join("theirs.qcow2")).unwrap();
    let before = read(&d.join("ours.qcow2"));
    let ours = run(img(&["amend", "-o", opts, "ours.qcow2"]).current_dir(d));
    let theirs = run(qemu_img(&["amend", "-o", opts, "theirs.qcow2"]).current_dir(d));
    assert_eq!(
        ours.status.success(),
        theirs.status.success(),
        "{source} -o {opts}: ours {:?} {}, qemu-img {:?} {}",
        ours.status,
        String::from_utf8_lossy(&ours.stderr),
        theirs.status,
        String::from_utf8_lossy(&theirs.stderr)
    );
    if !ours.status.success() {
        let ours_err = String::from_utf8_lossy(&ours.stderr);
        let theirs_err = String::from_utf8_lossy(&theirs.stderr);
        let theirs_first = theirs_err
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("qemu-img: ");
        assert!(
            ours_err.contains(theirs_first),
            "{opts}: message {ours_err:?} should carry qemu-img's {theirs_first:?}"
        );
        assert_eq!(
            ours_err.lines().count(),
            theirs_err.lines().count(),
            "as many lines as qemu-img: {ours_err:?}"
        );
        assert!(
            read(&d.join("ours.qcow2")) == before,
            "{opts}: refused but changed"
        );
        return;
    }
    assert_qemu_clean(&d.join("ours.qcow2"));
    assert_eq!(
        format_info(d, "ours.qcow2"),
        format_info(d, "theirs.qcow2"),
        "{source} -o {opts}"
    );
    // The guest must see what it saw before, in the active image and in
    // every snapshot. qemu-img's result is held to the active view only:
    // QEMU 10's downgrade writes zeroes into clusters a snapshot still
    // shares (its image then fails its own check with OFLAG_COPIED
    // errors), so its snapshot views are not a reference.
    // A size change keeps the common part (and both tools must agree on
    // the rest).
    let source_view = view(d, source, None);
    let ours_view = view(d, "ours.qcow2", None);
    let common = source_view.len().min(ours_view.len());
    assert!(
        ours_view[..common] == source_view[..common],
        "{source} -o {opts}: our active view changed"
    );
    assert!(
        view(d, "theirs.qcow2", None) == ours_view,
        "{source} -o {opts}: qemu-img's active view differs from ours"
    );
    for s in snapshots {
        let (ours, before) = (view(d, "ours.qcow2", Some(s)), view(d, source, Some(s)));
        let common = ours.len().min(before.len());
        assert!(
            ours[..common] == before[..common],
            "{source} -o {opts}: snapshot {s} changed"
        );
    }
}

#[test]
fn amend_matches_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(d, "v3.qcow2", "compat=1.1", false);
    make_image(d, "backed.qcow2", "compat=1.1,cluster_size=4k", true);
    make_image(d, "v2.qcow2", "compat=0.10", false);
    make_image(d, "lazy.qcow2", "lazy_refcounts=on,refcount_bits=64", false);
    make_image(d, "ext.qcow2", "extended_l2=on", false);
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "zstd.qcow2",
        "1M",
    ])
    .current_dir(d));
    for (source, opts) in [
        ("v3.qcow2", "compat=0.10"),
        ("v3.qcow2", "refcount_bits=1"),
        ("v3.qcow2", "refcount_bits=64"),
        ("v3.qcow2", "lazy_refcounts=on"),
        ("v3.qcow2", "size=16M"),
        ("v3.qcow2", "size=6M"),
        ("v3.qcow2", "compat=0.10,refcount_bits=8"),
        ("v3.qcow2", "compat=0.10,lazy_refcounts=on"),
        ("v3.qcow2", "compat=0.8"),
        ("v3.qcow2", "refcount_bits=12"),
        ("v3.qcow2", "cluster_size=4k"),
        ("v3.qcow2", "data_file=x.raw"),
        ("v3.qcow2", "data_file_raw=on"),
        ("v3.qcow2", "nonsense=1"),
        ("backed.qcow2", "compat=0.10"),
        ("backed.qcow2", "refcount_bits=2,lazy_refcounts=on"),
        ("v2.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=v3,refcount_bits=32"),
        ("v2.qcow2", "lazy_refcounts=on"),
        ("v2.qcow2", "refcount_bits=8"),
        ("lazy.qcow2", "compat=0.10"),
        (
            "lazy.qcow2",
            "lazy_refcounts=off,refcount_bits=16,compat=0.10",
        ),
        ("ext.qcow2", "compat=0.10"),
        ("zstd.qcow2", "compat=0.10"),
    ] {
        let snapshots: &[&str] = if source == "zstd.qcow2" { &[] } else { &["s1"] };
        compare_amend(d, source, opts, snapshots);
    }
}

#[test]
fn narrowing_refcounts_below_a_count_is_refused() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(d, "v3.qcow2", "compat=1.1", false);
    // Two snapshots share clusters three ways: 1-bit refcounts cannot hold 3.
    ok(qemu_img(&["snapshot", "-c", "s2", "v3.qcow2"]).current_dir(d));
    let before = read(&d.join("v3.qcow2"));
    let out = run(img(&["amend", "-o", "refcount_bits=1", "v3.qcow2"]).current_dir(d));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Cannot decrease refcount entry width to 1 bits"),
        "{err}"
    );
    assert!(read(&d.join("v3.qcow2")) == before, "refused but changed");
    // Two bits hold it.
    ok(img(&["amend", "-o", "refcount_bits=2", "v3.qcow2"]).current_dir(d));
    assert_qemu_clean(&d.join("v3.qcow2"));
}

#[test]
fn amend_backing_file_is_refused_as_qemu_img_refuses() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(d, "backed.qcow2", "compat=1.1", true);
    std::fs::copy(d.join("base.raw"), d.join("moved.raw")).unwrap();
    std::fs::copy(d.join("backed.qcow2"), d.join("theirs.qcow2")).unwrap();
    let before = read(&d.join("backed.qcow2"));
    // A new name, a name without its format, a format alone: qemu-img 10
    // refuses each and points at rebase; the file stays as it was.
    for opts in [
        "backing_file=moved.raw,backing_fmt=raw",
        "backing_file=base.raw",
        "backing_fmt=qcow2",
    ] {
        let ours = run(img(&["amend", "-o", opts, "backed.qcow2"]).current_dir(d));
        let theirs = run(qemu_img(&["amend", "-o", opts, "theirs.qcow2"]).current_dir(d));
        assert!(!ours.status.success() && !theirs.status.success(), "{opts}");
        let err = String::from_utf8_lossy(&ours.stderr);
        assert!(
            err.ends_with(
                ": Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.\n"
            ),
            "{opts}: {err}"
        );
        assert!(read(&d.join("backed.qcow2")) == before, "{opts}: changed");
    }
    // Restating the current name and format is no change, and allowed.
    ok(img(&[
        "amend",
        "-o",
        "backing_file=base.raw,backing_fmt=raw,lazy_refcounts=on",
        "backed.qcow2",
    ])
    .current_dir(d));
    assert_eq!(format_info(d, "backed.qcow2")["backing"], "base.raw");
    assert_qemu_clean(&d.join("backed.qcow2"));
    // Raw images have nothing to amend.
    make_raw(&d.join("plain.raw"), 1 << 20, 1);
    let out = run(img(&["amend", "-f", "raw", "-o", "size=2M", "plain.raw"]).current_dir(d));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support option amendment"));
    let out = run(img(&["amend", "plain.raw"]).current_dir(d));
    assert!(!out.status.success());
}

#[test]
fn amend_option_help_matches_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(d, "v3.qcow2", "compat=1.1", false);
    let cases: [&[&str]; 6] = [
        &["amend", "-f", "qcow2", "-o", "help"],
        &["amend", "-f", "luks", "-o", "help"],
        &["amend", "-f", "bochs", "-o", "help"],
        &["amend", "-f", "nosuch", "-o", "help"],
        &["amend", "-o", "help"],
        &["amend", "-o", "cluster_size=4k,?", "v3.qcow2"],
    ];
    for args in cases {
        let ours = run(img(args).current_dir(d));
        let theirs = run(qemu_img(args).current_dir(d));
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        let strip = |e: &[u8]| {
            String::from_utf8_lossy(e)
                .lines()
                .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&ours.stderr), strip(&theirs.stderr), "{args:?}");
    }
}
