//! Enabled persistent bitmaps follow img's own writes as they follow
//! qemu-img's: the same image, with the same bitmaps (`img bitmap`), is
//! changed once by img and once by qemu-img (`commit`, `rebase`,
//! `convert -n`), and each bitmap's dirty ranges, as QEMU itself reads
//! them (qemu-nbd exporting the bitmap, `qemu-img map` with
//! `x-dirty-bitmap`), must be the same; disabled bitmaps stay clean, no
//! bitmap is left in use, and `qemu-img check` finds both images clean.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{assert_qemu_clean, img, ok, qemu_img, qemu_io, require_qemu};

/// A read-only qemu-nbd exporting one bitmap of an image; killed on drop.
struct NbdExport {
    child: Child,
    socket: PathBuf,
}

impl NbdExport {
    fn start(image: &Path, bitmap: &str, socket: PathBuf) -> NbdExport {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "-B", bitmap, "-k"])
            .arg(&socket)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-nbd (qemu-utils) runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "qemu-nbd never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        NbdExport { child, socket }
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dirty ranges (start, length) of `bitmap` in `image`, as QEMU reads
/// them: `qemu-img map` over NBD with the bitmap as the block status,
/// where a dirty range reads as no data.
fn dirty_ranges(image: &Path, bitmap: &str) -> Vec<(u64, u64)> {
    let socket = image.with_extension(format!("{bitmap}.sock"));
    let export = NbdExport::start(image, bitmap, socket);
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}",
        export.socket.display()
    );
    let out = ok(&mut qemu_img(&[
        "map",
        "--output=json",
        "--image-opts",
        &opts,
    ]));
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// The flags of every bitmap `qemu-img info` lists.
fn flags(image: &Path) -> Vec<(String, Vec<String>)> {
    let info = ok(qemu_img(&["info", "--output=json"]).arg(image));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Adds to `image` an enabled bitmap `b0` (64 KiB granules), an enabled
/// `fine` one (512-byte granules) and a disabled `off` one, with img.
fn add_bitmaps(image: &Path) {
    let p = image.to_str().unwrap();
    ok(&mut img(&["bitmap", "--add", p, "b0"]));
    ok(&mut img(&["bitmap", "--add", "-g", "512", p, "fine"]));
    ok(&mut img(&["bitmap", "--add", "--disable", p, "off"]));
}

/// Builds the same scene in two directories with `setup`, runs `ours`
/// (img) in one and `theirs` (qemu-img) in the other, then holds every
/// bitmap of every image in `images` to qemu-img's result.
fn compare(
    setup: impl Fn(&Path),
    ours: &[&str],
    theirs: &[&str],
    images: &[&str],
) -> Vec<(String, Vec<(u64, u64)>)> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (a, b) = (dir.path().join("ours"), dir.path().join("theirs"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        setup(d);
    }
    ok(img(ours).current_dir(&a));
    ok(qemu_img(theirs).current_dir(&b));
    let mut seen = Vec::new();
    for name in images {
        let (x, y) = (a.join(name), b.join(name));
        assert_qemu_clean(&x);
        assert_eq!(flags(&x), flags(&y), "{name}: bitmap flags");
        for (bitmap, _) in flags(&y) {
            let ranges = dirty_ranges(&y, &bitmap);
            assert_eq!(
                dirty_ranges(&x, &bitmap),
                ranges,
                "{name}: dirty ranges of bitmap {bitmap}"
            );
            seen.push((format!("{name}:{bitmap}"), ranges));
        }
    }
    seen
}

fn ranges_of<'a>(seen: &'a [(String, Vec<(u64, u64)>)], key: &str) -> &'a [(u64, u64)] {
    &seen.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn commit_marks_the_bases_enabled_bitmaps_as_qemu_img_does() {
    require_qemu!();
    let setup = |d: &Path| {
        let base = d.join("base.qcow2");
        let top = d.join("top.qcow2");
        ok(qemu_img(&["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("4M"));
        add_bitmaps(&base);
        ok(
            qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&base)
                .arg(&top),
        );
        ok(&mut img(&["bitmap", "--add", top.to_str().unwrap(), "t0"]));
        qemu_io(
            "qcow2",
            &top,
            &["write -P 0x11 70000 100000", "write -P 0x22 3M 512"],
        );
    };
    let seen = compare(
        setup,
        &["commit", "top.qcow2"],
        &["commit", "top.qcow2"],
        &["base.qcow2", "top.qcow2"],
    );
    // The committed clusters are dirty in the base; the disabled bitmap
    // stays clean.
    assert_eq!(
        ranges_of(&seen, "base.qcow2:b0"),
        [(65536, 131072), (3 << 20, 65536)]
    );
    assert!(ranges_of(&seen, "base.qcow2:off").is_empty());
}

#[test]
fn rebase_marks_what_it_copies_into_the_overlay() {
    require_qemu!();
    let setup = |d: &Path| {
        let old = d.join("old.qcow2");
        let new = d.join("new.qcow2");
        let top = d.join("top.qcow2");
        for base in [&old, &new] {
            ok(qemu_img(&["create", "-q", "-f", "qcow2"])
                .arg(base)
                .arg("4M"));
        }
        qemu_io("qcow2", &old, &["write -P 0x33 1M 200k"]);
        qemu_io("qcow2", &new, &["write -P 0x44 2M 4k"]);
        ok(
            qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&old)
                .arg(&top),
        );
        add_bitmaps(&top);
    };
    let seen = compare(
        setup,
        &["rebase", "-F", "qcow2", "-b", "new.qcow2", "top.qcow2"],
        &["rebase", "-F", "qcow2", "-b", "new.qcow2", "top.qcow2"],
        &["top.qcow2"],
    );
    assert!(!ranges_of(&seen, "top.qcow2:b0").is_empty());
    assert!(ranges_of(&seen, "top.qcow2:off").is_empty());
}

#[test]
fn convert_into_an_existing_image_marks_its_bitmaps() {
    require_qemu!();
    let setup = |d: &Path| {
        let src = d.join("src.qcow2");
        let dst = d.join("dst.qcow2");
        ok(qemu_img(&["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("4M"));
        qemu_io("qcow2", &src, &["write -P 0x55 128k 64k"]);
        ok(qemu_img(&["create", "-q", "-f", "qcow2"])
            .arg(&dst)
            .arg("4M"));
        add_bitmaps(&dst);
    };
    let seen = compare(
        setup,
        &["convert", "-n", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
        &["convert", "-n", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
        &["dst.qcow2"],
    );
    assert!(!ranges_of(&seen, "dst.qcow2:b0").is_empty());
}

#[test]
fn an_img_write_keeps_a_bitmap_qemu_left_in_use_inconsistent() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (base, top) = (dir.path().join("base.qcow2"), dir.path().join("top.qcow2"));
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("4M"));
    add_bitmaps(&base);
    // A writer that died with the image open leaves its bitmaps in use:
    // set b0's in-use flag as such a writer leaves it.
    let image = std::fs::read(&base).unwrap();
    let patched = mark_in_use(image, "b0");
    std::fs::write(&base, patched).unwrap();
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&top),
    );
    qemu_io("qcow2", &top, &["write -P 0x11 0 64k"]);
    ok(img(&["commit", "top.qcow2"]).current_dir(dir.path()));
    let f = flags(&base);
    assert_eq!(f[0], ("b0".into(), vec!["in-use".into(), "auto".into()]));
    assert_eq!(f[1], ("fine".into(), vec!["auto".into()]));
    assert_eq!(dirty_ranges(&base, "fine"), [(0, 65536)]);
}

/// Sets the in-use flag of bitmap `name` in a qcow2 image's bytes (the
/// directory entry's flags word, found through the header extension).
fn mark_in_use(mut image: Vec<u8>, name: &str) -> Vec<u8> {
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    // Header extensions start after the v3 header (its length at 100).
    let mut at = be32(&image, 100) as usize;
    let dir = loop {
        let (kind, len) = (be32(&image, at), be32(&image, at + 4) as usize);
        assert_ne!(kind, 0, "no bitmaps extension");
        if kind == 0x2385_2875 {
            break be64(&image, at + 8 + 16) as usize;
        }
        at += 8 + len.div_ceil(8) * 8;
    };
    let mut entry = dir;
    loop {
        let name_len = u16::from_be_bytes([image[entry + 18], image[entry + 19]]) as usize;
        let extra = be32(&image, entry + 20) as usize;
        let this = &image[entry + 24 + extra..entry + 24 + extra + name_len];
        if this == name.as_bytes() {
            image[entry + 15] |= 1;
            return image;
        }
        entry += (24 + extra + name_len).div_ceil(8) * 8;
    }
}
