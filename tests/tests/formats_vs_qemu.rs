//! The foreign formats (vpc, vdi, vmdk, qed, vhdx) against qemu-img, both ways, for
//! every subformat and option row of [`CASES`]:
//! - an image qemu-img makes (converted from a raw file, then written by
//!   qemu-io) reads through `img convert -O raw` byte-identical to
//!   qemu-img's own conversion, and `img info --output=json` equals
//!   `qemu-img info --output=json`;
//! - an image `img convert` makes from the same raw file passes `qemu-img
//!   compare` with it and `qemu-img check` (where the format has one), and
//!   its info equals qemu-img's;
//! - `img convert` back from our image to qcow2 holds the same data.
//!
//! Images are a few MiB: the whole file runs in seconds.

use std::path::Path;

use integration_tests::{img, make_raw, ok, qemu_img, qemu_io, read, require_qemu, run};

/// (format, `-o` options) rows: every subformat and option qemu-img has
/// for the format.
const CASES: &[(&str, &str)] = &[
    ("vpc", ""),
    ("vpc", "subformat=dynamic"),
    ("vpc", "subformat=fixed"),
    ("vpc", "force_size=on"),
    ("vpc", "subformat=fixed,force_size=on"),
    ("vdi", ""),
    ("vdi", "static=on"),
    ("vmdk", ""),
    ("vmdk", "subformat=monolithicFlat"),
    ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vmdk", "subformat=twoGbMaxExtentFlat"),
    ("vmdk", "subformat=streamOptimized"),
    ("vmdk", "zeroed_grain=on"),
    ("vmdk", "compat6=on,adapter_type=lsilogic"),
    ("vmdk", "hwversion=7,adapter_type=buslogic,toolsversion=3"),
    ("vmdk", "adapter_type=legacyESX,hwversion=undefined"),
    (
        "vmdk",
        "subformat=twoGbMaxExtentSparse,adapter_type=ide,compat6=on",
    ),
    ("qed", ""),
    ("qed", "cluster_size=4k,table_size=2"),
    ("qed", "cluster_size=1M,table_size=16"),
    ("vhdx", ""),
    ("vhdx", "subformat=fixed"),
    ("vhdx", "block_size=1M,log_size=2M"),
    ("vhdx", "block_state_zero=off"),
    ("vhdx", "subformat=fixed,block_state_zero=off"),
    ("vhdx", "subformat=dynamic,block_size=256M,log_size=8M"),
];

/// Formats qemu-img checks.
const CHECKED: &[&str] = &["vdi", "vmdk", "qed", "vhdx"];

/// Whether qemu-io can write into images of these options (QEMU writes
/// stream-optimized images only through convert).
fn qemu_writes(opts: &str) -> bool {
    !opts.contains("streamOptimized")
}

fn convert_cmd(
    tool: fn(&[&str]) -> std::process::Command,
    from: &str,
    to: &str,
    opts: &str,
) -> std::process::Command {
    let mut c = tool(&["convert", "-f", from, "-O", to]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    c
}

fn assert_same_file(a: &Path, b: &Path, what: &str) {
    let (x, y) = (read(a), read(b));
    assert_eq!(x.len(), y.len(), "{what}: sizes differ");
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{what}: first difference at byte {at}");
    }
}

fn assert_info_like_qemu(fmt: &str, image: &Path, what: &str) {
    let ours = ok(img(&["info", "--output=json", "-f", fmt]).arg(image));
    let theirs = ok(qemu_img(&["info", "--output=json", "-f", fmt]).arg(image));
    let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
    assert_eq!(ours, theirs, "{what}: info differs");
    let ours = ok(img(&["info", "-f", fmt]).arg(image));
    let theirs = ok(qemu_img(&["info", "-f", fmt]).arg(image));
    assert_eq!(ours, theirs, "{what}: human info differs");
}

#[test]
fn qemu_images_read_and_img_images_pass_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    // 5 MiB + 7 sectors: not a whole block of any format, nor a whole
    // CHS geometry.
    make_raw(&source, (5 << 20) + 7 * 512, 17);
    for (i, &(fmt, opts)) in CASES.iter().enumerate() {
        let what = format!("{fmt} -o '{opts}'");
        // qemu-img makes it; qemu-io writes over it.
        let theirs = d.join(format!("theirs{i}.{fmt}"));
        ok(convert_cmd(qemu_img, "raw", fmt, opts)
            .arg(&source)
            .arg(&theirs));
        if qemu_writes(opts) {
            qemu_io(
                fmt,
                &theirs,
                &[
                    "write -P 0x5a 4095k 3k",
                    "write -z 0 64k",
                    "write -P 7 2M 512",
                ],
            );
        }
        let (a, b) = (d.join("a.raw"), d.join("b.raw"));
        ok(convert_cmd(img, fmt, "raw", "").arg(&theirs).arg(&a));
        ok(convert_cmd(qemu_img, fmt, "raw", "").arg(&theirs).arg(&b));
        assert_same_file(&a, &b, &format!("reading qemu's {what}"));
        assert_info_like_qemu(fmt, &theirs, &format!("qemu's {what}"));
        // QEMU's vhdx driver has no block status: its map shows the
        // whole disk as data without offsets; ours shows the blocks.
        if fmt != "vhdx" {
            let ours_map = ok(img(&["map", "--output=json", "-f", fmt]).arg(&theirs));
            let theirs_map = ok(qemu_img(&["map", "--output=json", "-f", fmt]).arg(&theirs));
            assert!(
                ours_map == theirs_map,
                "qemu's {what}: map differs:\n{ours_map}\n{theirs_map}"
            );
        }

        // img makes it from the same raw file.
        let ours = d.join(format!("ours{i}.{fmt}"));
        ok(convert_cmd(img, "raw", fmt, opts).arg(&source).arg(&ours));
        let out = run(qemu_img(&["compare", "-f", "raw", "-F", fmt])
            .arg(&source)
            .arg(&ours));
        assert!(
            out.status.success(),
            "{what}: qemu-img compare: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if CHECKED.contains(&fmt) {
            ok(qemu_img(&["check", "-f", fmt]).arg(&ours));
            ok(img(&["check", "-f", fmt]).arg(&ours));
        } else {
            let out = run(img(&["check", "-f", fmt]).arg(&ours));
            assert_eq!(
                out.status.code(),
                Some(63),
                "{what}: check is not supported"
            );
        }
        assert_info_like_qemu(fmt, &ours, &format!("img's {what}"));

        // img writes into our image (allocating), then both read it alike.
        ok(convert_cmd(img, fmt, "qcow2", "")
            .arg(&ours)
            .arg(d.join("back.qcow2")));
        let out = run(qemu_img(&["compare", "-f", fmt, "-F", "qcow2"])
            .arg(&ours)
            .arg(d.join("back.qcow2")));
        assert!(out.status.success(), "{what}: back to qcow2 differs");
        if !qemu_writes(opts) {
            continue;
        }
        qemu_io(fmt, &ours, &["write -P 0x66 1M 4k"]);
        ok(convert_cmd(img, fmt, "raw", "").arg(&ours).arg(&a));
        ok(convert_cmd(qemu_img, fmt, "raw", "").arg(&ours).arg(&b));
        assert_same_file(&a, &b, &format!("reading img's {what} after qemu-io wrote"));
    }
}

