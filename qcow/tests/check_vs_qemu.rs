//! Holds `qcow::check::check` against `qemu-img check`: the same counts on
//! clean images of every layout, the same counts on damaged images, and
//! repairs that leave what QEMU's repairs leave (a clean image whenever
//! QEMU's repair gets one, and the same guest data).
//!
//! Skipped (with a note) when qemu-img or qemu-io is not installed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use qcow::check::{check, CheckReport, Repair};
use qcow::refcount::{block_get, block_set};
use qcow::FileStorage;

fn have_qemu() -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ok("qemu-img") && ok("qemu-io") {
        true
    } else {
        eprintln!("note: qemu-img/qemu-io not installed; skipping the comparison with QEMU");
        false
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("run qemu tool");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `qemu-img check --output=json` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct QemuCheck {
    failed: bool,
    /// What it printed on stderr, without "qemu-img: " prefixes and the
    /// final "Check failed" line (compared apart from the counts).
    messages: Vec<String>,
    corruptions: u64,
    leaks: u64,
    check_errors: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
    image_end_offset: u64,
    total_clusters: u64,
    allocated_clusters: u64,
    fragmented_clusters: u64,
    compressed_clusters: u64,
}

fn json_num(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\": ");
    json.find(&pat)
        .map(|i| {
            json[i + pat.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect("a number")
        })
        .unwrap_or(0)
}

fn qemu_check(path: &Path, repair: Option<&str>) -> QemuCheck {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["check", "--output=json"]);
    if let Some(r) = repair {
        cmd.args(["-r", r]);
    }
    let out = cmd
        .arg(path)
        .current_dir(path.parent().expect("in a directory"))
        .output()
        .expect("run qemu-img check");
    let json = String::from_utf8_lossy(&out.stdout);
    // QEMU prints this hint without a newline.
    let hint = "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.";
    let stderr = String::from_utf8_lossy(&out.stderr).replace(hint, &format!("{hint}\n"));
    let messages = stderr
        .lines()
        .map(|l| l.strip_prefix("qemu-img: ").unwrap_or(l).to_string())
        .filter(|l| !l.starts_with("Check failed") && !l.is_empty())
        .collect();
    if !json.contains("\"format\"") {
        return QemuCheck {
            failed: true,
            messages,
            ..QemuCheck::default()
        };
    }
    QemuCheck {
        failed: false,
        messages,
        corruptions: json_num(&json, "corruptions"),
        leaks: json_num(&json, "leaks"),
        check_errors: json_num(&json, "check-errors"),
        corruptions_fixed: json_num(&json, "corruptions-fixed"),
        leaks_fixed: json_num(&json, "leaks-fixed"),
        image_end_offset: json_num(&json, "image-end-offset"),
        total_clusters: json_num(&json, "total-clusters"),
        allocated_clusters: json_num(&json, "allocated-clusters"),
        fragmented_clusters: json_num(&json, "fragmented-clusters"),
        compressed_clusters: json_num(&json, "compressed-clusters"),
    }
}

fn open(path: &Path) -> FileStorage {
    FileStorage::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open image"),
    )
}

/// Our check in the shape of QEMU's JSON: with a repair, the fixed counts
/// of the first run and the counts of a second, read-only run.
fn our_check(path: &Path, repair: Repair) -> QemuCheck {
    let storage = open(path);
    let first = check(&storage, None, repair).expect("our check");
    let mut messages = first.messages.clone();
    let report: CheckReport = if first.corruptions_fixed > 0 || first.leaks_fixed > 0 {
        let second = check(&storage, None, Repair::None).expect("our second check");
        messages.extend(second.messages.iter().cloned());
        CheckReport {
            corruptions_fixed: first.corruptions_fixed,
            leaks_fixed: first.leaks_fixed,
            ..second
        }
    } else {
        first
    };
    let q = QemuCheck {
        failed: report.aborted.is_some(),
        messages: messages.clone(),
        corruptions: report.corruptions,
        leaks: report.leaks,
        check_errors: report.check_errors,
        corruptions_fixed: report.corruptions_fixed,
        leaks_fixed: report.leaks_fixed,
        image_end_offset: report.image_end_offset,
        total_clusters: report.total_clusters,
        allocated_clusters: report.allocated_clusters,
        fragmented_clusters: report.fragmented_clusters,
        compressed_clusters: report.compressed_clusters,
    };
    if q.failed {
        return QemuCheck {
            failed: true,
            messages,
            ..QemuCheck::default()
        };
    }
    q
}

