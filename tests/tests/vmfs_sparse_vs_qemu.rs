//! VMFS sparse ("COWD", VMDK3) extents, which qemu-img reads and writes but
//! cannot create: images built here per QEMU's `VMDK3Header`, alone and
//! named by a `vmfsSparse` descriptor, convert to raw byte for byte as
//! qemu-img converts them; writes by `img` read back in qemu-img and
//! writes by qemu-io in `img`; hostile headers are refused in one line.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, qemu_io, read, require_qemu, run};

const SECTOR: usize = 512;
/// Grain table entries of a COWD extent (fixed: QEMU reads 4096).
const GTES: usize = 4096;

/// A COWD extent's geometry, as its header declares it.
struct Cowd {
    disk_sectors: u32,
    granularity: u32,
    l1dir_offset: u32,
    l1dir_size: u32,
}

/// The header sector: "COWD", then QEMU's `VMDK3Header`, little-endian
/// u32s: version, flags, disk_sectors, granularity, l1dir_offset,
/// l1dir_size, file_sectors, cylinders, heads, sectors_per_track.
fn header(c: &Cowd, file_sectors: u32) -> Vec<u8> {
    let mut h = b"COWD".to_vec();
    for word in [
        1,
        3,
        c.disk_sectors,
        c.granularity,
        c.l1dir_offset,
        c.l1dir_size,
        file_sectors,
        0,
        0,
        0,
    ] {
        h.extend_from_slice(&word.to_le_bytes());
    }
    h.resize(SECTOR, 0);
    h
}

/// A 20 MiB COWD extent with 4 KiB grains (a grain table spans 16 MiB, so
/// two tables): CID text at sector 1 (QEMU reads a lone file's CIDs
/// there and refuses it without), the directory at sector 2, table 0 at
/// sector 3, table 1 at sector 35, then grains. Allocated: grains 0, 5 and 4095 of table 0
/// and grain 10 of table 1, each filled with its own byte pattern.
fn build_cowd() -> Vec<u8> {
    let c = Cowd {
        disk_sectors: 40960,
        granularity: 8,
        l1dir_offset: 2,
        l1dir_size: 2,
    };
    let table_sectors = (GTES * 4 / SECTOR) as u32;
    let tables = [3u32, 3 + table_sectors];
    let mut next = 3 + 2 * table_sectors;
    let grains = [(0usize, 0usize), (0, 5), (0, 4095), (1, 10)];
    let mut gts = vec![vec![0u32; GTES]; 2];
    let mut data = Vec::new();
    for (i, &(t, e)) in grains.iter().enumerate() {
        gts[t][e] = next;
        let grain: Vec<u8> = (0..c.granularity as usize * SECTOR)
            .map(|b| (b * 7 + i * 31 + 1) as u8)
            .collect();
        data.extend_from_slice(&grain);
        next += c.granularity;
    }
    let mut f = header(&c, next);
    let mut text = b"CID=2fc1881a\nparentCID=ffffffff\n".to_vec();
    text.resize(SECTOR, 0);
    f.extend_from_slice(&text);
    let mut dir: Vec<u8> = tables.iter().flat_map(|s| s.to_le_bytes()).collect();
    dir.resize(SECTOR, 0);
    f.extend_from_slice(&dir);
    for gt in &gts {
        f.extend(gt.iter().flat_map(|e| e.to_le_bytes()));
    }
    f.extend_from_slice(&data);
    f
}

/// Converts `name` to raw with img and with qemu-img; both must agree.
fn converts_like_qemu(dir: &Path, name: &str) {
    ok(img(&["convert", "-f", "vmdk", "-O", "raw", name, "img.raw"]).current_dir(dir));
    ok(qemu_img(&["convert", "-f", "vmdk", "-O", "raw", name, "qemu.raw"]).current_dir(dir));
    let ours = read(&dir.join("img.raw"));
    let theirs = read(&dir.join("qemu.raw"));
    assert_eq!(ours.len(), 40960 * SECTOR, "{name}: size");
    assert!(ours == theirs, "{name}: img and qemu-img differ");
    assert!(ours.iter().any(|&b| b != 0), "{name}: data was read");
}