/// vhdx: images qemu-img makes in more block and log sizes, written by
/// qemu-io, read like qemu-img reads them, with the same info and a clean
/// check.
#[test]
fn qemu_vhdx_images_read_identically() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    make_raw(&source, (9 << 20) + 3 * 512, 23);
    for (i, opts) in [
        "",
        "subformat=dynamic",
        "subformat=fixed",
        "block_size=1M",
        "block_size=32M,log_size=2M",
        "block_state_zero=off",
        "subformat=fixed,block_size=8M",
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("vhdx -o '{opts}'");
        let image = d.join(format!("q{i}.vhdx"));
        ok(convert_cmd(qemu_img, "raw", "vhdx", opts)
            .arg(&source)
            .arg(&image));
        qemu_io(
            "vhdx",
            &image,
            &["write -P 9 5M 7k", "write -z 0 1M", "write -P 3 8M 4k"],
        );
        let (a, b) = (d.join("a.raw"), d.join("b.raw"));
        ok(convert_cmd(img, "vhdx", "raw", "").arg(&image).arg(&a));
        ok(convert_cmd(qemu_img, "vhdx", "raw", "").arg(&image).arg(&b));
        assert_same_file(&a, &b, &format!("reading qemu's {what}"));
        assert_info_like_qemu("vhdx", &image, &what);
        ok(img(&["check", "-f", "vhdx"]).arg(&image));
        ok(img(&["convert", "-f", "vhdx", "-O", "qcow2"])
            .arg(&image)
            .arg(d.join("c.qcow2")));
        let out = run(qemu_img(&["compare", "-f", "vhdx", "-F", "qcow2"])
            .arg(&image)
            .arg(d.join("c.qcow2")));
        assert!(out.status.success(), "{what}: to qcow2 differs");
    }
}

/// `img convert -n` into an existing image of each format (writes through
/// the format's allocating write path, zero ranges written as zeros).
#[test]
fn convert_into_existing_images() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    make_raw(&source, 3 << 20, 5);
    for &(fmt, opts) in CASES {
        let target = d.join(format!("t.{fmt}"));
        let mut create = qemu_img(&["create", "-q", "-f", fmt]);
        if !opts.is_empty() {
            create.args(["-o", opts]);
        }
        ok(create.arg(&target).arg("4M"));
        ok(img(&["convert", "-n", "-f", "raw", "-O", fmt])
            .arg(&source)
            .arg(&target));
        let out = run(qemu_img(&["compare", "-f", "raw", "-F", fmt])
            .arg(&source)
            .arg(&target));
        // The target is larger than the source: compare reports the size
        // mismatch but must find the common part and the rest equal (zero).
        assert!(
            out.status.success(),
            "{fmt} -o '{opts}': {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Hostile images: one line, exit 1, quickly.
#[test]
fn hostile_images_get_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("vpc", {
            // A dynamic VHD footer whose checksum is wrong.
            let mut b = vec![0u8; 4096];
            b[..8].copy_from_slice(b"conectix");
            b
        }),
        ("vdi", {
            // A VDI header with a 1 GiB block size.
            let mut b = vec![0u8; 4096];
            b[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
            b[68..72].copy_from_slice(&0x0001_0001u32.to_le_bytes());
            b[360..364].copy_from_slice(&512u32.to_le_bytes());
            b[376..380].copy_from_slice(&(1u32 << 30).to_le_bytes());
            b
        }),
        ("vdi", {
            // A block map far past the end of the file.
            let mut b = vec![0u8; 4096];
            b[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
            b[68..72].copy_from_slice(&0x0001_0001u32.to_le_bytes());
            b[340..344].copy_from_slice(&0x4000_0000u32.to_le_bytes());
            b[360..364].copy_from_slice(&512u32.to_le_bytes());
            b[376..380].copy_from_slice(&(1u32 << 20).to_le_bytes());
            b[384..388].copy_from_slice(&0x1ff_fff8u32.to_le_bytes());
            b
        }),
    ];
    let descriptor = |extent: &str| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n{extent}\n"
        )
        .into_bytes()
    };
    let mut cases = cases;
    // Extents outside the descriptor's folder, the descriptor itself (a
    // loop), and a sparse extent whose grain size is absurd.
    cases.push(("vmdk", descriptor("RW 8 FLAT \"/etc/passwd\" 0")));
    cases.push(("vmdk", descriptor("RW 8 FLAT \"../x\" 0")));
    cases.push(("vmdk", descriptor("RW 8 FLAT \"bad5.vmdk\" 0")));
    cases.push(("vmdk", {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[12..20].copy_from_slice(&(1u64 << 40).to_le_bytes());
        b[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b
    }));
    for (i, (fmt, bytes)) in cases.into_iter().enumerate() {
        let path = d.join(format!("bad{i}.{fmt}"));
        std::fs::write(&path, bytes).unwrap();
        for args in [
            &["info", "-f", fmt][..],
            &["convert", "-f", fmt, "-O", "raw"][..],
        ] {
            let mut c = img(args);
            c.arg(&path);
            if args[0] == "convert" {
                c.arg(d.join("out.raw"));
            }
            let start = std::time::Instant::now();
            let out = run(&mut c);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{fmt} case {i}: {err}");
            assert_eq!(err.lines().count(), 1, "{fmt} case {i}: {err}");
            assert!(
                start.elapsed().as_secs() < 5,
                "{fmt} case {i} took too long"
            );
        }
    }
}

/// Without `-f`, img probes the formats it reads as qemu-img does (a
/// dynamic VHD by its leading footer copy, a VDI by its signature).
#[test]
fn probed_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    for fmt in ["vpc", "vdi", "vmdk", "qed", "vhdx"] {
        let path = dir.path().join(format!("p.{fmt}"));
        ok(qemu_img(&["create", "-q", "-f", fmt]).arg(&path).arg("1M"));
        let ours = ok(img(&["info", "--output=json"]).arg(&path));
        let theirs = ok(qemu_img(&["info", "--output=json"]).arg(&path));
        let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(ours["format"], fmt);
        assert_eq!(ours, theirs);
    }
}

