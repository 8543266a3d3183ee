//! Unit tests of the QED module.

use std::sync::Arc;

use super::*;
use crate::storage::MemStorage;

#[test]
fn write_read_reopen_check() {
    let mem = Arc::new(MemStorage::new());
    create(&*mem, 10 << 20, 65536, 4, None).unwrap();
    let qed = Qed::open(mem.clone(), true).unwrap();
    qed.write_at(&[3; 100_000], 1000).unwrap();
    qed.write_at(&[4; 512], 5 << 20).unwrap();
    let report = qed.check().unwrap().unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");
    assert_eq!(report.allocated_clusters, 3);
    drop(qed);
    let again = Qed::open(mem, false).unwrap();
    let mut buf = vec![0u8; 102_000];
    again.read_at(&mut buf, 0).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 0));
    assert!(buf[1000..101_000].iter().all(|&b| b == 3));
    assert!(buf[101_000..].iter().all(|&b| b == 0));
}

fn patched(patch: impl Fn(&mut Vec<u8>)) -> Result<Qed> {
    let mem = MemStorage::new();
    create(&mem, 4 << 20, 65536, 4, None).unwrap();
    let mut b = mem.to_bytes();
    patch(&mut b);
    Qed::open(Arc::new(MemStorage::from_bytes(b)), false)
}

#[test]
fn hostile_images_are_refused() {
    let put32 = |b: &mut Vec<u8>, at: usize, v: u32| LittleEndian::write_u32(&mut b[at..at + 4], v);
    let put64 = |b: &mut Vec<u8>, at: usize, v: u64| LittleEndian::write_u64(&mut b[at..at + 8], v);
    assert!(patched(|_| {}).is_ok());
    assert!(patched(|b| put32(b, 4, 3 << 20)).is_err());
    assert!(patched(|b| put32(b, 4, 1 << 30)).is_err());
    assert!(patched(|b| put32(b, 8, 32)).is_err());
    assert!(patched(|b| put64(b, 40, 1 << 40)).is_err());
    assert!(patched(|b| put64(b, 48, u64::MAX - 511)).is_err());
    assert!(patched(|b| put64(b, 16, 1 << 9)).is_err());
    // An L1 entry pointing past the end fails the read, not the open.
    let qed = patched(|b| put64(b, 65536, 1 << 40)).unwrap();
    let mut buf = [0u8; 512];
    assert!(qed.read_at(&mut buf, 0).is_err());
    assert!(qed.check().unwrap().unwrap().corruptions > 0);
}

#[test]
fn overlay_reads_its_backing_and_copies_it_up_on_partial_writes() {
    let base: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let mem = Arc::new(MemStorage::new());
    let backing = NewBacking {
        name: "base.raw",
        raw: true,
    };
    create(&*mem, 2 << 20, 65536, 4, Some(backing)).unwrap();
    let mut qed = Qed::open(mem.clone(), true).unwrap();
    let named = qed.backing_file().unwrap();
    assert_eq!(
        (named.name.as_str(), named.format),
        ("base.raw", Some("raw"))
    );
    let raw = crate::device::RawImage::new(Arc::new(MemStorage::from_bytes(base.clone())));
    qed.set_backing(Box::new(raw.unwrap()));
    // A write of 100 bytes into the middle of cluster 1 keeps the rest of
    // the cluster's backing bytes.
    qed.write_at(&[0xee; 100], 65536 + 1000).unwrap();
    let mut buf = vec![0u8; 2 << 20];
    qed.read_at(&mut buf, 0).unwrap();
    let mut want = base.clone();
    want[65536 + 1000..65536 + 1100].fill(0xee);
    want.resize(2 << 20, 0);
    assert!(buf == want, "overlay reads differ from base + write");
    // The copied-up cluster is the overlay's own now.
    let extents = qed.extents(65536, 65536).unwrap();
    assert!(matches!(extents[0].kind, ExtentKind::Data { .. }));
    let report = qed.check().unwrap().unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");
}

#[test]
fn a_backing_name_past_the_header_is_refused() {
    let mem = MemStorage::new();
    let backing = NewBacking {
        name: "b",
        raw: false,
    };
    create(&mem, 1 << 20, 65536, 4, Some(backing)).unwrap();
    let mut b = mem.to_bytes();
    LittleEndian::write_u32(&mut b[60..64], 70_000);
    assert!(Qed::open(Arc::new(MemStorage::from_bytes(b)), false).is_err());
}

#[test]
fn a_one_cluster_table_is_created_but_refused_on_open_as_in_qemu() {
    for cluster_size in [4096, 65536] {
        let mem = Arc::new(MemStorage::new());
        create(&*mem, 1 << 20, cluster_size, 1, None).unwrap();
        let err = Qed::open(mem.clone(), false).err().expect("refused");
        assert!(
            err.to_string().contains("QED table offset is invalid"),
            "{err}"
        );
        // Two clusters open.
        let mem = Arc::new(MemStorage::new());
        create(&*mem, 1 << 20, cluster_size, 2, None).unwrap();
        Qed::open(mem, false).unwrap();
    }
}
