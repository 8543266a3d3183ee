//! `img commit` into a base whose clusters differ from the top's (512
//! bytes, 2 MiB, 128 KiB with subclusters) or whose size is not a
//! multiple of the top's clusters (4100 KiB), or which is smaller than the
//! top (grown first). qemu-img commit runs a mirror job: granules of the
//! base's cluster size (4-64 KiB), zeros written as zeros only over whole
//! base subclusters and copied as data otherwise. Each case runs on two
//! copies of one chain, one per tool; the bases must then agree in
//! content (`qemu-img compare`), in what `qemu-img map` says of each
//! range (host offsets aside: the job's order of writes is its own), and
//! in `qemu-img check` (fragmentation and end offset aside); the tops'
//! maps must agree too.

use std::path::Path;

use integration_tests::{img, map_ranges, ok, qemu_img, qemu_io, require_qemu, run};

/// `qemu-img check`'s report without what depends on the host layout.
fn check_report(path: &Path) -> String {
    let out = run(qemu_img(&["check"]).arg(path));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("Image end offset"))
        .map(|l| match l.find(", ") {
            Some(i) if l.contains("fragmented") => {
                let rest = &l[i + 2..];
                let after = rest.find(", ").map_or("", |j| &rest[j..]);
                format!("{}{after}", &l[..i])
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A base of `base_opts` and `base_size` (filled as `fill` says) under a
/// top of `top_opts` and `top_size` written with `top_ops`.
fn make_chain(dir: &Path, side: &str, case: &Case) {
    let base = dir.join(format!("{side}-base.qcow2"));
    let top = dir.join(format!("{side}-top.qcow2"));
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", case.base_opts])
            .arg(&base)
            .arg(case.base_size),
    );
    match case.fill {
        "full" => qemu_io(
            "qcow2",
            &base,
            &[&format!("write -P 0x11 0 {}", case.base_size)],
        ),
        "part" => qemu_io(
            "qcow2",
            &base,
            &["write -P 0x11 60k 200k", "write -P 0x44 3M 1000k"],
        ),
        _ => {}
    }
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-o"])
            .arg(case.top_opts)
            .arg("-b")
            .arg(&base)
            .arg(&top)
            .arg(case.top_size),
    );
    qemu_io("qcow2", &top, case.top_ops);
}

/// Data, zeros and discards, most of them off the base's clusters.
const MIXED: &[&str] = &[
    "write -P 0x22 8k 4k",
    "write -z 128k 64k",
    "write -P 0x33 4000k 96k",
    "write -z 1M 8k",
    "write -z -u 2M 192k",
    "discard 3M 64k",
    "write -z 4090k 6k",
];

/// Zeros and discards only, in parts of the base's clusters.
const ZEROS: &[&str] = &[
    "write -z 128k 64k",
    "write -z -u 2M 192k",
    "discard 3M 64k",
    "write -z 4090k 6k",
];

struct Case {
    base_opts: &'static str,
    base_size: &'static str,
    top_opts: &'static str,
    top_size: &'static str,
    fill: &'static str,
    top_ops: &'static [&'static str],
}

#[test]
fn commit_into_a_base_with_other_clusters_or_an_unaligned_end() {
    require_qemu!();
    let mut cases = Vec::new();
    for base_opts in [
        "cluster_size=512",
        "cluster_size=2M",
        "cluster_size=128k,extended_l2=on",
    ] {
        for (base_size, top_size) in [("4M", "4M"), ("4100k", "4100k"), ("4100k", "5000k")] {
            if base_opts == "cluster_size=2M" && base_size != "4M" {
                continue;
            }
            for (top_opts, fill, top_ops) in [
                ("cluster_size=64k", "none", MIXED),
                ("cluster_size=64k", "part", MIXED),
                ("cluster_size=32k,extended_l2=on", "full", MIXED),
                ("cluster_size=64k", "none", ZEROS),
                ("cluster_size=64k", "part", ZEROS),
            ] {
                cases.push(Case {
                    base_opts,
                    base_size,
                    top_opts,
                    top_size,
                    fill,
                    top_ops,
                });
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut failures = Vec::new();
    for case in &cases {
        let label = format!(
            "base {} {}, top {} {}, base {}, {} top writes",
            case.base_opts,
            case.base_size,
            case.top_opts,
            case.top_size,
            case.fill,
            case.top_ops.len()
        );
        make_chain(d, "o", case);
        make_chain(d, "t", case);
        let ours = run(img(&["commit"]).arg(d.join("o-top.qcow2")));
        let theirs = run(qemu_img(&["commit"]).arg(d.join("t-top.qcow2")));
        if (ours.status.code(), &ours.stdout) != (theirs.status.code(), &theirs.stdout) {
            failures.push(format!("{label}: commit {ours:?} vs {theirs:?}"));
            continue;
        }
        let (ob, tb) = (d.join("o-base.qcow2"), d.join("t-base.qcow2"));
        let same = run(qemu_img(&["compare"]).arg(&ob).arg(&tb));
        if same.status.code() != Some(0) {
            failures.push(format!(
                "{label}: bases differ: {}",
                String::from_utf8_lossy(&same.stdout).trim()
            ));
        }
        let (om, tm) = (map_ranges(&ob), map_ranges(&tb));
        if om != tm {
            failures.push(format!(
                "{label}: base maps\nours:   {om:?}\ntheirs: {tm:?}"
            ));
        }
        let (oc, tc) = (check_report(&ob), check_report(&tb));
        if oc != tc {
            failures.push(format!("{label}: base checks\nours:   {oc}\ntheirs: {tc}"));
        }
        let (ot, tt) = (
            map_ranges(&d.join("o-top.qcow2")),
            map_ranges(&d.join("t-top.qcow2")),
        );
        if ot != tt {
            failures.push(format!("{label}: top maps\nours:   {ot:?}\ntheirs: {tt:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
