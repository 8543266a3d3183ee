//! Helpers shared by the integration tests: locating the `img` binary,
//! running it and qemu-img, and making test files; the kill -9 harnesses'
//! operations ([`workload`], [`virtio_workload`]) and checks ([`crash`]).

pub mod crash;
pub mod encrypted;
pub mod holders;
pub mod virtio_workload;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `img` binary built with the tests (or `$IMG_BIN`).
pub fn img_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IMG_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/img
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let img = dir.join("img");
    assert!(
        img.exists(),
        "{} is missing: build it with `cargo build -p tools` (cargo test --workspace does)",
        img.display()
    );
    img
}

/// Whether qemu-img is installed (the cross-checks need it).
pub fn have_qemu() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Skips the calling test (returns) when qemu-img is missing, unless
/// `REQUIRE_QEMU` is set, where it fails instead.
#[macro_export]
macro_rules! require_qemu {
    () => {
        if !$crate::have_qemu() {
            if std::env::var_os("REQUIRE_QEMU").is_some() {
                panic!("qemu-img is required (REQUIRE_QEMU is set) but not installed");
            }
            eprintln!("qemu-img not installed: skipping");
            return;
        }
    };
}

/// Opens the qcow2 image at `path` read-write through the library, as a
/// VMM or `img` would (its backing chain resolved beside it).
pub fn open_qcow2_rw(path: &Path) -> qcow::image::Qcow2 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let storage: std::sync::Arc<dyn qcow::Storage> =
        std::sync::Arc::new(qcow::FileStorage::new(file));
    qcow::image::Qcow2::open(storage, true, &qcow::fs::FileOpener::for_image(path))
        .unwrap_or_else(|e| panic!("open {} as qcow2: {e}", path.display()))
}

/// Makes at `path` (with qemu-img and qemu-io) a 1 MiB qcow2 image of
/// 512-byte clusters and 64-bit refcounts (a refcount block covers
/// 32 KiB, the one-cluster table 2 MiB) whose first guest cluster holds
/// 0x11 bytes and whose L2 entry is then pointed at `host_offset`, past
/// what the refcount table covers when that offset is large.
pub fn qcow2_512_mapped_at(path: &Path, host_offset: u64) {
    use std::os::unix::fs::FileExt;
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=64",
    ])
    .arg(path)
    .arg("1M"));
    qemu_io("qcow2", path, &["write -P 0x11 0 512"]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, 0x600).unwrap();
    let l2_offset = u64::from_be_bytes(entry) & 0x00ff_ffff_ffff_fe00;
    let value = 0x8000_0000_0000_0000u64 | host_offset;
    f.write_all_at(&value.to_be_bytes(), l2_offset).unwrap();
}

/// Runs a command and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `img ARGS...`
pub fn img(args: &[&str]) -> Command {
    let mut c = Command::new(img_bin());
    c.args(args);
    c
}

/// `qemu-img ARGS...`
pub fn qemu_img(args: &[&str]) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(args);
    c
}

/// `qemu-io -c CMD ... FILE` with a format.
pub fn qemu_io(fmt: &str, file: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(file);
    ok(&mut c);
}

/// `qemu-img check` finds nothing wrong (no corruption, no leak).
pub fn assert_qemu_clean(path: &Path) {
    let out = run(qemu_img(&["check", "--output=json"]).arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} is not clean ({}):\n{}{}",
        path.display(),
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check`'s report on `path`, stdout then stderr, with the
/// path written `IMAGE` so that two images' reports compare.
pub fn qemu_check_text(path: &Path) -> String {
    let out = run(qemu_img(&["check"]).arg(path));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&path.display().to_string(), "IMAGE")
}

/// What differs between two images that should be the same file: their
/// bytes (sizes and the first differing offset), then `qemu-img check`'s
/// reports; each line starts with `label`. Empty when nothing differs.
pub fn file_and_check_differences(label: &str, ours: &Path, theirs: &Path) -> Vec<String> {
    let mut differences = Vec::new();
    let (a, b) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
    if a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        differences.push(format!(
            "{label}: files differ ({} vs {} bytes, first at {first:?})",
            a.len(),
            b.len()
        ));
    }
    let (ca, cb) = (qemu_check_text(ours), qemu_check_text(theirs));
    if ca != cb {
        differences.push(format!("{label}: check\nours:   {ca}\ntheirs: {cb}"));
    }
    differences
}

/// A deterministic pseudo-random byte stream (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Fills a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes a raw file of `size` bytes: alternating 64 KiB runs of random
/// data, zeros, text-like data and holes.
pub fn make_raw(path: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 65536];
    let mut pos = 0u64;
    let mut i = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        match i % 4 {
            0 => {
                rng.fill(&mut buf[..n]);
                f.write_all_at(&buf[..n], pos).unwrap();
            }
            1 => {
                buf[..n].fill(0);
                f.write_all_at(&buf[..n], pos).unwrap();
            }
            2 => {
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[(k + i as usize) % 44];
                }
                f.write_all_at(&buf[..n], pos).unwrap();
            }
            _ => {}
        }
        pos += n as u64;
        i += 1;
    }
}

/// `qemu-img map --output=json` of `path`, host offsets dropped and
/// neighbouring ranges that say the same merged: what two images made by
/// different writers must agree on.
pub fn map_ranges(path: &Path) -> Vec<(u64, u64, String)> {
    let out = ok(qemu_img(&["map", "--output=json"]).arg(path));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    for e in entries {
        let start = e["start"].as_u64().unwrap();
        let end = start + e["length"].as_u64().unwrap();
        let what = format!(
            "depth {} present {} zero {} data {} compressed {}",
            e["depth"], e["present"], e["zero"], e["data"], e["compressed"]
        );
        match ranges.last_mut() {
            Some(last) if last.1 == start && last.2 == what => last.1 = end,
            _ => ranges.push((start, end, what)),
        }
    }
    ranges
}

/// Reads a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
