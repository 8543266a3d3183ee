//! Backend edge cases: bad requests fail without touching data, read-only
//! disks refuse writes, external data files and internal snapshots open,
//! several queues on several threads share one qcow2 image, and a write
//! that must wait for another one's cluster waits instead of allocating it
//! twice.

mod backend_support;

use std::sync::Arc;

use backend_support::*;
use blockdev::backend::{open, OpenOptions};
use blockdev::disk::{BlockBackend, CacheMode, Request};
use blockdev::Error;

fn opts(read_only: bool) -> OpenOptions {
    OpenOptions {
        read_only,
        ..Default::default()
    }
}

fn read_all(disk: &dyn BlockBackend) -> Vec<u8> {
    let mut q = disk.open_queue(4).unwrap();
    let mut b = Buf::new(disk.size() as usize, 0);
    let bufs = b.iobufs(&[]);
    // SAFETY: `b` outlives the request.
    let c = unsafe { run_one(&mut *q, Request::Read { offset: 0, bufs }) };
    assert_eq!(c.result.unwrap(), disk.size());
    b.bytes().to_vec()
}

#[test]
fn bad_requests_fail_and_leave_the_data_alone() {
    let dir = test_dir();
    let path = dir.path().join("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "1M"]);
    qemu_io(&path, "write -P 0x11 0 1M");
    let disk = open(&path, &opts(false)).unwrap();
    let mut q = disk.open_queue(8).unwrap();
    let mut b = Buf::new(8192, 0);
    b.bytes_mut().fill(0xee);
    for (offset, len) in [
        (1 << 20, 4096u64),
        ((1 << 20) - 4096, 8192),
        (u64::MAX - 100, 4096),
    ] {
        let bufs = vec![blockdev::disk::IoBuf {
            addr: b.bytes_mut().as_mut_ptr(),
            len: len as usize,
        }];
        // SAFETY: `b` is 8192 bytes and outlives the call.
        let r = unsafe { q.push(Request::Write { offset, bufs }, 1) };
        assert!(matches!(r, Err(Error::OutOfRange { .. })), "{r:?}");
        // SAFETY: no buffers.
        let r = unsafe { q.push(Request::Discard { offset, len }, 2) };
        assert!(matches!(r, Err(Error::OutOfRange { .. })), "{r:?}");
    }
    assert_eq!(q.in_flight(), 0);
    drop(q);
    disk.close().unwrap();
    drop(disk);
    assert_clean(&path);
    let disk = open(&path, &opts(true)).unwrap();
    assert!(disk.read_only());
    assert!(read_all(&*disk).iter().all(|&x| x == 0x11));
    let mut q = disk.open_queue(2).unwrap();
    let bufs = b.iobufs(&[]);
    // SAFETY: `b` outlives the call.
    let r = unsafe { q.push(Request::Write { offset: 0, bufs }, 1) };
    assert!(matches!(r, Err(Error::ReadOnly)));
    // SAFETY: no buffers.
    let r = unsafe {
        q.push(
            Request::WriteZeroes {
                offset: 0,
                len: 4096,
                may_unmap: true,
            },
            2,
        )
    };
    assert!(matches!(r, Err(Error::ReadOnly)));
    // A flush on a read-only disk is harmless.
    // SAFETY: no buffers.
    let c = unsafe { run_one(&mut *q, Request::Flush) };
    assert_eq!(c.result.unwrap(), 0);
}

#[test]
fn a_full_queue_says_so() {
    let dir = test_dir();
    let path = dir.path().join("d.raw");
    std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
    let disk = open(&path, &opts(false)).unwrap();
    let mut q = disk.open_queue(2).unwrap();
    let mut bufs: Vec<Buf> = (0..3).map(|_| Buf::new(4096, 0)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let iob = b.iobufs(&[]);
        // SAFETY: `bufs` outlives every request (waited for below).
        let r = unsafe {
            q.push(
                Request::Read {
                    offset: 0,
                    bufs: iob,
                },
                i as u64,
            )
        };
        if i < 2 {
            r.unwrap();
        } else {
            assert!(matches!(r, Err(Error::QueueFull { depth: 2 })));
        }
    }
    q.submit().unwrap();
    let mut seen = 0;
    while seen < 2 {
        q.wait().unwrap();
        while let Some(c) = q.pop_completion() {
            assert_eq!(c.result.unwrap(), 4096);
            seen += 1;
        }
    }
    assert!(bufs[0].bytes().iter().all(|&x| x == 1));
}

#[test]
fn external_data_file_and_snapshot_view() {
    let dir = test_dir();
    let path = dir.path().join("d.qcow2");
    let data = dir.path().join("d.data");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        path.to_str().unwrap(),
        "2M",
    ]);
    for cache in [CacheMode::Writeback, CacheMode::None] {
        let disk = open(
            &path,
            &OpenOptions {
                cache,
                ..Default::default()
            },
        )
        .unwrap();
        let mut model = vec![0u8; 2 << 20];
        if cache == CacheMode::None {
            model = read_all(&*disk);
        }
        {
            let mut q = disk.open_queue(16).unwrap();
            let w = Workload {
                depth: 16,
                ops: 400,
                seed: 77,
                granule: 4096,
                max_granules: 40,
                discard: DiscardModel::Clusters(65536),
            };
            random_workload(&mut *q, &mut model, &w);
        }
        disk.close().unwrap();
        drop(disk);
        assert_clean(&path);
        assert_same_as(&path, &model, dir.path());
    }
    // Snapshot the current contents, overwrite, then view the snapshot.
    let before = {
        let disk = open(&path, &opts(true)).unwrap();
        read_all(&*disk)
    };
    let plain = dir.path().join("s.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", plain.to_str().unwrap(), "1M"]);
    qemu_io(&plain, "write -P 0x22 0 1M");
    qemu_img(&["snapshot", "-c", "snap1", plain.to_str().unwrap()]);
    qemu_io(&plain, "write -P 0x33 0 512k");
    let view = open(
        &plain,
        &OpenOptions {
            read_only: true,
            snapshot: Some("snap1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(read_all(&*view).iter().all(|&x| x == 0x22));
    let live = open(&plain, &opts(true)).unwrap();
    let now = read_all(&*live);
    assert!(now[..512 << 10].iter().all(|&x| x == 0x33));
    assert!(now[512 << 10..].iter().all(|&x| x == 0x22));
    // A writable snapshot view is refused.
    let r = open(
        &plain,
        &OpenOptions {
            snapshot: Some("snap1".into()),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(Error::Unsupported { .. })));
    assert_eq!(before.len(), 2 << 20);
}

/// Four threads, each with its own queue, write interleaved 512-byte
/// sectors of every cluster of an image over a backing file: each cluster
/// is allocated once (first writers race for it) and no sector is lost.
#[test]
fn queues_on_threads_share_clusters() {
    let dir = test_dir();
    let base = dir.path().join("base.raw");
    let path = dir.path().join("d.qcow2");
    let size = 4u64 << 20;
    let base_data: Vec<u8> = (0..size).map(|i| (i / 512) as u8 ^ 0x5c).collect();
    std::fs::write(&base, &base_data).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16384",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path.to_str().unwrap(),
        "4M",
    ]);
    let disk: Arc<dyn BlockBackend> = open(&path, &opts(false)).unwrap();
    let threads = 4u64;
    let sectors = size / 512;
    std::thread::scope(|s| {
        for t in 0..threads {
            let disk = disk.clone();
            s.spawn(move || {
                let mut q = disk.open_queue(32).unwrap();
                let mine: Vec<u64> = (0..sectors).filter(|x| x % threads == t).collect();
                let mut bufs: Vec<Buf> = mine
                    .iter()
                    .map(|&sector| {
                        let mut b = Buf::new(512, 0);
                        b.bytes_mut().fill(sector as u8 ^ 0xa7);
                        b
                    })
                    .collect();
                let mut next = 0;
                let mut done = 0;
                while done < mine.len() {
                    while next < mine.len() && q.in_flight() < 32 {
                        let iob = bufs[next].iobufs(&[]);
                        let req = Request::Write {
                            offset: mine[next] * 512,
                            bufs: iob,
                        };
                        // SAFETY: `bufs` outlives the queue's requests.
                        unsafe { q.push(req, next as u64) }.unwrap();
                        next += 1;
                    }
                    q.submit().unwrap();
                    q.wait().unwrap();
                    while let Some(c) = q.pop_completion() {
                        assert_eq!(c.result.unwrap(), 512);
                        done += 1;
                    }
                }
                // SAFETY: no buffers.
                let c = unsafe { run_one(&mut *q, Request::Flush) };
                c.result.unwrap();
                bufs.clear();
            });
        }
    });
    disk.close().unwrap();
    let got = read_all(&*disk);
    drop(disk);
    for sector in 0..sectors {
        let want = sector as u8 ^ 0xa7;
        let s = &got[(sector * 512) as usize..((sector + 1) * 512) as usize];
        assert!(s.iter().all(|&x| x == want), "sector {sector}");
    }
    assert_clean(&path);
    let map = qemu_img(&["map", "--output=json", path.to_str().unwrap()]);
    // Every cluster allocated in the top image, exactly once: the image
    // holds 256 data clusters (4 MiB) and no more.
    assert!(!map.contains("\"depth\": 1"), "{map}");
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert!(file_len < size + (256 << 10), "image grew to {file_len}");
}

