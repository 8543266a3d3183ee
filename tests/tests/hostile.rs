//! Hostile images: valid images made by qemu-img and qemu-io, then patched
//! field by field (offsets from docs/interop/qcow2.rst) into something no
//! honest writer produces. `img info`, `check`, `convert -O raw` and `map`
//! must refuse each one with exactly one line on stderr naming the field or
//! table and its value, exit 1 (for `check`, the exit code `qemu-img check`
//! returns on the same file), never panic, finish within a second, stay
//! under 256 MiB and leave the file as it was.
//!
//! Resources are measured per command: it runs as
//! `timeout -s KILL 10 /usr/bin/time -f %M -o FILE img ...`. GNU time
//! reports the peak resident set size (KiB) from the rusage of `wait4`, so
//! the number is what the command really touched. `prlimit --as` was not
//! chosen: an address-space limit also counts reserved, untouched memory
//! (thread stacks, one malloc arena a worker thread), so it fails healthy
//! multi-threaded runs and says nothing about what was used. `timeout`
//! turns a hang into a failure instead of a stalled test run. GNU time is
//! the `time` package (`apt-get install time`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{img_bin, ok, qemu_img, qemu_io, read, require_qemu, run};

/// Longest a command may take on a hostile image.
const MAX_WALL: Duration = Duration::from_secs(1);
/// Most memory (peak RSS) a command may use on a hostile image.
const MAX_PEAK_KIB: u64 = 256 * 1024;
/// Seconds after which a command is killed (a hang, not a slow run).
const KILL_AFTER_SECS: &str = "10";
/// Where the L1 and refcount tables are moved to lie past the end of file.
const PAST_EOF: u64 = 0x1000_0000;

/// Header field offsets (docs/interop/qcow2.rst, "Header").
const MAGIC: usize = 0;
const VERSION: usize = 4;
const BACKING_FILE_OFFSET: usize = 8;
const BACKING_FILE_SIZE: usize = 16;
const CLUSTER_BITS: usize = 20;
const CRYPT_METHOD: usize = 32;
const L1_SIZE: usize = 36;
const L1_TABLE_OFFSET: usize = 40;
const REFCOUNT_TABLE_OFFSET: usize = 48;
const INCOMPATIBLE_FEATURES: usize = 72;
const HEADER_LENGTH: usize = 100;
/// Header extension type of the feature name table.
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// One feature name table entry: type, bit, 46 bytes of name.
const FEATURE_ENTRY_LEN: usize = 48;
/// Cluster size of the images made here (qemu-img's default).
const CLUSTER_SIZE: usize = 65536;
/// L2 entry flag: refcount is exactly one.
const QCOW_OFLAG_COPIED: u64 = 1 << 63;

fn get32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}

fn get64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("eight bytes"))
}

fn put32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// A valid 64 MiB qcow2 image with data in two L2 ranges, as qemu writes it.
fn base_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("base.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M"));
    qemu_io(
        "qcow2",
        &path,
        &["write -P 0x5a 0 1M", "write -P 0x33 32M 64k"],
    );
    read(&path)
}

