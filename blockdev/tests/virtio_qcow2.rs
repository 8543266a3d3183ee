//! The device model over the real io_uring backend on qcow2 images:
//! virtio-drivers' driver and random chains of our own driver (runs of
//! them sequential, so that the device merges them), checked against a
//! model; afterwards `qemu-img check` finds the image clean and
//! its contents (converted to raw by qemu-img) match the model.

mod virtio_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blockdev::backend::{open, OpenOptions};
use blockdev::disk::{BlockBackend, CacheMode};
use blockdev::virtio::defs::*;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_support::drivers_hal::{install_guest, GuestHal, HarnessTransport};
use virtio_support::*;

const SIZE: u64 = 16 << 20;
const SECTORS: u64 = SIZE / 512;

fn test_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("tmp");
    tempfile::tempdir_in(base).expect("tempdir")
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn create(dir: &Path, cluster: u32) -> PathBuf {
    let path = dir.join("disk.qcow2");
    let path_str = path.to_str().expect("utf-8 path");
    let opts = format!("cluster_size={cluster}");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opts,
        path_str,
        &SIZE.to_string(),
    ]);
    path
}

fn open_disk(path: &Path, cache: CacheMode) -> Arc<dyn BlockBackend> {
    open(
        path,
        &OpenOptions {
            cache,
            ..Default::default()
        },
    )
    .expect("open")
}

/// `qemu-img check` is clean and the sectors the model knows match.
fn verify(path: &Path, model: &[u8], known: &[bool]) {
    let path_str = path.to_str().expect("utf-8 path");
    let out = qemu_img(&["check", path_str]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No errors were found"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let raw = path.with_extension("raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        path_str,
        raw.to_str().expect("utf-8"),
    ]);
    let contents = std::fs::read(&raw).expect("raw");
    assert_eq!(contents.len(), model.len());
    for (sector, ok) in known.iter().enumerate() {
        if *ok {
            let at = sector * 512;
            assert!(
                contents[at..at + 512] == model[at..at + 512],
                "sector {sector}"
            );
        }
    }
}

#[test]
fn virtio_drivers_over_a_qcow2_image_then_check_is_clean() {
    let dir = test_dir();
    let path = create(dir.path(), 65536);
    let disk = open_disk(&path, CacheMode::Writeback);
    install_guest();
    let transport = HarnessTransport::new(disk.clone(), b"qcow2-disk");
    let mut blk = VirtIOBlk::<GuestHal, _>::new(transport.clone()).expect("init");
    assert_eq!(blk.capacity(), SECTORS);
    let mut model = vec![0u8; SIZE as usize];
    let mut x = 77u64;
    for i in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let count = 1 + x % 32;
        let sector = (x >> 8) % (SECTORS - count);
        let (start, end) = ((sector * 512) as usize, ((sector + count) * 512) as usize);
        if i % 3 == 0 {
            let mut back = vec![0u8; end - start];
            blk.read_blocks(sector as usize, &mut back).expect("read");
            assert!(back == model[start..end], "read {i}");
        } else {
            let data = pattern(end - start, i);
            blk.write_blocks(sector as usize, &data).expect("write");
            model[start..end].copy_from_slice(&data);
        }
    }
    blk.flush().expect("flush");
    drop(blk);
    drop(transport); // the handlers go, waiting for their requests
    disk.close().expect("close");
    drop(disk);
    verify(&path, &model, &vec![true; SECTORS as usize]);
}

