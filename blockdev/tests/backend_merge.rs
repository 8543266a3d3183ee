//! Requests that follow one another in a file are merged into one kernel
//! operation (see the queue's `merge` module): sequential batches of
//! writes and reads, with buffers cut into several pieces and misaligned
//! ones (bounced with cache=none), on raw and qcow2 in both cache modes,
//! leave the same bytes as qemu-img reads; and a merged read cut short by
//! the end of the file completes each request on its own (data up to the
//! end, zeros after).

mod backend_support;

use backend_support::*;
use blockdev::backend::{open, OpenOptions};
use blockdev::disk::{BlockQueue, CacheMode, Request};

const BATCH: u64 = 32;
const REQ: u64 = 4096;

/// Pushes `BATCH` sequential requests from `start` at once, submits them
/// together, and returns the completions' results in order.
fn batch(q: &mut dyn BlockQueue, start: u64, bufs: &mut [Buf], write: bool) -> Vec<u64> {
    for (i, b) in bufs.iter_mut().enumerate() {
        // Every third request in two pieces.
        let cuts: &[usize] = if i % 3 == 0 { &[1024] } else { &[] };
        let iobufs = b.iobufs(cuts);
        let offset = start + i as u64 * REQ;
        let request = if write {
            Request::Write {
                offset,
                bufs: iobufs,
            }
        } else {
            Request::Read {
                offset,
                bufs: iobufs,
            }
        };
        // SAFETY: `bufs` outlives the requests, which all complete below.
        unsafe { q.push(request, i as u64) }.unwrap();
    }
    q.submit().unwrap();
    let mut results = vec![None; bufs.len()];
    while results.iter().any(Option::is_none) {
        while let Some(c) = q.pop_completion() {
            results[c.user_data as usize] = Some(c.result.unwrap());
        }
        if results.iter().any(Option::is_none) {
            q.wait().unwrap();
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

fn pattern(round: u64, i: usize) -> u8 {
    (round as u8).wrapping_mul(31).wrapping_add(i as u8) | 1
}

#[test]
fn sequential_batches_read_and_write_as_qemu_img_sees_them() {
    let dir = test_dir();
    for format in ["raw", "qcow2"] {
        for cache in [CacheMode::None, CacheMode::Writeback] {
            let path = dir.path().join(format!("d-{format}-{cache:?}"));
            let p = path.to_str().unwrap();
            qemu_img(&["create", "-q", "-f", format, p, "1M"]);
            let disk = open(
                &path,
                &OpenOptions {
                    cache,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut q = disk.open_queue(BATCH as u32).unwrap();
            let mut model = vec![0u8; 1 << 20];
            for round in 0..4u64 {
                let start = round * BATCH * REQ + if round == 3 { 512 } else { 0 };
                // Odd rounds use misaligned buffers (bounced for O_DIRECT).
                let skew = if round % 2 == 1 { 8 } else { 0 };
                let mut bufs: Vec<Buf> = (0..BATCH as usize)
                    .map(|i| {
                        let mut b = Buf::new(REQ as usize, skew);
                        b.bytes_mut().fill(pattern(round, i));
                        b
                    })
                    .collect();
                let done = batch(&mut *q, start, &mut bufs, true);
                assert!(
                    done.iter().all(|&n| n == REQ),
                    "{format} {cache:?} {done:?}"
                );
                for (i, b) in bufs.iter().enumerate() {
                    let at = (start + i as u64 * REQ) as usize;
                    model[at..at + REQ as usize].copy_from_slice(b.bytes());
                }
                let mut back: Vec<Buf> = (0..BATCH as usize)
                    .map(|_| Buf::new(REQ as usize, skew))
                    .collect();
                let done = batch(&mut *q, start, &mut back, false);
                assert!(done.iter().all(|&n| n == REQ));
                for (i, b) in back.iter().enumerate() {
                    let at = (start + i as u64 * REQ) as usize;
                    assert!(
                        b.bytes() == &model[at..at + REQ as usize],
                        "{format} {cache:?} round {round} request {i}"
                    );
                }
            }
            drop(q);
            disk.close().unwrap();
            if format == "qcow2" {
                assert_clean(&path);
            }
            assert_same_as(&path, &model, dir.path());
        }
    }
}

#[test]
fn a_merged_read_cut_short_completes_each_request_alone() {
    let dir = test_dir();
    let path = dir.path().join("short.raw");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&path, &data).unwrap();
    for cache in [CacheMode::Writeback, CacheMode::None] {
        let disk = open(
            &path,
            &OpenOptions {
                read_only: true,
                cache,
                ..Default::default()
            },
        )
        .unwrap();
        // The file shrinks under the open disk: the end now falls inside
        // the eighth request of the batch.
        let end = 512 * 1024 + 7 * REQ;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end)
            .unwrap();
        let mut q = disk.open_queue(BATCH as u32).unwrap();
        let start = 512 * 1024;
        let mut bufs: Vec<Buf> = (0..BATCH as usize)
            .map(|_| {
                let mut b = Buf::new(REQ as usize, 0);
                b.bytes_mut().fill(0xee);
                b
            })
            .collect();
        let done = batch(&mut *q, start, &mut bufs, false);
        assert!(done.iter().all(|&n| n == REQ), "{cache:?} {done:?}");
        for (i, b) in bufs.iter().enumerate() {
            let at = start + i as u64 * REQ;
            let expected: Vec<u8> = (at..at + REQ)
                .map(|o| if o < end { data[o as usize] } else { 0 })
                .collect();
            assert!(b.bytes() == &expected[..], "{cache:?} request {i}");
        }
        drop(q);
        drop(disk);
        std::fs::write(&path, &data).unwrap();
    }
}