/// Writes `dir/name`: the base image with `patch` applied.
fn patched(dir: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = base_image(dir);
    patch(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// Offset of the extension of type `ext_type` in the header cluster.
fn find_extension(buf: &[u8], ext_type: u32) -> usize {
    let mut pos = get32(buf, HEADER_LENGTH) as usize;
    loop {
        let found = get32(buf, pos);
        assert_ne!(found, 0, "extension {ext_type:#x} not found");
        if found == ext_type {
            return pos;
        }
        pos += 8 + (get32(buf, pos + 4) as usize).div_ceil(8) * 8;
    }
}

/// Adds an incompatible-feature entry naming `bit` to the feature name
/// table, moving what follows it within the header cluster.
fn add_feature_name(buf: &mut [u8], bit: u8, name: &str) {
    let table = find_extension(buf, EXT_FEATURE_TABLE);
    let len = get32(buf, table + 4) as usize;
    let end = table + 8 + len;
    let tail = &buf[CLUSTER_SIZE - FEATURE_ENTRY_LEN..CLUSTER_SIZE];
    assert!(tail.iter().all(|&b| b == 0), "header cluster is full");
    buf.copy_within(
        end..CLUSTER_SIZE - FEATURE_ENTRY_LEN,
        end + FEATURE_ENTRY_LEN,
    );
    let entry = &mut buf[end..end + FEATURE_ENTRY_LEN];
    entry.fill(0);
    entry[0] = 0; // incompatible
    entry[1] = bit;
    entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
    put32(buf, table + 4, (len + FEATURE_ENTRY_LEN) as u32);
}

/// What one measured command did.
struct Run {
    what: String,
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// Peak RSS in KiB, `None` if GNU time wrote no report.
    peak_kib: Option<u64>,
}

impl Run {
    /// The command did not panic, hang, take too long or use too much.
    fn assert_bounded(&self) {
        assert!(
            !self.stderr.contains("panicked") && self.code != 101,
            "{}: panicked (exit {}):\n{}",
            self.what,
            self.code,
            self.stderr
        );
        assert_ne!(
            self.code, 137,
            "{}: killed after {KILL_AFTER_SECS} s",
            self.what
        );
        assert!(
            self.elapsed < MAX_WALL,
            "{}: took {:?} (at most {MAX_WALL:?})",
            self.what,
            self.elapsed
        );
        let peak_kib = self
            .peak_kib
            .unwrap_or_else(|| panic!("{}: GNU time reported no peak RSS", self.what));
        assert!(
            peak_kib < MAX_PEAK_KIB,
            "{}: peak RSS {peak_kib} KiB (at most {MAX_PEAK_KIB} KiB)",
            self.what
        );
    }

    /// Exit `code` with exactly one `img: ...` line on stderr that
    /// contains every one of `needles`.
    fn assert_one_line(&self, code: i32, needles: &[&str]) {
        self.assert_bounded();
        assert_eq!(
            self.code, code,
            "{}: exit code; stderr:\n{}",
            self.what, self.stderr
        );
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "{}: stderr is not one line:\n{}",
            self.what,
            self.stderr
        );
        assert!(
            line.starts_with("img: "),
            "{}: stderr does not start with 'img: ': {line}",
            self.what
        );
        for needle in needles {
            assert!(
                line.contains(needle),
                "{}: stderr does not name {needle:?}: {line}",
                self.what
            );
        }
    }

    /// Exit 0, nothing on stderr.
    fn assert_success(&self) {
        self.assert_bounded();
        assert_eq!(
            (self.code, self.stderr.as_str()),
            (0, ""),
            "{}: expected success",
            self.what
        );
    }
}

/// Runs `img ARGS...` in `dir`, measuring wall time and peak memory.
fn measured(dir: &Path, args: &[&str]) -> Run {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "GNU time is needed to measure memory: apt-get install time"
    );
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", KILL_AFTER_SECS])
        .arg(time)
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(img_bin())
        .args(args)
        .current_dir(dir);
    let start = Instant::now();
    let out = run(&mut cmd);
    let elapsed = start.elapsed();
    // GNU time writes "Command exited with non-zero status N" first when
    // the command fails; the number is on the last line.
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let peak_kib = text.lines().last().and_then(|l| l.trim().parse().ok());
    Run {
        what: format!("img {}", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
        peak_kib,
    }
}

/// `qemu-img check [-f FORMAT] FILE`'s exit code (killed if it hangs).
fn qemu_check_code(dir: &Path, format: Option<&str>, file: &str) -> i32 {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", KILL_AFTER_SECS, "qemu-img", "check"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = run(cmd.arg(file).current_dir(dir));
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 137, "qemu-img check {file} hangs: no reference code");
    code
}

/// Asserts that `files` still hold `before`.
fn assert_unchanged(files: &[(PathBuf, Vec<u8>)], after: &str) {
    for (path, bytes) in files {
        assert!(
            read(path) == *bytes,
            "{} changed after `{after}`",
            path.display()
        );
    }
}

/// Reads the current bytes of each of `names` in `dir`.
fn snapshot(dir: &Path, names: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    names
        .iter()
        .map(|n| {
            let p = dir.join(n);
            let bytes = read(&p);
            (p, bytes)
        })
        .collect()
}

/// What `img check` must exit with on a hostile image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckExpectation {
    /// `img check` exits like `qemu-img check` on the same file.
    LikeQemu,
    /// `img check` exits with this code (qemu-img check differs; the case
    /// says why).
    Code(i32),
    /// `img check` is not run (covered by a separate, ignored test).
    Skip,
}

