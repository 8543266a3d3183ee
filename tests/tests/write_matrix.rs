//! Images made by `img create` and filled by `img convert` (and by the
//! library directly) over compat, cluster size, refcount width, extended
//! L2, preallocation and backing: qemu-img must find them clean, with no
//! leak, and equal to their source.

use std::path::Path;

use integration_tests::{assert_qemu_clean, img, make_raw, ok, qemu_img, require_qemu};

fn compare_equal(a: &Path, b: &Path) {
    let out = ok(qemu_img(&["compare"]).arg(a).arg(b));
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn created_and_converted_images_pass_qemu_check() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 5 << 20, 11);
    let mut n = 0;
    for compat in ["0.10", "1.1"] {
        for cs in ["512", "4k", "64k", "2M"] {
            for rc in ["1", "16", "64"] {
                for ext in ["off", "on"] {
                    for prealloc in ["off", "metadata", "falloc", "full"] {
                        if compat == "0.10" && (rc != "16" || ext == "on") {
                            continue;
                        }
                        if ext == "on" && (cs == "512" || cs == "4k") {
                            continue;
                        }
                        // Keep the matrix lean: full preallocation only with
                        // the default refcount width.
                        if prealloc == "full" && rc != "16" {
                            continue;
                        }
                        n += 1;
                        let image = d.join(format!("m{n}.qcow2"));
                        let opts = format!(
                            "compat={compat},cluster_size={cs},refcount_bits={rc},extended_l2={ext},preallocation={prealloc}"
                        );
                        ok(img(&["create", "-q", "-f", "qcow2", "-o", &opts])
                            .arg(&image)
                            .arg("5M"));
                        assert_qemu_clean(&image);
                        ok(img(&["convert", "-n", "-O", "qcow2"]).arg(&src).arg(&image));
                        assert_qemu_clean(&image);
                        compare_equal(&src, &image);
                        // And a fresh target created by convert itself.
                        let fresh = d.join(format!("f{n}.qcow2"));
                        ok(img(&["convert", "-O", "qcow2", "-o", &opts])
                            .arg(&src)
                            .arg(&fresh));
                        assert_qemu_clean(&fresh);
                        compare_equal(&src, &fresh);
                        std::fs::remove_file(&image).unwrap();
                        std::fs::remove_file(&fresh).unwrap();
                    }
                }
            }
        }
    }
    assert!(n > 40, "matrix too small: {n}");
}

#[test]
fn overlay_on_backing_reads_through_and_checks_clean() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    make_raw(&base, 4 << 20, 5);
    let overlay = d.join("over.qcow2");
    ok(img(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"]).arg(&overlay));
    let info = ok(qemu_img(&["info", "--output=json"]).arg(&overlay));
    assert!(
        info.contains("\"backing-filename\": \"base.raw\""),
        "{info}"
    );
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    assert!(info.contains("\"virtual-size\": 4194304"), "{info}");
    assert_qemu_clean(&overlay);
    compare_equal(&base, &overlay);
    // Convert a new source into the overlay keeping the backing file.
    let src = d.join("src.raw");
    make_raw(&src, 4 << 20, 6);
    ok(img(&["convert", "-n", "-O", "qcow2"])
        .arg(&src)
        .arg(&overlay));
    assert_qemu_clean(&overlay);
    compare_equal(&src, &overlay);
}

#[test]
fn qcow2_to_qcow2_and_back_round_trips() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 3 << 20, 9);
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    let back = d.join("back.raw");
    ok(img(&["convert", "-O", "qcow2"]).arg(&src).arg(&a));
    ok(img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k,refcount_bits=8",
    ])
    .arg(&a)
    .arg(&b));
    ok(img(&["convert", "-O", "raw"]).arg(&b).arg(&back));
    assert_qemu_clean(&a);
    assert_qemu_clean(&b);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    // Compressed output reads back equal and checks clean.
    let c = d.join("c.qcow2");
    ok(img(&["convert", "-c", "-O", "qcow2"]).arg(&src).arg(&c));
    assert_qemu_clean(&c);
    compare_equal(&src, &c);
    // Several sources concatenate.
    let cat = d.join("cat.qcow2");
    ok(img(&["convert", "-O", "qcow2"]).arg(&src).arg(&a).arg(&cat));
    let info = ok(qemu_img(&["info", "--output=json"]).arg(&cat));
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 6 << 20)),
        "{info}"
    );
    assert_qemu_clean(&cat);
}

#[test]
fn convert_with_backing_copies_only_the_top_layer() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("base.raw"), 4 << 20, 12);
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
    ])
    .current_dir(d));
    integration_tests::qemu_io(
        "qcow2",
        &d.join("top.qcow2"),
        &["write -P 0x42 1M 128k", "write -z 2M 64k"],
    );
    ok(img(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
        "new.qcow2",
    ])
    .current_dir(d));
    assert_qemu_clean(&d.join("new.qcow2"));
    compare_equal(&d.join("top.qcow2"), &d.join("new.qcow2"));
    // Only the top layer's clusters were copied.
    let map = ok(qemu_img(&["map", "--output=json", "new.qcow2"]).current_dir(d));
    let data_bytes: u64 = map
        .lines()
        .filter(|l| l.contains("\"depth\": 0") && l.contains("\"data\": true"))
        .map(|l| {
            let s = l.split("\"length\": ").nth(1).unwrap();
            s[..s.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(data_bytes, 128 << 10, "{map}");
}