#[test]
fn cowd_converts_like_qemu_alone_and_by_descriptor() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("lone.vmdk"), build_cowd()).unwrap();
    converts_like_qemu(dir, "lone.vmdk");
    std::fs::write(dir.join("d-sparse.vmdk"), build_cowd()).unwrap();
    std::fs::write(
        dir.join("d.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"vmfsSparse\"\n\n# Extent description\n\
         RW 40960 VMFSSPARSE \"d-sparse.vmdk\"\n",
    )
    .unwrap();
    converts_like_qemu(dir, "d.vmdk");
}

/// The descriptor naming `d-sparse.vmdk` as one VMFS sparse extent.
const VMFS_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\n\
    parentCID=ffffffff\ncreateType=\"vmfsSparse\"\n\n# Extent description\n\
    RW 40960 VMFSSPARSE \"d-sparse.vmdk\"\n";

/// A raw 20 MiB source: runs of a pattern and of zeros, cut off grain
/// boundaries.
fn pattern_raw() -> Vec<u8> {
    let mut raw = vec![0u8; 40960 * SECTOR];
    for (i, b) in raw.iter_mut().enumerate() {
        if (i / 70_000) % 3 == 1 {
            *b = (i % 251) as u8 + 1;
        }
    }
    raw
}

/// QEMU opens VMFS sparse extents read-write, and so do we: what `img`
/// writes into one (alone or by descriptor) qemu-img reads back equal to
/// the source and checks clean; what qemu-io writes, `img` reads as
/// qemu-img does.
#[test]
fn cowd_writes_like_qemu_both_ways() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("src.raw"), pattern_raw()).unwrap();
    std::fs::write(dir.join("d.vmdk"), VMFS_DESCRIPTOR).unwrap();
    for name in ["lone.vmdk", "d.vmdk"] {
        // img writes, qemu-img reads.
        std::fs::write(dir.join("lone.vmdk"), build_cowd()).unwrap();
        std::fs::write(dir.join("d-sparse.vmdk"), build_cowd()).unwrap();
        ok(img(&["convert", "-n", "-f", "raw", "-O", "vmdk", "src.raw", name]).current_dir(dir));
        ok(qemu_img(&["compare", "-f", "raw", "-F", "vmdk", "src.raw", name]).current_dir(dir));
        let check = run(qemu_img(&["check", "-f", "vmdk", name]).current_dir(dir));
        assert!(
            check.status.success(),
            "{name}: qemu-img check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        converts_like_qemu(dir, name);
        // qemu-io writes, img reads.
        std::fs::write(dir.join("lone.vmdk"), build_cowd()).unwrap();
        std::fs::write(dir.join("d-sparse.vmdk"), build_cowd()).unwrap();
        qemu_io(
            "vmdk",
            &dir.join(name),
            &[
                "write -P 9 1000 70000",
                "write -P 8 17M 8k",
                "write -z 0 4k",
            ],
        );
        converts_like_qemu(dir, name);
    }
}