/// Puts into the vhdx `image` a log entry (sequence 1) that writes a 4 KiB
/// sector of `byte` at `file_offset`, and names the log in both headers:
/// the image of a host that crashed between logging and applying.
fn make_vhdx_log_dirty(image: &Path, file_offset: u64, byte: u8) {
    use qcow::formats::vhdx::structures::{
        crc32c, read_current_header, update_headers, HeaderUpdate,
    };
    use qcow::Storage;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let storage = qcow::FileStorage::new(file);
    let mut header = read_current_header(&storage).unwrap();
    let log_guid = [0x42u8; 16];
    let len = storage.len().unwrap();
    let mut entry = vec![0u8; 8192];
    entry[0..4].copy_from_slice(b"loge");
    entry[8..12].copy_from_slice(&8192u32.to_le_bytes());
    entry[16..24].copy_from_slice(&1u64.to_le_bytes());
    entry[24..28].copy_from_slice(&1u32.to_le_bytes());
    entry[32..48].copy_from_slice(&log_guid);
    entry[48..56].copy_from_slice(&len.to_le_bytes());
    entry[56..64].copy_from_slice(&len.to_le_bytes());
    entry[64..68].copy_from_slice(b"desc");
    entry[68..72].copy_from_slice(&[byte; 4]);
    entry[72..80].copy_from_slice(&[byte; 8]);
    entry[80..88].copy_from_slice(&file_offset.to_le_bytes());
    entry[88..96].copy_from_slice(&1u64.to_le_bytes());
    entry[4096..4100].copy_from_slice(b"data");
    entry[4104..8188].fill(byte);
    entry[8188..8192].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c(&entry);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
    storage.write_at(&entry, header.header.log_offset).unwrap();
    let update = HeaderUpdate {
        log_guid: Some(log_guid),
        ..Default::default()
    };
    update_headers(&storage, &mut header, &update).unwrap();
}

/// A vhdx whose log was never applied: read-only, both tools refuse it
/// with one line and leave it as it was; `check -r all` replays it, and
/// img's replay leaves the same disk and check output as qemu-img's.
#[test]
fn a_dirty_vhdx_log_is_replayed_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    make_raw(&source, 12 << 20, 31);
    let image = d.join("dirty.vhdx");
    ok(
        qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M"])
            .arg(&source)
            .arg(&image),
    );
    // The log rewrites a sector inside the payload block of guest MiB 0.
    let map = ok(img(&["map", "--output=json", "-f", "vhdx"]).arg(&image));
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let host = map[0]["offset"].as_u64().expect("guest MiB 0 is allocated");
    make_vhdx_log_dirty(&image, host + 8192, 0xcd);
    let before = read(&image);
    for tool in [img, qemu_img] {
        let out = run(tool(&["info", "-f", "vhdx"]).arg(&image));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("log that needs to be replayed"), "{err}");
    }
    assert!(read(&image) == before, "a read-only open changed the image");
    let (ours, theirs) = (d.join("ours.vhdx"), d.join("theirs.vhdx"));
    std::fs::copy(&image, &ours).unwrap();
    std::fs::copy(&image, &theirs).unwrap();
    let a = run(img(&["check", "-r", "all", "-f", "vhdx"]).arg(&ours));
    let b = run(qemu_img(&["check", "-r", "all", "-f", "vhdx"]).arg(&theirs));
    assert_eq!(a.status.code(), b.status.code());
    assert_eq!(
        String::from_utf8_lossy(&a.stdout).replace("ours", "X"),
        String::from_utf8_lossy(&b.stdout).replace("theirs", "X")
    );
    let (ra, rb) = (d.join("a.raw"), d.join("b.raw"));
    ok(convert_cmd(qemu_img, "vhdx", "raw", "").arg(&ours).arg(&ra));
    ok(convert_cmd(qemu_img, "vhdx", "raw", "")
        .arg(&theirs)
        .arg(&rb));
    assert_same_file(&ra, &rb, "the disk after replaying the log");
    let replayed = read(&ra);
    assert!(replayed[8192..12288].iter().all(|&b| b == 0xcd));
    ok(qemu_img(&["check", "-f", "vhdx"]).arg(&ours));
}

/// VDI block maps with an entry past the disk or two entries naming one
/// block: QEMU 10 opens them (its open reads the map without judging the
/// entries) and reads them; its check reports them with its messages. img
/// does the same, line for line.
#[test]
fn vdi_block_map_errors_are_reported_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("v.vdi");
    ok(qemu_img(&["create", "-q", "-f", "vdi"])
        .arg(&image)
        .arg("4M"));
    qemu_io("vdi", &image, &["write -P 1 0 1M"]);
    let good = read(&image);
    let map_at = u32::from_le_bytes(good[0x154..0x158].try_into().unwrap()) as usize;
    for (name, entry) in [("too_large", 0x1000u32), ("shared", 0)] {
        let mut bytes = good.clone();
        bytes[map_at + 4..map_at + 8].copy_from_slice(&entry.to_le_bytes());
        let path = d.join(format!("{name}.vdi"));
        std::fs::write(&path, &bytes).unwrap();
        let ours = run(img(&["check", "-f", "vdi"]).arg(&path));
        let theirs = run(qemu_img(&["check", "-f", "vdi"]).arg(&path));
        assert_eq!(ours.status.code(), theirs.status.code(), "{name}");
        assert_eq!(ours.stdout, theirs.stdout, "{name}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr).replace("img:", "qemu-img:"),
            String::from_utf8_lossy(&theirs.stderr),
            "{name}"
        );
        let (a, b) = (d.join("a.raw"), d.join("b.raw"));
        ok(convert_cmd(img, "vdi", "raw", "").arg(&path).arg(&a));
        ok(convert_cmd(qemu_img, "vdi", "raw", "").arg(&path).arg(&b));
        assert_same_file(&a, &b, name);
        assert!(read(&path) == bytes, "{name}: reading changed the image");
    }
}

/// Formats with backing files besides qcow2, and the `-F` each records.
const BACKED: &[&str] = &["vmdk", "qed"];

