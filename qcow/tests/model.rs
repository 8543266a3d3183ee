//! Model-based test: random writes, discards and write-zeroes applied to an
//! image and to a plain in-memory model; after every batch the image must
//! read back exactly as the model and `qemu-img check` must find it clean.
//!
//! Each configuration runs `QCOW_MODEL_OPS` operations (default 10,000).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::device::{BlockRead, RawImage};
use qcow::image::Qcow2;
use qcow::{FileStorage, Storage};

const PAGE: u64 = 4096;

/// A tiny deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn backing_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(31) >> 9) as u8 ^ 0x5a
}

/// Guest contents as sparse pages; absent pages are the base (zero, or the
/// backing file's pattern).
struct Model {
    pages: HashMap<u64, Vec<u8>>,
    has_backing: bool,
}

impl Model {
    fn base(&self, offset: u64) -> u8 {
        if self.has_backing {
            backing_byte(offset)
        } else {
            0
        }
    }
    fn page_mut(&mut self, index: u64) -> &mut Vec<u8> {
        let has_backing = self.has_backing;
        self.pages.entry(index).or_insert_with(|| {
            (0..PAGE)
                .map(|i| {
                    if has_backing {
                        backing_byte(index * PAGE + i)
                    } else {
                        0
                    }
                })
                .collect()
        })
    }
    fn set(&mut self, offset: u64, data: &[u8]) {
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let n = (PAGE - pos % PAGE).min(end - pos);
            let src = &data[(pos - offset) as usize..(pos - offset + n) as usize];
            let at = (pos % PAGE) as usize;
            self.page_mut(pos / PAGE)[at..at + n as usize].copy_from_slice(src);
            pos += n;
        }
    }
    fn fill(&mut self, offset: u64, len: u64, f: impl Fn(u64) -> u8) {
        let data: Vec<u8> = (offset..offset + len).map(f).collect();
        self.set(offset, &data);
    }
    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        while pos < offset + len {
            let n = (PAGE - pos % PAGE).min(offset + len - pos);
            let at = (pos % PAGE) as usize;
            match self.pages.get(&(pos / PAGE)) {
                Some(p) => out.extend_from_slice(&p[at..at + n as usize]),
                None => out.extend((pos..pos + n).map(|o| self.base(o))),
            }
            pos += n;
        }
        out
    }
}

struct Config {
    name: &'static str,
    version: u32,
    cluster_size: u64,
    refcount_bits: u32,
    extended_l2: bool,
    backing: bool,
    lazy_refcounts: bool,
}

fn qemu_available() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

