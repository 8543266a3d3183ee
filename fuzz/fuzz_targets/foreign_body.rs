//! The body of the `vpc`, `vdi`, `vmdk`, `qed` and `vhdx` fuzz targets (and of the
//! stable test that replays their findings): an arbitrary byte string
//! opened in memory as an image of one format, read-only and writable;
//! every file a vmdk descriptor names is a copy of the same bytes. It reads
//! the first 4 MiB and a byte of every 64 KiB after (up to 4096 places),
//! walks the extents, runs the check and the info section, writes a few
//! blocks, flushes, reopens and reads again. Any error is fine; a panic, a
//! hang or an unbounded allocation is a finding.

use std::sync::Arc;

use qcow::formats::{self, NamedFile, SideFiles};
use qcow::storage::MemStorage;

/// The largest the in-memory image may grow to.
const LIMIT: u64 = 64 << 20;

/// Side files that all hold a copy of the input.
struct Copies(Vec<u8>);

impl SideFiles for Copies {
    fn image_name(&self) -> String {
        "fuzz.img".into()
    }
    fn image_identity(&self) -> String {
        "fuzz.img".into()
    }
    fn open(&self, name: &str, _writable: bool) -> qcow::Result<NamedFile> {
        Ok(NamedFile {
            storage: Arc::new(MemStorage::with_limit(self.0.clone(), LIMIT)),
            name: name.to_string(),
            identity: name.to_string(),
        })
    }
    fn create(&self, name: &str) -> qcow::Result<NamedFile> {
        self.open(name, true)
    }
}

fn exercise(image: &dyn formats::ForeignImage, write: bool) {
    let size = image.virtual_size();
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    while pos < size.min(4 << 20) {
        let n = (size - pos).min(buf.len() as u64) as usize;
        let _ = image.read_at(&mut buf[..n], pos);
        pos += n as u64;
    }
    let step = (size / 4096).max(64 << 10);
    let mut pos = 4 << 20;
    while pos < size {
        let _ = image.read_at(&mut buf[..1], pos);
        pos += step;
    }
    let mut pos = 0;
    for _ in 0..4096 {
        match image.extents(pos, size - pos) {
            Ok(e) if !e.is_empty() => {
                pos = e.last().map(|l| l.guest_offset + l.len).unwrap_or(size)
            }
            _ => break,
        }
        if pos >= size {
            break;
        }
    }
    let _ = image.check();
    let _ = image.format_specific();
    let _ = image.cluster_size();
    if write && size > 0 {
        let data = vec![0x5au8; 70_000];
        for at in [0, size / 2, size.saturating_sub(data.len() as u64)] {
            let n = (size - at).min(data.len() as u64) as usize;
            let _ = image.write_at(&data[..n], at);
        }
        let _ = image.flush();
    }
}

/// Runs one input as an image of `format` ("vpc", "vdi", "vmdk", "qed",
/// "vhdx").
pub fn foreign_body(format: &str, data: &[u8]) {
    let files = Copies(data.to_vec());
    let storage = Arc::new(MemStorage::with_limit(data.to_vec(), LIMIT));
    if let Some(Ok(image)) = formats::open(format, storage.clone(), false, &files) {
        exercise(&*image, false);
    }
    if let Some(Ok(image)) = formats::open(format, storage.clone(), true, &files) {
        exercise(&*image, true);
    }
    if let Some(Ok(image)) = formats::open(format, storage, false, &files) {
        exercise(&*image, false);
    }
}
