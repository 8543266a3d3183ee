//! Unit tests of the VHD module: round trips in memory and hostile images.

use std::sync::Arc;

use super::*;
use crate::storage::MemStorage;

fn new_image(size: u64, subformat: Subformat) -> (Arc<MemStorage>, Vpc) {
    let mem = Arc::new(MemStorage::new());
    create(
        &*mem,
        size,
        CreateOptions {
            subformat,
            force_size: false,
        },
    )
    .unwrap();
    let vpc = Vpc::open(mem.clone(), true).unwrap();
    (mem, vpc)
}

#[test]
fn dynamic_write_read_reopen() {
    let (mem, vpc) = new_image(10 << 20, Subformat::Dynamic);
    assert_eq!(vpc.virtual_size(), 10_514_432);
    assert_eq!(vpc.cluster_size(), Some(2 << 20));
    vpc.write_at(&[0xab; 1000], 3 << 20).unwrap();
    vpc.write_at(&[0xcd; 512], 100).unwrap();
    let mut buf = vec![0u8; 4096];
    vpc.read_at(&mut buf, (3 << 20) - 2048).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 0));
    assert!(buf[2048..3048].iter().all(|&b| b == 0xab));
    assert!(buf[3048..].iter().all(|&b| b == 0));
    drop(vpc);
    let again = Vpc::open(mem.clone(), false).unwrap();
    let mut buf = vec![0u8; 612];
    again.read_at(&mut buf, 0).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0));
    assert!(buf[100..].iter().all(|&b| b == 0xcd));
    assert_eq!(again.block_counts(), Some((2, 6)));
    let e = again.extents(0, again.virtual_size()).unwrap();
    assert!(matches!(e[0].kind, ExtentKind::Data { .. }));
    assert_eq!(e[0].len, 2 << 20);
    // Each new block's data starts on a page of the file, the footer
    // right after the last block.
    let hosts: Vec<u64> = e
        .iter()
        .filter_map(|x| match x.kind {
            ExtentKind::Data { host_offset, .. } => Some(host_offset),
            _ => None,
        })
        .collect();
    assert_eq!(hosts.len(), 2, "{e:?}");
    assert!(hosts.iter().all(|h| h % 4096 == 0), "{hosts:?}");
    let last = *hosts.iter().max().unwrap();
    assert_eq!(mem.len().unwrap(), last + (2 << 20) + 512);
    assert!(matches!(
        e[1].kind,
        ExtentKind::Data { .. } | ExtentKind::Unallocated { .. }
    ));
}

#[test]
fn fixed_write_read() {
    let (mem, vpc) = new_image(1 << 20, Subformat::Fixed);
    let size = vpc.virtual_size();
    assert_eq!(mem.len().unwrap(), size + 512);
    vpc.write_at(&[1; 512], size - 512).unwrap();
    assert!(vpc.write_at(&[1; 512], size).is_err());
    let again = Vpc::open(mem, false).unwrap();
    assert!(again.is_fixed());
    assert_eq!(again.cluster_size(), None);
    let mut buf = [0u8; 512];
    again.read_at(&mut buf, size - 512).unwrap();
    assert_eq!(buf, [1; 512]);
}

/// A dynamic image's bytes with `patch` applied to its dynamic header
/// (whose checksum is not checked by QEMU, nor by us).
fn patched(patch: impl Fn(&mut Vec<u8>)) -> Result<Vpc> {
    let mem = MemStorage::new();
    create(&mem, 4 << 20, CreateOptions::default()).unwrap();
    let mut bytes = mem.to_bytes();
    patch(&mut bytes);
    Vpc::open(Arc::new(MemStorage::from_bytes(bytes)), false)
}

#[test]
fn hostile_images_are_refused() {
    // Table far past the end of the file.
    assert!(patched(|b| BigEndian::write_u64(&mut b[512 + 16..512 + 24], 1 << 40)).is_err());
    // Absurd block size (not a power of two), and a tiny one.
    assert!(patched(|b| BigEndian::write_u32(&mut b[512 + 32..512 + 36], 3 << 20)).is_err());
    assert!(patched(|b| BigEndian::write_u32(&mut b[512 + 32..512 + 36], 256)).is_err());
    // A huge table count.
    assert!(patched(|b| BigEndian::write_u32(&mut b[512 + 28..512 + 32], u32::MAX)).is_err());
    // A table entry pointing past the end.
    assert!(patched(|b| BigEndian::write_u32(&mut b[1536..1540], 0x00ff_ffff)).is_err());
    // A broken footer checksum.
    assert!(patched(|b| b[40] ^= 1).is_err());
    // Garbage.
    assert!(Vpc::open(Arc::new(MemStorage::from_bytes(vec![0; 100])), false).is_err());
    // The untouched image opens.
    assert!(patched(|_| {}).is_ok());
}

