//! Checks of crash states for the power-cut test: a state must open, pass
//! our check with no corruption, read back what the guest flushed, and
//! take a new write; optionally `qemu-img check` too. Also the helpers of
//! the targeted crash regressions.

use std::ops::Range;
use std::process::Command;
use std::sync::Arc;

use qcow::check::{check, Repair};
use qcow::create::CreateOptions;
use qcow::image::{NoFiles, Qcow2};
use qcow::{MemStorage, Storage};

use super::recording::{
    self, crash_image, describe_events, durable_end, CrashPlan, Event, RecordingStorage, SECTOR,
};
use super::workload::{self, Config, Workload};

/// Failure reports printed in full per kind of failure.
pub const DETAILS_PER_KIND: usize = 3;

/// Totals of one test.
#[derive(Debug, Default)]
pub struct Stats {
    pub states: u64,
    pub qemu_checked: u64,
    pub writable_reopens: u64,
    pub states_with_leaks: u64,
    /// Sectors written after the last flush that read as neither their
    /// old nor any of their new contents (stale host data: allowed by the
    /// flush contract, QEMU does the same for new clusters).
    pub stale_sectors: u64,
    pub workloads: u64,
    /// L2 tables written back by cache eviction, between flushes.
    pub l2_writebacks: u64,
    pub failures: Vec<String>,
    /// The first few failure reports of each kind (the error's first
    /// word), with the operations and the events in flight.
    pub details: Vec<(String, String)>,
}

pub struct CrashCase<'a> {
    pub config: &'a Config,
    pub work: &'a Workload,
    pub workload_seed: u64,
    pub state_seed: u64,
    pub point: usize,
}

impl CrashCase<'_> {
    /// The last guest flush that returned before the crash.
    pub fn flush_point(&self) -> &workload::FlushPoint {
        self.work
            .flushes
            .iter()
            .rev()
            .find(|f| f.done <= self.point)
            .expect("the first flush point is at 0")
    }

    /// Operations issued after that flush and before the crash.
    pub fn touched(&self) -> &[workload::OpRecord] {
        let fp = self.flush_point();
        let ops = &self.work.ops[fp.next_op..];
        let n = ops.iter().take_while(|r| r.start < self.point).count();
        &ops[..n]
    }

    /// Whether a snapshot operation was issued since that flush: the
    /// COPIED flags may then be mid-update.
    pub fn snapshot_in_flight(&self) -> bool {
        self.touched().iter().any(|r| {
            matches!(
                r.op,
                workload::Op::SnapshotCreate { .. }
                    | workload::Op::SnapshotApply { .. }
                    | workload::Op::SnapshotDelete { .. }
            )
        })
    }

    pub fn header(&self) -> String {
        format!(
            "config [{}] workload seed {:#x} state seed {:#x} crash point {} of {} events",
            self.config.name,
            self.workload_seed,
            self.state_seed,
            self.point,
            self.work.log.len()
        )
    }
}

/// Compares the regions of `image` with the model at the last completed
/// flush: bytes that no later operation touched must match exactly.
/// Returns the number of touched sectors holding stale data.
pub fn compare(case: &CrashCase, image: &Qcow2) -> Result<u64, String> {
    let fp = case.flush_point();
    let touched = case.touched();
    let mut stale = 0;
    for (region_offset, want) in &fp.model.regions {
        let len = want.len() as u64;
        let mut got = vec![0u8; len as usize];
        image
            .read_at(&mut got, *region_offset)
            .map_err(|e| format!("read: guest {region_offset:#x}: {e}"))?;
        let mut is_touched = vec![false; len as usize];
        let mut relevant = Vec::new();
        for e in touched.iter().flat_map(|r| &r.effects) {
            let lo = e.offset.max(*region_offset);
            let hi = (e.offset + e.len).min(region_offset + len);
            if lo < hi {
                is_touched[(lo - region_offset) as usize..(hi - region_offset) as usize].fill(true);
                relevant.push(e);
            }
        }
        let bad: Vec<usize> = (0..len as usize)
            .filter(|&i| !is_touched[i] && got[i] != want[i])
            .collect();
        if let Some(&first) = bad.first() {
            let cs = case.config.opts.cluster_size;
            let pos = region_offset + first as u64;
            return Err(format!(
                "read: {} untouched guest bytes differ from the last flush, first at {pos:#x} \
                 (cluster {}, byte {:#x} in it): read {:#04x}, flushed {:#04x}",
                bad.len(),
                pos / cs,
                pos % cs,
                got[first],
                want[first]
            ));
        }
        // Touched sectors: old contents or those after some operation.
        for s in 0..len / SECTOR {
            let (a, b) = ((s * SECTOR) as usize, ((s + 1) * SECTOR) as usize);
            if !is_touched[a..b].iter().any(|&t| t) {
                continue;
            }
            let mut version = want[a..b].to_vec();
            let mut ok = version == got[a..b];
            for e in &relevant {
                let sector_start = region_offset + s * SECTOR;
                let lo = e.offset.max(sector_start);
                let hi = (e.offset + e.len).min(sector_start + SECTOR);
                if ok || lo >= hi {
                    continue;
                }
                for pos in lo..hi {
                    version[(pos - sector_start) as usize] = e.byte(pos);
                }
                ok = version == got[a..b];
            }
            if !ok {
                stale += 1;
            }
        }
    }
    Ok(stale)
}

