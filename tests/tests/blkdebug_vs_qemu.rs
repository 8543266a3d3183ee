//! QEMU's blkdebug error injection in img, held against qemu-img: the
//! same rules fail the same requests, `convert` stops with qemu-img's
//! line, and `convert --salvage` warns about the same offsets in the same
//! order and writes the same bytes. Both forms are covered: the
//! `blkdebug:CONFIG:FILE` name (under the format, rules in a config file)
//! and a `json:` blkdebug node over the format with `inject-error` rules
//! for reads and block-status queries.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

/// A 4 MiB qcow2 image with 3 MiB of a pattern.
fn source(dir: &Path) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "4M"]).current_dir(dir));
    qemu_io("qcow2", &dir.join("s.qcow2"), &["write -P 7 0 3M"]);
}

/// Runs `args` with both tools, the target named `out-TOOL.raw`, and
/// returns (status, stderr with the program name cut) of each.
fn both(dir: &Path, args: &[&str]) -> [(Option<i32>, String); 2] {
    let mut outs = Vec::new();
    for (tool, name) in [(img as fn(&[&str]) -> _, "img"), (qemu_img, "qemu-img")] {
        let target = format!("out-{name}.raw");
        let mut full: Vec<&str> = args.to_vec();
        full.push(&target);
        let out = run(tool(&full).current_dir(dir));
        let stderr = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_string())
            .collect::<Vec<_>>()
            .join("\n");
        outs.push((out.status.code(), stderr));
    }
    [outs[0].clone(), outs[1].clone()]
}

#[test]
fn config_file_rules_fail_reads_of_the_file() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    source(dir);
    // A read of host sector 2100 fails: some guest cluster lives there.
    std::fs::write(
        dir.join("bd.conf"),
        "[inject-error]\nevent = \"none\"\niotype = \"read\"\nsector = \"2100\"\nerrno = \"5\"\n",
    )
    .unwrap();
    let name = "blkdebug:bd.conf:s.qcow2";
    let [ours, theirs] = both(dir, &["convert", "-O", "raw", name]);
    assert_eq!(ours, theirs, "convert stops as qemu-img does");
    assert_eq!(ours.0, Some(1));
    assert!(ours.1.contains("Input/output error"), "{}", ours.1);

    let [ours, theirs] = both(dir, &["convert", "--salvage", "-O", "raw", name]);
    assert_eq!(ours, theirs, "salvage warns as qemu-img does");
    assert_eq!(ours.0, Some(0));
    assert!(
        read(&dir.join("out-img.raw")) == read(&dir.join("out-qemu-img.raw")),
        "salvaged copies differ"
    );
    // A rule of another state never acts; a config file that is not one
    // is refused in one line.
    std::fs::write(
        dir.join("later.conf"),
        "[inject-error]\nevent = \"none\"\nstate = \"2\"\n",
    )
    .unwrap();
    let [ours, theirs] = both(
        dir,
        &["convert", "-O", "raw", "blkdebug:later.conf:s.qcow2"],
    );
    assert_eq!(
        (ours.0, theirs.0),
        (Some(0), Some(0)),
        "{ours:?} {theirs:?}"
    );
    std::fs::write(dir.join("bad.conf"), "[nonsense]\n").unwrap();
    let out = run(img(&["info", "blkdebug:bad.conf:s.qcow2"]).current_dir(dir));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn json_rules_over_the_format_fail_block_status_and_reads() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    source(dir);
    let rule = |iotype: &str, sector: u64| {
        format!("{{'event': 'none', 'iotype': '{iotype}', 'errno': 5, 'sector': {sector}}}")
    };
    let rules = [
        rule("block-status", 1000),
        rule("block-status", 2048),
        rule("read", 2048),
        rule("read", 5000),
        rule("read", 5001),
        rule("read", 7000),
    ]
    .join(", ");
    let name = format!(
        "json:{{'driver': 'blkdebug', 'image': {{'driver': 'qcow2', \
         'file': {{'driver': 'file', 'filename': 's.qcow2'}}}}, 'inject-error': [{rules}]}}"
    );
    let [ours, theirs] = both(dir, &["convert", "--salvage", "-O", "raw", &name]);
    assert_eq!(ours, theirs, "salvage warns as qemu-img does");
    // Each block-status failure is met twice (counting, then copying).
    assert_eq!(ours.1.matches("block status at offset 512000").count(), 2);
    assert_eq!(ours.1.matches("reading offset").count(), 3, "{}", ours.1);
    let copy = read(&dir.join("out-img.raw"));
    assert!(copy == read(&dir.join("out-qemu-img.raw")), "copies differ");
    // Unreadable sectors are zeros, the rest is the source's pattern
    // (sector 7000 lies past the 3 MiB written).
    assert!(copy[2048 * 512..2049 * 512].iter().all(|&b| b == 0));
    assert!(copy[5000 * 512..5002 * 512].iter().all(|&b| b == 0));
    assert!(copy[1000 * 512..1001 * 512].iter().all(|&b| b == 7));

    // Without --salvage the first block-status failure ends the copy.
    let [ours, theirs] = both(dir, &["convert", "-O", "raw", &name]);
    assert_eq!(ours, theirs, "convert stops as qemu-img does");
    assert_eq!(ours.0, Some(1));
}