/// Writes to the same unallocated cluster on one queue, pushed together:
/// the second waits for the first (it is parked, not blocked) and both
/// land.
#[test]
fn writes_into_one_new_cluster_on_one_queue() {
    let dir = test_dir();
    let path = dir.path().join("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "1M"]);
    let disk = open(&path, &opts(false)).unwrap();
    let mut q = disk.open_queue(64).unwrap();
    let mut bufs: Vec<Buf> = (0..64)
        .map(|i| {
            let mut b = Buf::new(1024, 0);
            b.bytes_mut().fill(i as u8 + 1);
            b
        })
        .collect();
    // 64 KiB cluster 0 and 1 get 32 writes each, then a flush.
    for (i, b) in bufs.iter_mut().enumerate() {
        let iob = b.iobufs(&[]);
        let req = Request::Write {
            offset: i as u64 * 2048,
            bufs: iob,
        };
        // SAFETY: `bufs` outlives the requests (waited for below).
        unsafe { q.push(req, i as u64) }.unwrap();
    }
    let c = {
        q.submit().unwrap();
        let mut n = 0;
        while n < 64 {
            q.wait().unwrap();
            while let Some(c) = q.pop_completion() {
                c.result.unwrap();
                n += 1;
            }
        }
        // SAFETY: no buffers.
        unsafe { run_one(&mut *q, Request::Flush) }
    };
    c.result.unwrap();
    drop(q);
    disk.close().unwrap();
    drop(disk);
    assert_clean(&path);
    let mut model = vec![0u8; 1 << 20];
    for i in 0..64usize {
        model[i * 2048..i * 2048 + 1024].fill(i as u8 + 1);
    }
    assert_same_as(&path, &model, dir.path());
    let info = qemu_img(&["check", path.to_str().unwrap()]);
    assert!(info.contains("2/16 = 12.50% allocated"), "{info}");
}

/// A flush completes only after every write pushed before it, on raw
/// files (an io_uring fdatasync) and qcow2 images (a metadata flush).
#[test]
fn flush_completes_after_the_writes_before_it() {
    let dir = test_dir();
    let raw = dir.path().join("d.raw");
    std::fs::write(&raw, vec![0u8; 8 << 20]).unwrap();
    let qcow2 = dir.path().join("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow2.to_str().unwrap(), "8M"]);
    for path in [&raw, &qcow2] {
        for cache in [CacheMode::Writeback, CacheMode::None] {
            let disk = open(
                path,
                &OpenOptions {
                    cache,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut q = disk.open_queue(32).unwrap();
            let mut bufs: Vec<Buf> = (0..16).map(|_| Buf::new(256 << 10, 0)).collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                b.bytes_mut().fill(i as u8);
                let req = Request::Write {
                    offset: i as u64 * (512 << 10),
                    bufs: b.iobufs(&[]),
                };
                // SAFETY: `bufs` outlives the requests (all popped below).
                unsafe { q.push(req, i as u64) }.unwrap();
            }
            // SAFETY: no buffers.
            unsafe { q.push(Request::Flush, 100) }.unwrap();
            q.submit().unwrap();
            let mut order = Vec::new();
            while order.len() < 17 {
                q.wait().unwrap();
                while let Some(c) = q.pop_completion() {
                    c.result.unwrap();
                    order.push(c.user_data);
                }
            }
            assert_eq!(order.last(), Some(&100), "{order:?}");
            drop(q);
            disk.close().unwrap();
        }
    }
    assert_clean(&qcow2);
}

#[test]
fn open_with_files_names_the_backing_chain_and_the_data_file() {
    let dir = test_dir();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    qemu_img(&["create", "-q", "-f", "raw", &path("sub/base.raw"), "1M"]);
    // A name relative to the folder of the image that records it.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &path("sub/mid.qcow2"),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "sub/mid.qcow2",
        "-F",
        "qcow2",
        &path("top.qcow2"),
    ]);
    let opened = blockdev::backend::open_with_files(&d.join("top.qcow2"), &opts(true)).unwrap();
    assert_eq!(
        opened.backing_files,
        vec![d.join("sub/mid.qcow2"), d.join("sub/base.raw")]
    );
    assert_eq!(opened.data_file, None);
    assert_eq!(opened.backend.size(), 1 << 20);

    let ext = path("ext.qcow2");
    let data = path("ext.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={data}"),
        &ext,
        "1M",
    ]);
    let opened = blockdev::backend::open_with_files(ext.as_ref(), &opts(false)).unwrap();
    assert!(opened.backing_files.is_empty());
    assert_eq!(opened.data_file, Some(std::path::PathBuf::from(data)));
    let raw = blockdev::backend::open_with_files(&d.join("sub/base.raw"), &opts(true)).unwrap();
    assert!(raw.backing_files.is_empty() && raw.data_file.is_none());
}