/// COPIED-flag mismatches that a crash inside a snapshot operation leaves
/// whatever the write order (QEMU's included): a cleared flag on a cluster
/// with refcount 1, or a set flag on a cluster whose extra references are
/// all leaked (check's "Leaked cluster C refcount=R reference=1"). Neither
/// can lose data, and `check -r all` fixes both. Returns how many of the
/// check's (or qemu-img's) message lines are such.
pub fn harmless_copied_mismatches<'a>(
    lines: impl Iterator<Item = &'a str> + Clone,
    cluster_size: u64,
) -> u64 {
    let field = |line: &'a str, key: &str| -> Option<&'a str> {
        let at = line.find(key)? + key.len();
        line[at..].split_whitespace().next()
    };
    let leaked_once: Vec<u64> = lines
        .clone()
        .filter(|l| l.starts_with("Leaked cluster") && field(l, "reference=") == Some("1"))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    lines
        .filter(|l| l.starts_with("ERROR OFLAG_COPIED"))
        .filter(|l| {
            let entry = field(l, "l2_entry=")
                .or_else(|| field(l, "l1_entry="))
                .and_then(|e| u64::from_str_radix(e, 16).ok());
            let refcount: Option<u64> = field(l, "refcount=").and_then(|r| r.parse().ok());
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

/// Runs our check; fails on corruptions (but those of
/// [`harmless_copied_mismatches`] when `snapshot_window` gives the cluster
/// size), check errors or an aborted check. Returns the leaks.
pub fn check_clean(
    mem: &MemStorage,
    what: &str,
    snapshot_window: Option<u64>,
) -> Result<u64, String> {
    let report =
        check(mem, None, Repair::None).map_err(|e| format!("{what}: check failed: {e}"))?;
    let excused = snapshot_window.map_or(0, |cs| {
        harmless_copied_mismatches(report.messages.iter().map(String::as_str), cs)
    });
    if report.corruptions > excused || report.check_errors > 0 || report.aborted.is_some() {
        return Err(format!(
            "{what}: check: {} corruptions, {} check errors{}\n      {}",
            report.corruptions,
            report.check_errors,
            report
                .aborted
                .map_or(String::new(), |r| format!(", aborted: {r}")),
            report.messages.join("\n      ")
        ));
    }
    Ok(report.leaks)
}

/// Runs every check on one crash state.
pub fn verify(
    case: &CrashCase,
    state: Vec<u8>,
    reopen: bool,
    stats: &mut Stats,
) -> Result<(), String> {
    let mem = Arc::new(MemStorage::from_bytes(state));
    let file: Arc<dyn Storage> = mem.clone();
    let image = Qcow2::open(file, false, &NoFiles).map_err(|e| format!("open: read-only: {e}"))?;
    let cs = case.config.opts.cluster_size;
    let window = case.snapshot_in_flight().then_some(cs);
    if check_clean(&mem, "crash state", window)? > 0 {
        stats.states_with_leaks += 1;
    }
    stats.stale_sectors += compare(case, &image)?;
    drop(image);
    if !reopen {
        return Ok(());
    }
    // Open for writing (a dirty lazy-refcount image is repaired here),
    // write a cluster, close, and check again.
    stats.writable_reopens += 1;
    let file: Arc<dyn Storage> = mem.clone();
    let image = Qcow2::open(file, true, &NoFiles).map_err(|e| format!("open: writable: {e}"))?;
    compare(case, &image).map_err(|e| format!("after writable open: {e}"))?;
    let cs = case.config.opts.cluster_size;
    let (region, _) =
        case.config.layout.regions[case.state_seed as usize % case.config.layout.regions.len()];
    let probe: Vec<u8> = (0..cs + 1000).map(|i| (i as u8) ^ 0xa5 | 1).collect();
    let at = region + 700;
    let write = image
        .write_at(&probe, at)
        .and_then(|()| image.flush())
        .map_err(|e| format!("write after crash: {e}"));
    drop(image);
    write?;
    check_clean(&mem, "after a write on the recovered image", window)?;
    let file: Arc<dyn Storage> = mem.clone();
    let image =
        Qcow2::open(file, false, &NoFiles).map_err(|e| format!("open: after write: {e}"))?;
    let mut got = vec![0u8; probe.len()];
    image
        .read_at(&mut got, at)
        .map_err(|e| format!("read after write: {e}"))?;
    if got != probe {
        return Err("read: a write after recovery did not read back".into());
    }
    Ok(())
}

/// `qemu-img check` on a state: exit 0 (clean) or 3 (leaks only) pass, and
/// exit 2 when every error is one of [`harmless_copied_mismatches`] and
/// `snapshot_window` gives the cluster size.
pub fn qemu_check(state: &[u8], snapshot_window: Option<u64>) -> Result<(), String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut file, state).map_err(|e| e.to_string())?;
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(file.path())
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let excused = |cs: u64| {
        let errors = stderr.lines().filter(|l| l.starts_with("ERROR")).count() as u64;
        errors == harmless_copied_mismatches(stderr.lines(), cs)
    };
    match out.status.code() {
        Some(0) | Some(3) => Ok(()),
        Some(2) if snapshot_window.is_some_and(excused) => Ok(()),
        code => Err(format!(
            "qemu-img check: exit {code:?}\n      {}{}",
            String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .replace('\n', "\n      "),
            stderr.trim_end()
        )),
    }
}

pub fn record_failure(stats: &mut Stats, case: &CrashCase, plan: &CrashPlan, err: String) {
    let kind: String = err.split(':').next().unwrap_or("").to_string();
    let report = format!("{}\n  {err}", case.header());
    let seen = stats.details.iter().filter(|(k, _)| *k == kind).count();
    if seen < DETAILS_PER_KIND {
        let fp = case.flush_point();
        let cs = case.config.opts.cluster_size;
        let durable = durable_end(&case.work.log, case.point);
        let list = |records: &[workload::OpRecord], first: usize| -> String {
            records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "    op {} (log {}): {}\n",
                        first + i,
                        r.start,
                        r.op.describe(cs)
                    )
                })
                .collect()
        };
        let detail = format!(
            "{report}\n  operations up to the last completed flush (log {}):\n{}  operations after it:\n{}  \
             events after the last storage flush (log {durable}):\n{}",
            fp.done,
            list(&case.work.ops[..fp.next_op], 0),
            list(case.touched(), fp.next_op),
            describe_events(&case.work.log, durable..case.point, plan)
        );
        stats.details.push((kind, detail));
    }
    stats.failures.push(first_lines(&report, 2));
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join("\n")
}

