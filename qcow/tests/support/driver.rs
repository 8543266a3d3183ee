//! The driver of the random power-cut runs: workloads per configuration,
//! crash points per workload, every state verified, a sample through
//! qemu-img, and the summary and failure reports.

use std::process::Command;
use std::time::Instant;

use qcow::MemStorage;

use super::recording::{self, crash_image, durable_end, plan_crash, Event, Rng};
use super::verify::{self, check_clean, qemu_check, record_failure, CrashCase, Stats};
use super::workload::{self, Config, Workload};

/// An environment variable as a number (underscores allowed), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Draws `count` crash points over a log; a third of them just before a
/// flush, where the most writes are in flight.
fn crash_points(log: &[Event], count: usize, rng: &mut Rng) -> Vec<usize> {
    let flushes: Vec<usize> = (0..log.len())
        .filter(|&i| matches!(log[i], Event::Flush))
        .collect();
    let mut points: Vec<usize> = (0..count)
        .map(|_| {
            if !flushes.is_empty() && rng.chance(33) {
                flushes[rng.below(flushes.len() as u64) as usize]
            } else {
                rng.below(log.len() as u64 + 1) as usize
            }
        })
        .collect();
    points.sort_unstable();
    points
}

/// Runs the workloads of one configuration until `states` crash states
/// were checked; `qemu` of them also with qemu-img.
fn run_config(config: &Config, states: usize, qemu: usize, stats: &mut Stats) {
    let only_seed = std::env::var("QCOW_CRASH_SEED").ok();
    let workloads = states.div_ceil(config.states_per_workload);
    let qemu_stride = states.checked_div(qemu).map_or(usize::MAX, |s| s.max(1));
    let mut qemu_left = qemu;
    let mut state_index = 0usize;
    let config_hash = config.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    // Workloads that fail live yield no crash states: run more of them (up
    // to three times as many) so that the count of states holds.
    let mut checked = 0usize;
    for w in 0..workloads * 3 {
        if checked >= states {
            break;
        }
        let workload_seed = config_hash ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if only_seed
            .as_ref()
            .is_some_and(|s| *s != format!("{workload_seed:#x}") && *s != workload_seed.to_string())
        {
            state_index += config.states_per_workload;
            continue;
        }
        let work = match workload::run(
            &config.opts,
            &config.layout,
            config.mix,
            config.ops,
            workload_seed,
            config.check_every_op,
        ) {
            Ok(work) => work,
            Err(e) => {
                let report = format!(
                    "config [{}] workload seed {workload_seed:#x}: {e}",
                    config.name
                );
                stats.record_live(report);
                continue;
            }
        };
        stats.workloads += 1;
        stats.l2_writebacks +=
            l2_writebacks_between_flushes(&work, config.opts.cluster_size) as u64;
        let live = MemStorage::from_bytes(work.final_image.clone());
        if let Err(e) = check_clean(&live, "live image after the workload", None) {
            let report = format!(
                "config [{}] workload seed {workload_seed:#x}: {e}",
                config.name
            );
            stats.record_live(report);
            continue;
        }
        let mut rng = Rng::new(workload_seed ^ 0x5eed);
        let points = crash_points(&work.log, config.states_per_workload, &mut rng);
        let mut durable = work.initial.clone();
        let mut applied = 0usize;
        for (k, &point) in points.iter().enumerate() {
            let end = durable_end(&work.log, point);
            while applied < end {
                recording::apply(&mut durable, &work.log[applied]);
                applied += 1;
            }
            let state_seed = workload_seed.rotate_left(17) ^ k as u64;
            let mut state_rng = Rng::new(state_seed);
            let plan = plan_crash(&work.log, end, point, &mut state_rng);
            let state = crash_image(&durable, &work.log, &plan);
            let case = CrashCase {
                config,
                work: &work,
                workload_seed,
                state_seed,
                point,
            };
            let reopen = config.opts.lazy_refcounts || state_rng.chance(12);
            let to_qemu = qemu_left > 0 && state_index.is_multiple_of(qemu_stride);
            let qemu_copy = to_qemu.then(|| state.clone());
            stats.states += 1;
            state_index += 1;
            checked += 1;
            if let Err(e) = verify::verify(&case, state, reopen, stats) {
                record_failure(stats, &case, &plan, e);
            }
            if let Some(state) = qemu_copy {
                qemu_left -= 1;
                stats.qemu_checked += 1;
                let window = case
                    .snapshot_in_flight()
                    .then_some(config.opts.cluster_size);
                if let Err(e) = qemu_check(&state, window) {
                    record_failure(stats, &case, &plan, e);
                }
            }
        }
    }
}