/// A write into a grain table the VMFS sparse file lacks fails in QEMU
/// (EINVAL) and in `img` (one line, exit 1), and leaves the file as it
/// was.
#[test]
fn cowd_write_under_a_missing_grain_table_is_refused_like_qemu() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Table 1 (guest bytes from 16 MiB) cut off: its directory entry 0.
    let mut cowd = build_cowd();
    cowd[2 * SECTOR + 4..2 * SECTOR + 8].fill(0);
    std::fs::write(dir.join("lone.vmdk"), &cowd).unwrap();
    // A source with data at 17 MiB alone; --target-is-zero leaves the
    // rest unwritten, so only table 1's range is written.
    let mut raw = vec![0u8; 40960 * SECTOR];
    raw[17 << 20..(17 << 20) + 4096].fill(3);
    std::fs::write(dir.join("src.raw"), &raw).unwrap();
    let out = run(img(&[
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "src.raw",
        "lone.vmdk",
    ])
    .current_dir(dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "img convert: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("grain table"), "{err}");
    assert!(read(&dir.join("lone.vmdk")) == cowd, "img changed the file");
    let theirs = run(std::process::Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 3 17M 4k", "lone.vmdk"])
        .current_dir(dir));
    let their_text = String::from_utf8_lossy(&theirs.stdout).to_string()
        + &String::from_utf8_lossy(&theirs.stderr);
    assert!(
        their_text.contains("Invalid argument"),
        "qemu-io: {their_text}"
    );
}

#[test]
fn hostile_cowd_headers_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = || Cowd {
        disk_sectors: 40960,
        granularity: 8,
        l1dir_offset: 1,
        l1dir_size: 2,
    };
    let cases = [
        (
            "granularity 0",
            Cowd {
                granularity: 0,
                ..base()
            },
            "granularity",
        ),
        (
            "granularity 2 GiB",
            Cowd {
                granularity: 1 << 22,
                ..base()
            },
            "granularity",
        ),
        (
            "directory of 2^32-1 entries",
            Cowd {
                l1dir_size: u32::MAX,
                ..base()
            },
            "l1dir_size",
        ),
        (
            "directory past the end",
            Cowd {
                l1dir_offset: 1 << 30,
                ..base()
            },
            "grain directory",
        ),
    ];
    for (what, c, field) in cases {
        let mut f = header(&c, 1);
        f.resize(4 * SECTOR, 0);
        let path = dir.join("bad.vmdk");
        std::fs::write(&path, &f).unwrap();
        for args in [
            vec!["info", "bad.vmdk"],
            vec!["convert", "-O", "raw", "bad.vmdk", "out.raw"],
        ] {
            let out = run(img(&args).current_dir(dir));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
            assert!(err.contains(field), "{what}: {err}");
        }
        assert_eq!(read(&path), f, "{what}: file changed");
    }
}

/// `CID` as `qemu-img info` shows it.
fn cid_of(image: &Path) -> String {
    ok(qemu_img(&["info", "-f", "vmdk"]).arg(image))
        .lines()
        .find(|l| l.trim_start().starts_with("cid:"))
        .expect("a cid line")
        .to_string()
}

/// A write into a lone COWD file puts a new CID into its text at byte
/// 512 as QEMU's does: the rest of the 20 sectors QEMU rewrites (here the
/// grain directory and table 0 with the new grains) and of the file
/// equal qemu-img's, the bytes past the new text's NUL stay as they were.
#[test]
fn cowd_write_puts_a_new_cid_where_qemu_puts_it() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let original = build_cowd();
    let original_cid = {
        std::fs::write(tmp.path().join("m.vmdk"), &original).unwrap();
        cid_of(&tmp.path().join("m.vmdk"))
    };
    let mut files = Vec::new();
    for (tool, name) in [("qemu-img", "q.vmdk"), ("img", "o.vmdk")] {
        let path = tmp.path().join(name);
        std::fs::write(&path, &original).unwrap();
        let args = [
            "bench", "-q", "-w", "-c", "1", "-s", "65536", "-o", "1048576",
        ];
        let mut cmd = if tool == "img" {
            img(&args)
        } else {
            qemu_img(&args)
        };
        ok(cmd.args(["-f", "vmdk"]).arg(&path));
        assert_ne!(cid_of(&path), original_cid, "{tool} kept the CID");
        files.push(read(&path));
    }
    let (area, len) = (SECTOR, 20 * SECTOR);
    assert_eq!(files[0].len(), files[1].len());
    assert!(files[0][..area] == files[1][..area]);
    assert!(files[0][area + len..] == files[1][area + len..]);
    let text_end = |f: &[u8]| area + f[area..].iter().position(|&b| b == 0).unwrap();
    let (q_end, o_end) = (text_end(&files[0]), text_end(&files[1]));
    let mask = |f: &[u8], end: usize| {
        String::from_utf8_lossy(&f[area..end])
            .lines()
            .map(|l| if l.starts_with("CID=") { "CID=X" } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(mask(&files[0], q_end), mask(&files[1], o_end));
    let after = q_end.max(o_end) + 1;
    assert!(files[0][after..area + len] == files[1][after..area + len]);
    for (f, end) in [(&files[0], q_end), (&files[1], o_end)] {
        assert!(f[end + 1..after] == original[end + 1..after]);
    }
}
