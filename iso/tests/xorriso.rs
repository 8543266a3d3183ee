//! The reader against images xorriso builds: Rock Ridge, Joliet and plain
//! ISO 9660 names, nested directories, multi-block and long-named files,
//! and hostile variants of them (a directory loop, extents past the end,
//! huge records, a truncated image). Skips when xorriso is missing unless
//! REQUIRE_XORRISO is set (scripts/test.sh sets it and installs xorriso
//! with scripts/ensure-xorriso.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use iso9660::{IsoError, IsoImage};

fn xorriso_present() -> bool {
    let found = Command::new("xorriso").arg("-version").output().is_ok();
    if !found && std::env::var_os("REQUIRE_XORRISO").is_some() {
        panic!("xorriso is missing (bash scripts/ensure-xorriso.sh installs it)");
    }
    if !found {
        eprintln!("skipped: xorriso is missing");
    }
    found
}

/// 5000 bytes of a pattern that tells positions apart.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

const LONG_NAME: &str = "A_very_long_Rock_Ridge_name_that_will_not_fit_in_one_record_because_it_goes_on_and_on_and_on_for_more_than_two_hundred_characters_which_is_longer_than_what_a_directory_record_can_hold_next_to_its_other_fields_x.txt";

/// A source tree and an image of it built with `options`.
fn build(dir: &Path, options: &[&str]) -> PathBuf {
    let src = dir.join("src");
    if !src.exists() {
        std::fs::create_dir_all(src.join("isolinux")).unwrap();
        std::fs::create_dir_all(src.join("Deep/Er/Still")).unwrap();
        std::fs::write(src.join("isolinux/isolinux.cfg"), "default linux\n").unwrap();
        std::fs::write(src.join("Deep/Er/Still/Kernel.bin"), pattern(5000)).unwrap();
        std::fs::write(src.join("MixedCase_file.txt"), "mixed\n").unwrap();
        std::fs::write(src.join("empty"), "").unwrap();
        std::fs::write(src.join(LONG_NAME), "long\n").unwrap();
    }
    let iso = dir.join(format!("image{}.iso", options.join("")));
    let status = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "TEST_VOL"])
        .args(options)
        .arg("-o")
        .arg(&iso)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    iso
}

fn open(path: &Path) -> IsoImage<std::fs::File> {
    IsoImage::open(std::fs::File::open(path).unwrap()).unwrap()
}

#[test]
fn rock_ridge_names_nested_files_and_long_names() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = open(&build(dir.path(), &["-R", "-J"]));
    assert!(iso.has_rock_ridge());
    assert_eq!(iso.volume_id(), "TEST_VOL");
    let kernel = iso.lookup("/Deep/Er/Still/Kernel.bin").unwrap().unwrap();
    assert_eq!(kernel.name, "Kernel.bin");
    assert_eq!(iso.read_file(&kernel, 1 << 20).unwrap(), pattern(5000));
    let cfg = iso.lookup("isolinux/isolinux.cfg").unwrap().unwrap();
    assert_eq!(iso.read_file(&cfg, 100).unwrap(), b"default linux\n");
    let long = iso.lookup(LONG_NAME).unwrap().unwrap();
    assert_eq!(long.name, LONG_NAME);
    assert_eq!(iso.lookup("/empty").unwrap().unwrap().size, 0);
    assert!(iso.lookup("/Deep/nothing").unwrap().is_none());
    assert!(iso.lookup("/empty/below").unwrap().is_none());
    let mut names = Vec::new();
    iso.walk(|e| names.push(e.path.clone())).unwrap();
    names.sort();
    assert!(
        names.contains(&"/Deep/Er/Still/Kernel.bin".to_string()),
        "{names:?}"
    );
    assert_eq!(names.len(), 9, "{names:?}");
    // A limit under the file's size is refused in one line.
    let err = iso.read_file(&kernel, 4999).unwrap_err();
    assert!(
        matches!(err, IsoError::FileTooLarge { size: 5000, .. }),
        "{err}"
    );
}

#[test]
fn joliet_names_without_rock_ridge() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = open(&build(dir.path(), &["--norock", "-J", "-joliet-long"]));
    assert!(!iso.has_rock_ridge());
    assert_eq!(iso.name_kind(), iso9660::NameKind::Joliet);
    let file = iso.lookup("/MixedCase_file.txt").unwrap().unwrap();
    assert_eq!(file.name, "MixedCase_file.txt");
    let kernel = iso.lookup("/Deep/Er/Still/Kernel.bin").unwrap().unwrap();
    assert_eq!(iso.read_file(&kernel, 5000).unwrap(), pattern(5000));
}

#[test]
fn plain_iso_names_match_without_case() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = open(&build(dir.path(), &["--norock"]));
    assert_eq!(iso.name_kind(), iso9660::NameKind::Iso);
    let cfg = iso.lookup("/isolinux/isolinux.cfg").unwrap().unwrap();
    assert_eq!(cfg.name, "ISOLINUX.CFG");
    assert_eq!(iso.read_file(&cfg, 100).unwrap(), b"default linux\n");
}

/// The byte offset of the directory record whose identifier is `name` in
/// the primary tree (an identifier xorriso writes in upper case).
fn record_offset(image: &[u8], name: &[u8]) -> usize {
    let at = image
        .windows(name.len() + 1)
        .position(|w| w[0] as usize == name.len() && &w[1..] == name)
        .expect("record found");
    at - 32
}

