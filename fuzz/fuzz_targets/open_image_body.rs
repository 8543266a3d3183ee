//! The body of the `open_image` fuzz target, shared with the stable test
//! that replays the inputs the fuzzer found
//! (qcow/tests/fuzz_regressions.rs), so both run exactly the same steps.

use std::sync::Arc;

use qcow::check::{check, Repair};
use qcow::image::{NoFiles, Qcow2};
use qcow::{MemStorage, Storage};

/// Opens `data` as an image held in memory, reads it all, writes a few
/// clusters, discards, flushes and runs check and repair: every step may
/// fail, none may panic, hang or grow without bound.
pub fn open_image_body(data: &[u8]) {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::with_limit(data.to_vec(), 64 << 20));
    let _ = check(&*storage, None, Repair::None);
    let Ok(image) = Qcow2::open(storage.clone(), true, &NoFiles) else {
        return;
    };
    let size = image.size().min(4 << 20);
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        if image.read_at(&mut buf[..n], pos).is_err() {
            break;
        }
        pos += n as u64;
    }
    let cs = image.cluster_size();
    for i in 0..3u64 {
        let off = (i * 7 * cs + 123) % size.max(1);
        let len = (cs + 17).min(size - off.min(size)) as usize;
        let _ = image.write_at(&vec![0xa5; len], off);
    }
    let _ = image.discard(0, cs * 2);
    let _ = image.flush();
    drop(image);
    let _ = check(&*storage, None, Repair::All);
}
