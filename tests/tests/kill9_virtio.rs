//! kill -9 harness through the virtio-blk device: a child process
//! (`virtio_writer`) opens a qcow2 image with blockdev's io_uring backend
//! (`cache=none`, `writeback`, `writethrough` and `directsync` in turn),
//! puts the virtio-blk device model
//! in front of it and drives it as a guest does, through a split ring in
//! guest memory: seeded OUT requests (one to eight data descriptors of any
//! length and alignment, within a cluster or across several), WRITE_ZEROES
//! with and without UNMAP and DISCARD (one to three segments each), and
//! FLUSH, up to 4, 16 or 32 in flight. It logs `start N` before request N
//! goes on the available ring, and `completed N` (`flushed N` for a flush)
//! once it popped N from the used ring with status OK. The parent kills it
//! with SIGKILL at a random moment after its first flush completed.
//!
//! The rule for the contents, from virtio's semantics (a FLUSH makes
//! durable the writes that completed before it was submitted; a request
//! in flight may or may not have happened, in part, when the guest dies):
//! let F be the last flush logged `flushed`, D the requests logged
//! `completed` (or `flushed`) before `start F` in the log, and U every
//! other request logged `start` (in flight when F was submitted, or
//! started after it, completed or not). The child never has two requests
//! touching the same byte in flight at once, so the requests of D that
//! overlap are ordered by their index. Then every guest byte must read as
//! - the model: the contents the round began with, with the requests of
//!   D applied in index order (a write's data, zero for write-zeroes, zero
//!   for the whole clusters inside a discarded range; the partial clusters
//!   at a discard's ends keep their data, as the qcow library discards
//!   whole clusters only), or
//! - the value some request of U gives that byte.
//!
//! With `writethrough` and `directsync` a write completes only once it is
//! durable, so every OUT request logged `completed`, wherever its line
//! is, belongs to D too.
//!
//! Nothing older than the model and nothing never written there is
//! accepted. (Our backend's flush also waits for the writes pushed before
//! it, so it covers more than D; the rule does not count on that.)
//!
//! Then, as in `kill9.rs`: the image opens with our library; with lazy
//! refcounts it is first opened for writing (which repairs); `qemu-img
//! check` finds no corruption (exit 0 or 3: leaks are allowed); `img check
//! -r leaks` repairs, after which `img check` and `qemu-img check` are both
//! clean; qemu reads the same contents as we do (`qemu-img convert -O
//! raw`), and so do we after the repair.
//!
//! A trial runs one to three rounds on the same image, each one a child
//! killed and checked; the next child reopens what the last one left,
//! starting from the contents the last check read. Configurations cycle
//! through cluster sizes (512, 4k, 64k), refcount widths (1, 8, 16, 64),
//! lazy refcounts on and off, extended L2 and compat=0.10, images created
//! by our library or by qemu-img, and queue depths 4, 16 and 32.
//!
//! Every other trial gives the device two queues, and the writer sends
//! each request to a random one, running them all from one thread as the
//! VMM's device loop does; `QCOW_KILL9_VIRTIO_QUEUES=Q` gives every trial Q
//! queues instead.
//!
//! Environment: `QCOW_KILL9_VIRTIO_TRIALS=N` (default 50),
//! `QCOW_KILL9_VIRTIO_SEED=S` to start from another seed (a failure prints
//! the trial's seed; rerun it with `QCOW_KILL9_VIRTIO_SEED=<seed>
//! QCOW_KILL9_VIRTIO_TRIALS=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::crash::{
    check_active, check_and_repair, env_u64, exit_code, read_all, read_qcow2, run_and_kill,
    scratch_dir, whole_lines, ImageConfig, RoundOps,
};
use integration_tests::virtio_workload::{RequestKind, VirtioWorkload};
use integration_tests::workload::mix;
use integration_tests::{qemu_img, require_qemu};
use qcow::create::CreateOptions;
use qcow::{FileStorage, Storage};

/// The writer's cache modes, as QEMU spells them.
const CACHE_MODES: [&str; 4] = ["none", "writeback", "writethrough", "directsync"];