/// `img info --backing-chain --output=json` equals qemu-img's.
fn assert_chain_info_like_qemu(image: &Path, what: &str) {
    let args = ["info", "--backing-chain", "--output=json"];
    let ours: serde_json::Value = serde_json::from_str(&ok(img(&args).arg(image))).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&ok(qemu_img(&args).arg(image))).unwrap();
    assert_eq!(ours, theirs, "{what}: backing chain info differs");
}

/// vmdk (`parentFileNameHint`) and qed (backing file in the header)
/// overlays both ways: qemu-img's overlays read through `img convert -O
/// raw` byte-identical to qemu-img's conversion and `img info` (backing
/// fields and chain included) equals qemu-img's; overlays `img create`
/// and `img convert -B` make pass `qemu-img check` and `compare`.
#[test]
fn vmdk_and_qed_overlays_read_and_write_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    make_raw(&source, 3 << 20, 23);
    for &fmt in BACKED {
        let base = d.join(format!("base.{fmt}"));
        ok(convert_cmd(qemu_img, "raw", fmt, "")
            .arg(&source)
            .arg(&base));
        let base_name = format!("base.{fmt}");
        // qemu-img's overlay, written by qemu-io: partial clusters and
        // grains, a zeroed range, a write past nothing.
        let theirs = d.join(format!("theirs.{fmt}"));
        ok(qemu_img(&["create", "-q", "-f", fmt, "-b", &base_name, "-F", fmt]).arg(&theirs));
        qemu_io(
            fmt,
            &theirs,
            &[
                "write -P 0x33 100k 70k",
                "write -z 1M 64k",
                "write -P 9 2047k 2k",
            ],
        );
        let (a, b) = (d.join("a.raw"), d.join("b.raw"));
        ok(convert_cmd(img, fmt, "raw", "").arg(&theirs).arg(&a));
        ok(convert_cmd(qemu_img, fmt, "raw", "").arg(&theirs).arg(&b));
        assert_same_file(&a, &b, &format!("reading qemu's {fmt} overlay"));
        assert_info_like_qemu(fmt, &theirs, &format!("qemu's {fmt} overlay"));
        assert_chain_info_like_qemu(&theirs, &format!("qemu's {fmt} overlay"));
        // Our empty overlay: clean, the same as its base, info alike.
        let ours = d.join(format!("ours.{fmt}"));
        ok(img(&["create", "-q", "-f", fmt, "-b", &base_name, "-F", fmt]).arg(&ours));
        let check = run(qemu_img(&["check", "-f", fmt]).arg(&ours));
        assert!(
            check.status.success(),
            "qemu-img check of our {fmt} overlay"
        );
        ok(qemu_img(&["compare", "-f", fmt, "-F", fmt])
            .arg(&ours)
            .arg(&base));
        assert_info_like_qemu(fmt, &ours, &format!("our {fmt} overlay"));
        // qemu-io writes into our overlay read the same through both.
        qemu_io(fmt, &ours, &["write -P 0x44 3000 5000"]);
        ok(convert_cmd(img, fmt, "raw", "").arg(&ours).arg(&a));
        ok(convert_cmd(qemu_img, fmt, "raw", "").arg(&ours).arg(&b));
        assert_same_file(&a, &b, &format!("reading our {fmt} overlay"));
        // img convert -B: only what differs from the base goes in.
        let rebased = d.join(format!("rebased.{fmt}"));
        ok(
            img(&["convert", "-f", fmt, "-O", fmt, "-B", &base_name, "-F", fmt])
                .arg(&theirs)
                .arg(&rebased),
        );
        let check = run(qemu_img(&["check", "-f", fmt]).arg(&rebased));
        assert!(check.status.success(), "qemu-img check of our -B {fmt}");
        ok(qemu_img(&["compare", "-f", fmt, "-F", fmt])
            .arg(&rebased)
            .arg(&theirs));
        assert_chain_info_like_qemu(&rebased, &format!("our -B {fmt}"));
    }
    // A three-deep chain of mixed formats: qed over the vmdk overlay over
    // the vmdk base.
    let top = d.join("top.qed");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qed",
        "-b",
        "theirs.vmdk",
        "-F",
        "vmdk",
    ])
    .arg(&top));
    qemu_io("qed", &top, &["write -P 0x77 60k 8k"]);
    let (a, b) = (d.join("a.raw"), d.join("b.raw"));
    ok(convert_cmd(img, "qed", "raw", "").arg(&top).arg(&a));
    ok(convert_cmd(qemu_img, "qed", "raw", "").arg(&top).arg(&b));
    assert_same_file(&a, &b, "reading a qed over vmdk chain");
    assert_chain_info_like_qemu(&top, "a qed over vmdk chain");
    // qed's only recorded backing format is raw (a header bit).
    let over_raw = d.join("over-raw.qed");
    ok(img(&[
        "create",
        "-q",
        "-f",
        "qed",
        "-o",
        "backing_file=source.raw,backing_fmt=raw",
    ])
    .arg(&over_raw));
    assert_info_like_qemu("qed", &over_raw, "our qed over raw");
    ok(qemu_img(&["compare", "-f", "qed", "-F", "raw"])
        .arg(&over_raw)
        .arg(&source));
    // What qemu-img refuses, refused alike.
    for (args, message) in [
        (
            vec!["-b", "base.qed", "-F", "qed"],
            "backing_file must be a vmdk image",
        ),
        (
            vec![
                "-o",
                "subformat=monolithicFlat",
                "-b",
                "base.vmdk",
                "-F",
                "vmdk",
            ],
            "Flat image can't have backing file",
        ),
    ] {
        let target = d.join("refused.vmdk");
        for tool in [img as fn(&[&str]) -> std::process::Command, qemu_img] {
            let out = run(tool(&["create", "-q", "-f", "vmdk"])
                .args(&args)
                .arg(&target));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains(message),
                "{args:?}: {err}"
            );
        }
    }
}