/// Runs info, check, convert and map on `dir/file` and asserts that each
/// refuses it with one line containing `needles` (and `check` with the
/// expected code), leaving `files` unchanged. `format` is passed as `-f`.
fn assert_refused(
    dir: &Path,
    file: &str,
    format: Option<&str>,
    needles: &[&str],
    check: CheckExpectation,
    files: &[&str],
) {
    assert_refused_with_info(
        dir,
        file,
        format,
        needles,
        check,
        files,
        Some((&[], needles)),
    );
}

/// [`assert_refused`] for a file whose backing chain is the problem: qemu-img
/// info opens each image without its backing file, so plain `info` reads
/// it; `info` names the extra arguments (`--backing-chain`) and the words
/// its refusal must carry, or `None` where info succeeds as qemu-img's does.
fn assert_refused_with_info(
    dir: &Path,
    file: &str,
    format: Option<&str>,
    needles: &[&str],
    check: CheckExpectation,
    files: &[&str],
    info: Option<(&[&str], &[&str])>,
) {
    let before = snapshot(dir, files);
    let with_format = |cmd: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        if let Some(f) = format {
            args.extend(["-f".to_string(), f.to_string()]);
        }
        args.push(file.to_string());
        args
    };
    let go = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        measured(dir, &refs)
    };

    let info_args = |extra: &[&str]| {
        let mut args = vec!["info"];
        args.extend_from_slice(extra);
        with_format(&args)
    };
    match info {
        Some((extra, info_needles)) => go(info_args(extra)).assert_one_line(1, info_needles),
        None => assert_eq!(go(info_args(&[])).code, 0, "info {file}"),
    }
    assert_unchanged(&before, "info");

    let expected_check = match check {
        CheckExpectation::LikeQemu => Some(qemu_check_code(dir, format, file)),
        CheckExpectation::Code(c) => Some(c),
        CheckExpectation::Skip => None,
    };
    if let Some(code) = expected_check {
        assert_ne!(code, 0, "qemu-img check accepts {file}: not a hostile case");
        go(with_format(&["check"])).assert_one_line(code, needles);
        assert_unchanged(&before, "check");
    }

    let out_raw = dir.join("out.raw");
    let _ = std::fs::remove_file(&out_raw);
    let mut args = with_format(&["convert", "-O", "raw"]);
    args.push("out.raw".to_string());
    go(args).assert_one_line(1, needles);
    assert!(!out_raw.exists(), "convert created its target");
    assert_unchanged(&before, "convert");

    go(with_format(&["map"])).assert_one_line(1, needles);
    assert_unchanged(&before, "map");
}

/// A case on a patched copy of the base image.
fn patched_case(name: &str, patch: impl FnOnce(&mut Vec<u8>), needles: &[&str]) {
    patched_case_with(name, None, patch, needles, CheckExpectation::LikeQemu);
}

fn patched_case_with(
    name: &str,
    format: Option<&str>,
    patch: impl FnOnce(&mut Vec<u8>),
    needles: &[&str],
    check: CheckExpectation,
) {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("{name}.qcow2");
    patched(dir.path(), &file, patch);
    assert_refused(dir.path(), &file, format, needles, check, &[&file]);
}

#[test]
fn bad_magic() {
    require_qemu!();
    // Without -f both tools probe the file as raw and open it; with
    // -f qcow2 the magic is checked.
    patched_case_with(
        "bad-magic",
        Some("qcow2"),
        |b| put32(b, MAGIC, 0x5146_4900),
        &["not in qcow2 format", "magic 0x51464900"],
        CheckExpectation::LikeQemu,
    );
}

#[test]
fn version_4() {
    require_qemu!();
    patched_case("version4", |b| put32(b, VERSION, 4), &["version 4"]);
}

#[test]
fn unknown_incompatible_feature_named_in_feature_table() {
    require_qemu!();
    patched_case(
        "feature9",
        |b| {
            put64(b, INCOMPATIBLE_FEATURES, 1 << 9);
            add_feature_name(b, 9, "hostile feature");
        },
        &["incompatible feature", "0x200", "hostile feature"],
    );
}

#[test]
fn v3_header_length_80() {
    require_qemu!();
    patched_case(
        "hdrlen80",
        |b| put32(b, HEADER_LENGTH, 80),
        &["header_length: 80"],
    );
}

#[test]
fn l1_table_unaligned() {
    require_qemu!();
    patched_case(
        "l1-unaligned",
        |b| {
            let l1 = get64(b, L1_TABLE_OFFSET);
            put64(b, L1_TABLE_OFFSET, l1 + 8);
        },
        &["L1 table", "0x30008", "not aligned"],
    );
}