/// Whether a cache mode completes a write only once it is durable.
fn write_through(cache: &str) -> bool {
    matches!(cache, "writethrough" | "directsync")
}

/// The trial's image and writer configuration.
#[derive(Debug, Clone)]
struct Config {
    image: ImageConfig,
    rounds: u32,
    /// Requests the writer keeps in flight.
    depth: u32,
    /// Device queues (`QCOW_KILL9_VIRTIO_QUEUES`).
    queues: u64,
    /// The cache mode of the first round (an index into [`CACHE_MODES`];
    /// the next rounds take the next ones).
    first_cache: usize,
}

impl Config {
    fn pick(seed: u64) -> Config {
        let r = |i: u64| mix(seed ^ (i << 32));
        Config {
            image: ImageConfig::pick(seed, [256 << 10, 3 << 20, 6 << 20]),
            rounds: 1 + (r(7) % 3) as u32,
            depth: [4, 16, 32][(r(8) % 3) as usize],
            queues: env_u64("QCOW_KILL9_VIRTIO_QUEUES", 1 + r(10) % 2),
            first_cache: (r(9) % CACHE_MODES.len() as u64) as usize,
        }
    }

    fn cache(&self, round: u32) -> &'static str {
        CACHE_MODES[(self.first_cache + round as usize - 1) % CACHE_MODES.len()]
    }

    fn create(&self, path: &Path) -> Result<(), String> {
        let p = path.to_str().ok_or("path is not UTF-8")?;
        if self.image.by_qemu {
            let (code, text) = exit_code(&mut qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &self.image.qemu_options(),
                p,
                &self.image.size.to_string(),
            ]));
            return if code == 0 {
                Ok(())
            } else {
                Err(format!("qemu-img create: {text}"))
            };
        }
        let opts = CreateOptions {
            size: self.image.size,
            cluster_size: self.image.cluster_size,
            refcount_bits: self.image.refcount_bits,
            lazy_refcounts: self.image.lazy,
            extended_l2: self.image.extended_l2,
            version: self.image.version,
            ..CreateOptions::default()
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("creating {p}: {e}"))?;
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
        let image = qcow::create::create(storage, None, None, &opts)
            .map_err(|e| format!("creating {p} with our library: {e}"))?;
        image.flush().map_err(|e| format!("flushing {p}: {e}"))
    }
}

/// What the child's log says, in its order.
#[derive(Debug, Default)]
struct Progress {
    /// Line number of each `start N`.
    started: BTreeMap<u64, usize>,
    /// Line number of each `completed N` or `flushed N`.
    completed: BTreeMap<u64, usize>,
    /// The last flush logged `flushed`.
    last_flushed: Option<u64>,
    ended: bool,
}

impl Progress {
    fn read(text: &str) -> Progress {
        let mut p = Progress::default();
        for (line_number, line) in whole_lines(text).enumerate() {
            let (what, arg) = line.split_once(' ').unwrap_or((line, ""));
            let index = arg.parse::<u64>().ok();
            match (what, index) {
                ("start", Some(n)) => {
                    p.started.entry(n).or_insert(line_number);
                }
                ("completed", Some(n)) => {
                    p.completed.entry(n).or_insert(line_number);
                }
                ("flushed", Some(n)) => {
                    p.completed.entry(n).or_insert(line_number);
                    p.last_flushed = Some(n);
                }
                ("end", _) => p.ended = true,
                _ => {}
            }
        }
        p
    }
}

/// Statistics over all trials.
#[derive(Default, Debug)]
struct Stats {
    trials: u64,
    rounds: u64,
    /// Rounds with each of [`CACHE_MODES`].
    cache_rounds: [u64; CACHE_MODES.len()],
    requests_started: u64,
    requests_completed: u64,
    /// Requests in D (completed before the last flush was submitted, or
    /// write-through OUT requests completed).
    covered: u64,
    /// Requests of U (not covered).
    uncertain: u64,
    /// Requests of U started before the last flush (in flight when it was
    /// submitted).
    in_flight_at_flush: u64,
    /// Requests started and not completed when the child was killed.
    in_flight_at_kill: u64,
    /// Guest bytes that read as a value of U rather than the model.
    bytes_from_uncertain: u64,
    /// Rounds whose contents also pass the stricter rule of our backend's
    /// contract (a flush covers every request pushed before it).
    strict_rounds: u64,
}

