//! What the parents of the kill -9 harnesses (`tests/kill9.rs` over the
//! qcow library, `tests/kill9_virtio.rs` through the virtio-blk device)
//! share: running a writer child until it has flushed and killing it,
//! reading the image it left, holding its contents to the model, and the
//! `qemu-img check` / `img check -r` / `qemu-img convert` sequence.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use qcow::fs::{open_image, AnyImage, Format};
use qcow::image::Qcow2;

use crate::workload::{mix, Op};
use crate::{img, qemu_img, run};

/// A directory for the trials' images: a RAM disk when there is one.
/// Nothing here needs the disk, and fsync on it is free (a kill -9 loses
/// nothing the kernel has).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory")
}

/// The value of environment variable `name` as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Opens `path` read-only as qcow2 with our library.
pub fn read_qcow2(path: &Path) -> Result<Qcow2, String> {
    match open_image(path, Some(Format::Qcow2), false) {
        Ok(AnyImage::Qcow2(q)) => Ok(*q),
        Ok(_) => Err("not opened as qcow2".into()),
        Err(e) => Err(format!("our library cannot open the image: {e}")),
    }
}

/// The whole guest disk of `image`.
pub fn read_all(image: &Qcow2) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; image.size() as usize];
    image
        .read_at(&mut buf, 0)
        .map_err(|e| format!("reading the image: {e}"))?;
    Ok(buf)
}

/// Operations of one round (each with its index in the round's stream)
/// whose effects may or may not have reached the image.
pub struct RoundOps {
    pub seed: u64,
    pub round: u32,
    pub ops: Vec<(u64, Op)>,
}

/// Every byte of `actual` must equal `model`, or the value one of the
/// `uncertain` operations gives that byte.
pub fn check_active(
    actual: &[u8],
    model: &[u8],
    uncertain: &RoundOps,
    cluster_size: u64,
) -> Result<(), String> {
    if actual.len() != model.len() {
        return Err(format!("size {} instead of {}", actual.len(), model.len()));
    }
    let value = |index: u64, op: &Op, b: usize| {
        op.value_at(
            uncertain.seed,
            uncertain.round,
            index,
            cluster_size,
            b as u64,
        )
    };
    let mut bad = Vec::new();
    for (b, (&a, &m)) in actual.iter().zip(model).enumerate() {
        if a != m
            && !uncertain
                .ops
                .iter()
                .any(|(i, op)| value(*i, op, b) == Some(a))
        {
            bad.push(b);
        }
    }
    let Some(&b) = bad.first() else {
        return Ok(());
    };
    let touching: Vec<String> = uncertain
        .ops
        .iter()
        .filter_map(|(i, op)| value(*i, op, b).map(|v| format!("op {i} {op:?} -> {v:#x}")))
        .collect();
    Err(format!(
        "{} bytes read neither the flushed value nor a later write's; first at guest offset {b} \
         (cluster {}): read {:#x}, flushed model {:#x}; later operations touching it: {touching:?}",
        bad.len(),
        b as u64 / cluster_size,
        actual[b],
        model[b],
    ))
}