/// Reads through a three-layer chain (a sparse raw base, a qcow2 with 512
/// byte clusters holding plain and compressed data, a qcow2 top with 64k
/// clusters over it, shorter than the top) equal qemu-img's view of the
/// top, byte for byte, in both cache modes and at odd offsets; the data of
/// the lower layers goes through the rings, compressed clusters through
/// the library.
#[test]
fn reads_through_a_backing_chain_equal_qemu_img() {
    let dir = test_dir();
    let d = dir.path();
    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    qemu_img(&["create", "-q", "-f", "raw", &path("base.raw"), "3M"]);
    qemu_io(&d.join("base.raw"), "write -P 0x11 0 1M");
    qemu_io(&d.join("base.raw"), "write -P 0x22 2M 512k");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &path("mid.qcow2"),
        "3M",
    ]);
    qemu_io(&d.join("mid.qcow2"), "write -P 0x33 100k 3k");
    qemu_io(&d.join("mid.qcow2"), "write -c -P 0x44 600k 4k");
    qemu_io(&d.join("mid.qcow2"), "write -z 2100k 8k");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &path("top.qcow2"),
        "4M",
    ]);
    qemu_io(&d.join("top.qcow2"), "write -P 0x55 64k 64k");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &path("top.qcow2"),
        &path("expected.raw"),
    ]);
    let expected = std::fs::read(d.join("expected.raw")).unwrap();
    for cache in [CacheMode::None, CacheMode::Writeback] {
        let options = OpenOptions {
            read_only: true,
            cache,
            ..Default::default()
        };
        let disk = open(&d.join("top.qcow2"), &options).unwrap();
        assert_eq!(read_all(&*disk), expected, "{cache:?}");
        let mut q = disk.open_queue(8).unwrap();
        for (offset, len) in [(99 << 10, 6144u64), (598 << 10, 8192), (3 << 20, 1 << 20)] {
            let mut b = Buf::new(len as usize, 0);
            let bufs = b.iobufs(&[]);
            // SAFETY: `b` outlives the request.
            let c = unsafe { run_one(&mut *q, Request::Read { offset, bufs }) };
            assert_eq!(c.result.unwrap(), len);
            let range = offset as usize..(offset + len) as usize;
            assert!(b.bytes() == &expected[range], "{cache:?} at {offset}");
        }
    }
}

#[test]
fn encrypted_images_are_refused_rather_than_served_as_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aes.qcow2");
    let file = std::fs::File::create_new(&path).unwrap();
    let storage: Arc<dyn qcow::Storage> = Arc::new(qcow::FileStorage::new(file));
    let opts_new = qcow::create::CreateOptions {
        size: 1 << 20,
        ..Default::default()
    };
    qcow::create::create_encrypted(
        storage,
        None,
        None,
        &opts_new,
        Some(&qcow::create::NewEncryption::Aes),
    )
    .unwrap()
    .close()
    .unwrap();
    let err = open(&path, &opts(true)).err().expect("refused");
    assert!(err.to_string().contains("encrypted"), "{err}");
}