/// Rule for the contents (see the file's comment), then the checks.
fn verify_round(
    path: &Path,
    cfg: &Config,
    seed: u64,
    round: u32,
    known: &[u8],
    progress: &Progress,
    stats: &mut Stats,
) -> Result<Vec<u8>, String> {
    let cs = cfg.image.cluster_size;
    let flushed = progress.last_flushed.ok_or("no flush logged")?;
    let flush_line = *progress
        .started
        .get(&flushed)
        .ok_or("the last flush has no start line")?;
    let last_started = *progress.started.keys().last().ok_or("nothing started")?;
    let mut covered: BTreeSet<u64> = progress
        .completed
        .iter()
        .filter(|&(_, &line)| line < flush_line)
        .map(|(&n, _)| n)
        .collect();
    let mut workload = VirtioWorkload::new(seed, round, cs, cfg.image.size);
    if write_through(cfg.cache(round)) {
        let mut stream = VirtioWorkload::new(seed, round, cs, cfg.image.size);
        for index in 0..=last_started {
            let request = stream.next_request();
            if matches!(request.kind, RequestKind::Out { .. })
                && progress.completed.contains_key(&index)
            {
                covered.insert(index);
            }
        }
    }
    let mut model = known.to_vec();
    let mut uncertain = RoundOps {
        seed,
        round,
        ops: Vec::new(),
    };
    // The stricter rule: everything started before F is covered.
    let mut strict_model = known.to_vec();
    let mut strict_uncertain = RoundOps {
        seed,
        round,
        ops: Vec::new(),
    };
    for index in 0..=last_started {
        let request = workload.next_request();
        if request.index != index || !progress.started.contains_key(&index) {
            return Err(format!("request {index} was not logged as started"));
        }
        if index < flushed {
            for op in request.effects() {
                op.apply(seed, round, index, cs, &mut strict_model);
            }
        } else {
            strict_uncertain
                .ops
                .extend(request.effects().into_iter().map(|op| (index, op)));
        }
        if covered.contains(&index) {
            for op in request.effects() {
                op.apply(seed, round, index, cs, &mut model);
            }
        } else {
            stats.uncertain += 1;
            if index < flushed {
                stats.in_flight_at_flush += 1;
            }
            uncertain
                .ops
                .extend(request.effects().into_iter().map(|op| (index, op)));
        }
    }
    stats.requests_started += last_started + 1;
    stats.requests_completed += progress.completed.len() as u64;
    stats.covered += covered.len() as u64;
    stats.in_flight_at_kill += last_started + 1 - progress.completed.len() as u64;
    let active = read_all(&read_qcow2(path)?)?;
    check_active(&active, &model, &uncertain, cs).map_err(|e| format!("active disk: {e}"))?;
    stats.bytes_from_uncertain += active.iter().zip(&model).filter(|(a, m)| a != m).count() as u64;
    stats.strict_rounds +=
        u64::from(check_active(&active, &strict_model, &strict_uncertain, cs).is_ok());
    check_and_repair(path, cfg.image.lazy, &active, &|_, _| false)?;
    Ok(active)
}