/// Runs `cmd`; its exit code and its stdout and stderr together.
pub fn exit_code(cmd: &mut Command) -> (i32, String) {
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The error count of `qemu-img check`'s human output.
pub fn qemu_errors(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_suffix(" errors were found on the image."))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The checks after a kill, on the image at `path` whose guest contents
/// our library read as `active`:
/// - with `lazy` refcounts, it is first opened for writing (which repairs
///   an image left dirty);
/// - `qemu-img check` finds no corruption: exit 0, or 3 (leaks only), or
///   one `excused` accepts (given exit code and output; the repair is
///   then `-r all`);
/// - `img check -r leaks` (or `all`) succeeds, after which `img check`
///   and `qemu-img check` are both clean;
/// - `qemu-img convert -O raw` reads `active`, and so do we after the
///   repair.
pub fn check_and_repair(
    path: &Path,
    lazy: bool,
    active: &[u8],
    excused: &dyn Fn(i32, &str) -> bool,
) -> Result<(), String> {
    let p = path.to_str().ok_or("path is not UTF-8")?;
    if lazy {
        match open_image(path, Some(Format::Qcow2), true) {
            Ok(image) => drop(image),
            Err(e) => return Err(format!("opening for writing (repair): {e}")),
        }
    }
    let (code, text) = exit_code(&mut qemu_img(&["check", p]));
    let excused = excused(code, &text);
    if code != 0 && code != 3 && !excused {
        return Err(format!("qemu-img check exit {code}:\n{text}"));
    }
    let mode = if excused { "all" } else { "leaks" };
    let (code, text) = exit_code(&mut img(&["check", "-r", mode, p]));
    if code != 0 {
        return Err(format!("img check -r {mode} exit {code}:\n{text}"));
    }
    let (code, text) = exit_code(&mut img(&["check", p]));
    if code != 0 {
        return Err(format!("img check after repair exit {code}:\n{text}"));
    }
    let (code, text) = exit_code(&mut qemu_img(&["check", p]));
    if code != 0 {
        return Err(format!(
            "qemu-img check after img's repair exit {code}:\n{text}"
        ));
    }
    let raw = path.with_extension("raw");
    let (code, text) = exit_code(&mut qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        p,
        raw.to_str().ok_or("path is not UTF-8")?,
    ]));
    if code != 0 {
        return Err(format!("qemu-img convert exit {code}:\n{text}"));
    }
    let theirs = std::fs::read(&raw).map_err(|e| format!("reading {}: {e}", raw.display()))?;
    let _ = std::fs::remove_file(&raw);
    if theirs != active {
        let b = theirs.iter().zip(active).position(|(a, b)| a != b);
        return Err(format!(
            "qemu reads other contents (first difference at {b:?})"
        ));
    }
    let again = read_all(&read_qcow2(path)?)?;
    if again != active {
        return Err("the repair changed the guest contents".into());
    }
    Ok(())
}

/// The complete lines of a writer child's log. A kill inside a log write
/// can leave the last line cut short (a write that crosses a page of the
/// page cache is copied in two steps, and SIGKILL may land between them),
/// and a cut `start 1304` reads as `start 1`: only lines that end in a
/// newline count.
pub fn whole_lines(text: &str) -> std::str::Lines<'_> {
    text.rfind('\n').map_or("", |end| &text[..end]).lines()
}

/// Whether a log line of a writer child says a flush completed.
fn is_flushed_line(line: &str) -> bool {
    line.starts_with("flushed ")
}

/// Waits until the writer child logs its first `flushed N` line to `log`,
/// then `delay` more, and kills it with SIGKILL; returns the log. A child
/// that ends by itself is fine only if its log has a line starting with
/// `end_marker` (it ran its whole stream).
pub fn run_and_kill(
    mut child: Child,
    log: &Path,
    delay: Duration,
    end_marker: &str,
) -> Result<String, String> {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let text = read();
            if text.lines().any(|l| l.starts_with(end_marker)) {
                return Ok(text);
            }
            return Err(format!("the writer ended by itself ({status}): {err}"));
        }
        if read().lines().any(is_flushed_line) {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the writer did not flush within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(delay);
    // Child::kill sends SIGKILL.
    child.kill().map_err(|e| format!("kill: {e}"))?;
    let _ = child.wait();
    Ok(read())
}

/// The image a kill -9 trial runs on, picked from its seed: cluster size
/// (512, 4k, 64k), compat (one trial in six 0.10), refcount width (1, 8,
/// 16, 64), lazy refcounts, extended L2 (64k clusters), and whether
/// qemu-img or our library creates it.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// lazy_refcounts.
    pub lazy: bool,
    /// extended_l2.
    pub extended_l2: bool,
    /// 2 (compat=0.10) or 3.
    pub version: u32,
    /// Disk size: several L2 tables with small clusters, a few dozen
    /// clusters with large ones (`sizes` of [`ImageConfig::pick`]).
    pub size: u64,
    /// Created by qemu-img instead of by our library.
    pub by_qemu: bool,
}

