//! SE sparse ("seSparse") extents, which qemu-img reads (named by a
//! descriptor) but cannot create: extents built here per QEMU's
//! `VMDKSESparseConstHeader`, alone in a `seSparse` descriptor and after
//! a flat extent, convert to raw byte for byte as qemu-img converts them;
//! hostile headers are refused in one line, and the files stay unchanged.

use std::path::Path;

use integration_tests::{img, ok, qemu_img, read, require_qemu, run};

const SECTOR: usize = 512;
/// Guest sectors of the extent (20 MiB: two grain tables of 16 MiB).
const CAPACITY: u64 = 40960;
/// Entries of a grain table (64 sectors of u64).
const GTES: usize = 4096;
/// Bytes of a grain (8 sectors).
const GRAIN: usize = 4096;
/// Sector of the grain tables' area; the grains' area follows two tables.
const TABLES_AT: u64 = 3;
const GRAINS_AT: u64 = TABLES_AT + 2 * 64;

/// The const header's u64 fields by index (magic, version, capacity,
/// grain_size, grain_table_size, flags, 4 reserved, volatile offset and
/// size, journal header offset and size, journal offset and size, grain
/// directory offset and size, grain tables offset and size, free bitmap
/// offset and size, backmap offset and size, grains offset and size),
/// then 304 bytes of zero padding.
fn const_header(fields: &[(usize, u64)]) -> Vec<u8> {
    let mut words = [0u64; 26];
    words[0] = 0xcafe_babe;
    words[1] = 0x0000_0002_0000_0001;
    words[2] = CAPACITY;
    words[3] = 8;
    words[4] = 64;
    words[10] = 1;
    words[11] = 1;
    words[16] = 2;
    words[17] = 1;
    words[18] = TABLES_AT;
    words[19] = 128;
    words[24] = GRAINS_AT;
    for &(i, v) in fields {
        words[i] = v;
    }
    let mut h: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    h.resize(SECTOR, 0);
    h
}

/// A grain table entry of an allocated grain at `index` of the grains'
/// area: type 3 in the top nibble, the index's low 12 bits in bits
/// 48-59 and the rest of it in the low 48 bits, as QEMU decodes it.
fn allocated(index: u64) -> u64 {
    0x3000_0000_0000_0000 | ((index & 0xfff) << 48) | (index >> 12)
}

/// An SE sparse extent: the const header with `fields` changed, the
/// volatile header at sector 1 (`replay` its replay_journal), the
/// directory at sector 2 naming guest table 0 as table 1 of the area and
/// guest table 1 as table 0, then the grains. Allocated grains (guest
/// table, entry, grain index): (0, 0, 0), (0, 5, 4099), (0, 4095, 1) and
/// (1, 10, 2), each its own byte pattern; entry 6 of table 0 is zeroed
/// and entry 7 unmapped, which read as zeros.
fn build(fields: &[(usize, u64)], replay: u64) -> Vec<u8> {
    let mut f = const_header(fields);
    let mut volatile = Vec::new();
    for w in [0xcafe_cafe_u64, 0, 0, replay] {
        volatile.extend_from_slice(&w.to_le_bytes());
    }
    volatile.resize(SECTOR, 0);
    f.extend_from_slice(&volatile);
    let mut dir = Vec::new();
    for w in [0x1000_0000_0000_0001_u64, 0x1000_0000_0000_0000] {
        dir.extend_from_slice(&w.to_le_bytes());
    }
    dir.resize(SECTOR, 0);
    f.extend_from_slice(&dir);
    let grains = [
        (0usize, 0usize, 0u64),
        (0, 5, 4099),
        (0, 4095, 1),
        (1, 10, 2),
    ];
    // Area table 0 is guest table 1; area table 1 is guest table 0.
    let mut area = vec![vec![0u64; GTES]; 2];
    for &(t, e, index) in &grains {
        area[1 - t][e] = allocated(index);
    }
    area[1][6] = 0x2000_0000_0000_0000;
    area[1][7] = 0x1000_0000_0000_0000;
    for table in &area {
        f.extend(table.iter().flat_map(|e| e.to_le_bytes()));
    }
    assert_eq!(f.len() as u64, GRAINS_AT * SECTOR as u64);
    let last = grains.iter().map(|g| g.2).max().unwrap() as usize;
    let start = f.len();
    f.resize(start + (last + 1) * GRAIN, 0);
    for (i, &(_, _, index)) in grains.iter().enumerate() {
        let at = start + index as usize * GRAIN;
        for (b, byte) in f[at..at + GRAIN].iter_mut().enumerate() {
            *byte = (b * 7 + i * 31 + 1) as u8;
        }
    }
    f
}

/// A `seSparse` descriptor naming `extents` lines.
fn descriptor(extents: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"seSparse\"\n\n# Extent description\n{extents}"
    )
}

