//! Faulty snapshot metadata, as qemu-iotests 080 pokes it: every case is
//! run with qemu-img and with img on copies of one image, and img must say
//! what qemu-img says (its prefix aside) with the same exit status.
//!
//! - A snapshot table of 65536 entries past the end of the file: the image
//!   opens (the entries read as zero) and `snapshot -c` fails with EFBIG.
//! - A snapshot L1 table whose offset is unaligned or whose size is over
//!   32 MiB: the image opens; `convert -l`, `amend -o compat=0.10`,
//!   `snapshot -a` and `snapshot -d` fail with QEMU's "Snapshot L1 table
//!   offset invalid" / "too large" and their errnos, and img changes
//!   nothing.
//! - An L2 entry naming a host cluster no refcount block covers:
//!   `snapshot -c` fails with EFBIG when the refcount table cannot grow
//!   that far, else with EAGAIN.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

/// Writes `bytes` at `offset` of `path`.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let mut data = read(path);
    let at = offset as usize;
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

fn be64(path: &Path, offset: u64) -> u64 {
    let data = read(path);
    let at = offset as usize;
    u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
}

/// A 64 MiB image with 512 bytes of data, and snapshot "test" if `snap`.
fn make(d: &Path, name: &str, snap: bool) {
    ok(qemu_img(&["create", "-q", "-f", "qcow2", name, "64M"]).current_dir(d));
    qemu_io("qcow2", &d.join(name), &["write 0 512"]);
    if snap {
        ok(qemu_img(&["snapshot", "-c", "test", name]).current_dir(d));
    }
}

/// Runs `args` (with `FILE` standing for a copy of `base`) under qemu-img
/// and img; asserts equal exit status and stderr, the prefix aside. With
/// `unchanged`, img must leave its copy as it was.
fn same_as_qemu(d: &Path, base: &str, args: &[&str], unchanged: bool) {
    let mut outputs = Vec::new();
    for (tool, prefix) in [("qemu", "qemu-img: "), ("ours", "img: ")] {
        let copy = format!("{tool}-{base}");
        std::fs::copy(d.join(base), d.join(&copy)).unwrap();
        let _ = std::fs::remove_file(d.join("out.raw"));
        let args: Vec<&str> = args
            .iter()
            .map(|&a| if a == "FILE" { copy.as_str() } else { a })
            .collect();
        let mut cmd = if tool == "qemu" {
            qemu_img(&args)
        } else {
            img(&args)
        };
        let out = run(cmd.current_dir(d));
        let err = String::from_utf8_lossy(&out.stderr)
            .replace(&copy, "FILE")
            .lines()
            .map(|l| l.strip_prefix(prefix).unwrap_or(l).to_string())
            .collect::<Vec<_>>();
        if tool == "ours" && unchanged {
            assert!(
                read(&d.join(&copy)) == read(&d.join(base)),
                "img {args:?} changed the image"
            );
        }
        outputs.push((out.status.code(), err));
    }
    assert_eq!(outputs[1], outputs[0], "img {args:?} (right: qemu-img)");
    assert_ne!(outputs[0].0, Some(0), "qemu-img {args:?} should fail");
}

/// An image whose header claims 65536 snapshots at 16 MiB, far past the
/// end of the file (qemu-iotests 080, "Hitting snapshot table size
/// limit").
fn full_table(d: &Path) {
    make(d, "full.qcow2", false);
    let path = d.join("full.qcow2");
    poke(&path, 64, &0x100_0000u64.to_be_bytes());
    poke(&path, 60, &65536u32.to_be_bytes());
}

#[test]
fn snapshot_table_past_the_end_opens_and_is_full() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    full_table(d);
    let before = read(&d.join("full.qcow2"));
    let out = run(img(&["snapshot", "-c", "test", "full.qcow2"]).current_dir(d));
    // qemu-img's words (080.out); the comparison with qemu-img itself is
    // the ignored test below (qemu-img takes 20 s to read the table).
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "img: Could not create snapshot 'test': File too large\n"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(read(&d.join("full.qcow2")) == before);
    // The entries read as zero: 65536 nameless snapshots.
    let list = ok(img(&["snapshot", "-l", "full.qcow2"]).current_dir(d));
    assert_eq!(list.lines().count(), 2 + 65536);
}

#[test]
#[ignore = "qemu-img takes about 20 s to read 65536 snapshot entries"]
fn snapshot_table_past_the_end_is_full_as_with_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    full_table(d);
    same_as_qemu(d, "full.qcow2", &["snapshot", "-c", "test", "FILE"], true);
    let ours = ok(img(&["info", "full.qcow2"]).current_dir(d));
    let theirs = ok(qemu_img(&["info", "full.qcow2"]).current_dir(d));
    assert_eq!(ours, theirs);
}

#[test]
fn bad_snapshot_l1_tables_fail_on_use_in_qemus_words() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (file, offset into the snapshot entry, bytes): an unaligned table
    // (EINVAL) and one of 2^28 entries (EFBIG).
    let cases: [(&str, u64, &[u8]); 2] = [
        ("offset.qcow2", 0, &0x40_0200u64.to_be_bytes()),
        ("size.qcow2", 8, &0x1000_0000u32.to_be_bytes()),
    ];
    for (file, field, bytes) in cases {
        make(d, file, true);
        let path = d.join(file);
        let table = be64(&path, 64);
        poke(&path, table + field, bytes);
        for args in [
            &["convert", "-l", "test", "-O", "raw", "FILE", "out.raw"][..],
            &["amend", "-o", "compat=0.10", "FILE"],
            &["snapshot", "-a", "test", "FILE"],
            &["snapshot", "-d", "test", "FILE"],
        ] {
            same_as_qemu(d, file, args, true);
        }
        // The image itself stays usable.
        ok(img(&["snapshot", "-c", "other", file]).current_dir(d));
    }
}

#[test]
fn uncounted_clusters_fail_snapshot_creation_as_qemu_does() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An L2 entry far beyond any refcount table (EFBIG), and one 1 TiB in,
    // inside the table but without a refcount block (EAGAIN).
    for (file, entry) in [
        ("efbig.qcow2", 0xbfff_ffff_ffff_0000u64),
        ("eagain.qcow2", 0x8000_00ff_ffff_0000),
    ] {
        make(d, file, false);
        let path = d.join(file);
        let l1 = be64(&path, 40);
        let l2 = be64(&path, l1) & 0x00ff_ffff_ffff_fe00;
        poke(&path, l2, &entry.to_be_bytes());
        same_as_qemu(d, file, &["snapshot", "-c", "test", "FILE"], false);
    }
}
