//! A qcow2 image made with `preallocation=metadata`: QEMU 10 finds it so
//! (more clusters counted in use than the host file allocated,
//! qcow2_detect_metadata_preallocation) and then asks the host file about
//! its data clusters, so that those in the file's holes show as
//! `"zero": true` in `map` and read as zero by block status. Held against
//! qemu-img on such an image alone, as the backing file of another, and
//! two levels down: `map` (both output formats), `convert` (the output's
//! allocation) and `compare`.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, require_qemu, run};

/// stdout, stderr and the exit code, with the program's name taken out.
fn outcome(out: &std::process::Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace("qemu-img: ", "img: "),
        out.status.code(),
    )
}

/// A 4 MiB base preallocated with metadata, with data at 1 MiB and a
/// zeroed range at 2 MiB; a top over it with data at 3 MiB; a second top
/// over that.
fn make_chain(d: &Path) {
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
    ])
    .arg(d.join("base.qcow2"))
    .arg("4M"));
    qemu_io(
        "qcow2",
        &d.join("base.qcow2"),
        &[
            "write -P 0x22 1M 64k",
            "write -z 2M 64k",
            "write -P 0 2560k 4k",
        ],
    );
    for (top, below) in [("top.qcow2", "base.qcow2"), ("top2.qcow2", "top.qcow2")] {
        ok(
            qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(below)
                .arg(d.join(top)),
        );
    }
    qemu_io("qcow2", &d.join("top.qcow2"), &["write -P 0x33 3M 4k"]);
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(d.join("empty.qcow2"))
        .arg("4M"));
}

#[test]
fn map_of_a_metadata_preallocated_image_and_its_children() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_chain(d);
    let mut failures = Vec::new();
    for name in ["base.qcow2", "top.qcow2", "top2.qcow2"] {
        for output in ["--output=json", "--output=human"] {
            let args = ["map", output, name];
            let ours = outcome(&run(img(&args).current_dir(d)));
            let theirs = outcome(&run(qemu_img(&args).current_dir(d)));
            if ours != theirs {
                failures.push(format!(
                    "map {output} {name}\nours:   {ours:?}\ntheirs: {theirs:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn convert_and_compare_over_a_metadata_preallocated_backing_file() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_chain(d);
    let mut failures = Vec::new();
    for name in ["base.qcow2", "top.qcow2", "top2.qcow2"] {
        for (format, extra) in [
            ("qcow2", &[][..]),
            ("raw", &[][..]),
            ("qcow2", &["-B", "base.qcow2", "-F", "qcow2"][..]),
        ] {
            if !extra.is_empty() && name == "base.qcow2" {
                continue;
            }
            let (o, t) = (format!("o.{format}"), format!("t.{format}"));
            let mut args = vec!["convert", "-O", format];
            args.extend_from_slice(extra);
            args.push(name);
            ok(img(&[&args[..], &[&o]].concat()).current_dir(d));
            ok(qemu_img(&[&args[..], &[&t]].concat()).current_dir(d));
            let maps: Vec<_> = [&o, &t]
                .iter()
                .map(|f| outcome(&run(qemu_img(&["map", "--output=json", f]).current_dir(d))))
                .collect();
            if maps[0] != maps[1] {
                failures.push(format!(
                    "convert {args:?}: outputs' maps\nours:   {:?}\ntheirs: {:?}",
                    maps[0], maps[1]
                ));
            }
            std::fs::remove_file(d.join(&o)).unwrap();
            std::fs::remove_file(d.join(&t)).unwrap();
        }
    }
    for (a, b) in [
        ("base.qcow2", "empty.qcow2"),
        ("empty.qcow2", "base.qcow2"),
        ("top.qcow2", "base.qcow2"),
        ("top2.qcow2", "top.qcow2"),
        ("top2.qcow2", "empty.qcow2"),
    ] {
        let args = ["compare", a, b];
        let ours = outcome(&run(img(&args).current_dir(d)));
        let theirs = outcome(&run(qemu_img(&args).current_dir(d)));
        if ours != theirs {
            failures.push(format!(
                "compare {a} {b}\nours:   {ours:?}\ntheirs: {theirs:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