/// The guest data as raw bytes, `None` if QEMU cannot read it.
fn raw_of(path: &Path, dir: &Path, name: &str) -> Option<Vec<u8>> {
    let out = dir.join(name);
    let status = Command::new("qemu-img")
        .current_dir(dir)
        .args([
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .output()
        .expect("run qemu-img convert");
    status
        .status
        .success()
        .then(|| std::fs::read(out).expect("read raw"))
}

/// Field offsets of the header, read with plain byte arithmetic so that
/// the test does not trust the code under test.
struct Layout {
    cluster_bits: u32,
    refcount_order: u32,
    extended_l2: bool,
    l1_offset: u64,
    reftable_offset: u64,
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    let mut out = vec![0u8; len];
    let start = (offset as usize).min(data.len());
    let end = (offset as usize + len).min(data.len());
    out[..end - start].copy_from_slice(&data[start..end]);
    out
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn u64_at(path: &Path, offset: u64) -> u64 {
    u64::from_be_bytes(read_at(path, offset, 8).try_into().unwrap())
}

fn set_u64(path: &Path, offset: u64, v: u64) {
    write_at(path, offset, &v.to_be_bytes());
}

fn layout(path: &Path) -> Layout {
    let h = read_at(path, 0, 112);
    let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
    let version = be32(4);
    Layout {
        cluster_bits: be32(20),
        refcount_order: if version >= 3 { be32(96) } else { 4 },
        extended_l2: version >= 3 && be64(72) & (1 << 4) != 0,
        l1_offset: be64(40),
        reftable_offset: be64(48),
    }
}

const MASK: u64 = 0x00ff_ffff_ffff_fe00;

impl Layout {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    fn refblock_for(&self, path: &Path, cluster: u64) -> (u64, u64) {
        let per_block = (self.cs() * 8) >> self.refcount_order;
        let block = u64_at(path, self.reftable_offset + cluster / per_block * 8) & MASK;
        assert_ne!(block, 0, "no refcount block covers cluster {cluster}");
        (block, cluster % per_block)
    }
    fn refcount(&self, path: &Path, cluster: u64) -> u64 {
        let (block, index) = self.refblock_for(path, cluster);
        block_get(
            &read_at(path, block, self.cs() as usize),
            index,
            self.refcount_order,
        )
    }
    fn set_refcount(&self, path: &Path, cluster: u64, value: u64) {
        let (block, index) = self.refblock_for(path, cluster);
        let mut data = read_at(path, block, self.cs() as usize);
        block_set(&mut data, index, self.refcount_order, value);
        write_at(path, block, &data);
    }
    fn l2_offset(&self, path: &Path) -> u64 {
        u64_at(path, self.l1_offset) & MASK
    }
    /// File offset of L2 entry `index` of the first L2 table.
    fn l2_entry_at(&self, path: &Path, index: u64) -> u64 {
        self.l2_offset(path) + index * if self.extended_l2 { 16 } else { 8 }
    }
    /// The first allocated (standard, uncompressed) L2 entry: (file offset
    /// of the entry, entry).
    fn first_data_entry(&self, path: &Path) -> (u64, u64) {
        let entries = self.cs() / if self.extended_l2 { 16 } else { 8 };
        (0..entries)
            .map(|i| {
                let at = self.l2_entry_at(path, i);
                (at, u64_at(path, at))
            })
            .find(|&(_, e)| e & MASK != 0 && e & (1 << 62) == 0)
            .expect("an allocated cluster")
    }
}

struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    img: PathBuf,
}

impl Case {
    fn new(create_opts: &str, size: &str, io: &[&str]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let img = path.join("t.qcow2");
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !create_opts.is_empty() {
            args.extend(["-o", create_opts]);
        }
        args.extend([img.to_str().unwrap(), size]);
        let cwd_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = Command::new("qemu-img")
            .current_dir(&path)
            .args(&cwd_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let case = Case {
            _dir: dir,
            dir: path,
            img,
        };
        case.io(io);
        case
    }

    fn io(&self, cmds: &[&str]) {
        if cmds.is_empty() {
            return;
        }
        let mut args = Vec::new();
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(self.img.to_str().unwrap());
        let out = Command::new("qemu-io")
            .current_dir(&self.dir)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn copy(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::copy(&self.img, &p).unwrap();
        p
    }
}

/// Our check and QEMU's agree on `path` (which neither changes).
fn assert_same_check(path: &Path, what: &str) -> QemuCheck {
    let theirs = qemu_check(path, None);
    let ours = our_check(path, Repair::None);
    assert_eq!(ours, theirs, "{what}: ours vs qemu-img check");
    theirs
}

/// Repairs a copy with QEMU and a copy with us; both must end the same,
/// with the same guest data, and clean whenever QEMU's is.
fn assert_same_repair(case: &Case, repair: Repair, what: &str, original: Option<&[u8]>) {
    let mode = match repair {
        Repair::Leaks => "leaks",
        _ => "all",
    };
    let theirs_img = case.copy(&format!("theirs-{mode}.qcow2"));
    let ours_img = case.copy(&format!("ours-{mode}.qcow2"));
    let theirs = qemu_check(&theirs_img, Some(mode));
    let ours = our_check(&ours_img, repair);
    assert_eq!(ours, theirs, "{what}: repair -r {mode}");
    eprintln!("  -r {mode}: {theirs:?}");
    // Whatever remains, QEMU sees the same in both.
    let after_theirs = qemu_check(&theirs_img, None);
    let after_ours = qemu_check(&ours_img, None);
    assert_eq!(
        (
            after_ours.failed,
            after_ours.corruptions,
            after_ours.leaks,
            after_ours.check_errors
        ),
        (
            after_theirs.failed,
            after_theirs.corruptions,
            after_theirs.leaks,
            after_theirs.check_errors
        ),
        "{what}: qemu-img check after -r {mode}, ours vs theirs"
    );
    if !after_theirs.failed {
        assert_eq!(
            raw_of(&ours_img, &case.dir, &format!("ours-{mode}.raw")),
            raw_of(&theirs_img, &case.dir, &format!("theirs-{mode}.raw")),
            "{what}: guest data after -r {mode}"
        );
    }
    if let (Some(original), false) = (original, after_theirs.failed) {
        let ours = raw_of(&ours_img, &case.dir, &format!("ours-{mode}.raw"));
        assert!(
            ours.as_deref() == Some(original),
            "{what}: guest data changed by -r {mode}"
        );
    }
}

const WORKLOAD: &[&str] = &[
    "write -P 0xaa 0 1M",
    "write -z 2M 64k",
    "write -P 0x55 3M 200k",
    "discard 512k 128k",
];

#[test]
fn clean_images_agree() {
    if !have_qemu() {
        return;
    }
    let layouts: &[(&str, &str)] = &[
        ("", "64M"),
        ("extended_l2=on", "64M"),
        ("refcount_bits=1", "64M"),
        ("refcount_bits=8", "64M"),
        ("refcount_bits=64", "64M"),
        ("cluster_size=512", "16M"),
        ("cluster_size=2M", "64M"),
        ("compat=0.10", "64M"),
        ("lazy_refcounts=on", "64M"),
        ("preallocation=metadata", "8M"),
        ("data_file=t.data", "64M"),
        ("data_file=t.data,data_file_raw=on", "64M"),
    ];
    for (opts, size) in layouts {
        let case = Case::new(opts, size, WORKLOAD);
        let q = assert_same_check(&case.img, opts);
        assert_eq!(
            (q.corruptions, q.leaks, q.check_errors),
            (0, 0, 0),
            "{opts}"
        );
        assert!(
            q.allocated_clusters > 0 || opts.contains("data_file"),
            "{opts}: {q:?}"
        );
    }
}

#[test]
fn compressed_and_snapshots_agree() {
    if !have_qemu() {
        return;
    }
    // Compressed clusters.
    let case = Case::new("", "64M", WORKLOAD);
    let comp = case.dir.join("c.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            case.img.to_str().unwrap(),
            comp.to_str().unwrap(),
        ],
    );
    let q = assert_same_check(&comp, "compressed");
    assert!(q.compressed_clusters > 0, "{q:?}");
    // Compressed, then overwritten in part (fragmentation, freed space).
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 64k 64k",
            "-c",
            "write -P 0x22 5M 64k",
            comp.to_str().unwrap(),
        ],
    );
    assert_same_check(&comp, "compressed and rewritten");

    // Snapshots: shared clusters with refcount 2, COPIED flags cleared.
    for opts in ["", "compat=0.10", "extended_l2=on", "refcount_bits=8"] {
        let case = Case::new(opts, "64M", WORKLOAD);
        run(
            "qemu-img",
            &["snapshot", "-c", "s1", case.img.to_str().unwrap()],
        );
        case.io(&["write -P 0x33 0 128k", "write -P 0x44 10M 64k"]);
        run(
            "qemu-img",
            &["snapshot", "-c", "s2", case.img.to_str().unwrap()],
        );
        case.io(&["discard 0 64k"]);
        let q = assert_same_check(&case.img, &format!("snapshots {opts}"));
        assert_eq!((q.corruptions, q.leaks), (0, 0), "{opts}");
    }
}

/// Damages `case` with `damage`, then compares checks and repairs. With
/// `data_intact`, the damage leaves guest data alone, and so must the
/// repairs.
fn damaged(
    name: &str,
    opts: &str,
    data_intact: bool,
    damage: impl Fn(&Case, &Layout),
) -> QemuCheck {
    let case = Case::new(opts, "64M", WORKLOAD);
    let original = data_intact
        .then(|| raw_of(&case.img, &case.dir, "original.raw").expect("readable before damage"));
    let lay = layout(&case.img);
    damage(&case, &lay);
    let what = format!("{name} ({opts})");
    let q = assert_same_check(&case.img, &what);
    eprintln!("{what}: {q:?}");
    assert_same_repair(&case, Repair::Leaks, &what, original.as_deref());
    assert_same_repair(&case, Repair::All, &what, original.as_deref());
    q
}

/// The first cluster inside the file with refcount 0, appending one if
/// there is none.
fn free_cluster(case: &Case, lay: &Layout) -> u64 {
    let len = std::fs::metadata(&case.img).unwrap().len();
    let clusters = len / lay.cs();
    (1..clusters)
        .find(|&c| lay.refcount(&case.img, c) == 0)
        .unwrap_or_else(|| {
            let f = OpenOptions::new().write(true).open(&case.img).unwrap();
            f.set_len((clusters + 1) * lay.cs()).unwrap();
            clusters
        })
}

#[test]
fn damaged_refcounts_agree() {
    if !have_qemu() {
        return;
    }
    for opts in [
        "",
        "refcount_bits=1",
        "refcount_bits=64,cluster_size=4k",
        "compat=0.10",
    ] {
        let q = damaged("leaked cluster", opts, true, |case, lay| {
            let c = free_cluster(case, lay);
            lay.set_refcount(&case.img, c, 1);
        });
        assert_eq!((q.leaks, q.corruptions), (1, 0), "{opts}");

        let q = damaged(
            "zeroed refcount of a data cluster",
            opts,
            true,
            |case, lay| {
                let (_, entry) = lay.first_data_entry(&case.img);
                lay.set_refcount(&case.img, (entry & MASK) >> lay.cluster_bits, 0);
            },
        );
        assert!(q.corruptions >= 1, "{opts}: {q:?}");

        let q = damaged("refcount one too high", opts, true, |case, lay| {
            let (_, entry) = lay.first_data_entry(&case.img);
            let c = (entry & MASK) >> lay.cluster_bits;
            let r = lay.refcount(&case.img, c);
            if lay.refcount_order > 0 {
                lay.set_refcount(&case.img, c, r + 1);
            }
        });
        let _ = q;

        damaged(
            "zeroed refcount of the L2 table",
            opts,
            true,
            |case, lay| {
                let l2 = lay.l2_offset(&case.img);
                lay.set_refcount(&case.img, l2 >> lay.cluster_bits, 0);
            },
        );
    }
}

#[test]
fn damaged_tables_agree() {
    if !have_qemu() {
        return;
    }
    for opts in ["", "extended_l2=on", "compat=0.10", "refcount_bits=8"] {
        damaged(
            "L2 entry past the end of the file",
            opts,
            false,
            |case, lay| {
                let (at, entry) = lay.first_data_entry(&case.img);
                let len = std::fs::metadata(&case.img).unwrap().len();
                let past = (len / lay.cs() + 10) * lay.cs();
                set_u64(&case.img, at, (entry & !MASK) | past);
            },
        );
        damaged("unaligned L2 entry", opts, false, |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, entry + 0x200);
        });
        damaged("cleared COPIED flag in L2", opts, true, |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, entry & !(1 << 63));
        });
        damaged("cleared COPIED flag in L1", opts, true, |case, lay| {
            let e = u64_at(&case.img, lay.l1_offset);
            set_u64(&case.img, lay.l1_offset, e & !(1 << 63));
        });
        damaged("reserved bits in an L2 entry", opts, false, |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, entry | (1 << 56));
        });
    }
    // Preallocated zero cluster at an unaligned offset (fixable).
    damaged(
        "unaligned preallocated zero cluster",
        "",
        false,
        |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, (entry + 0x200) | 1);
        },
    );
    damaged(
        "unaligned preallocated zero cluster",
        "extended_l2=on",
        false,
        |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, entry + 0x200);
            set_u64(&case.img, at + 8, 0xffff_ffff_0000_0000);
        },
    );
    // Two L2 entries sharing a cluster.
    damaged("cluster referenced twice", "", false, |case, lay| {
        let (at, entry) = lay.first_data_entry(&case.img);
        set_u64(&case.img, at + 8, entry);
    });
    // Compressed cluster with the COPIED flag.
    let case = Case::new(
        "",
        "64M",
        &["write -c -P 0x12 0 64k", "write -P 0x13 64k 64k"],
    );
    let lay = layout(&case.img);
    let at = lay.l2_entry_at(&case.img, 0);
    let e = u64_at(&case.img, at);
    assert!(e & (1 << 62) != 0, "compressed");
    set_u64(&case.img, at, e | (1 << 63));
    assert_same_check(&case.img, "compressed with COPIED");
    assert_same_repair(&case, Repair::All, "compressed with COPIED", None);
}