/// Whether qemu-img can run; without it the qemu-img sample is skipped,
/// unless `REQUIRE_QEMU` is set (as `scripts/test.sh` does).
fn qemu_available() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok();
    if !found && std::env::var_os("REQUIRE_QEMU").is_some() {
        panic!("qemu-img is required (REQUIRE_QEMU is set) but not installed");
    }
    found
}

/// Runs `configs` (those `QCOW_CRASH_CONFIG` selects) sharing the state
/// and qemu-img budgets, prints a summary (seen with `--nocapture`) and
/// fails on any failure; returns the totals otherwise.
pub fn run_group(label: &str, configs: Vec<Config>, states_total: u64, qemu_total: u64) -> Stats {
    let started = Instant::now();
    let filter = std::env::var("QCOW_CRASH_CONFIG").ok();
    let configs: Vec<Config> = configs
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .collect();
    let mut stats = Stats::default();
    if configs.is_empty() {
        return stats;
    }
    let qemu_total = if qemu_available() { qemu_total } else { 0 };
    let per_config = (states_total as usize).div_ceil(configs.len());
    let qemu_per_config = (qemu_total as usize).div_ceil(configs.len());
    for config in &configs {
        run_config(config, per_config, qemu_per_config, &mut stats);
    }
    eprintln!(
        "crash [{label}]: {} configs, {} workloads, {} crash states ({} with leaks, {} reopened \
         for writing), {} qemu-img checked, {} stale sectors, {} L2 write-backs between flushes, {} failures, \
         {:.1}s",
        configs.len(),
        stats.workloads,
        stats.states,
        stats.states_with_leaks,
        stats.writable_reopens,
        stats.qemu_checked,
        stats.stale_sectors,
        stats.l2_writebacks,
        stats.failures.len(),
        started.elapsed().as_secs_f64()
    );
    if stats.failures.is_empty() {
        return stats;
    }
    for (_, detail) in &stats.details {
        eprintln!("\nFAILURE:\n{detail}");
    }
    eprintln!("\nALL FAILURES (up to 40):");
    for f in stats.failures.iter().take(40) {
        eprintln!("{f}");
    }
    panic!(
        "[{label}] {} of {} crash states or workloads failed; replay one with \
         QCOW_CRASH_CONFIG=<config> QCOW_CRASH_SEED=<workload seed>",
        stats.failures.len(),
        stats.states
    );
}

/// L2 tables written back between flushes (cache evictions): writes of a
/// whole L2 table of the final image, issued by an operation other than a
/// flush.
fn l2_writebacks_between_flushes(work: &Workload, cluster_size: u64) -> usize {
    let image = &work.final_image;
    let be64 = |at: usize| u64::from_be_bytes(image[at..at + 8].try_into().expect("8 bytes"));
    let l1_size = u32::from_be_bytes(image[36..40].try_into().expect("4 bytes")) as usize;
    let l1_offset = be64(40) as usize;
    let tables: Vec<u64> = (0..l1_size)
        .map(|i| be64(l1_offset + i * 8) & 0x00ff_ffff_ffff_fe00)
        .filter(|&o| o != 0)
        .collect();
    let mut count = 0;
    for (i, r) in work.ops.iter().enumerate() {
        if matches!(r.op, workload::Op::Flush) {
            continue;
        }
        let end = work.ops.get(i + 1).map_or(work.log.len(), |n| n.start);
        count += work.log[r.start..end]
            .iter()
            .filter(|e| {
                matches!(e, Event::Write { offset, data }
                    if data.len() as u64 == cluster_size && tables.contains(offset))
            })
            .count();
    }
    count
}
