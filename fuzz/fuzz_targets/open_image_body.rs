//! The body of the `open_image` fuzz target, shared with the stable test
//! that replays the inputs the fuzzer found
//! (qcow/tests/fuzz_regressions.rs), so both run exactly the same steps.

use std::sync::Arc;

use qcow::check::{check, Repair};
use qcow::image::{NoFiles, Qcow2};
use qcow::{MemStorage, Storage};

/// Guest bytes read in full from the start of the disk.
const READ_ALL_LIMIT: u64 = 4 << 20;
/// L2 spans (the guest range one L2 table maps) sampled past that.
const SAMPLED_SPANS: u64 = 256;

/// Reads the first [`READ_ALL_LIMIT`] bytes of the disk, then the first and
/// last cluster of up to [`SAMPLED_SPANS`] L2 spans spread over the rest,
/// so that every L2 table of a small image is read however large its
/// virtual size claims to be.
fn read_everything(image: &Qcow2) {
    let size = image.size();
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0;
    while pos < size.min(READ_ALL_LIMIT) {
        let n = (size - pos).min(buf.len() as u64) as usize;
        if image.read_at(&mut buf[..n], pos).is_err() {
            return;
        }
        pos += n as u64;
    }
    let cs = image.cluster_size();
    let span = cs.saturating_mul(image.geometry().l2_entries());
    let spans = size.div_ceil(span.max(1));
    let step = spans.div_ceil(SAMPLED_SPANS).max(1);
    let mut buf = vec![0u8; cs as usize];
    for s in (0..spans).step_by(step as usize) {
        let start = s * span;
        for offset in [start, (start + span).min(size).saturating_sub(cs)] {
            if offset >= READ_ALL_LIMIT && offset + cs <= size {
                let _ = image.read_at(&mut buf, offset);
            }
        }
    }
}

/// Opens `data` as an image held in memory, reads it all, writes a few
/// clusters, creates a snapshot, writes over it, deletes it, discards,
/// flushes and runs check and repair: every step may fail, none may panic,
/// hang or grow without bound.
pub fn open_image_body(data: &[u8]) {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::with_limit(data.to_vec(), 64 << 20));
    let _ = check(&*storage, None, Repair::None);
    let Ok(image) = Qcow2::open(storage.clone(), true, &NoFiles) else {
        return;
    };
    read_everything(&image);
    let size = image.size().min(READ_ALL_LIMIT);
    let cs = image.cluster_size();
    let write = |i: u64, byte: u8| {
        let off = (i * 7 * cs + 123) % size.max(1);
        let len = (cs + 17).min(size - off.min(size)) as usize;
        let _ = image.write_at(&vec![byte; len], off);
    };
    for i in 0..3u64 {
        write(i, 0xa5);
    }
    // The snapshot shares every cluster: the writes after it copy.
    let snapshot = image.create_snapshot("fuzz");
    write(1, 0x5a);
    let _ = image.discard(0, cs * 2);
    if snapshot.is_ok() {
        let _ = image.delete_snapshot("fuzz");
    }
    let _ = image.flush();
    drop(image);
    let _ = check(&*storage, None, Repair::All);
}