impl Stats {
    /// Records a failure of a workload itself (before any crash).
    pub fn record_live(&mut self, report: String) {
        let short = first_lines(&report, 1);
        if self.details.iter().filter(|(k, _)| k == "live").count() < DETAILS_PER_KIND {
            self.details.push(("live".into(), report));
        }
        self.failures.push(short);
    }
}

// Targeted crash regressions.

/// Runs `setup` (which must end with a flush) on a new image, then records
/// `tail`; returns the image after `setup`, the log of `tail` and the
/// image.
pub fn record_tail(
    opts: &CreateOptions,
    setup: impl FnOnce(&Qcow2),
    tail: impl FnOnce(&Qcow2),
) -> (Vec<u8>, Vec<Event>) {
    let rec = Arc::new(RecordingStorage::new());
    let file: Arc<dyn Storage> = rec.clone();
    let image = qcow::create::create(file, None, None, opts).expect("create");
    setup(&image);
    let initial = rec.start_recording();
    tail(&image);
    drop(image);
    (initial, rec.take_log())
}

/// For every crash point of `log`: lands every write issued since the last
/// flush except those into host range `skip` (the data cluster), and
/// expects each guest range of `checks` to read as its byte. Returns one
/// report per crash point where that fails.
pub fn crash_without_data_writes(
    initial: &[u8],
    log: &[Event],
    skip: Range<u64>,
    checks: &[(Range<u64>, u8)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for point in 0..=log.len() {
        let end = durable_end(log, point);
        let mut durable = initial.to_vec();
        for e in &log[..end] {
            recording::apply(&mut durable, e);
        }
        let landed = (end..point)
            .filter(|&i| match &log[i] {
                Event::Write { offset, data } => {
                    *offset + data.len() as u64 <= skip.start || *offset >= skip.end
                }
                _ => true,
            })
            .map(|i| (i, recording::Landed::Whole))
            .collect();
        let plan = CrashPlan { landed };
        let state = crash_image(&durable, log, &plan);
        let file: Arc<dyn Storage> = Arc::new(MemStorage::from_bytes(state));
        let image = Qcow2::open(file, false, &NoFiles).expect("crash state opens");
        for (range, want) in checks {
            let mut got = vec![0u8; (range.end - range.start) as usize];
            image.read_at(&mut got, range.start).expect("read");
            if let Some(i) = got.iter().position(|b| b != want) {
                failures.push(format!(
                    "crash point {point} (durable up to event {end}): guest byte {:#x} reads \
                     {:#04x}, expected {want:#04x}; events since the last flush:\n{}",
                    range.start + i as u64,
                    got[i],
                    describe_events(log, end..point, &plan)
                ));
                break;
            }
        }
    }
    failures
}

pub fn host_offset_of(image: &Qcow2, guest_offset: u64) -> u64 {
    match image.extents(guest_offset, 1).expect("extents")[0].kind {
        qcow::device::ExtentKind::Data { host_offset, .. } => host_offset,
        ref other => panic!("guest {guest_offset:#x} is not plain data: {other:?}"),
    }
}