#[test]
fn damaged_refcount_structure_agrees() {
    if !have_qemu() {
        return;
    }
    for opts in ["", "cluster_size=512", "refcount_bits=64"] {
        damaged(
            "refcount block past the end of the file",
            opts,
            true,
            |case, lay| {
                let len = std::fs::metadata(&case.img).unwrap().len();
                let past = (len / lay.cs() + 3) * lay.cs();
                set_u64(&case.img, lay.reftable_offset, past);
            },
        );
        damaged("misaligned refcount block", opts, true, |case, lay| {
            if lay.cluster_bits > 9 {
                let e = u64_at(&case.img, lay.reftable_offset);
                set_u64(&case.img, lay.reftable_offset, e + 0x200);
            }
        });
        damaged(
            "reserved bits in the refcount table",
            opts,
            true,
            |case, lay| {
                let e = u64_at(&case.img, lay.reftable_offset);
                set_u64(&case.img, lay.reftable_offset, e | 1);
            },
        );
        damaged("refcount block zeroed", opts, true, |case, lay| {
            let block = u64_at(&case.img, lay.reftable_offset) & MASK;
            write_at(&case.img, block, &vec![0u8; lay.cs() as usize]);
        });
        damaged("refcount table entry cleared", opts, true, |case, lay| {
            set_u64(&case.img, lay.reftable_offset, 0);
        });
    }
}

