//! Several threads writing into the same clusters at once through the
//! high-level and low-level APIs: every cluster is allocated once, no
//! write is lost, and qemu-img finds the image clean.

use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::device::{BlockRead, RawImage};
use qcow::{FileStorage, MemStorage, Storage};

const THREADS: u64 = 4;
const SECTOR: u64 = 512;

fn pattern(sector: u64, round: u64) -> u8 {
    (sector.wrapping_mul(13) ^ round.wrapping_mul(101)) as u8 | 1
}

#[test]
fn interleaved_sector_writes_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.qcow2");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // A backing file makes every partial cluster write copy-on-write.
    let base: Vec<u8> = (0..(8u64 << 20)).map(|i| (i >> 9) as u8 ^ 0x3c).collect();
    let backing: Box<dyn BlockRead> = Box::new(
        RawImage::new(Arc::new(MemStorage::from_bytes(base.clone())) as Arc<dyn Storage>).unwrap(),
    );
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    let opts = CreateOptions {
        size: 8 << 20,
        cluster_size: 16384,
        backing_file: Some("base.raw".into()),
        backing_format: Some("raw".into()),
        ..Default::default()
    };
    let image = Arc::new(create(storage, None, Some(backing), &opts).unwrap());
    let sectors = (8u64 << 20) / SECTOR;
    let rounds = 3;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let image = image.clone();
            s.spawn(move || {
                for round in 0..rounds {
                    // Thread t owns the sectors congruent to t; neighbours
                    // share every cluster.
                    let mut sector = t;
                    while sector < sectors {
                        let buf = vec![pattern(sector, round); SECTOR as usize];
                        if sector % 3 == 0 {
                            image.write_at(&buf, sector * SECTOR).unwrap();
                        } else {
                            // The low-level path: plan, write, commit.
                            let plan = image.begin_write(sector * SECTOR, SECTOR).unwrap();
                            for p in &plan.pieces {
                                image
                                    .file()
                                    .write_at(&buf[..p.len as usize], p.host_offset)
                                    .unwrap();
                            }
                            image.finish_write(plan).unwrap();
                        }
                        sector += THREADS * 7;
                    }
                }
            });
        }
    });
    image.flush().unwrap();
    let mut got = vec![0u8; (8 << 20) as usize];
    image.read_at(&mut got, 0).unwrap();
    for sector in 0..sectors {
        let written = sector % (THREADS * 7) < THREADS;
        let want = if written {
            pattern(sector, rounds - 1)
        } else {
            base[(sector * SECTOR) as usize]
        };
        let at = (sector * SECTOR) as usize;
        assert!(
            got[at..at + SECTOR as usize].iter().all(|&b| b == want),
            "sector {sector}: got {:#x}, want {want:#x}",
            got[at]
        );
    }
    drop(image);
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok()
    {
        std::fs::write(dir.path().join("base.raw"), &base).unwrap();
        let out = std::process::Command::new("qemu-img")
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn try_begin_write_refuses_clusters_held_by_an_unfinished_write() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: 65536,
        ..Default::default()
    };
    let image = create(storage, None, None, &opts).unwrap();
    let held = image.begin_write(4096, 4096).unwrap();
    // Same cluster, other bytes: it would allocate the cluster twice.
    assert!(image.try_begin_write(8192, 512).unwrap().is_none());
    // Another cluster is free to go.
    let other = image.try_begin_write(65536, 4096).unwrap().unwrap();
    image.finish_write(other).unwrap();
    image.finish_write(held).unwrap();
    let again = image.try_begin_write(8192, 512).unwrap().unwrap();
    // The cluster is allocated now: an in-place write holds nothing.
    assert!(image.try_begin_write(0, 512).unwrap().is_some_and(|p| {
        let ok = p.pieces.len() == 1;
        image.finish_write(p).unwrap();
        ok
    }));
    image.finish_write(again).unwrap();
}
