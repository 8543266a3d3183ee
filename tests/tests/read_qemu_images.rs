//! Images written by qemu-img and qemu-io must read through `img convert
//! -O raw` byte-identical to qemu-img's own conversion: compressed (zlib and
//! zstd), zero and discarded clusters, extended L2, v2 and v3, small and
//! large clusters, a three-level backing chain and an external data file.

use std::path::Path;

use integration_tests::{img, make_raw, ok, qemu_img, qemu_io, read, require_qemu};

/// Converts with both tools and compares the raw results.
fn assert_reads_like_qemu(image: &Path, dir: &Path) {
    let ours = dir.join("ours.raw");
    let theirs = dir.join("theirs.raw");
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
    ok(img(&["convert", "-O", "raw"]).arg(image).arg(&ours));
    ok(qemu_img(&["convert", "-O", "raw"]).arg(image).arg(&theirs));
    let a = read(&ours);
    let b = read(&theirs);
    assert_eq!(a.len(), b.len(), "{}: sizes differ", image.display());
    if a != b {
        let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
        panic!("{}: first difference at byte {at}", image.display());
    }
}

/// Fills an image with qemu-io: data, zeroes, discards, across clusters.
fn scribble(fmt: &str, image: &Path) {
    qemu_io(
        fmt,
        image,
        &[
            "write -P 0x11 0 300k",
            "write -P 0x22 1000k 70k",
            "write -z 64k 128k",
            "discard 1M 64k",
            "write -P 0x33 5M 4k",
            "write -P 0x44 7m 1m",
            "write -z -u 7m 512k",
        ],
    );
}

#[test]
fn qemu_written_images_read_identically() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &str)] = &[
        ("v3-64k", "compat=1.1"),
        ("v2-64k", "compat=0.10"),
        ("v3-512", "cluster_size=512"),
        ("v3-2m", "cluster_size=2M"),
        ("v3-extl2", "extended_l2=on,cluster_size=32k"),
        ("v3-rc1", "refcount_bits=1"),
        ("v3-rc64", "refcount_bits=64"),
        ("v3-lazy", "lazy_refcounts=on"),
        ("v3-prealloc", "preallocation=metadata"),
    ];
    for (name, opts) in cases {
        let image = d.join(format!("{name}.qcow2"));
        ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts])
            .arg(&image)
            .arg("9M"));
        scribble("qcow2", &image);
        assert_reads_like_qemu(&image, d);
    }
}

#[test]
fn compressed_clusters_read_identically() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 8 << 20, 7);
    for ctype in ["zlib", "zstd"] {
        for cs in ["4k", "64k", "2M"] {
            let image = d.join(format!("c-{ctype}-{cs}.qcow2"));
            ok(qemu_img(&["convert", "-c", "-O", "qcow2", "-o"])
                .arg(format!("compression_type={ctype},cluster_size={cs}"))
                .arg(&src)
                .arg(&image));
            // Partial overwrites of compressed clusters too.
            qemu_io("qcow2", &image, &["write -P 0x55 100k 10k"]);
            assert_reads_like_qemu(&image, d);
        }
    }
}

#[test]
fn backing_chain_of_three_reads_identically() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    make_raw(&base, 6 << 20, 3);
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"])
            .arg(&mid)
            .arg("7M"),
    );
    qemu_io("qcow2", &mid, &["write -P 0x66 1M 200k", "write -z 2M 64k"]);
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
    ])
    .arg(&top)
    .arg("8M"));
    qemu_io(
        "qcow2",
        &top,
        &[
            "write -P 0x77 1100k 300k",
            "discard 0 64k",
            "write -P 0x78 6800k 1k",
        ],
    );
    assert_reads_like_qemu(&top, d);
    assert_reads_like_qemu(&mid, d);
}

#[test]
fn external_data_file_reads_identically() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for raw in ["off", "on"] {
        let image = d.join(format!("ext-{raw}.qcow2"));
        ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!(
                "data_file={},data_file_raw={raw}",
                d.join(format!("ext-{raw}.data")).display()
            ))
            .arg(&image)
            .arg("9M"));
        scribble("qcow2", &image);
        assert_reads_like_qemu(&image, d);
    }
}
