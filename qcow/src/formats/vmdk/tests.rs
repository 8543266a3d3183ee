//! Unit tests of the VMDK module: every subformat round-trips in memory,
//! and hostile descriptors and sparse headers are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::create::{create, CreateOptions, Subformat};
use super::*;
use crate::formats::NamedFile;
use crate::storage::MemStorage;

/// Files in memory, by name; names with a slash or `..` are refused as the
/// file system opener refuses names outside the image's folder.
#[derive(Default)]
struct MemFiles {
    files: Mutex<HashMap<String, Arc<MemStorage>>>,
}

impl MemFiles {
    fn add(&self, name: &str, bytes: Vec<u8>) -> Arc<MemStorage> {
        let s = Arc::new(MemStorage::from_bytes(bytes));
        self.files.lock().unwrap().insert(name.into(), s.clone());
        s
    }
}

impl SideFiles for MemFiles {
    fn image_name(&self) -> String {
        "disk.vmdk".into()
    }
    fn image_identity(&self) -> String {
        "disk.vmdk".into()
    }
    fn open(&self, name: &str, _writable: bool) -> Result<NamedFile> {
        if name.contains('/') || name.contains("..") {
            return Err(invalid(
                FORMAT,
                "extent file",
                0,
                "outside the image's folder",
            ));
        }
        let files = self.files.lock().unwrap();
        let s = files
            .get(name)
            .ok_or_else(|| invalid(FORMAT, "extent file", 0, "missing"))?;
        Ok(NamedFile {
            storage: s.clone(),
            name: name.into(),
            identity: name.into(),
        })
    }
    fn create(&self, name: &str) -> Result<NamedFile> {
        let s = self.add(name, Vec::new());
        Ok(NamedFile {
            storage: s,
            name: name.into(),
            identity: name.into(),
        })
    }
}

fn round_trip(subformat: Subformat) {
    let files = MemFiles::default();
    let image = files.add("disk.vmdk", Vec::new());
    let opts = CreateOptions {
        subformat,
        ..CreateOptions::default()
    };
    create(&*image, (3 << 20) + 512, &opts, &files, 0x1234_5678).unwrap();
    let vmdk = Vmdk::open(image.clone(), true, &files).unwrap();
    assert_eq!(vmdk.virtual_size(), (3 << 20) + 512);
    assert_eq!(vmdk.create_type(), subformat.name());
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    vmdk.write_at(&data, 1 << 20).unwrap();
    vmdk.write_at(&[9; 512], 3 << 20).unwrap();
    vmdk.flush().unwrap();
    drop(vmdk);
    let again = Vmdk::open(image, false, &files).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    again.read_at(&mut buf, 1 << 20).unwrap();
    assert!(buf == data, "{subformat:?}");
    let mut tail = [0u8; 1024];
    again.read_at(&mut tail, (3 << 20) - 512).unwrap();
    assert_eq!(&tail[..512], &[0; 512]);
    assert_eq!(&tail[512..], &[9; 512]);
    let Some(InfoValue::Dict(info)) = again.format_specific() else {
        panic!()
    };
    // The open that wrote put a new CID into the descriptor.
    assert_ne!(info[0], ("cid", InfoValue::UInt(0x1234_5678)));
    assert_eq!(info[1], ("parent-cid", InfoValue::UInt(u32::MAX.into())));
}

/// The CID in `image`'s descriptor now.
fn file_cid(image: &MemStorage) -> u32 {
    cid::read_cid(image).unwrap().unwrap()
}

