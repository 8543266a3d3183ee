//! Shared helpers of the backend tests: images made by qemu-img, aligned
//! buffers, a driver that keeps many random requests in flight and checks
//! them against an in-memory model.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockdev::disk::{BlockQueue, Completion, IoBuf, Request};

/// Runs qemu-img and panics with its output when it fails.
pub fn qemu_img(args: &[&str]) -> String {
    run_tool("qemu-img", args)
}

/// Runs qemu-io on an image (`-c COMMAND`) and panics when it fails.
pub fn qemu_io(image: &Path, command: &str) -> String {
    run_tool("qemu-io", &["-c", command, image.to_str().unwrap()])
}

fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .expect("the tool runs");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` must find nothing.
pub fn assert_clean(path: &Path) {
    let out = qemu_img(&["check", path.to_str().unwrap()]);
    assert!(out.contains("No errors were found"), "{out}");
    let info = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    assert!(!info.contains("\"dirty-flag\": true"), "{info}");
}

/// `qemu-img compare` of `image` against the raw bytes `model`.
pub fn assert_same_as(image: &Path, model: &[u8], dir: &Path) {
    assert_same_as_format(image, None, model, dir);
}

/// `qemu-img compare` of `image`, of `format` (probed when `None`: a
/// fixed VHD, whose footer is at its end, probes as raw), against the raw
/// bytes `model`.
pub fn assert_same_as_format(image: &Path, format: Option<&str>, model: &[u8], dir: &Path) {
    let raw = dir.join("model.raw");
    std::fs::write(&raw, model).unwrap();
    let mut args = vec!["compare", "-F", "raw"];
    if let Some(f) = format {
        args.extend(["-f", f]);
    }
    let out = Command::new("qemu-img")
        .args(args)
        .args([image.to_str().unwrap(), raw.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A heap buffer whose data starts `skew` bytes after a 4096-byte boundary.
pub struct Buf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    /// `len` zero bytes at `skew` past an aligned address.
    pub fn new(len: usize, skew: usize) -> Buf {
        let storage = vec![0u8; len + 8192];
        let addr = storage.as_ptr() as usize;
        let start = addr.next_multiple_of(4096) - addr + skew;
        Buf {
            storage,
            start,
            len,
        }
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
    /// The buffer as IoBufs cut at `cuts` (offsets inside it).
    pub fn iobufs(&mut self, cuts: &[usize]) -> Vec<IoBuf> {
        let base = self.bytes_mut().as_mut_ptr();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&self.len)) {
            if c > prev && c <= self.len {
                out.push(IoBuf {
                    addr: base.wrapping_add(prev),
                    len: c - prev,
                });
                prev = c;
            }
        }
        out
    }
}

/// Blocks until `user_data` completes (popping others into `done`).
pub fn wait_for(q: &mut dyn BlockQueue, user_data: u64) -> Completion {
    q.submit().unwrap();
    loop {
        while let Some(c) = q.pop_completion() {
            if c.user_data == user_data {
                return c;
            }
        }
        q.wait().unwrap();
    }
}

/// Pushes one request and waits for it.
///
/// # Safety
/// The request's buffers must be valid until this returns.
pub unsafe fn run_one(q: &mut dyn BlockQueue, r: Request) -> Completion {
    // SAFETY: forwarded to the caller.
    unsafe { q.push(r, 7777) }.unwrap();
    wait_for(q, 7777)
}

/// How the random workload treats discards of this disk.
#[derive(Clone, Copy, Debug)]
pub enum DiscardModel {
    /// Raw file: the range reads as zero.
    Zero,
    /// qcow2 with this cluster size: whole clusters read as zero, the
    /// rest is unchanged.
    Clusters(u64),
    /// The formats of other hypervisors: a discard changes nothing.
    Keep,
}

/// Parameters of a random run.
pub struct Workload {
    pub depth: u32,
    pub ops: usize,
    pub seed: u64,
    /// Offsets and lengths are multiples of this.
    pub granule: u64,
    /// Longest request in granules.
    pub max_granules: u64,
    pub discard: DiscardModel,
}

struct InFlight {
    offset: u64,
    len: u64,
    read: Option<Buf>,
    _write: Option<Buf>,
}

/// Keeps up to `depth` random requests in flight on `q` and checks every
/// read against `model`, which it updates with every write, write-zeroes
/// and discard. In-flight requests never overlap (their order would be
/// undefined), but they share clusters all the time.
pub fn random_workload(q: &mut dyn BlockQueue, model: &mut [u8], w: &Workload) {
    let size = model.len() as u64;
    let mut rng = Rng::new(w.seed);
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut issued = 0usize;
    let mut next_ud = 1u64;
    let mut checked_reads = 0;
    while issued < w.ops || !inflight.is_empty() {
        // Fill up to depth (sometimes less, to vary batch sizes).
        let target = 1 + rng.below(u64::from(w.depth)) as usize;
        while issued < w.ops && inflight.len() < target {
            let granules = 1 + rng.below(w.max_granules);
            let len = (granules * w.granule).min(size);
            let offset = rng.below((size - len) / w.granule + 1) * w.granule;
            if inflight
                .values()
                .any(|f| f.offset < offset + len && offset < f.offset + f.len)
            {
                continue;
            }
            let ud = next_ud;
            next_ud += 1;
            let kind = rng.below(100);
            // Buffers: sometimes misaligned (bounce path), sometimes split.
            let skew = if rng.below(4) == 0 { 8 } else { 0 };
            let cuts: Vec<usize> = match rng.below(3) {
                0 => vec![],
                1 => vec![(rng.below(granules) * w.granule) as usize],
                _ => vec![512, (len as usize) / 2 / 512 * 512],
            };
            let entry;
            let request = if kind < 45 {
                let mut b = Buf::new(len as usize, skew);
                b.bytes_mut().fill(0xA5);
                let bufs = b.iobufs(&cuts);
                entry = InFlight {
                    offset,
                    len,
                    read: Some(b),
                    _write: None,
                };
                Request::Read { offset, bufs }
            } else if kind < 85 {
                let mut b = Buf::new(len as usize, skew);
                let data = rng.bytes(len as usize);
                b.bytes_mut().copy_from_slice(&data);
                model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                let bufs = b.iobufs(&cuts);
                entry = InFlight {
                    offset,
                    len,
                    read: None,
                    _write: Some(b),
                };
                Request::Write { offset, bufs }
            } else if kind < 90 {
                entry = InFlight {
                    offset: 0,
                    len: 0,
                    read: None,
                    _write: None,
                };
                Request::Flush
            } else if kind < 95 {
                model[offset as usize..(offset + len) as usize].fill(0);
                entry = InFlight {
                    offset,
                    len,
                    read: None,
                    _write: None,
                };
                Request::WriteZeroes {
                    offset,
                    len,
                    may_unmap: rng.below(2) == 0,
                }
            } else {
                match w.discard {
                    DiscardModel::Zero => model[offset as usize..(offset + len) as usize].fill(0),
                    DiscardModel::Clusters(cs) => {
                        let first = offset.div_ceil(cs) * cs;
                        let end = (offset + len) / cs * cs;
                        if first < end {
                            model[first as usize..end as usize].fill(0);
                        }
                    }
                    DiscardModel::Keep => {}
                }
                entry = InFlight {
                    offset,
                    len,
                    read: None,
                    _write: None,
                };
                Request::Discard { offset, len }
            };
            // SAFETY: the buffers live in `inflight` until the completion
            // is popped below.
            unsafe { q.push(request, ud) }.unwrap();
            inflight.insert(ud, entry);
            issued += 1;
        }
        q.submit().unwrap();
        let mut got = 0;
        while let Some(c) = q.pop_completion() {
            got += 1;
            let f = inflight.remove(&c.user_data).expect("known request");
            let n = c.result.unwrap_or_else(|e| panic!("request failed: {e}"));
            if let Some(b) = f.read {
                assert_eq!(n, f.len);
                let want = &model[f.offset as usize..(f.offset + f.len) as usize];
                if b.bytes() != want {
                    let first = (0..want.len()).find(|&i| b.bytes()[i] != want[i]).unwrap();
                    panic!(
                        "read of {} bytes at {} differs at byte {} (seed {})",
                        f.len, f.offset, first, w.seed
                    );
                }
                checked_reads += 1;
            }
        }
        if got == 0 && !inflight.is_empty() {
            q.wait().unwrap();
        }
    }
    assert_eq!(q.in_flight(), 0);
    assert!(checked_reads > 0);
}

/// A fresh temporary folder on a file system that takes O_DIRECT (not
/// tmpfs): under the target folder.
pub fn test_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}