fn qemu_check(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img check failed on {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(config: &Config) {
    let ops: u64 = std::env::var("QCOW_MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let cs = config.cluster_size;
    let entry = if config.extended_l2 { 16 } else { 8 };
    let l2_span = cs / entry * cs;
    // Two windows: the start of the disk and around the first L2 boundary.
    let window = (64 * cs).min(4 << 20).max(4 * cs);
    let size = (l2_span + window).max(2 * window);
    let windows = [(0u64, window), (l2_span.saturating_sub(window / 2), window)];

    let backing: Option<Box<dyn BlockRead>> = if config.backing {
        let path = dir.path().join("base.raw");
        // The backing file ends before the image does, so its end shows.
        let blen = size - cs - 512;
        let data: Vec<u8> = (0..blen).map(backing_byte).collect();
        std::fs::write(&path, &data).unwrap();
        let s: Arc<dyn Storage> = Arc::new(FileStorage::new(std::fs::File::open(&path).unwrap()));
        Some(Box::new(RawImage::new(s).unwrap()))
    } else {
        None
    };
    let backing_len = backing.as_ref().map(|b| b.virtual_size());
    let path = dir.path().join("img.qcow2");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    let opts = CreateOptions {
        size,
        version: config.version,
        cluster_size: cs,
        refcount_bits: config.refcount_bits,
        extended_l2: config.extended_l2,
        lazy_refcounts: config.lazy_refcounts,
        backing_file: config.backing.then(|| "base.raw".to_string()),
        backing_format: config.backing.then(|| "raw".to_string()),
        ..Default::default()
    };
    let image: Qcow2 = create(storage, None, backing, &opts).unwrap();
    let mut model = Model {
        pages: HashMap::new(),
        has_backing: config.backing,
    };
    // Past the end of the backing file the guest reads zeros.
    if let Some(blen) = backing_len {
        model.fill(blen, size - blen, |_| 0);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ cs ^ u64::from(config.refcount_bits));
    let batch: u64 = std::env::var("QCOW_MODEL_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let trace = std::env::var_os("QCOW_MODEL_TRACE").is_some();
    let mut done = 0;
    while done < ops {
        for _ in 0..batch.min(ops - done) {
            let (wstart, wlen) = windows[rng.below(2) as usize];
            let max_len = 3 * cs + cs / 2;
            let offset = wstart + rng.below(wlen);
            let len = (1 + rng.below(max_len)).min(size - offset);
            let op = rng.below(10);
            if trace {
                eprintln!("op {op} offset {offset} len {len}");
            }
            match op {
                0..=5 => {
                    let seed = rng.next() as u8;
                    let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    image.write_at(&data, offset).unwrap();
                    model.set(offset, &data);
                }
                6 | 7 => {
                    image.discard(offset, len).unwrap();
                    let first = offset.div_ceil(cs) * cs;
                    let end = (offset + len) / cs * cs;
                    if first < end {
                        if config.backing && config.version == 2 {
                            let blen = backing_len.unwrap_or(0);
                            model.fill(first, end - first, |o| {
                                if o < blen {
                                    backing_byte(o)
                                } else {
                                    0
                                }
                            });
                        } else {
                            model.fill(first, end - first, |_| 0);
                        }
                    }
                }
                _ => {
                    let unmap = rng.below(2) == 0;
                    image.write_zeroes(offset, len, unmap).unwrap();
                    model.fill(offset, len, |_| 0);
                }
            }
        }
        done += batch.min(ops - done);
        for &(wstart, wlen) in &windows {
            let mut buf = vec![0u8; wlen as usize];
            image.read_at(&mut buf, wstart).unwrap();
            let want = model.read(wstart, wlen);
            if buf != want {
                let at = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "{}: after {done} ops, byte {} reads {:#x}, model has {:#x}",
                    config.name,
                    wstart + at as u64,
                    buf[at],
                    want[at]
                );
            }
        }
        image.flush().unwrap();
        if qemu_available() {
            qemu_check(&path);
        }
    }
    drop(image);
    // Reopen from disk and compare once more.
    let s: Arc<dyn Storage> = Arc::new(FileStorage::new(std::fs::File::open(&path).unwrap()));
    let reopened = Qcow2::open(s, false, &qcow::fs::FileOpener::for_image(&path)).unwrap();
    for &(wstart, wlen) in &windows {
        let mut buf = vec![0u8; wlen as usize];
        reopened.read_at(&mut buf, wstart).unwrap();
        assert!(
            buf == model.read(wstart, wlen),
            "{}: reopened image differs",
            config.name
        );
    }
}

macro_rules! model_test {
    ($name:ident, $v:expr, $cs:expr, $rc:expr, $ext:expr, $backing:expr, $lazy:expr) => {
        #[test]
        fn $name() {
            run(&Config {
                name: stringify!($name),
                version: $v,
                cluster_size: $cs,
                refcount_bits: $rc,
                extended_l2: $ext,
                backing: $backing,
                lazy_refcounts: $lazy,
            });
        }
    };
}

model_test!(v3_64k_rc16, 3, 65536, 16, false, false, false);
model_test!(v3_512_rc1, 3, 512, 1, false, false, false);
model_test!(v3_4k_rc64_backing, 3, 4096, 64, false, true, false);
model_test!(v2_4k_rc16_backing, 2, 4096, 16, false, true, false);
model_test!(v2_1k_rc16, 2, 1024, 16, false, false, false);
model_test!(v3_16k_extl2_rc8, 3, 16384, 8, true, false, false);
model_test!(v3_32k_extl2_backing_rc2, 3, 32768, 2, true, true, true);
model_test!(v3_2m_rc32, 3, 2 << 20, 32, false, false, false);
model_test!(v3_8k_rc4_lazy, 3, 8192, 4, false, false, true);