#[test]
fn threads_writing_parts_of_one_block_at_once_allocate_it_once() {
    // What convert relies on when it cuts 2 MiB blocks into 1 MiB chunks.
    let (mem, vpc) = new_image(4 << 20, Subformat::Dynamic);
    assert!(vpc.concurrent_partial_unit_writes());
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4u8)
            .map(|part| {
                let vpc = &vpc;
                s.spawn(move || vpc.write_at(&[part + 1; 4096], u64::from(part) << 19))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
    });
    assert_eq!(vpc.block_counts().map(|(used, _)| used), Some(1));
    drop(vpc);
    let vpc = Vpc::open(mem, false).unwrap();
    let mut back = vec![0u8; 2 << 20];
    vpc.read_at(&mut back, 0).unwrap();
    for part in 0..4usize {
        let at = part << 19;
        assert!(back[at..at + 4096].iter().all(|&b| b == part as u8 + 1));
        assert!(back[at + 4096..at + (1 << 19)].iter().all(|&b| b == 0));
    }
}

/// Reads of a fixed VHD do not ask its file where the holes are: the
/// whole request is one data range of the image file (its holes read as
/// zeros), while the extents `img map` prints still show the holes.
#[test]
fn fixed_extents_for_io_skip_hole_detection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.vhd");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let storage: Arc<dyn Storage> = Arc::new(crate::FileStorage::new(file));
    let opts = CreateOptions {
        subformat: Subformat::Fixed,
        force_size: true,
    };
    create(&*storage, 8 << 20, opts).unwrap();
    let vpc = Vpc::open(storage, true).unwrap();
    vpc.write_at(&[7; 65536], 1 << 20).unwrap();
    vpc.flush().unwrap();
    let mut io = Vec::new();
    vpc.extents_for_io(0, 8 << 20, &mut io).unwrap();
    assert_eq!(io.len(), 1, "{io:?}");
    assert_eq!(io[0].len, 8 << 20);
    assert!(matches!(
        io[0].kind,
        ExtentKind::Data {
            host_offset: 0,
            file: FileIndex::IMAGE
        }
    ));
    // Clipped at the disk's end, as `extents` clips.
    let mut tail = Vec::new();
    vpc.extents_for_io((8 << 20) - 512, 1 << 20, &mut tail)
        .unwrap();
    assert_eq!((tail[0].guest_offset, tail[0].len), ((8 << 20) - 512, 512));
    let map = vpc.extents(0, 8 << 20).unwrap();
    assert!(
        map.iter()
            .any(|e| matches!(e.kind, ExtentKind::Zero { .. })),
        "the file's holes are still mapped: {map:?}"
    );
    let mut back = vec![0u8; 65536 * 3];
    vpc.read_at(&mut back, (1 << 20) - 65536).unwrap();
    assert!(back[..65536].iter().all(|&b| b == 0));
    assert!(back[65536..131072].iter().all(|&b| b == 7));
}

/// Blocks under 1 MiB keep QEMU's placement (right at the footer's place,
/// no padding): aligning them would pad a large share of the file.
#[test]
fn small_blocks_are_placed_as_qemu_places_them() {
    let (mem, vpc) = new_image(4 << 20, Subformat::Dynamic);
    drop(vpc);
    let entries = (4u64 << 20).div_ceil(64 << 10) as u32 + 1;
    let header = footer::DynHeader {
        table_offset: 3 * 512,
        max_table_entries: entries,
        block_size: 64 << 10,
    };
    mem.write_at(&header.to_bytes(), FOOTER_SIZE as u64)
        .unwrap();
    let end = mem.len().unwrap();
    let vpc = Vpc::open(mem.clone(), true).unwrap();
    vpc.write_at(&[9; 512], 0).unwrap();
    let e = vpc.extents(0, 512).unwrap();
    // The old footer's place (the file's last sector) holds the bitmap,
    // the data starts where the file ended (not on a page: 2560).
    assert_eq!(end, 2560);
    assert!(
        matches!(e[0].kind, ExtentKind::Data { host_offset, .. } if host_offset == end),
        "{e:?}"
    );
    assert_eq!(mem.len().unwrap(), end + (64 << 10) + 512);
}