fn random_chains(cache: CacheMode, cluster: u32, seed: u64) {
    let dir = test_dir();
    let path = create(dir.path(), cluster);
    let disk = open_disk(&path, cache);
    let mut model = vec![0u8; SIZE as usize];
    // Discarded sectors may read as anything afterwards (a partial-cluster
    // discard is ignored), so they are unknown until written again.
    let mut known = vec![true; SECTORS as usize];
    let mut rig = Rig::with(disk.clone(), 2, 64, u64::MAX);
    let mut rng = seed | 1;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for batch in 0..120u64 {
        rig.reset_alloc();
        let queue = (batch % 2) as usize;
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let mut reads = Vec::new();
        let mut statuses = Vec::new();
        // Half the requests start where the previous one ended, so that
        // the device merges runs of them.
        let mut prev_end: Option<u64> = None;
        for _ in 0..1 + next(16) {
            let count = 1 + next(256);
            let sector = match prev_end {
                Some(end) if next(2) == 0 && end + count <= SECTORS => end,
                _ => next(SECTORS - count),
            };
            prev_end = Some(sector + count);
            if taken
                .iter()
                .any(|(s, c)| sector < s + c && *s < sector + count)
            {
                continue;
            }
            taken.push((sector, count));
            let (at, len) = ((sector * 512) as usize, (count * 512) as usize);
            let status = rig.status_byte();
            let segments = match next(8) {
                0..=2 => {
                    let header = rig.header(REQ_IN, sector);
                    let data = rig.alloc(len as u64);
                    reads.push((data, sector, count));
                    let mut s = vec![readable(header, 16)];
                    s.extend(split(data, len as u32, 1 + next(6) as u32, true));
                    s
                }
                3..=5 => {
                    let bytes = pattern(len, batch * 7919 + sector);
                    model[at..at + len].copy_from_slice(&bytes);
                    known[sector as usize..(sector + count) as usize].fill(true);
                    let header = rig.header(REQ_OUT, sector);
                    let data = rig.buffer(&bytes);
                    let mut s = vec![readable(header, 16)];
                    s.extend(split(data, len as u32, 1 + next(6) as u32, false));
                    s
                }
                6 => {
                    let unmap = if next(2) == 0 { SEGMENT_FLAG_UNMAP } else { 0 };
                    model[at..at + len].fill(0);
                    known[sector as usize..(sector + count) as usize].fill(true);
                    let header = rig.header(REQ_WRITE_ZEROES, 0);
                    let body = rig.segments(&[(sector, count as u32, unmap)]);
                    vec![readable(header, 16), readable(body, 16)]
                }
                _ => {
                    known[sector as usize..(sector + count) as usize].fill(false);
                    let header = rig.header(REQ_DISCARD, 0);
                    let body = rig.segments(&[(sector, count as u32, 0)]);
                    vec![readable(header, 16), readable(body, 16)]
                }
            };
            let mut segments = segments;
            segments.push(writable(status, 1));
            let room = rig.drivers[queue].free_descriptors() >= segments.len() + 4;
            if segments.len() > 2 && (next(2) == 0 || !room) {
                let table = rig.alloc(16 * segments.len() as u64);
                rig.drivers[queue]
                    .add_indirect_chain(&*rig.mem, &segments, table)
                    .expect("indirect");
            } else {
                rig.drivers[queue]
                    .add_chain(&*rig.mem, &segments)
                    .expect("chain");
            }
            statuses.push(status);
        }
        if batch % 10 == 9 {
            let header = rig.header(REQ_FLUSH, 0);
            let status = rig.status_byte();
            rig.drivers[queue]
                .add_chain(&*rig.mem, &[readable(header, 16), writable(status, 1)])
                .expect("flush");
            statuses.push(status);
        }
        rig.kick(queue);
        assert_eq!(rig.used(queue).len(), statuses.len());
        for status in statuses {
            assert_eq!(rig.byte(status), STATUS_OK, "batch {batch}");
        }
        for (data, sector, count) in reads {
            let got = rig.read(data, (count * 512) as usize);
            for i in 0..count {
                let s = (sector + i) as usize;
                if known[s] {
                    let g = &got[i as usize * 512..(i as usize + 1) * 512];
                    assert!(
                        g == &model[s * 512..(s + 1) * 512],
                        "batch {batch} sector {s}"
                    );
                }
            }
        }
    }
    drop(rig);
    disk.close().expect("close");
    drop(disk);
    verify(&path, &model, &known);
}

#[test]
fn random_chains_over_qcow2_writeback() {
    random_chains(CacheMode::Writeback, 65536, 0xc0ffee);
}

#[test]
fn random_chains_over_qcow2_cache_none_small_clusters() {
    random_chains(CacheMode::None, 4096, 0xbeef);
}
