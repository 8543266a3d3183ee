//! Unit tests of the VDI module: round trips in memory and hostile images.

use std::sync::Arc;

use super::*;
use crate::storage::MemStorage;

#[test]
fn dynamic_write_read_reopen_check() {
    let mem = Arc::new(MemStorage::new());
    create(&*mem, (5 << 20) + 100, false).unwrap();
    let vdi = Vdi::open(mem.clone(), true).unwrap();
    assert_eq!(vdi.virtual_size(), (5 << 20) + 512);
    vdi.write_at(&[7; 3000], (2 << 20) - 1000).unwrap();
    let mut buf = vec![0u8; 5000];
    vdi.read_at(&mut buf, (2 << 20) - 2000).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 0));
    assert!(buf[1000..4000].iter().all(|&b| b == 7));
    assert!(buf[4000..].iter().all(|&b| b == 0));
    let report = vdi.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 0, "{report:?}");
    assert_eq!(report.allocated_clusters, 2);
    drop(vdi);
    let again = Vdi::open(mem, false).unwrap();
    let mut buf = vec![0u8; 3000];
    again.read_at(&mut buf, (2 << 20) - 1000).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    let e = again.extents(0, again.virtual_size()).unwrap();
    assert!(matches!(e[0].kind, ExtentKind::Zero { .. }));
    assert_eq!(e[0].len, 1 << 20);
    assert!(matches!(e[1].kind, ExtentKind::Data { .. }));
    assert_eq!(e[1].len, 2 << 20);
}

#[test]
fn static_image_is_preallocated() {
    let mem = Arc::new(MemStorage::new());
    create(&*mem, 3 << 20, true).unwrap();
    let vdi = Vdi::open(mem.clone(), true).unwrap();
    assert!(vdi.is_static());
    assert_eq!(mem.len().unwrap(), 0x400 + (3 << 20));
    vdi.write_at(&[9; 512], 1 << 20).unwrap();
    let report = vdi.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 0);
    assert_eq!(report.allocated_clusters, 3);
}

fn patched(patch: impl Fn(&mut Vec<u8>)) -> Result<Vdi> {
    let mem = MemStorage::new();
    create(&mem, 4 << 20, false).unwrap();
    let mut bytes = mem.to_bytes();
    patch(&mut bytes);
    Vdi::open(Arc::new(MemStorage::from_bytes(bytes)), false)
}

#[test]
fn hostile_images_are_refused() {
    let put = |b: &mut Vec<u8>, at: usize, v: u32| LittleEndian::write_u32(&mut b[at..at + 4], v);
    // Block map past the end of the file.
    assert!(patched(|b| put(b, 340, 0x7fff_fe00)).is_err());
    // Absurd block size.
    assert!(patched(|b| put(b, 376, 1 << 30)).is_err());
    // Too many blocks for memory, and a disk bigger than its map.
    assert!(patched(|b| put(b, 384, MAX_BLOCKS)).is_err());
    assert!(patched(|b| LittleEndian::write_u64(&mut b[368..376], 1 << 40)).is_err());
    // Bad signature, version, sector size, parent.
    assert!(patched(|b| put(b, 64, 1)).is_err());
    assert!(patched(|b| put(b, 68, 0x0001_0000)).is_err());
    assert!(patched(|b| put(b, 360, 4096)).is_err());
    assert!(patched(|b| b[440] = 1).is_err());
    assert!(patched(|_| {}).is_ok());
}

#[test]
fn check_finds_shared_and_out_of_range_blocks() {
    let vdi = patched(|b| {
        LittleEndian::write_u32(&mut b[0x200..0x204], 0);
        LittleEndian::write_u32(&mut b[0x204..0x208], 0);
        LittleEndian::write_u32(&mut b[0x208..0x20c], 99);
    })
    .unwrap();
    let report = vdi.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 3, "{report:?}");
}

#[test]
fn new_block_over_bytes_past_the_blocks_reads_zero_around_the_data() {
    let mem = Arc::new(MemStorage::new());
    create(&*mem, 3 << 20, false).unwrap();
    // Stray bytes where the first block will go: the file is longer than
    // its blocks, so allocating there must write the zeros itself.
    let data_start = mem.len().unwrap();
    mem.write_at(&vec![0xaa; 1 << 20], data_start).unwrap();
    let vdi = Vdi::open(mem.clone(), true).unwrap();
    vdi.write_at(&[7; 4096], 8192).unwrap();
    // The next block lies past the end of the file: a hole around its data.
    vdi.write_at(&[9; 512], (1 << 20) + 512).unwrap();
    assert_eq!(mem.len().unwrap(), data_start + (2 << 20));
    let mut buf = vec![0u8; 2 << 20];
    vdi.read_at(&mut buf, 0).unwrap();
    assert!(buf[..8192].iter().all(|&b| b == 0));
    assert!(buf[8192..12288].iter().all(|&b| b == 7));
    assert!(buf[12288..(1 << 20) + 512].iter().all(|&b| b == 0));
    assert!(buf[(1 << 20) + 512..(1 << 20) + 1024]
        .iter()
        .all(|&b| b == 9));
    assert!(buf[(1 << 20) + 1024..].iter().all(|&b| b == 0));
    let report = vdi.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 0, "{report:?}");
    assert_eq!(report.allocated_clusters, 2);
}

#[test]
fn threads_allocating_blocks_at_once_each_get_their_own() {
    let mem = Arc::new(MemStorage::new());
    create(&*mem, 8 << 20, false).unwrap();
    let vdi = Vdi::open(mem.clone(), true).unwrap();
    // Two writers per block, four blocks: each block is allocated once.
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..8u64)
            .map(|i| {
                let vdi = &vdi;
                s.spawn(move || {
                    vdi.write_at(&[i as u8 + 1; 4096], (i / 2) * 2 * BLOCK + (i % 2) * 8192)
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
    });
    let report = vdi.check().unwrap().unwrap();
    assert_eq!(report.corruptions, 0, "{report:?}");
    assert_eq!(report.allocated_clusters, 4);
    drop(vdi);
    let vdi = Vdi::open(mem, false).unwrap();
    for i in 0..8u64 {
        let mut buf = vec![0u8; 8192];
        vdi.read_at(&mut buf, (i / 2) * 2 * BLOCK + (i % 2) * 8192)
            .unwrap();
        assert!(buf[..4096].iter().all(|&b| b == i as u8 + 1), "writer {i}");
        assert!(buf[4096..].iter().all(|&b| b == 0), "writer {i}");
    }
}