fn spawn_writer(path: &Path, log: &Path, seed: u64, round: u32, cfg: &Config) -> Child {
    Command::new(env!("CARGO_BIN_EXE_virtio_writer"))
        .arg(path)
        .arg(log)
        .arg(seed.to_string())
        .arg(round.to_string())
        .arg(cfg.cache(round))
        .arg(cfg.depth.to_string())
        .arg("1000000")
        .arg(cfg.queues.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn virtio_writer")
}

fn trial(dir: &Path, seed: u64, stats: &mut Stats) -> Result<(), String> {
    let cfg = Config::pick(seed);
    let path = dir.join(format!("v{seed:016x}.qcow2"));
    cfg.create(&path)?;
    let mut known = vec![0u8; cfg.image.size as usize];
    for round in 1..=cfg.rounds {
        let log = dir.join(format!("v{seed:016x}-r{round}.log"));
        let delay = Duration::from_micros(mix(seed ^ u64::from(round) << 8) % 60_000);
        let child = spawn_writer(&path, &log, seed, round, &cfg);
        let text = run_and_kill(child, &log, delay, "end")
            .map_err(|e| format!("round {round} ({}): {e}", cfg.cache(round)))?;
        let progress = Progress::read(&text);
        stats.rounds += 1;
        stats.cache_rounds[(cfg.first_cache + round as usize - 1) % CACHE_MODES.len()] += 1;
        known = verify_round(&path, &cfg, seed, round, &known, &progress, stats).map_err(|e| {
            format!(
                "round {round} ({}, F={:?}, L={:?}, ended: {}): {e}",
                cfg.cache(round),
                progress.last_flushed,
                progress.started.keys().last(),
                progress.ended,
            )
        })?;
        let _ = std::fs::remove_file(&log);
    }
    stats.trials += 1;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[test]
fn kill9_through_virtio_blk_leaves_a_consistent_image() {
    require_qemu!();
    let trials = env_u64("QCOW_KILL9_VIRTIO_TRIALS", 50);
    let base = env_u64("QCOW_KILL9_VIRTIO_SEED", 0x7669_7274);
    let dir = scratch_dir();
    let mut stats = Stats::default();
    let started = Instant::now();
    for t in 0..trials {
        let seed = if trials == 1 { base } else { mix(base ^ t) };
        if let Err(e) = trial(dir.path(), seed, &mut stats) {
            panic!(
                "virtio kill -9 trial {t} failed: {e}\nconfiguration: {:?}\nrerun alone with \
                 QCOW_KILL9_VIRTIO_SEED={seed} QCOW_KILL9_VIRTIO_TRIALS=1",
                Config::pick(seed)
            );
        }
    }
    eprintln!(
        "virtio kill -9: {} trials, {} rounds (cache {:?}: {:?}), {} requests started, {} \
         completed, {} covered (by the last flush, or completed write-through writes), {} \
         not ({} of them in flight when the flush was submitted), {} in flight at the kill, {} bytes read a value of an uncovered request, \
         {} rounds also passed the stricter rule (a flush covers every request started before \
         it), {:.1} s",
        stats.trials,
        stats.rounds,
        CACHE_MODES,
        stats.cache_rounds,
        stats.requests_started,
        stats.requests_completed,
        stats.covered,
        stats.uncertain,
        stats.in_flight_at_flush,
        stats.in_flight_at_kill,
        stats.bytes_from_uncertain,
        stats.strict_rounds,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats.trials, trials);
}

/// Regression: with several queues served from one thread, as the VMM's
/// device loop serves them, a queue that held no write plan of its own
/// started a qcow2 write, discard or write-zeroes on clusters another
/// queue's unfinished write held by blocking in the qcow2 library
/// (`Qcow2::begin_write`, `discard`, `write_zeroes` wait in
/// `wait_not_inflight`) — but only this same thread could reap the other
/// queue's completion and finish that write, so it waited forever. Found
/// by `QCOW_KILL9_VIRTIO_QUEUES=2`; the writer's watchdog turns a hang into
/// exit status 3. Each run below hung about every other time (64k
/// clusters, 1 MiB disk, depth 32, seed 42) until the backend parked such
/// requests and had the holder's queue wake the parked one.
#[test]
fn two_queues_on_one_thread_make_progress() {
    require_qemu!();
    let dir = scratch_dir();
    for round in 1..=8u32 {
        let path = dir.path().join(format!("mq{round}.qcow2"));
        let log = dir.path().join(format!("mq{round}.log"));
        let p = path.to_str().expect("UTF-8 path");
        let (code, text) = exit_code(&mut qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            p,
            "1M",
        ]));
        assert_eq!(code, 0, "qemu-img create: {text}");
        let out = Command::new(env!("CARGO_BIN_EXE_virtio_writer"))
            .arg(&path)
            .arg(&log)
            .args(["42", &round.to_string(), "writeback", "32", "3000", "2"])
            .output()
            .expect("run virtio_writer");
        assert!(
            out.status.success(),
            "round {round}: the writer {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