/// Backing chains of vmdk and qed images that loop end in one line and
/// exit 1 at once.
#[test]
fn looping_vmdk_and_qed_chains_get_one_line() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two qed images naming each other.
    ok(qemu_img(&[
        "create", "-q", "-u", "-f", "qed", "-b", "b.qed", "-F", "qed",
    ])
    .arg(d.join("a.qed"))
    .arg("1M"));
    ok(qemu_img(&[
        "create", "-q", "-u", "-f", "qed", "-b", "a.qed", "-F", "qed",
    ])
    .arg(d.join("b.qed"))
    .arg("1M"));
    // A vmdk whose parentFileNameHint names itself.
    ok(qemu_img(&["create", "-q", "-f", "vmdk"])
        .arg(d.join("base.vmdk"))
        .arg("1M"));
    let selfish = d.join("self.vmdk");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
    ])
    .arg(&selfish));
    let mut bytes = read(&selfish);
    let hint = b"parentFileNameHint=\"base.vmdk\"";
    let at = bytes
        .windows(hint.len())
        .position(|w| w == hint)
        .expect("qemu-img writes the hint");
    bytes[at..at + hint.len()].copy_from_slice(b"parentFileNameHint=\"self.vmdk\"");
    std::fs::write(&selfish, bytes).unwrap();
    for (fmt, image) in [("qed", d.join("a.qed")), ("vmdk", selfish)] {
        let started = std::time::Instant::now();
        let out = run(img(&["convert", "-f", fmt, "-O", "raw"])
            .arg(&image)
            .arg(d.join("out.raw")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fmt}: {err}");
        assert_eq!(err.lines().count(), 1, "{fmt}: {err}");
        assert!(started.elapsed().as_secs() < 5, "{fmt}: took too long");
        let out = run(img(&["info", "--backing-chain", "-f", fmt]).arg(&image));
        assert_eq!(out.status.code(), Some(1), "{fmt} info --backing-chain");
    }
}

/// A block qemu-img allocates but whose file range is partly a hole (it
/// leaves zeros it converts unwritten): `img convert` reads the hole as
/// zeros without reading it, and over a backing file (`-B`) writes those
/// zeros, so the result reads as qemu-img's own conversion does.
#[test]
fn holes_inside_allocated_blocks_convert_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size: u64 = 4 << 20;
    // Data at the start of every MiB, zeros after it.
    let source = d.join("source.raw");
    let mut bytes = vec![0u8; size as usize];
    for mib in 0..4 {
        let at = mib << 20;
        bytes[at..at + 8192].fill(0x22 + mib as u8);
    }
    std::fs::write(&source, &bytes).unwrap();
    let base = d.join("base.qcow2");
    make_raw(&d.join("base.raw"), size, 5);
    ok(qemu_img(&["convert", "-f", "raw", "-O", "qcow2"])
        .arg(d.join("base.raw"))
        .arg(&base));
    for (fmt, opts) in [
        ("vhdx", "block_size=1M"),
        ("vdi", ""),
        ("vpc", "force_size=on"),
        ("qed", "cluster_size=1M"),
    ] {
        let image = d.join(format!("holes.{fmt}"));
        ok(convert_cmd(qemu_img, "raw", fmt, opts)
            .arg(&source)
            .arg(&image));
        for backing in [false, true] {
            let what = format!("{fmt} -o '{opts}', backing {backing}");
            let (ours, theirs) = (d.join("ours.qcow2"), d.join("theirs.qcow2"));
            for (tool, out) in [(img as fn(&[&str]) -> _, &ours), (qemu_img, &theirs)] {
                let _ = std::fs::remove_file(out);
                let mut c = convert_cmd(tool, fmt, "qcow2", "");
                if backing {
                    c.args(["-B"]).arg(&base).args(["-F", "qcow2"]);
                }
                ok(c.arg(&image).arg(out));
            }
            let (a, b) = (d.join("a.raw"), d.join("b.raw"));
            ok(convert_cmd(qemu_img, "qcow2", "raw", "").arg(&ours).arg(&a));
            ok(convert_cmd(qemu_img, "qcow2", "raw", "")
                .arg(&theirs)
                .arg(&b));
            assert_same_file(&a, &b, &what);
            if !backing {
                assert!(read(&a) == bytes, "{what}: data differs from the source");
            }
        }
    }
}

/// The file of an image whose writer is killed right after it wrote a
/// vhdx log entry: every later write fails, as if the process had died.
struct KilledAfterLogEntry {
    file: qcow::FileStorage,
    killed: std::sync::atomic::AtomicBool,
}