/// `qemu-img check` reads the missing table as zeros and reports
/// corruption (exit 2); `img check` refuses to open it (exit 1), so check
/// is held to qemu-img in [`l1_table_beyond_eof_check_like_qemu`].
#[test]
fn l1_table_beyond_eof() {
    require_qemu!();
    patched_case_with(
        "l1-beyond",
        None,
        |b| put64(b, L1_TABLE_OFFSET, PAST_EOF),
        &["L1 table", "0x10000000", "beyond the end of the file"],
        CheckExpectation::Skip,
    );
}

#[test]
fn l1_table_beyond_eof_check_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    patched(dir.path(), "l1-beyond.qcow2", |b| {
        put64(b, L1_TABLE_OFFSET, PAST_EOF)
    });
    let expected = qemu_check_code(dir.path(), None, "l1-beyond.qcow2");
    let ours = measured(dir.path(), &["check", "l1-beyond.qcow2"]);
    ours.assert_bounded();
    assert_eq!(ours.code, expected, "{}", ours.stderr);
}

#[test]
fn refcount_table_unaligned() {
    require_qemu!();
    patched_case(
        "rt-unaligned",
        |b| {
            let rt = get64(b, REFCOUNT_TABLE_OFFSET);
            put64(b, REFCOUNT_TABLE_OFFSET, rt + 8);
        },
        &["refcount table", "0x10008", "not aligned"],
    );
}

/// As for the L1 table, check is held to qemu-img apart, in
/// [`refcount_table_beyond_eof_check_like_qemu`].
#[test]
fn refcount_table_beyond_eof() {
    require_qemu!();
    patched_case_with(
        "rt-beyond",
        None,
        |b| put64(b, REFCOUNT_TABLE_OFFSET, PAST_EOF),
        &["refcount table", "0x10000000", "beyond the end of the file"],
        CheckExpectation::Skip,
    );
}

#[test]
fn refcount_table_beyond_eof_check_like_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    patched(dir.path(), "rt-beyond.qcow2", |b| {
        put64(b, REFCOUNT_TABLE_OFFSET, PAST_EOF)
    });
    let expected = qemu_check_code(dir.path(), None, "rt-beyond.qcow2");
    let ours = measured(dir.path(), &["check", "rt-beyond.qcow2"]);
    ours.assert_bounded();
    assert_eq!(ours.code, expected, "{}", ours.stderr);
}

#[test]
fn l1_size_2_pow_31() {
    require_qemu!();
    patched_case(
        "l1-huge",
        |b| put32(b, L1_SIZE, 1 << 31),
        &["L1 table", "2147483648 entries", "32 MiB"],
    );
}

#[test]
fn cluster_bits_8() {
    require_qemu!();
    patched_case("cb8", |b| put32(b, CLUSTER_BITS, 8), &["cluster_bits: 8"]);
}

#[test]
fn cluster_bits_22() {
    require_qemu!();
    patched_case(
        "cb22",
        |b| put32(b, CLUSTER_BITS, 22),
        &["cluster_bits: 22"],
    );
}

#[test]
fn backing_file_name_of_2000_bytes() {
    require_qemu!();
    patched_case(
        "long-backing",
        |b| {
            // Inside the first cluster, after the extensions.
            let at = 0x1000;
            b[at..at + 2000].fill(b'x');
            put64(b, BACKING_FILE_OFFSET, at as u64);
            put32(b, BACKING_FILE_SIZE, 2000);
        },
        &["backing_file_size: 2000"],
    );
}

#[test]
fn extension_longer_than_the_cluster() {
    require_qemu!();
    patched_case(
        "ext-past",
        |b| {
            let table = find_extension(b, EXT_FEATURE_TABLE);
            put32(b, table + 4, 2 * CLUSTER_SIZE as u32);
        },
        &[
            "header extension",
            "0x6803f857",
            "beyond the header cluster",
        ],
    );
}

#[test]
fn encryption() {
    require_qemu!();
    // Methods 1 (AES) and 2 (LUKS) are read (tests/encryption_vs_qemu.rs);
    // any other is refused by every command, in qemu-img's words.
    patched_case(
        "crypt",
        |b| put32(b, CRYPT_METHOD, 3),
        &["Unsupported encryption method 3"],
    );
}