#[test]
fn the_cid_changes_once_per_open_that_writes() {
    for subformat in [Subformat::MonolithicSparse, Subformat::MonolithicFlat] {
        let files = MemFiles::default();
        let image = files.add("disk.vmdk", Vec::new());
        let opts = CreateOptions {
            subformat,
            ..CreateOptions::default()
        };
        create(&*image, 1 << 20, &opts, &files, 0x1234_5678).unwrap();
        let vmdk = Vmdk::open(image.clone(), true, &files).unwrap();
        let mut buf = [0u8; 512];
        vmdk.read_at(&mut buf, 0).unwrap();
        assert_eq!(file_cid(&image), 0x1234_5678, "a read changed the CID");
        vmdk.write_at(&[1; 512], 0).unwrap();
        let first = file_cid(&image);
        assert_ne!(first, 0x1234_5678);
        vmdk.write_at(&[2; 4096], 65536).unwrap();
        assert_eq!(file_cid(&image), first, "a second write of one open");
        // The open keeps showing the CID it read, as QEMU's does.
        assert_eq!(vmdk.cid(), 0x1234_5678);
        drop(vmdk);
        let again = Vmdk::open(image.clone(), true, &files).unwrap();
        assert_eq!(again.cid(), first);
        again.write_at(&[3; 512], 0).unwrap();
        assert_ne!(file_cid(&image), first, "{subformat:?}: a new open's write");
    }
}

#[test]
fn every_subformat_round_trips() {
    for s in [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::StreamOptimized,
    ] {
        round_trip(s);
    }
}

#[test]
fn stream_optimized_grains_are_written_once() {
    let files = MemFiles::default();
    let image = files.add("disk.vmdk", Vec::new());
    let opts = CreateOptions {
        subformat: Subformat::StreamOptimized,
        ..CreateOptions::default()
    };
    create(&*image, (1 << 20) + 512, &opts, &files, 1).unwrap();
    let created = image.to_bytes().len() as u64;
    let vmdk = Vmdk::open(image.clone(), true, &files).unwrap();
    let errno = |e: Error| match e {
        Error::Io { source, .. } | Error::Reported { source, .. } => source.raw_os_error(),
        other => panic!("{other}"),
    };
    // Part of a grain: EINVAL, after a grain-sized slot was taken.
    let e = vmdk.write_at(&[2; 4096], 0).unwrap_err();
    assert_eq!(errno(e), Some(libc::EINVAL));
    assert_eq!(image.to_bytes().len() as u64, created + 65536);
    // A whole grain goes into the next slot; its record ends the file's
    // use of it, so the next grain's slot starts right after.
    vmdk.write_at(&[1; 65536], 0).unwrap();
    assert_eq!(image.to_bytes().len() as u64, created + 2 * 65536);
    // The short last grain is written from its start to the disk's end.
    vmdk.write_at(&[3; 512], 1 << 20).unwrap();
    assert_eq!(image.to_bytes().len() as u64, created + 65536 + 512 + 65536);
    // A grain already there: EIO with QEMU's line, the file unchanged.
    let e = vmdk.write_at(&[1; 65536], 0).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Could not write to allocated cluster for streamOptimized"),
        "{e}"
    );
    assert_eq!(errno(e), Some(libc::EIO));
    assert_eq!(image.to_bytes().len() as u64, created + 65536 + 512 + 65536);
    let mut buf = vec![0u8; 65536];
    vmdk.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 1));
}

fn descriptor_image(files: &MemFiles, text: &str) -> Result<Vmdk> {
    let image = files.add("disk.vmdk", text.as_bytes().to_vec());
    Vmdk::open(image, false, files)
}

#[test]
fn hostile_descriptors_are_refused() {
    let files = MemFiles::default();
    files.add("a.raw", vec![0; 4096]);
    let head = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n";
    let ok = format!("{head}RW 8 FLAT \"a.raw\" 0\n");
    assert!(descriptor_image(&files, &ok).is_ok());
    // The descriptor itself as its extent (a loop).
    assert!(descriptor_image(&files, &format!("{head}RW 8 FLAT \"disk.vmdk\" 0\n")).is_err());
    // A file outside the folder.
    assert!(descriptor_image(&files, &format!("{head}RW 8 FLAT \"../etc/passwd\" 0\n")).is_err());
    // Overlapping flat extents in one file.
    assert!(descriptor_image(
        &files,
        &format!("{head}RW 8 FLAT \"a.raw\" 0\nRW 8 FLAT \"a.raw\" 4\n")
    )
    .is_err());
    // Adjacent ones are fine.
    assert!(descriptor_image(
        &files,
        &format!("{head}RW 8 FLAT \"a.raw\" 0\nRW 8 FLAT \"a.raw\" 8\n")
    )
    .is_ok());
    // No createType, an unknown one, no extents, an offset overflowing.
    assert!(descriptor_image(&files, "RW 8 FLAT \"a.raw\" 0\n").is_err());
    assert!(descriptor_image(&files, &ok.replace("monolithicFlat", "custom")).is_err());
    assert!(descriptor_image(&files, head).is_err());
    assert!(descriptor_image(
        &files,
        &format!("{head}RW 8 FLAT \"a.raw\" 36028797018963967\n")
    )
    .is_err());
    // A sparse extent that is not a sparse file.
    assert!(descriptor_image(
        &files,
        &format!("{head}RW 8 SPARSE \"a.raw\"\n").replace("monolithicFlat", "twoGbMaxExtentSparse")
    )
    .is_err());
}