impl qcow::Storage for KilledAfterLogEntry {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> qcow::Result<()> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> qcow::Result<()> {
        use std::sync::atomic::Ordering;
        if self.killed.load(Ordering::SeqCst) {
            return Err(qcow::Error::io("write", std::io::Error::other("killed")));
        }
        self.file.write_at(buf, offset)?;
        if buf.starts_with(b"loge") {
            self.killed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    fn flush(&self) -> qcow::Result<()> {
        self.file.flush()
    }
    fn len(&self) -> qcow::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> qcow::Result<()> {
        self.file.set_len(len)
    }
}

/// A new block's BAT entry goes through the log as QEMU writes it: killed
/// after the log entry and before the BAT, the image is dirty; `check -r
/// all` of either tool replays it to the same disk, with the block
/// allocated, and qemu-img's check is then clean. Finished writes leave
/// the log empty, so qemu-img opens the image read-only.
#[test]
fn vhdx_bat_updates_go_through_the_log() {
    use qcow::device::BlockRead;
    use qcow::formats::ForeignImage;
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("journal.vhdx");
    ok(qemu_img(&["create", "-f", "vhdx", "-o", "block_size=1M"])
        .arg(&image)
        .arg("8M"));
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    };
    // A whole write: the log is empty afterwards.
    {
        let storage = std::sync::Arc::new(qcow::FileStorage::new(open(&image)));
        let vhdx = qcow::formats::vhdx::Vhdx::open(storage, true).unwrap();
        vhdx.write_at(&[0x5a; 65536], 1 << 20).unwrap();
        vhdx.flush().unwrap();
        assert_eq!(vhdx.extents(1 << 20, 65536).unwrap().len(), 1);
    }
    ok(qemu_img(&["check", "-f", "vhdx"]).arg(&image));
    // Killed after the log entry of the next block.
    {
        let storage = std::sync::Arc::new(KilledAfterLogEntry {
            file: qcow::FileStorage::new(open(&image)),
            killed: Default::default(),
        });
        let vhdx = qcow::formats::vhdx::Vhdx::open(storage, true).unwrap();
        assert!(vhdx.write_at(&[0x77; 4096], 5 << 20).is_err());
    }
    let out = run(qemu_img(&["info", "-f", "vhdx"]).arg(&image));
    assert_eq!(out.status.code(), Some(1), "the log is not dirty");
    let (ours, theirs) = (d.join("ours.vhdx"), d.join("theirs.vhdx"));
    std::fs::copy(&image, &ours).unwrap();
    std::fs::copy(&image, &theirs).unwrap();
    ok(img(&["check", "-r", "all", "-f", "vhdx"]).arg(&ours));
    ok(qemu_img(&["check", "-r", "all", "-f", "vhdx"]).arg(&theirs));
    for replayed in [&ours, &theirs] {
        ok(qemu_img(&["check", "-f", "vhdx"]).arg(replayed));
        // qemu-img's map shows a vhdx as all data: ask the BAT.
        let file = std::fs::File::open(replayed).unwrap();
        let storage = std::sync::Arc::new(qcow::FileStorage::new(file));
        let vhdx = qcow::formats::vhdx::Vhdx::open(storage, false).unwrap();
        let kind = vhdx.extents(5 << 20, 4096).unwrap()[0].kind;
        assert!(
            matches!(kind, qcow::device::ExtentKind::Data { .. }),
            "replay did not allocate the block: {kind:?}"
        );
    }
    let (ra, rb) = (d.join("a.raw"), d.join("b.raw"));
    ok(convert_cmd(qemu_img, "vhdx", "raw", "").arg(&ours).arg(&ra));
    ok(convert_cmd(qemu_img, "vhdx", "raw", "")
        .arg(&theirs)
        .arg(&rb));
    assert_same_file(&ra, &rb, "the disk after replaying our log entry");
    let disk = read(&ra);
    assert!(disk[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x5a));
    assert!(disk[5 << 20..6 << 20].iter().all(|&b| b == 0));
}

/// `commit` of a vmdk or qed overlay, by each tool on images either tool
/// made: the base ends up holding what qemu-img's commit puts there, and
/// qemu-img's check of the base is clean; after ours the top still reads
/// the same (neither driver can empty it, so qemu-img leaves it too).
/// `rebase` of a vmdk is refused by both with one line (the driver cannot
/// rename its parent).
#[test]
fn commit_of_vmdk_and_qed_overlays_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for fmt in ["vmdk", "qed"] {
        for maker in [img as fn(&[&str]) -> _, qemu_img] {
            let (base, top) = (d.join(format!("base.{fmt}")), d.join(format!("top.{fmt}")));
            let _ = std::fs::remove_file(&base);
            let _ = std::fs::remove_file(&top);
            ok(maker(&["create", "-f", fmt]).arg(&base).arg("4M"));
            qemu_io(fmt, &base, &["write -P 1 0 2M"]);
            // A name relative to the top: each copy below has its own base.
            let base_name = format!("base.{fmt}");
            ok(maker(&["create", "-f", fmt, "-F", fmt, "-b", &base_name]).arg(&top));
            qemu_io(
                fmt,
                &top,
                &["write -P 2 1M 64k", "write -z 0 64k", "write -P 3 3M 4k"],
            );
            let mut results = Vec::new();
            for (name, tool) in [("ours", img as fn(&[&str]) -> _), ("theirs", qemu_img)] {
                let sub = d.join(name);
                std::fs::create_dir_all(&sub).unwrap();
                let (b, t) = (
                    sub.join(format!("base.{fmt}")),
                    sub.join(format!("top.{fmt}")),
                );
                std::fs::copy(&base, &b).unwrap();
                std::fs::copy(&top, &t).unwrap();
                let out = ok(tool(&["commit", "-f", fmt]).arg(&t));
                assert_eq!(out.trim(), "Image committed.", "{fmt} {name}");
                ok(qemu_img(&["check", "-f", fmt]).arg(&b));
                // Each commit gives a vmdk base a new CID, after which
                // qemu refuses to read the top through it (EINVAL); a qed
                // top stays readable.
                let compare = run(qemu_img(&["compare", "-f", fmt, "-F", fmt])
                    .arg(&t)
                    .arg(&top));
                if fmt == "vmdk" {
                    assert_eq!(compare.status.code(), Some(4), "{name}: {compare:?}");
                    let err = String::from_utf8_lossy(&compare.stderr);
                    assert!(err.contains("Invalid argument"), "{name}: {err}");
                } else {
                    assert!(compare.status.success(), "{name}: {compare:?}");
                }
                let raw = sub.join("base.raw");
                ok(convert_cmd(qemu_img, fmt, "raw", "").arg(&b).arg(&raw));
                results.push(read(&raw));
            }
            assert!(
                results[0] == results[1],
                "{fmt}: the committed bases differ"
            );
            assert!(results[0][1 << 20..(1 << 20) + 65536]
                .iter()
                .all(|&b| b == 2));
        }
    }
    // vmdk cannot change its parent: both refuse alike.
    let (base, top) = (d.join("base.vmdk"), d.join("top.vmdk"));
    for tool in [img as fn(&[&str]) -> _, qemu_img] {
        let out = run(tool(&["rebase", "-u", "-f", "vmdk", "-F", "vmdk", "-b"])
            .arg(&base)
            .arg(&top));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not supported"), "{err}");
    }
}

/// `rebase` of a qed overlay (the one foreign driver that can rename its
/// backing file), safe mode, by each tool: the overlay reads as before,
/// names the new base, and passes qemu-img's check.
#[test]
fn rebase_of_qed_overlays_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    for (name, tool) in [("ours", img as fn(&[&str]) -> _), ("theirs", qemu_img)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (base, base2, top) = (d.join("base.qed"), d.join("base2.qed"), d.join("top.qed"));
        ok(qemu_img(&["create", "-f", "qed"]).arg(&base).arg("4M"));
        qemu_io("qed", &base, &["write -P 1 0 1M"]);
        ok(qemu_img(&["create", "-f", "qed"]).arg(&base2).arg("4M"));
        qemu_io("qed", &base2, &["write -P 3 512k 1M"]);
        ok(qemu_img(&["create", "-f", "qed", "-F", "qed", "-b", "base.qed"]).arg(&top));
        qemu_io("qed", &top, &["write -P 2 1M 64k"]);
        let before = d.join("before.raw");
        ok(convert_cmd(qemu_img, "qed", "raw", "")
            .arg(&top)
            .arg(&before));
        ok(tool(&["rebase", "-f", "qed", "-F", "qed", "-b", "base2.qed"]).arg(&top));
        ok(qemu_img(&["check", "-f", "qed"]).arg(&top));
        let info = ok(qemu_img(&["info", "-f", "qed"]).arg(&top));
        assert!(info.contains("backing file: base2.qed"), "{name}: {info}");
        let after = d.join("after.raw");
        ok(convert_cmd(qemu_img, "qed", "raw", "")
            .arg(&top)
            .arg(&after));
        assert_same_file(&before, &after, &format!("{name}: the disk after rebase"));
    }
}