/// qemu-img opens the image (info exits 0), so do we; reading the cluster
/// must fail, and check must report what qemu-img check reports.
#[test]
fn l2_entry_past_eof() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = "l2-past.qcow2";
    patched(d, file, |b| {
        let l1 = get64(b, L1_TABLE_OFFSET) as usize;
        let l2 = (get64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        put64(b, l2, QCOW_OFLAG_COPIED | PAST_EOF);
    });
    let before = snapshot(d, &[file]);

    let info = measured(d, &["info", file]);
    info.assert_success();
    assert_unchanged(&before, "info");

    let ours = measured(d, &["check", file]);
    ours.assert_bounded();
    let theirs = run(qemu_img(&["check", file]).current_dir(d));
    assert_eq!(ours.code, 2, "{}", ours.stderr);
    assert_eq!(Some(ours.code), theirs.status.code());
    assert_eq!(ours.stdout, String::from_utf8_lossy(&theirs.stdout));
    assert_eq!(
        ours.stderr,
        String::from_utf8_lossy(&theirs.stderr).replace("qemu-img: ", "img: ")
    );
    assert!(
        ours.stderr.contains(
            "region exceeding the end of the file by one cluster or more: offset 0x10000000"
        ),
        "{}",
        ours.stderr
    );
    assert_unchanged(&before, "check");

    // QEMU reads a data cluster past the end of the file as zeros (its
    // file driver pads reads past the end), and so does img.
    for args in [
        &["convert", "-O", "raw", file, "out.raw"][..],
        &["map", "--output=json", file],
    ] {
        same_as_qemu_img(d, args);
        assert_unchanged(&before, args[0]);
    }
    ok(qemu_img(&["convert", "-O", "raw", file, "theirs.raw"]).current_dir(d));
    assert!(read(&d.join("out.raw")) == read(&d.join("theirs.raw")));
}

/// img `args` exits, prints on stdout and on stderr what qemu-img does
/// (program names aside), within the bounds of [`measured`].
fn same_as_qemu_img(dir: &Path, args: &[&str]) {
    let ours = measured(dir, args);
    ours.assert_bounded();
    let theirs = run(qemu_img(args).current_dir(dir));
    assert_eq!(Some(ours.code), theirs.status.code(), "{args:?}: exit code");
    assert_eq!(
        ours.stdout,
        String::from_utf8_lossy(&theirs.stdout),
        "{args:?}: stdout"
    );
    assert_eq!(
        ours.stderr,
        String::from_utf8_lossy(&theirs.stderr).replace("qemu-img: ", "img: "),
        "{args:?}: stderr"
    );
}

#[test]
fn backing_cycle() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]).current_dir(d));
    ok(qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "64M",
    ])
    .current_dir(d));
    ok(qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2",
    ])
    .current_dir(d));
    // qemu-img check (and convert, map) never finish on this chain, so
    // there is no reference code: failing to open the chain is exit 1.
    assert_refused_with_info(
        d,
        "a.qcow2",
        None,
        &["backing file", "cycle"],
        CheckExpectation::Code(1),
        &["a.qcow2", "b.qcow2"],
        Some((
            &["--backing-chain"],
            &["Backing file 'a.qcow2' creates an infinite loop."],
        )),
    );
}

#[test]
fn backing_chain_of_70() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "c0.qcow2", "1M"]).current_dir(d));
    for i in 1..=70 {
        let below = format!("c{}.qcow2", i - 1);
        let name = format!("c{i}.qcow2");
        ok(qemu_img(&[
            "create", "-q", "-f", "qcow2", "-u", "-b", &below, "-F", "qcow2",
        ])
        .arg(&name)
        .arg("1M")
        .current_dir(d));
    }
    // qemu has no depth limit (its check exits 0 here); ours is
    // qcow::fs::MAX_CHAIN_DEPTH, and check opens the chain as qemu-img
    // check does, so it fails to open it: exit 1.
    assert_refused_with_info(
        d,
        "c70.qcow2",
        None,
        &["backing file", "deeper than 64"],
        CheckExpectation::Code(1),
        &["c70.qcow2", "c0.qcow2"],
        None,
    );
}