#[test]
fn snapshot_table_damage_agrees() {
    if !have_qemu() {
        return;
    }
    let make = || {
        let case = Case::new("", "64M", WORKLOAD);
        run(
            "qemu-img",
            &["snapshot", "-c", "s1", case.img.to_str().unwrap()],
        );
        case.io(&["write -P 0x33 0 128k"]);
        case
    };
    let snapshots_offset = |case: &Case| u64_at(&case.img, 64);
    // A version 3 entry with only 8 bytes of extra data: "incomplete".
    let case = make();
    let at = snapshots_offset(&case);
    let h = read_at(&case.img, at, 40);
    let id_len = u64::from(u16::from_be_bytes([h[12], h[13]]));
    let name_len = u64::from(u16::from_be_bytes([h[14], h[15]]));
    let strings = read_at(&case.img, at + 40 + 24, (id_len + name_len) as usize);
    write_at(&case.img, at + 36, &8u32.to_be_bytes());
    write_at(&case.img, at + 40 + 8, &strings);
    assert_same_check(&case.img, "incomplete snapshot entry");
    assert_same_repair(&case, Repair::All, "incomplete snapshot entry", None);

    // Too much extra data.
    let case = make();
    let at = snapshots_offset(&case);
    write_at(&case.img, at + 36, &2000u32.to_be_bytes());
    assert_same_check(&case.img, "too much extra data");
    assert_same_repair(&case, Repair::All, "too much extra data", None);

    // Snapshot L1 table misaligned.
    let case = make();
    let at = snapshots_offset(&case);
    let l1 = u64_at(&case.img, at);
    set_u64(&case.img, at, l1 + 0x200);
    assert_same_check(&case.img, "misaligned snapshot L1");
    assert_same_repair(&case, Repair::All, "misaligned snapshot L1", None);

    // Snapshot table offset misaligned.
    let case = make();
    set_u64(&case.img, 64, snapshots_offset(&case) + 8);
    assert_same_check(&case.img, "misaligned snapshot table");
}