/// `img map` of every vmdk subformat, human and JSON, is qemu-img's byte
/// for byte: extents in files of their own are named by their file (not
/// the descriptor), a flat extent's holes are data reading as zero, and a
/// twoGbMaxExtent disk's entries stop at each extent's end.
#[test]
fn vmdk_map_names_each_extent_file_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Over 2 GiB, so the twoGbMaxExtent layouts have two extents; data on
    // both sides of the extent boundary, a zeroed range and a tail hole.
    let writes = [
        "write -P 1 0 64k",
        "write -P 2 2047M 2M",
        "write -z 2100M 64k",
        "write -P 3 2200M 4k",
    ];
    for subformat in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let name = format!("{subformat}.vmdk");
        let opts = format!("subformat={subformat}");
        let image = d.join(&name);
        if subformat == "streamOptimized" {
            // QEMU writes stream-optimized images only through convert.
            let base = d.join("base.vmdk");
            ok(qemu_img(&[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=monolithicSparse",
            ])
            .arg(&base)
            .arg("2300M"));
            qemu_io("vmdk", &base, &writes);
            ok(
                qemu_img(&["convert", "-f", "vmdk", "-O", "vmdk", "-o", &opts])
                    .arg(&base)
                    .arg(&image),
            );
        } else {
            ok(qemu_img(&["create", "-q", "-f", "vmdk", "-o", &opts])
                .arg(&image)
                .arg("2300M"));
            qemu_io("vmdk", &image, &writes);
        }
        // Relative names, as a user types them: qemu-img prints them so.
        let outputs: &[&str] = if subformat == "streamOptimized" {
            // Human output refuses compressed clusters in both tools.
            &["json"]
        } else {
            &["human", "json"]
        };
        for output in outputs {
            let args = ["map", "-f", "vmdk", "--output", output, name.as_str()];
            let ours = run(img(&args).current_dir(d));
            let theirs = run(qemu_img(&args).current_dir(d));
            assert!(theirs.status.success(), "qemu-img map {name}");
            assert!(ours.status.success(), "img map {name}");
            assert!(
                ours.stdout == theirs.stdout,
                "{subformat} --output={output}: map differs:\n{}\n{}",
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&theirs.stdout)
            );
        }
    }
}

/// A hole punched into a vmdk extent's file under data: QEMU asks a flat
/// extent's file about it (data reading as zero) but not a sparse
/// extent's (a grain in a hole is plain data), in a file of its own or in
/// the image file; `img map` prints each as qemu-img does.
#[test]
fn vmdk_map_of_holes_under_data_is_per_extent_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (subformat, data_file) in [
        ("monolithicSparse", "monolithicSparse.vmdk"),
        ("twoGbMaxExtentSparse", "twoGbMaxExtentSparse-s001.vmdk"),
        ("monolithicFlat", "monolithicFlat-flat.vmdk"),
        ("twoGbMaxExtentFlat", "twoGbMaxExtentFlat-f001.vmdk"),
    ] {
        let name = format!("{subformat}.vmdk");
        let image = d.join(&name);
        ok(qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
        ])
        .arg(&image)
        .arg("4M"));
        qemu_io("vmdk", &image, &["write -P 7 0 1M"]);
        // The host offset of guest byte 64 KiB, from qemu-img's own map.
        let map = run(qemu_img(&["map", "-f", "vmdk", "--output=json"]).arg(&image));
        let text = String::from_utf8_lossy(&map.stdout).to_string();
        let offset: u64 = text
            .split("\"offset\": ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{subformat}: no offset in {text}"));
        ok(std::process::Command::new("fallocate")
            .args(["-p", "-o", &(offset + 65536).to_string(), "-l", "65536"])
            .arg(d.join(data_file)));
        for output in ["human", "json"] {
            let args = ["map", "-f", "vmdk", "--output", output, name.as_str()];
            let ours = run(img(&args).current_dir(d));
            let theirs = run(qemu_img(&args).current_dir(d));
            assert!(theirs.status.success(), "qemu-img map {name}");
            assert!(ours.status.success(), "img map {name}");
            assert!(
                ours.stdout == theirs.stdout,
                "{subformat} --output={output}: map differs:\n{}\n{}",
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&theirs.stdout)
            );
        }
        // The punched range reads as zero through both.
        let ours_raw = d.join("ours.raw");
        let theirs_raw = d.join("theirs.raw");
        ok(img(&["convert", "-f", "vmdk", "-O", "raw"])
            .arg(&image)
            .arg(&ours_raw));
        ok(qemu_img(&["convert", "-f", "vmdk", "-O", "raw"])
            .arg(&image)
            .arg(&theirs_raw));
        assert_same_file(&ours_raw, &theirs_raw, subformat);
    }
}

/// `img create` refuses bad `-o` values of every format with qemu-img's
/// line and status, and leaves the file as qemu-img does: the vpc, vdi,
/// qed and vhdx drivers check their options after the file was created
/// (an old file is truncated, a new one left empty), vmdk's and the
/// option parser's checks come first (an old file stays as it was).
#[test]
fn create_option_errors_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let (ours_dir, theirs_dir) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir(&ours_dir).unwrap();
    std::fs::create_dir(&theirs_dir).unwrap();
    for (fmt, opts, size) in [
        ("vmdk", "compat6=on,hwversion=7", "64M"),
        ("vmdk", "adapter_type=scsi", "64M"),
        ("vmdk", "subformat=foo", "64M"),
        ("vmdk", "zeroed_grain=maybe", "64M"),
        (
            "vmdk",
            "subformat=monolithicFlat,backing_file=b.vmdk",
            "64M",
        ),
        ("vhdx", "block_size=3M", "64M"),
        ("vhdx", "log_size=0", "64M"),
        ("vhdx", "subformat=diff", "64M"),
        ("vhdx", "block_state_zero=x", "64M"),
        ("vhdx", "", "65T"),
        ("vpc", "subformat=x", "64M"),
        ("vpc", "force_size=x", "64M"),
        ("vpc", "", "3T"),
        ("vpc", "extent_size_hint=5G", "64M"),
        ("vdi", "static=x", "64M"),
        ("vdi", "", "64P"),
        ("qed", "cluster_size=3k", "64M"),
        ("qed", "cluster_size=128M", "64M"),
        ("qed", "table_size=32", "64M"),
        ("qed", "cluster_size=4k,table_size=1", "10T"),
    ] {
        let what = format!("{fmt} -o '{opts}' {size}");
        for existing in [false, true] {
            let mut results = Vec::new();
            for (tool, folder) in [
                (img as fn(&[&str]) -> std::process::Command, &ours_dir),
                (qemu_img, &theirs_dir),
            ] {
                let name = format!("x.{fmt}");
                let path = folder.join(&name);
                let _ = std::fs::remove_file(&path);
                if existing {
                    std::fs::write(&path, b"old contents").unwrap();
                }
                let mut c = tool(&["create", "-q", "-f", fmt]);
                if !opts.is_empty() {
                    c.args(["-o", opts]);
                }
                let out = run(c.arg(&name).arg(size).current_dir(folder));
                let left = std::fs::metadata(&path).ok().map(|m| m.len());
                let err = String::from_utf8_lossy(&out.stderr).replace("qemu-img:", "img:");
                results.push((out.status.code(), err, left));
            }
            assert_eq!(results[0].0, Some(1), "{what}: {}", results[0].1);
            assert_eq!(
                results[0], results[1],
                "{what} (over an old file: {existing})"
            );
        }
    }
}

