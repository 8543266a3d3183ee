//! Messages and figures img prints where qemu-img is the reference, byte
//! for byte (stdout, stderr with the program's name as the only
//! difference, and the exit status): a snapshot that does not exist, and
//! `check` after `resize --shrink` (its image end offset).

use std::path::Path;

use integration_tests::{img, ok, qemu_img, require_qemu, run};

/// `img ARGS` and `qemu-img ARGS`, each on its own copy of `image` (in
/// `dir`, run from there so names agree), print the same and exit alike.
fn same_as_qemu(dir: &Path, image: &str, args: &[&str]) {
    let (ours, theirs) = (format!("ours-{image}"), format!("theirs-{image}"));
    std::fs::copy(dir.join(image), dir.join(&ours)).unwrap();
    std::fs::copy(dir.join(image), dir.join(&theirs)).unwrap();
    let with = |name: &str| -> Vec<String> {
        args.iter()
            .map(|a| {
                if *a == image {
                    name.to_string()
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    let o = run(img(&[]).args(with(&ours)).current_dir(dir));
    let t = run(qemu_img(&[]).args(with(&theirs)).current_dir(dir));
    let what = args.join(" ");
    let err = |out: &std::process::Output, name: &str| {
        String::from_utf8_lossy(&out.stderr)
            .replace("qemu-img:", "img:")
            .replace(name, image)
    };
    assert_eq!(err(&o, &ours), err(&t, &theirs), "`{what}`: stderr");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).replace(&ours, image),
        String::from_utf8_lossy(&t.stdout).replace(&theirs, image),
        "`{what}`: stdout"
    );
    assert_eq!(o.status.code(), t.status.code(), "`{what}`: exit status");
}

#[test]
fn a_missing_snapshot_is_reported_as_qemu_img_reports_it() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]).current_dir(d));
    for with_one in [false, true] {
        if with_one {
            ok(qemu_img(&["snapshot", "-c", "s1", "a.qcow2"]).current_dir(d));
        }
        for args in [
            &["snapshot", "-a", "nope", "a.qcow2"][..],
            &["snapshot", "-d", "nope", "a.qcow2"],
            &["convert", "-l", "nope", "-O", "raw", "a.qcow2", "x.raw"],
            &[
                "convert",
                "-l",
                "snapshot.name=nope",
                "-O",
                "raw",
                "a.qcow2",
                "x.raw",
            ],
            &[
                "measure",
                "-l",
                "snapshot.name=nope",
                "-O",
                "qcow2",
                "a.qcow2",
            ],
        ] {
            same_as_qemu(d, "a.qcow2", args);
        }
    }
}

#[test]
fn check_after_a_shrink_reports_qemu_imgs_image_end_offset() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Empty, and with data in both halves; shrunk inside an L2 table's
    // span and on a cluster boundary, then to an L2 boundary (512 MiB).
    for (name, size, writes, new_size) in [
        ("empty.qcow2", "64M", &[][..], "32M"),
        (
            "data.qcow2",
            "64M",
            &["write -P 1 0 64k", "write -P 2 48M 64k"],
            "40000k",
        ),
        ("big.qcow2", "1G", &["write -P 3 600M 64k"], "512M"),
    ] {
        ok(qemu_img(&["create", "-q", "-f", "qcow2", name, size]).current_dir(d));
        if !writes.is_empty() {
            integration_tests::qemu_io("qcow2", &d.join(name), writes);
        }
        let shrunk = format!("shrunk-{name}");
        for tool in ["ours", "theirs"] {
            let copy = format!("{tool}-{shrunk}");
            std::fs::copy(d.join(name), d.join(&copy)).unwrap();
            let mut resize = if tool == "ours" {
                img(&[])
            } else {
                qemu_img(&[])
            };
            ok(resize
                .args(["resize", "-q", "--shrink", &copy, new_size])
                .current_dir(d));
        }
        std::fs::copy(d.join(format!("ours-{shrunk}")), d.join(&shrunk)).unwrap();
        std::fs::rename(
            d.join(format!("theirs-{shrunk}")),
            d.join(format!("qemu-{shrunk}")),
        )
        .unwrap();
        // Each tool checks the image the other shrank too.
        for image in [shrunk.clone(), format!("qemu-{shrunk}")] {
            same_as_qemu(d, &image, &["check", "--output=json", &image]);
        }
        // qemu-img's check of the two shrunk images reads the same.
        let check = |image: &str| {
            ok(qemu_img(&["check", "--output=json", image]).current_dir(d)).replace(image, "x")
        };
        assert_eq!(check(&shrunk), check(&format!("qemu-{shrunk}")), "{name}");
        let ours = std::fs::metadata(d.join(&shrunk)).unwrap().len();
        let theirs = std::fs::metadata(d.join(format!("qemu-{shrunk}")))
            .unwrap()
            .len();
        assert_eq!(ours, theirs, "{name}: file length after the shrink");
    }
}