#[test]
fn more_layouts_agree() {
    if !have_qemu() {
        return;
    }
    // Persistent bitmaps: the directory and tables are referenced.
    let case = Case::new("", "64M", WORKLOAD);
    let img = case.img.to_str().unwrap();
    run("qemu-img", &["bitmap", "--add", img, "b0"]);
    run("qemu-img", &["bitmap", "--add", "-g", "64k", img, "b1"]);
    case.io(&["write -P 0x66 8M 1M"]);
    let q = assert_same_check(&case.img, "bitmaps");
    assert_eq!((q.corruptions, q.leaks), (0, 0));
    // A program without bitmap support clears the autoclear bit: the
    // bitmap clusters become leaks.
    let features = u64_at(&case.img, 88);
    set_u64(&case.img, 88, features & !1);
    let q = assert_same_check(&case.img, "bitmaps, autoclear bit cleared");
    assert!(q.leaks > 0, "{q:?}");
    assert_same_repair(&case, Repair::Leaks, "bitmaps, autoclear bit cleared", None);

    // A crash with lazy refcounts: dirty bit set, refcounts stale.
    let case = Case::new("lazy_refcounts=on", "64M", WORKLOAD);
    let _ = Command::new("qemu-io")
        .current_dir(&case.dir)
        .args([
            "-c",
            "write -P 0x77 4M 256k",
            "-c",
            "abort",
            case.img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let q = assert_same_check(&case.img, "lazy refcounts after a crash");
    assert!(q.corruptions + q.leaks > 0, "{q:?}");
    assert_same_repair(&case, Repair::All, "lazy refcounts after a crash", None);
    let repaired = case.dir.join("ours-all.qcow2");
    assert_eq!(u64_at(&repaired, 72) & 1, 0, "dirty bit cleared");

    // Refcount overflow: 1-bit refcounts and a cluster used twice.
    damaged(
        "cluster referenced twice",
        "refcount_bits=1",
        false,
        |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at + 8, entry);
        },
    );

    // External data file: data clusters are not refcounted.
    damaged(
        "cleared COPIED flag in L2",
        "data_file=t.data",
        false,
        |case, lay| {
            let (at, entry) = lay.first_data_entry(&case.img);
            set_u64(&case.img, at, entry & !(1 << 63));
        },
    );
    damaged("leaked cluster", "data_file=t.data", true, |case, lay| {
        let c = free_cluster(case, lay);
        lay.set_refcount(&case.img, c, 1);
    });

    // Huge clusters.
    damaged("leaked cluster", "cluster_size=2M", true, |case, lay| {
        let c = free_cluster(case, lay);
        lay.set_refcount(&case.img, c, 1);
    });
    damaged(
        "refcount table entry cleared",
        "cluster_size=2M",
        true,
        |case, lay| {
            set_u64(&case.img, lay.reftable_offset, 0);
        },
    );
}

#[test]
fn snapshot_count_damage_agrees() {
    if !have_qemu() {
        return;
    }
    let case = Case::new("", "64M", WORKLOAD);
    run(
        "qemu-img",
        &["snapshot", "-c", "s1", case.img.to_str().unwrap()],
    );
    case.io(&["write -P 0x33 0 128k"]);
    // More snapshots than QEMU allows.
    write_at(&case.img, 60, &70000u32.to_be_bytes());
    assert_same_check(&case.img, "too many snapshots");
    assert_same_repair(&case, Repair::All, "too many snapshots", None);
    assert_same_repair(&case, Repair::Leaks, "too many snapshots", None);
    // More snapshots than the table holds: entries read as zeros.
    write_at(&case.img, 60, &3u32.to_be_bytes());
    assert_same_check(&case.img, "snapshot count past the table");
    assert_same_repair(&case, Repair::All, "snapshot count past the table", None);
}
