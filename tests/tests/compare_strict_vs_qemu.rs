//! `img compare`, with and without `-s`, against qemu-img 10 over every
//! ordered pair of a set of 8 MiB images that differ in how they hold the
//! same or nearly the same contents: qcow2 images with data, zero
//! clusters (plain and preallocated), compressed clusters, subclusters,
//! data clusters out of order in the file, metadata preallocation, 4 KiB
//! clusters (an L2 table covers 2 MiB) and 64 KiB ones (one table covers
//! the disk); raw files with holes, with zeros written as data, with a
//! single byte off a sector; backing chains over qcow2 and raw files and
//! over a shorter backing file; and an image of another size.
//!
//! In strict mode qemu-img compares the two chains' whole block-status
//! words (data, zero, offset, allocated and end-of-file flags, with the
//! lengths its drivers answer for), so where one image answers for a
//! whole disk and the other for one L2 table, their words already differ
//! at offset 0. Outside it, a mismatch is reported at the first differing
//! 512-byte sector of the chunk read.

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

fn create(d: &Path, name: &str, opts: &[&str], size: &str) {
    ok(qemu_img(&[&["create", "-q", "-f", "qcow2"], opts].concat())
        .arg(d.join(name))
        .arg(size));
}

fn raw(d: &Path, name: &str) {
    let f = std::fs::File::create(d.join(name)).unwrap();
    f.set_len(8 << 20).unwrap();
}

/// The usual contents: a 1 MiB run at 1 MiB and 12 KiB at 5 MiB.
const CONTENTS: [&str; 2] = ["write -P 0x5a 1M 1M", "write -P 0x11 5M 12k"];

fn make_images(d: &Path) {
    create(d, "q4k_empty.qcow2", &["-o", "cluster_size=4k"], "8M");
    create(d, "q64k_empty.qcow2", &[], "8M");
    raw(d, "raw_sparse.raw");
    raw(d, "raw_data.raw");
    qemu_io("raw", &d.join("raw_data.raw"), &CONTENTS);
    raw(d, "raw_zeros.raw");
    qemu_io(
        "raw",
        &d.join("raw_zeros.raw"),
        &[&["write -P 0 0 8M"], &CONTENTS[..]].concat(),
    );
    raw(d, "raw_byte.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("raw_byte.raw"))
            .unwrap();
        f.write_all_at(b"x", 70000).unwrap();
    }
    create(d, "q_data.qcow2", &[], "8M");
    qemu_io("qcow2", &d.join("q_data.qcow2"), &CONTENTS);
    // The same contents with the first run's halves swapped in the file.
    create(d, "q_frag.qcow2", &[], "8M");
    qemu_io(
        "qcow2",
        &d.join("q_frag.qcow2"),
        &[
            "write -P 0x11 5M 12k",
            "write -P 0x5a 1536k 512k",
            "write -P 0x5a 1M 512k",
        ],
    );
    create(d, "q_zero.qcow2", &[], "8M");
    qemu_io(
        "qcow2",
        &d.join("q_zero.qcow2"),
        &[&CONTENTS[..], &["write -z 6M 1M"]].concat(),
    );
    create(d, "q_zero_alloc.qcow2", &[], "8M");
    qemu_io(
        "qcow2",
        &d.join("q_zero_alloc.qcow2"),
        &[&CONTENTS[..], &["write -P 1 6M 1M", "write -z 6M 1M"]].concat(),
    );
    ok(qemu_img(&["convert", "-c", "-O", "qcow2"])
        .arg(d.join("raw_data.raw"))
        .arg(d.join("q_compressed.qcow2")));
    create(
        d,
        "q_prealloc.qcow2",
        &["-o", "preallocation=metadata"],
        "8M",
    );
    qemu_io("qcow2", &d.join("q_prealloc.qcow2"), &CONTENTS);
    create(d, "q_ext.qcow2", &["-o", "extended_l2=on"], "8M");
    qemu_io(
        "qcow2",
        &d.join("q_ext.qcow2"),
        &[&CONTENTS[..], &["write -P 2 6M 8k", "write -z 6M 4k"]].concat(),
    );
    create(d, "base.qcow2", &[], "8M");
    qemu_io("qcow2", &d.join("base.qcow2"), &CONTENTS[..1]);
    create(d, "top.qcow2", &["-b", "base.qcow2", "-F", "qcow2"], "8M");
    qemu_io("qcow2", &d.join("top.qcow2"), &CONTENTS[1..]);
    create(
        d,
        "top_raw.qcow2",
        &["-b", "raw_data.raw", "-F", "raw"],
        "8M",
    );
    qemu_io("qcow2", &d.join("top_raw.qcow2"), &["write -z 1M 64k"]);
    create(d, "short.qcow2", &[], "4M");
    qemu_io("qcow2", &d.join("short.qcow2"), &CONTENTS[..1]);
    create(
        d,
        "top_long.qcow2",
        &["-b", "short.qcow2", "-F", "qcow2"],
        "8M",
    );
    qemu_io("qcow2", &d.join("top_long.qcow2"), &CONTENTS[1..]);
    // Of another size: the common part compared, then the excess.
    create(d, "q_small.qcow2", &[], "4M");
    qemu_io("qcow2", &d.join("q_small.qcow2"), &CONTENTS[..1]);
}

/// Every ordered pair, with and without `-s`, and `-s` of each image with
/// itself.
#[test]
fn compare_strict_vs_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_images(d);
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut strict_mismatches = 0;
    for a in &names {
        for b in &names {
            for strict in [true, false] {
                let mut args = vec!["compare"];
                if strict {
                    args.push("-s");
                }
                args.extend([a.as_str(), b.as_str()]);
                let ours = outcome(&run(img(&args).current_dir(d)));
                let theirs = outcome(&run(qemu_img(&args).current_dir(d)));
                if theirs.0.contains("block status mismatch") {
                    strict_mismatches += 1;
                }
                if ours != theirs {
                    failures.push(format!(
                        "{}\n  ours:   {ours:?}\n  theirs: {theirs:?}",
                        args.join(" ")
                    ));
                }
            }
        }
    }
    // The set exercises the strict comparison, not only sizes.
    assert!(strict_mismatches > 100, "{strict_mismatches}");
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        names.len() * names.len() * 2,
        failures.join("\n")
    );
}