/// Converts `name` to raw with img and with qemu-img; both must agree.
fn converts_like_qemu(dir: &Path, name: &str, sectors: u64) {
    ok(img(&["convert", "-f", "vmdk", "-O", "raw", name, "img.raw"]).current_dir(dir));
    ok(qemu_img(&["convert", "-f", "vmdk", "-O", "raw", name, "qemu.raw"]).current_dir(dir));
    let ours = read(&dir.join("img.raw"));
    let theirs = read(&dir.join("qemu.raw"));
    assert_eq!(ours.len() as u64, sectors * SECTOR as u64, "{name}: size");
    assert!(ours == theirs, "{name}: img and qemu-img differ");
    assert!(ours.iter().any(|&b| b != 0), "{name}: data was read");
}

#[test]
fn sesparse_converts_like_qemu_alone_and_after_a_flat_extent() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("s-sesparse.vmdk"), build(&[], 0)).unwrap();
    std::fs::write(
        dir.join("s.vmdk"),
        descriptor(&format!("RW {CAPACITY} SESPARSE \"s-sesparse.vmdk\"\n")),
    )
    .unwrap();
    converts_like_qemu(dir, "s.vmdk", CAPACITY);
    let flat: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("two-flat.vmdk"), flat).unwrap();
    std::fs::write(
        dir.join("two.vmdk"),
        descriptor(&format!(
            "RW 2048 FLAT \"two-flat.vmdk\" 0\nRW {CAPACITY} SESPARSE \"s-sesparse.vmdk\"\n"
        )),
    )
    .unwrap();
    converts_like_qemu(dir, "two.vmdk", CAPACITY + 2048);
    // `info` names the extent as qemu-img does.
    let info = ok(img(&["info", "--output=json", "s.vmdk"]).current_dir(dir));
    assert!(info.contains("\"SESPARSE\""), "{info}");
    assert!(info.contains("\"seSparse\""), "{info}");
    // The extent is read only: a write-open is refused, the file unchanged.
    let before = read(&dir.join("s-sesparse.vmdk"));
    let out = run(img(&["resize", "-f", "vmdk", "s.vmdk", "40M"]).current_dir(dir));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No write support for seSparse"), "{err}");
    assert_eq!(read(&dir.join("s-sesparse.vmdk")), before);
}

#[test]
fn hostile_sesparse_headers_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("bad.vmdk"),
        descriptor(&format!("RW {CAPACITY} SESPARSE \"bad-sesparse.vmdk\"\n")),
    )
    .unwrap();
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("bad magic", build(&[(0, 0xcafe_babf)], 0), "magic"),
        ("version 1", build(&[(1, 1)], 0), "version"),
        ("grain of 16 sectors", build(&[(3, 16)], 0), "grain size"),
        ("flags", build(&[(5, 1)], 0), "flags"),
        ("reserved bits", build(&[(7, 1)], 0), "reserved"),
        ("journal to replay", build(&[], 1), "replay"),
        (
            "directory of 2^40 sectors",
            build(&[(17, 1 << 40)], 0),
            "grain_dir_size",
        ),
        (
            "directory past the end",
            build(&[(16, 1 << 30)], 0),
            "grain directory",
        ),
    ];
    for (what, f, field) in cases {
        let path = dir.join("bad-sesparse.vmdk");
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

/// A grain the table places past the end of the file reads as zeros, as
/// QEMU reads past the end of a file: one grain cut half-way by the end
/// and, in a shorter file, the same grain wholly past it. `check` stops
/// at the grain wholly past the end with qemu-img's lines and status.
#[test]
fn grains_past_the_end_of_the_file_read_and_check_as_qemu() {
    require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("s.vmdk"),
        descriptor(&format!("RW {CAPACITY} SESPARSE \"s-sesparse.vmdk\"\n")),
    )
    .unwrap();
    let full = build(&[], 0);
    let grains_at = GRAINS_AT as usize * SECTOR;
    // Grain index 4099 is the last; indices 0-2 stay whole in both cuts.
    for (what, len) in [
        (
            "a grain cut by the end",
            grains_at + 4099 * GRAIN + GRAIN / 2,
        ),
        ("a grain wholly past the end", grains_at + 3 * GRAIN),
    ] {
        std::fs::write(dir.join("s-sesparse.vmdk"), &full[..len]).unwrap();
        ok(img(&["convert", "-f", "vmdk", "-O", "raw", "s.vmdk", "img.raw"]).current_dir(dir));
        ok(
            qemu_img(&["convert", "-f", "vmdk", "-O", "raw", "s.vmdk", "qemu.raw"])
                .current_dir(dir),
        );
        let ours = read(&dir.join("img.raw"));
        assert!(
            ours == read(&dir.join("qemu.raw")),
            "{what}: img and qemu-img differ"
        );
        assert!(ours.iter().any(|&b| b != 0), "{what}: data was read");
        for args in [
            &["check", "s.vmdk"][..],
            &["check", "--output=json", "s.vmdk"],
        ] {
            let ours = run(img(args).current_dir(dir));
            let theirs = run(qemu_img(args).current_dir(dir));
            assert_eq!(ours.status.code(), theirs.status.code(), "{what}: {args:?}");
            assert_eq!(ours.stdout, theirs.stdout, "{what}: {args:?} stdout");
            let (ours, theirs) = (
                String::from_utf8_lossy(&ours.stderr),
                String::from_utf8_lossy(&theirs.stderr).replace("qemu-img:", "img:"),
            );
            assert_eq!(ours, theirs, "{what}: {args:?} stderr");
        }
    }
}