#[test]
fn hostile_sparse_headers_are_refused() {
    let files = MemFiles::default();
    let image = files.add("x", Vec::new());
    create(&*image, 1 << 20, &CreateOptions::default(), &files, 1).unwrap();
    let good = image.to_bytes();
    let open = |patch: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        patch(&mut b);
        Vmdk::open(files.add("disk.vmdk", b), false, &files)
    };
    assert!(open(&|_| {}).is_ok());
    // Grain directory past the end of the file.
    assert!(open(&|b| LittleEndian::write_u64(&mut b[56..64], 1 << 40)).is_err());
    // Absurd grain size, grain table size and capacity.
    assert!(open(&|b| LittleEndian::write_u64(&mut b[20..28], 1 << 30)).is_err());
    assert!(open(&|b| LittleEndian::write_u32(&mut b[44..48], 1 << 20)).is_err());
    assert!(open(&|b| LittleEndian::write_u64(&mut b[12..20], 1 << 62)).is_err());
    // A stream footer that is not there.
    assert!(open(&|b| LittleEndian::write_u64(&mut b[56..64], u64::MAX)).is_err());
    // Grain table entries past the end read as zero; a compressed grain
    // with a broken marker fails the read, not the process.
    let mut b = good.clone();
    LittleEndian::write_u16(&mut b[77..79], 1);
    LittleEndian::write_u32(&mut b[8..12], 0x3_0003);
    let gt = LittleEndian::read_u64(&b[56..64]) as usize * 512;
    let first_gt = LittleEndian::read_u32(&b[gt..gt + 4]) as usize * 512;
    LittleEndian::write_u32(&mut b[first_gt..first_gt + 4], 1);
    let vmdk = Vmdk::open(files.add("disk.vmdk", b), false, &files).unwrap();
    let mut buf = [0u8; 512];
    assert!(vmdk.read_at(&mut buf, 0).is_err());
}

use byteorder::{ByteOrder, LittleEndian};

#[test]
fn overlay_reads_its_parent_and_copies_grains_up_on_partial_writes() {
    let files = MemFiles::default();
    let base: Vec<u8> = (0..(1u32 << 19)).map(|i| (i % 241) as u8).collect();
    let parent_file = files.add("base.vmdk", Vec::new());
    create(
        &*parent_file,
        1 << 19,
        &CreateOptions::default(),
        &files,
        0xabcd_ef01,
    )
    .unwrap();
    let parent = Vmdk::open(parent_file.clone(), true, &files).unwrap();
    parent.write_at(&base, 0).unwrap();
    drop(parent);
    let parent_cid = file_cid(&parent_file);
    let image = files.add("disk.vmdk", Vec::new());
    let opts = CreateOptions {
        parent: Some((parent_cid, "base.vmdk".into())),
        ..CreateOptions::default()
    };
    create(&*image, 1 << 20, &opts, &files, 0x1234_5678).unwrap();
    let mut vmdk = Vmdk::open(image.clone(), true, &files).unwrap();
    let named = vmdk.backing_file().unwrap();
    assert_eq!(
        (named.name.as_str(), named.format),
        ("base.vmdk", Some(FORMAT))
    );
    assert_eq!(vmdk.parent_cid, parent_cid);
    let parent = Vmdk::open(parent_file, false, &files).unwrap();
    vmdk.set_backing(Box::new(crate::formats::ForeignLayer(Box::new(parent))));
    vmdk.write_at(&[0x5a; 700], 70_000).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    vmdk.read_at(&mut buf, 0).unwrap();
    let mut want = base;
    want.resize(1 << 20, 0);
    want[70_000..70_700].fill(0x5a);
    assert!(buf == want, "overlay reads differ from parent + write");
    let report = vmdk.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 0, "{report:?}");
}

