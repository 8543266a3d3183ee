//! Random reads, writes, write-zeroes, discards and flushes at depths 1 to
//! 64 on raw files and qcow2 images (4 KiB and 64 KiB clusters, with and
//! without a backing file), through cache=none and cache=writeback, checked
//! read by read against an in-memory model; afterwards `qemu-img check` is
//! clean and `qemu-img compare` finds the image equal to the model.

mod backend_support;

use std::path::Path;

use backend_support::*;
use blockdev::backend::{open, OpenOptions};
use blockdev::disk::CacheMode;
use qcow::fs::Format;

const SIZE: u64 = 8 << 20;

fn run(path: &Path, format: Format, cache: CacheMode, model: &mut [u8], w: &Workload) {
    let disk = open(
        path,
        &OpenOptions {
            format: Some(format),
            cache,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(disk.size(), model.len() as u64);
    {
        let mut q = disk.open_queue(w.depth).unwrap();
        random_workload(&mut *q, model, w);
    }
    disk.close().unwrap();
}

fn qcow2_case(cluster: u64, backing: bool, cache: CacheMode, depth: u32, seed: u64) {
    let dir = test_dir();
    let path = dir.path().join("d.qcow2");
    let mut model = vec![0u8; SIZE as usize];
    let size = SIZE.to_string();
    let opts = format!("cluster_size={cluster}");
    if backing {
        let base = dir.path().join("base.raw");
        let mut rng = Rng::new(seed ^ 0xbace);
        // A base with data in the first 3/4 and a hole at the end.
        let data = rng.bytes((SIZE * 3 / 4) as usize);
        model[..data.len()].copy_from_slice(&data);
        std::fs::write(&base, &data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&base)
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            "-b",
            "base.raw",
            "-F",
            "raw",
            path.to_str().unwrap(),
            &size,
        ]);
    } else {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            path.to_str().unwrap(),
            &size,
        ]);
    }
    let granule = if cache == CacheMode::None { 4096 } else { 512 };
    let w = Workload {
        depth,
        ops: 1500,
        seed,
        granule,
        max_granules: 3 * cluster / granule,
        discard: DiscardModel::Clusters(cluster),
    };
    run(&path, Format::Qcow2, cache, &mut model, &w);
    assert_clean(&path);
    assert_same_as(&path, &model, dir.path());
    // A second session on the same image sees the first one's data.
    let w2 = Workload {
        seed: seed + 1,
        ops: 500,
        ..w
    };
    run(&path, Format::Qcow2, cache, &mut model, &w2);
    assert_clean(&path);
    assert_same_as(&path, &model, dir.path());
}

fn raw_case(cache: CacheMode, depth: u32, seed: u64) {
    let dir = test_dir();
    let path = dir.path().join("d.raw");
    let mut rng = Rng::new(seed);
    let mut model = rng.bytes(SIZE as usize);
    std::fs::write(&path, &model).unwrap();
    let granule = if cache == CacheMode::None { 4096 } else { 512 };
    let w = Workload {
        depth,
        ops: 2000,
        seed,
        granule,
        max_granules: 64 * 1024 / granule,
        discard: DiscardModel::Zero,
    };
    run(&path, Format::Raw, cache, &mut model, &w);
    assert_same_as(&path, &model, dir.path());
}

#[test]
fn raw_writeback_depth_1_and_32() {
    raw_case(CacheMode::Writeback, 1, 1);
    raw_case(CacheMode::Writeback, 32, 2);
}

#[test]
fn raw_direct_depth_8_and_64() {
    raw_case(CacheMode::None, 8, 3);
    raw_case(CacheMode::None, 64, 4);
}

#[test]
fn qcow2_4k_clusters_over_backing_writeback() {
    qcow2_case(4096, true, CacheMode::Writeback, 16, 10);
}

#[test]
fn qcow2_4k_clusters_over_backing_direct() {
    qcow2_case(4096, true, CacheMode::None, 64, 11);
}

#[test]
fn qcow2_64k_clusters_writeback() {
    qcow2_case(65536, false, CacheMode::Writeback, 1, 12);
    qcow2_case(65536, false, CacheMode::Writeback, 64, 13);
}

#[test]
fn qcow2_64k_clusters_over_backing_direct() {
    qcow2_case(65536, true, CacheMode::None, 32, 14);
}