/// twoGbMaxExtent images larger than 2 GiB (sparse files: a few MiB of
/// data), data on both sides of each extent boundary: qemu-img's read
/// through `img convert -O raw` as qemu-img reads them, ours pass `qemu-img
/// check` and `compare`, qemu-io writes across a boundary read alike, and
/// info (one child per extent file) equals qemu-img's both ways.
#[test]
fn two_gb_extents_split_like_qemu() {
    use std::os::unix::fs::FileExt;
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = d.join("source.raw");
    let size: u64 = 4700 << 20;
    {
        let f = std::fs::File::create(&source).unwrap();
        f.set_len(size).unwrap();
        for (i, mib) in [0u64, 2047, 2048, 4095, 4096, 4699].into_iter().enumerate() {
            let data: Vec<u8> = (0..1u32 << 20)
                .map(|j| (j.wrapping_mul(31) >> 3) as u8 ^ i as u8)
                .collect();
            f.write_all_at(&data, mib << 20).unwrap();
        }
    }
    let same_raw = |a: &Path, b: &Path, what: &str| {
        assert_eq!(
            std::fs::metadata(a).unwrap().len(),
            std::fs::metadata(b).unwrap().len(),
            "{what}: sizes"
        );
        let out = run(qemu_img(&["compare", "-q", "-f", "raw", "-F", "raw"])
            .arg(a)
            .arg(b));
        assert!(out.status.success(), "{what}: the raw reads differ");
    };
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let opts = format!("subformat={sub}");
        let (q, o) = (d.join(format!("q-{sub}")), d.join(format!("o-{sub}")));
        std::fs::create_dir(&q).unwrap();
        std::fs::create_dir(&o).unwrap();
        let (theirs, ours) = (q.join("d.vmdk"), o.join("d.vmdk"));
        ok(convert_cmd(qemu_img, "raw", "vmdk", &opts)
            .arg(&source)
            .arg(&theirs));
        ok(convert_cmd(img, "raw", "vmdk", &opts)
            .arg(&source)
            .arg(&ours));
        // The same extent files, named alike.
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&o), names(&q), "{sub}: extent files");
        ok(qemu_img(&["check", "-f", "vmdk"]).arg(&ours));
        let out = run(qemu_img(&["compare", "-f", "raw", "-F", "vmdk"])
            .arg(&source)
            .arg(&ours));
        assert!(out.status.success(), "{sub}: ours differs from its source");
        for image in [&theirs, &ours] {
            // A write across the 2 GiB boundary, partial grains on both
            // sides, and one inside the second extent.
            qemu_io(
                "vmdk",
                image,
                &["write -P 0x71 2097148k 9k", "write -P 0x72 3000M 3k"],
            );
            let (a, b) = (d.join("a.raw"), d.join("b.raw"));
            ok(convert_cmd(img, "vmdk", "raw", "").arg(image).arg(&a));
            ok(convert_cmd(qemu_img, "vmdk", "raw", "").arg(image).arg(&b));
            same_raw(&a, &b, &format!("{sub}: {}", image.display()));
            assert_info_like_qemu("vmdk", image, &format!("{sub}: {}", image.display()));
            std::fs::remove_file(a).unwrap();
            std::fs::remove_file(b).unwrap();
        }
    }
}

/// qemu-img 10 creates qed images with `table_size=1` but opens none (its
/// table offset check counts a one-cluster table as an overflow): img
/// creates the same bytes, refuses to open them, and convert into one
/// fails in both after creating it.
#[test]
fn qed_table_size_one_is_created_but_not_opened_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let (ours_dir, theirs_dir) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir(&ours_dir).unwrap();
    std::fs::create_dir(&theirs_dir).unwrap();
    make_raw(&ours_dir.join("s.raw"), 1 << 20, 3);
    std::fs::copy(ours_dir.join("s.raw"), theirs_dir.join("s.raw")).unwrap();
    let tools = [
        (img as fn(&[&str]) -> std::process::Command, &ours_dir),
        (qemu_img, &theirs_dir),
    ];
    for (tool, folder) in tools {
        ok(tool(&[
            "create",
            "-q",
            "-f",
            "qed",
            "-o",
            "table_size=1",
            "t.qed",
            "4M",
        ])
        .current_dir(folder));
        let out = run(tool(&["info", "-f", "qed", "t.qed"]).current_dir(folder));
        assert_eq!(out.status.code(), Some(1));
        let out = run(tool(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qed",
            "-o",
            "table_size=1",
            "s.raw",
            "c.qed",
        ])
        .current_dir(folder));
        assert_eq!(out.status.code(), Some(1));
        assert!(folder.join("c.qed").exists());
    }
    for name in ["t.qed", "c.qed"] {
        assert_same_file(&ours_dir.join(name), &theirs_dir.join(name), name);
    }
}

/// A qed qemu-img makes over a raw file (`backing_fmt=raw`: the header's
/// no-probe bit), written by qemu-io, reads through img as through
/// qemu-img, with the same info and backing chain.
#[test]
fn qemu_qed_over_raw_reads_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("base.raw"), 3 << 20, 41);
    let top = d.join("top.qed");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qed",
        "-o",
        "backing_file=base.raw,backing_fmt=raw,cluster_size=4k",
    ])
    .arg(&top)
    .arg("4M"));
    qemu_io("qed", &top, &["write -P 1 100k 5k", "write -z 2M 8k"]);
    let (a, b) = (d.join("a.raw"), d.join("b.raw"));
    ok(convert_cmd(img, "qed", "raw", "").arg(&top).arg(&a));
    ok(convert_cmd(qemu_img, "qed", "raw", "").arg(&top).arg(&b));
    assert_same_file(&a, &b, "qemu's qed over raw");
    assert_info_like_qemu("qed", &top, "qemu's qed over raw");
    assert_chain_info_like_qemu(&top, "qemu's qed over raw");
}