fn patched(image: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Result<(), IsoError> {
    let mut bytes = image.to_vec();
    f(&mut bytes);
    let iso = IsoImage::open(bytes)?;
    iso.walk(|_| {})?;
    if let Some(entry) = iso.lookup("/Deep/Er/Still/Kernel.bin")? {
        iso.read_file(&entry, 1 << 20)?;
    }
    Ok(())
}

/// A change to an image and the words its refusal must contain.
type Case = (&'static str, Box<dyn FnOnce(&mut Vec<u8>)>);

fn set_u32_both(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn hostile_images_get_one_line_each() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(build(dir.path(), &["--norock"])).unwrap();
    assert!(patched(&image, |_| {}).is_ok());
    let root_block =
        u32::from_le_bytes(image[16 * 2048 + 158..16 * 2048 + 162].try_into().unwrap());
    let deep = record_offset(&image, b"DEEP");
    let kernel = record_offset(&image, b"KERNEL.BIN;1");
    let cases: Vec<Case> = vec![
        (
            "loops back",
            Box::new(move |b| set_u32_both(b, deep + 2, root_block)),
        ),
        (
            "ends past",
            Box::new(move |b| set_u32_both(b, kernel + 2, 0x00ff_ffff)),
        ),
        (
            "over the limit",
            Box::new(move |b| set_u32_both(b, deep + 10, 0xffff_0000)),
        ),
        ("bad record", Box::new(move |b| b[deep] = 7)),
        ("logical block size", Box::new(|b| b[16 * 2048 + 128] = 3)),
        (
            "no volume descriptor",
            Box::new(|b| b[16 * 2048 + 1] = b'X'),
        ),
        (
            "past the image",
            Box::new(move |b| b.truncate(kernel + 2048)),
        ),
        ("too small", Box::new(|b| b.truncate(4096))),
    ];
    for (expected, patch) in cases {
        let err = patched(&image, patch).expect_err(expected);
        let text = err.to_string();
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(!text.contains('\n'), "{text}");
    }
}

/// Directory names of a tree deeper than ISO 9660's eight levels, which
/// Rock Ridge images relocate.
const DEEP_CHAIN: [&str; 11] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];

/// An image of a tree whose deepest directories xorriso relocates into
/// `/RR_MOVED` (Rock Ridge `CL`, `PL` and `RE` entries).
fn build_relocated(dir: &Path) -> Vec<u8> {
    let src = dir.join("deep_src");
    let deepest = DEEP_CHAIN
        .iter()
        .fold(src.clone(), |path, name| path.join(name));
    std::fs::create_dir_all(&deepest).unwrap();
    std::fs::write(deepest.join("deep.txt"), pattern(3000)).unwrap();
    let iso = dir.join("relocated.iso");
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-rr_reloc_dir",
            "RR_MOVED",
        ])
        .arg("-o")
        .arg(&iso)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(&iso).unwrap();
    assert!(
        image.windows(4).any(|w| w == b"CL\x0c\x01"),
        "xorriso relocated nothing"
    );
    image
}

#[test]
fn relocated_rock_ridge_directories_are_followed() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = IsoImage::open(build_relocated(dir.path())).unwrap();
    let deep_path = format!("/{}/deep.txt", DEEP_CHAIN.join("/"));
    let file = iso.lookup(&deep_path).unwrap().expect("deep file found");
    assert_eq!(iso.read_file(&file, 1 << 20).unwrap(), pattern(3000));
    let mut paths = Vec::new();
    iso.walk(|entry| paths.push(entry.path.clone())).unwrap();
    // Each level of the chain once, at its own path; the relocated
    // directory is not listed a second time under RR_MOVED.
    for depth in 1..=DEEP_CHAIN.len() {
        let path = format!("/{}", DEEP_CHAIN[..depth].join("/"));
        assert_eq!(
            paths.iter().filter(|p| **p == path).count(),
            1,
            "{path}: {paths:?}"
        );
    }
    assert_eq!(paths.iter().filter(|p| **p == deep_path).count(), 1);
    assert!(
        !paths.iter().any(|p| p.starts_with("/RR_MOVED/")),
        "{paths:?}"
    );
}

#[test]
fn hostile_relocation_links_get_one_line_each() {
    if !xorriso_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = build_relocated(dir.path());
    let link = image.windows(4).position(|w| w == b"CL\x0c\x01").unwrap();
    let root_block =
        u32::from_le_bytes(image[16 * 2048 + 158..16 * 2048 + 162].try_into().unwrap());
    let data_block = (image
        .windows(8)
        .position(|w| w == &pattern(3000)[..8])
        .unwrap()
        / 2048) as u32;
    let cases: Vec<Case> = vec![
        // A link back to the root makes a loop.
        (
            "loops back",
            Box::new(move |b| set_u32_both(b, link + 4, root_block)),
        ),
        (
            "ends past",
            Box::new(move |b| set_u32_both(b, link + 4, 0x00ff_ffff)),
        ),
        // A link to a file's data, which is no directory.
        (
            "Rock Ridge CL",
            Box::new(move |b| set_u32_both(b, link + 4, data_block)),
        ),
    ];
    for (expected, patch) in cases {
        let err = patched(&image, patch).expect_err(expected);
        let text = err.to_string();
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