#[test]
fn a_parent_that_is_not_a_vmdk_fails_reads_through_it_as_in_qemu() {
    let files = MemFiles::default();
    let image = files.add("disk.vmdk", Vec::new());
    let opts = CreateOptions {
        parent: Some((u32::MAX, "base.raw".into())),
        ..CreateOptions::default()
    };
    create(&*image, 1 << 20, &opts, &files, 1).unwrap();
    let mut vmdk = Vmdk::open(image, true, &files).unwrap();
    let raw = crate::device::RawImage::new(Arc::new(MemStorage::from_bytes(vec![7; 1 << 20])));
    vmdk.set_backing(Box::new(raw.unwrap()));
    let mut buf = [0u8; 512];
    let err = vmdk.read_at(&mut buf, 0).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
    );
    assert!(vmdk.write_at(&[1; 65536], 0).is_err());
}

#[test]
fn missing_grain_tables_are_one_extent_each_run() {
    let files = MemFiles::default();
    let image = files.add("x", Vec::new());
    create(&*image, 1 << 20, &CreateOptions::default(), &files, 1).unwrap();
    let mut b = image.to_bytes();
    // 1 TiB of 64 KiB grains: 32768 grain tables, none allocated (a
    // directory of zeros appended), no redundant directory.
    b.resize(b.len().div_ceil(512) * 512, 0);
    let gd_sector = (b.len() / 512) as u64;
    b.resize(b.len() + 32768 * 4, 0);
    LittleEndian::write_u64(&mut b[12..20], 1 << 31);
    LittleEndian::write_u64(&mut b[56..64], gd_sector);
    let flags = LittleEndian::read_u32(&b[8..12]) & !header::FLAG_RGD;
    LittleEndian::write_u32(&mut b[8..12], flags);
    let vmdk = Vmdk::open(files.add("disk.vmdk", b), false, &files).unwrap();
    let extents = vmdk.extents(0, 1 << 40).unwrap();
    assert_eq!(extents.len(), 1, "{extents:?}");
    assert_eq!((extents[0].guest_offset, extents[0].len), (0, 1 << 40));
    assert!(matches!(extents[0].kind, ExtentKind::Unallocated { .. }));
    // From inside a grain, too.
    let extents = vmdk.extents(100, 1 << 30).unwrap();
    assert_eq!((extents[0].guest_offset, extents[0].len), (100, 1 << 30));
}