impl ImageConfig {
    /// The configuration of trial `seed`, from the values `mix(seed ^ (i
    /// << 32))` for i in 1..=6 (a harness picks the rest of its trial from
    /// i = 7 on); `sizes` are the disk sizes for 512-byte, 4 KiB and
    /// 64 KiB clusters.
    pub fn pick(seed: u64, sizes: [u64; 3]) -> ImageConfig {
        let r = |i: u64| mix(seed ^ (i << 32));
        let which = (r(1) % 3) as usize;
        let cluster_size = [512u64, 4096, 65536][which];
        let version = if r(2) % 6 == 0 { 2 } else { 3 };
        let refcount_bits = if version == 2 {
            16
        } else {
            [1u32, 8, 16, 64][(r(3) % 4) as usize]
        };
        let lazy = version == 3 && r(4) % 2 == 0;
        ImageConfig {
            cluster_size,
            refcount_bits,
            lazy,
            extended_l2: version == 3 && cluster_size == 65536 && r(5) % 2 == 0,
            version,
            size: sizes[which],
            by_qemu: r(6) % 3 == 0,
        }
    }

    /// The configuration as `qemu-img create -o` options.
    pub fn qemu_options(&self) -> String {
        format!(
            "compat={},cluster_size={},refcount_bits={},lazy_refcounts={},extended_l2={}",
            if self.version == 2 { "0.10" } else { "1.1" },
            self.cluster_size,
            self.refcount_bits,
            if self.lazy { "on" } else { "off" },
            if self.extended_l2 { "on" } else { "off" },
        )
    }
}

/// How many of `qemu-img check`'s complaints are COPIED flags that
/// disagree with the stored refcount in the directions a kill inside a
/// snapshot operation leaves whatever the write order (QEMU's too: it also
/// writes refcount blocks before the L2 tables whose flags depend on them):
/// a flag set on a cluster whose extra references are all leaked
/// ("Leaked cluster C refcount=R reference=1"), or a flag cleared on a
/// cluster with refcount 1. Neither loses data; `check -r all` fixes both.
pub fn harmless_copied_mismatches(text: &str, cluster_size: u64) -> u64 {
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(key)? + key.len();
        line[at..].split_whitespace().next().map(str::to_owned)
    };
    let leaked_once: Vec<u64> = text
        .lines()
        .filter(|l| {
            l.starts_with("Leaked cluster") && field(l, "reference=").as_deref() == Some("1")
        })
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    text.lines()
        .filter(|l| l.starts_with("ERROR OFLAG_COPIED"))
        .filter(|l| {
            let entry = field(l, "l2_entry=")
                .or_else(|| field(l, "l1_entry="))
                .and_then(|e| u64::from_str_radix(&e, 16).ok());
            let refcount = field(l, "refcount=").and_then(|r| r.parse::<u64>().ok());
            let (Some(entry), Some(refcount)) = (entry, refcount) else {
                return false;
            };
            let copied = entry & (1 << 63) != 0;
            let cluster = (entry & 0x00ff_ffff_ffff_fe00) / cluster_size;
            (!copied && refcount == 1)
                || (copied && refcount >= 2 && leaked_once.contains(&cluster))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::whole_lines;

    #[test]
    fn a_cut_last_line_is_not_read() {
        let log = "snapshots \nstart 1303\nflushed 1303\nstart 1";
        let lines: Vec<&str> = whole_lines(log).collect();
        assert_eq!(lines, ["snapshots ", "start 1303", "flushed 1303"]);
        assert_eq!(whole_lines("start 1").count(), 0);
        assert_eq!(whole_lines("done 5\n").collect::<Vec<_>>(), ["done 5"]);
    }
}