/// qemu-img refuses to open a corrupt image for writing but reads it.
#[test]
fn corrupt_bit_refuses_writes_only() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = "corrupt.qcow2";
    patched(d, file, |b| put64(b, INCOMPATIBLE_FEATURES, 1 << 1));
    let before = snapshot(d, &[file]);

    let info = measured(d, &["info", file]);
    info.assert_success();
    assert!(info.stdout.contains("corrupt: true"), "{}", info.stdout);
    assert_unchanged(&before, "info");

    let ours = measured(d, &["check", file]);
    ours.assert_bounded();
    assert_eq!(ours.code, qemu_check_code(d, None, file), "{}", ours.stderr);
    assert_unchanged(&before, "check");

    measured(d, &["convert", "-O", "raw", file, "out.raw"]).assert_success();
    assert_unchanged(&before, "convert");
    measured(d, &["map", file]).assert_success();
    assert_unchanged(&before, "map");

    measured(d, &["resize", file, "128M"]).assert_one_line(1, &["corrupt", "writing"]);
    assert_unchanged(&before, "resize");

    // qemu-img refuses the same resize.
    std::fs::copy(d.join(file), d.join("theirs.qcow2")).unwrap();
    let theirs = run(qemu_img(&["resize", "theirs.qcow2", "128M"]).current_dir(d));
    assert_eq!(theirs.status.code(), Some(1));
    assert!(read(&d.join("theirs.qcow2")) == before[0].1);
}

#[test]
fn create_with_cluster_size_3000() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    measured(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3000",
            "x",
            "1G",
        ],
    )
    .assert_one_line(1, &["Cluster size", "power of two"]);
    assert!(!d.join("x").exists(), "create made a file");
}

#[test]
fn convert_to_a_format_img_cannot_create() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "a", "64M"]).current_dir(d));
    let before = snapshot(d, &["a"]);
    measured(d, &["convert", "-O", "parallels", "a", "b"]).assert_one_line(1, &["parallels"]);
    assert!(!d.join("b").exists(), "convert made a file");
    assert_unchanged(&before, "convert");
}

#[test]
fn resize_by_minus_5g_without_shrink() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Smaller than 5G: the new size would be negative.
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "x.qcow2", "64M"]).current_dir(d));
    // Larger: a real shrink, which needs --shrink.
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "y.qcow2", "8G"]).current_dir(d));
    let before = snapshot(d, &["x.qcow2", "y.qcow2"]);
    measured(d, &["resize", "x.qcow2", "--", "-5G"]).assert_one_line(1, &["must be positive"]);
    assert_unchanged(&before, "resize x.qcow2 -- -5G");
    // qemu-img prints its warning as a second line of its own.
    let shrink = measured(d, &["resize", "y.qcow2", "--", "-5G"]);
    shrink.assert_bounded();
    assert_eq!(shrink.code, 1, "resize y.qcow2 -- -5G: exit code");
    let theirs = run(qemu_img(&["resize", "y.qcow2", "--", "-5G"]).current_dir(d));
    assert_eq!(
        shrink.stderr.replace("img: ", "qemu-img: "),
        String::from_utf8_lossy(&theirs.stderr),
        "resize y.qcow2 -- -5G: qemu-img's lines"
    );
    assert_unchanged(&before, "resize y.qcow2 -- -5G");
}

/// Version 2 has no zero flag: an L2 entry with bit 0 set is corruption,
/// which qemu-img refuses to read ("Zero cluster entry found in pre-v3
/// image"); so do we, rather than reading zeros.
#[test]
fn zero_flag_in_a_version_2_image() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = "v2-zero.qcow2";
    let path = d.join(file);
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", "compat=0.10"])
            .arg(&path)
            .arg("64M"),
    );
    qemu_io("qcow2", &path, &["write -P 0x5a 0 64k"]);
    let mut bytes = read(&path);
    let l1 = get64(&bytes, L1_TABLE_OFFSET) as usize;
    let l2 = (get64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let entry = get64(&bytes, l2);
    put64(&mut bytes, l2, entry | 1);
    std::fs::write(&path, &bytes).unwrap();
    let before = snapshot(d, &[file]);
    // QEMU's corruption event ("Zero cluster entry found in pre-v3
    // image"), then the command's own error, as qemu-img prints them.
    same_as_qemu_img(d, &["convert", "-O", "raw", file, "out.raw"]);
    assert!(!d.join("out.raw").exists() || read(&d.join("out.raw")).iter().all(|&b| b == 0));
    assert_unchanged(&before, "convert");
    same_as_qemu_img(d, &["map", file]);
    assert_unchanged(&before, "map");
}