/// Reads of a flat extent do not ask its file where the holes are: the
/// whole extent is one data range (its holes read as zeros), while the
/// extents `img map` prints still show them.
#[test]
fn flat_extents_for_io_skip_hole_detection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.vmdk");
    let file = std::fs::File::create_new(&path).unwrap();
    let opts = CreateOptions {
        subformat: Subformat::MonolithicFlat,
        ..CreateOptions::default()
    };
    let files = crate::formats::dir_files::DirFiles::for_image(&path);
    let image: Arc<dyn crate::storage::Storage> = Arc::new(crate::FileStorage::new(file));
    create(&*image, 8 << 20, &opts, &files, 1).unwrap();
    let vmdk = Vmdk::open(image, true, &files).unwrap();
    vmdk.write_at(&[7; 65536], 1 << 20).unwrap();
    vmdk.flush().unwrap();
    let mut io = Vec::new();
    vmdk.extents_for_io(0, 8 << 20, &mut io).unwrap();
    assert_eq!(io.len(), 1, "{io:?}");
    assert_eq!(io[0].len, 8 << 20);
    assert!(matches!(
        io[0].kind,
        ExtentKind::Data { host_offset: 0, file } if !file.is_image()
    ));
    let map = vmdk.extents(0, 8 << 20).unwrap();
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), 8 << 20);
    let mut back = vec![0u8; 65536 * 3];
    vmdk.read_at(&mut back, (1 << 20) - 65536).unwrap();
    assert!(back[..65536].iter().all(|&b| b == 0));
    assert!(back[65536..131072].iter().all(|&b| b == 7));
    drop(vmdk);

    // The layers that wrap an image answer with the format's own
    // extents_for_io, not with its map: the one data extent again.
    let any = crate::fs::open_image(&path, Some(crate::fs::Format::Vmdk), false).unwrap();
    let files = crate::formats::dir_files::DirFiles::for_image(&path);
    let storage = crate::fs::open_storage(&path, false).unwrap();
    let layer = crate::formats::ForeignLayer(Box::new(Vmdk::open(storage, false, &files).unwrap()));
    for (what, wrapped) in [
        ("AnyImage", &any as &dyn BlockRead),
        ("ForeignLayer", &layer as &dyn BlockRead),
    ] {
        let mut io = Vec::new();
        wrapped.extents_for_io(0, 8 << 20, &mut io).unwrap();
        assert_eq!(io.len(), 1, "{what}: {io:?}");
        assert_eq!(io[0].len, 8 << 20, "{what}");
        assert!(wrapped.extents(0, 8 << 20).unwrap().len() > 1, "{what}");
    }
}

/// A 20 MiB VMFS sparse ("COWD") file with 4 KiB grains: CID text at
/// sector 1, a directory of two entries at sector 2, grain table 0 at
/// sector 3 and, when `second_table`, grain table 1 right after it; no
/// grain allocated.
fn cowd_file(second_table: bool) -> Vec<u8> {
    let table_sectors = 4096 * 4 / 512;
    let mut f = b"COWD".to_vec();
    for word in [1u32, 3, 40960, 8, 2, 2, 3 + 2 * table_sectors, 0, 0, 0] {
        f.extend_from_slice(&word.to_le_bytes());
    }
    f.resize(512, 0);
    f.extend_from_slice(b"CID=2fc1881a\nparentCID=ffffffff\n");
    f.resize(1024, 0);
    let tables = [3u32, if second_table { 3 + table_sectors } else { 0 }];
    f.extend(tables.iter().flat_map(|t| t.to_le_bytes()));
    f.resize(1536, 0);
    let tables_present = if second_table { 2 } else { 1 };
    f.resize(1536 + tables_present * table_sectors as usize * 512, 0);
    f
}

/// A VMFS sparse file opens for writing, as QEMU opens it: a write
/// appends its grain at the end of the file and reads back after a
/// reopen; a write under a grain table the file lacks is refused (QEMU
/// fails it too) and leaves the file as it was.
#[test]
fn vmfs_sparse_extents_take_writes_as_qemu_does() {
    let files = MemFiles::default();
    let mem = files.add("disk.vmdk", cowd_file(false));
    let end = mem.len().unwrap();
    let vmdk = Vmdk::open(mem.clone(), true, &files).unwrap();
    vmdk.write_at(&[0x5a; 6144], 4096 * 3 + 1024).unwrap();
    vmdk.flush().unwrap();
    // Two grains, appended where the file ended (a grain boundary).
    assert_eq!(mem.len().unwrap(), end.next_multiple_of(4096) + 2 * 4096);
    let before = mem.to_bytes();
    let err = vmdk.write_at(&[1; 512], 17 << 20).unwrap_err();
    assert!(err.to_string().contains("grain table"), "{err}");
    assert!(mem.to_bytes() == before, "a refused write changed the file");
    drop(vmdk);
    let again = Vmdk::open(mem, false, &files).unwrap();
    let mut back = vec![0u8; 4 * 4096];
    again.read_at(&mut back, 4096 * 2).unwrap();
    assert!(back[..4096 + 1024].iter().all(|&b| b == 0));
    assert!(back[4096 + 1024..4096 + 1024 + 6144]
        .iter()
        .all(|&b| b == 0x5a));
    assert!(back[4096 + 1024 + 6144..].iter().all(|&b| b == 0));
}
