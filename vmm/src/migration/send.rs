//! The source of a migration: connect, send the configuration, a full
//! pass of RAM (zero pages skipped: the destination's RAM starts zeroed),
//! dirty passes until the estimated downtime (dirty bytes over the
//! measured bandwidth) is under the target or the timeout strikes, then
//! flush the disks (the guest still running), pause, the last pass, the
//! machine's state, flush the disks written since and let go of their
//! locks, the switch; on the destination's Ready, Commit; its Resumed
//! ends the downtime. The dirty log is turned off only after the Commit
//! (on success the VM is abandoned and KVM's log is left on).
//!
//! Whatever fails, [`send`] puts the VM back as it was (locks taken
//! again, running again if it ran) before it returns the error.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmapi::MigrationUrl;

use super::dirty::{DirtyLog, DirtyRegion};
use super::resumed::{Committed, ResumedWatch};
use super::sched::{RealtimeBoost, ThreadClock, WindowClocks};
use super::storage::StorageMode;
use super::storage_send;
use super::stream::{self, Tag, PAGE};
use super::transport::{self, Connection};
use super::{MigrationError, Result};
use crate::vm::Vm;

/// Pages in one RAM frame at most (1 MiB).
const RUN_PAGES: u64 = 256;
/// Dirty passes at most before the timeout decides.
const MAX_PASSES: u32 = 10_000;
/// What is left for the paused pass without trying another live one.
const SMALL_LAST: u64 = 256 << 10;
/// Live passes at most once the estimate is under the target.
const MAX_PASSES_UNDER_TARGET: u32 = 8;
/// The longest the pause waits for a moment with no disk request in
/// flight (a guest's flush takes 2-30 ms here): a guest that keeps
/// requests in flight is paused after it, and its drain is in the window.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// What the caller asks of a migration.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Where the destination listens.
    pub url: MigrationUrl,
    /// The longest pause aimed for.
    pub downtime: Duration,
    /// The longest the whole migration may take.
    pub timeout: Duration,
    /// Whether the guest runs here (it is paused for the last pass).
    pub running: bool,
    /// Whether the guest is to run at the destination (it runs here and
    /// was not asked to stay paused there).
    pub resume: bool,
    /// Text for the destination's manager.
    pub annotation: String,
    /// Whether the disks travel too.
    pub storage: StorageMode,
}

/// What a migration measured.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    /// From the connection to the Commit sent.
    pub total: Duration,
    /// From the pause here to the guest's resume at the destination (its
    /// Resumed heard, [`Committed::hear_resumed`]; to the Commit sent
    /// until then, or when it was not heard).
    pub downtime: Duration,
    /// From the pause to the last byte of state sent (the Switch): what
    /// QEMU's `info migrate` reports as its downtime.
    pub downtime_sent: Duration,
    /// Whether the destination's Resumed was heard.
    pub resumed_heard: bool,
    /// The disks' flush while the guest still ran, before the pause.
    pub flush_before_pause: Duration,
    /// The wait for no disk request in flight, just before the pause.
    pub idle_wait: Duration,
    /// Whether that moment came within 100 ms (`IDLE_WAIT`; true when paused
    /// already).
    pub idle_seen: bool,
    /// RAM passes (the full one, the dirty ones and the last).
    pub passes: u32,
    /// Bytes of RAM sent.
    pub ram_bytes: u64,
    /// The full pass.
    pub full_pass: Duration,
    /// Bytes of disk data and zeroes sent (copied storage).
    pub disk_bytes: u64,
    /// Where the downtime went.
    pub paused: PausedPhases,
}

/// The paused window, phase by phase (each from the end of the last; the
/// first from the pause's start).
#[derive(Debug, Clone, Default)]
pub struct PausedPhases {
    /// Taking the vCPUs out of the guest.
    pub pause: Duration,
    /// The kicks that took and when the last vCPU left the guest.
    pub vcpus_out: Option<crate::vcpu_pause_times::PauseTimes>,
    /// Waiting for the disks' requests in flight (a guest's flush among
    /// them), stopping their queues and taking the devices' queue
    /// positions (one round trip to the device thread).
    pub drain: Duration,
    /// The last dirty pass (RAM, then the disks' last changes).
    pub last_pass: Duration,
    /// Collecting the vCPUs' and KVM's state and the devices' (their
    /// queue positions as the drain took them): waiting for the vCPUs'
    /// own reads of their state, then their LAPICs and KVM's VM-wide state.
    pub state: Duration,
    /// How long each vCPU's thread took to read its own state as it left
    /// the guest (from the end of the pause on, beside the drain and the
    /// last pass), by vCPU.
    pub captures: Vec<Duration>,
    /// Encoding and writing the state.
    pub send: Duration,
    /// Flushing the disks written since the flush before the pause, and
    /// letting go of the locks.
    pub flush: Duration,
    /// How many disks that flushed, of how many.
    pub flushed_disks: (usize, usize),
    /// Writing the Switch frame and flushing the stream into the socket
    /// (the end of QEMU's measure).
    pub switch: Duration,
    /// From the switch to the destination's Ready (its disks opened, its
    /// devices wired and its state set).
    pub destination: Duration,
    /// Sending the Commit.
    pub commit: Duration,
    /// From the Commit to the destination's Resumed.
    pub resumed: Duration,
    /// How many of the window's threads ran in the real-time class.
    pub boosted: usize,
    /// Why a thread could not be raised to it, if one could not.
    pub boost_refused: Option<String>,
    /// Each thread's time waiting for a CPU and on one, from the pause
    /// to the state sent: the controller (this thread), the vCPUs and
    /// the device thread.
    pub scheduling: Vec<(String, super::sched::SchedTimes)>,
}

impl std::fmt::Display for PausedPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "pause {:.2} ms{}, drain {:.2} ms, last pass {:.2} ms, state {:.2} ms (the vCPUs' own reads {}), send {:.2} ms, flush {:.2} ms ({} of {} disks), switch {:.2} ms, destination {:.1} ms, commit {:.1} ms, resumed {:.1} ms",
            ms(self.pause),
            self.vcpus_out
                .map_or(String::new(), |times| format!(" ({times})")),
            ms(self.drain),
            ms(self.last_pass),
            ms(self.state),
            if self.captures.is_empty() {
                "none".to_string()
            } else {
                self.captures
                    .iter()
                    .map(|&d| format!("{:.2}", ms(d)))
                    .collect::<Vec<_>>()
                    .join("/")
                    + " ms"
            },
            ms(self.send),
            ms(self.flush),
            self.flushed_disks.0,
            self.flushed_disks.1,
            ms(self.switch),
            ms(self.destination),
            ms(self.commit),
            ms(self.resumed)
        )?;
        write!(f, "; {} threads real-time", self.boosted)?;
        if let Some(refused) = &self.boost_refused {
            write!(f, " (refused: {refused})")?;
        }
        if !self.scheduling.is_empty() {
            write!(
                f,
                "; to the state sent: {}",
                super::sched::describe(&self.scheduling)
            )?;
        }
        Ok(())
    }
}

/// Where the source stands, for putting it back after a failure.
#[derive(Default)]
struct Progress {
    paused: bool,
    unlocked: bool,
}

/// Migrates `vm` (described by `config_json`, the API's VmConfig) to
/// `options.url`. On success the guest runs at the destination (or is
/// about to: [`Committed`]) and `vm` must be abandoned ([`Vm::abandon`]);
/// on failure `vm` is as it was.
pub fn send(vm: &mut Vm, config_json: &[u8], options: &SendOptions) -> Result<Committed> {
    let mut progress = Progress::default();
    // The first pass reads all of RAM: a lazy load finishes first.
    vm.settle_ram();
    let result = run(vm, config_json, options, &mut progress);
    if result.is_err() {
        if progress.unlocked {
            if let Err(e) = vm.retake_locks() {
                eprintln!("vmm: after the failed migration: {e}");
            }
        }
        if progress.paused {
            vm.resume();
        }
    }
    result
}

fn run(
    vm: &mut Vm,
    config_json: &[u8],
    options: &SendOptions,
    progress: &mut Progress,
) -> Result<Committed> {
    let started = Instant::now();
    let connection = transport::connect(&options.url)?;
    let mut reader = connection
        .try_clone()
        .map_err(MigrationError::io("cloning the connection"))?;
    let result = exchange(
        vm,
        config_json,
        options,
        progress,
        &connection,
        &mut reader,
        started,
    );
    match result {
        Ok((report, switch)) => Ok(Committed::new(
            report,
            options.url.clone(),
            switch.paused_at,
            switch.resumed,
        )),
        Err(e) => {
            // Tell the destination at once (it may be blocked reading).
            connection.shutdown();
            Err(e)
        }
    }
}

/// The switch, committed.
struct Switch {
    /// When the pause started.
    paused_at: Instant,
    /// The watch for the destination's Resumed, under way.
    resumed: std::thread::JoinHandle<Option<Instant>>,
}

pub(super) fn write_err(e: std::io::Error) -> MigrationError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    ) {
        MigrationError::Closed {
            during: "sending to the destination",
        }
    } else {
        MigrationError::io("sending to the destination")(e)
    }
}

fn expect_reply(reader: &mut Connection, offset: &mut u64, wanted: Tag) -> Result<()> {
    let frame = stream::read_frame(reader, offset)?;
    match frame.tag {
        t if t == wanted => Ok(()),
        Tag::Refused => Err(MigrationError::Refused(stream::reason_of(&frame))),
        other => Err(MigrationError::Stream(format!(
            "the destination answered {} where {} was due",
            other.name(),
            wanted.name()
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn exchange(
    vm: &mut Vm,
    config_json: &[u8],
    options: &SendOptions,
    progress: &mut Progress,
    connection: &Connection,
    reader: &mut Connection,
    started: Instant,
) -> Result<(SendReport, Switch)> {
    let mut out = BufWriter::with_capacity(
        2 << 20,
        connection
            .try_clone()
            .map_err(MigrationError::io("cloning the connection"))?,
    );
    let mut offset = 0u64;
    let (plan, mut storage) = storage_send::plan(vm, options.storage)?;
    stream::write_header(&mut out).map_err(write_err)?;
    stream::write_frame(&mut out, Tag::Config, &[config_json]).map_err(write_err)?;
    stream::write_frame(&mut out, Tag::Annotation, &[options.annotation.as_bytes()])
        .map_err(write_err)?;
    stream::write_frame(&mut out, Tag::Storage, &[&plan.to_json()]).map_err(write_err)?;
    out.flush().map_err(write_err)?;
    expect_reply(reader, &mut offset, Tag::Ack)?;

    let mut report = SendReport::default();
    // The disks first (the guest's changes to them tracked from before
    // the first read), then RAM.
    if let Some(storage) = storage.as_mut() {
        storage.start();
        report.disk_bytes += storage.full_copy(&mut out)?;
    }
    // The dirty log stays on until after the Commit (or the failure):
    // turning it off re-registers every slot, which has no place in the
    // paused window.
    let log = DirtyLog::start(vm)?;
    let mut link = Link {
        out: &mut out,
        reader,
        offset: &mut offset,
    };
    let result = precopy_and_switch(
        vm,
        &log,
        &mut storage,
        options,
        progress,
        &mut link,
        started,
        &mut report,
    );
    match result {
        Ok(switch) => {
            log.abandon();
            Ok((report, switch))
        }
        Err(e) => {
            log.stop(vm);
            Err(e)
        }
    }
}

/// The connection's two directions, and the offset of the next frame read.
struct Link<'l> {
    out: &'l mut BufWriter<Connection>,
    reader: &'l mut Connection,
    offset: &'l mut u64,
}

/// The dirty passes, the pause, the last pass, the state, the switch and
/// the Commit; fills `report`.
#[allow(clippy::too_many_arguments)]
fn precopy_and_switch(
    vm: &mut Vm,
    log: &DirtyLog,
    storage: &mut Option<storage_send::StorageSource>,
    options: &SendOptions,
    progress: &mut Progress,
    link: &mut Link<'_>,
    started: Instant,
    report: &mut SendReport,
) -> Result<Switch> {
    let disk_dirty = |storage: &Option<storage_send::StorageSource>| {
        storage.as_ref().map_or(0, |s| s.dirty_bytes())
    };
    // Waits, from now on, to time the destination's Resumed as it comes
    // (started here, long before the pause, so that its start does not
    // compete with the paused window's threads).
    let resumed = ResumedWatch::spawn()?;
    // The vCPU threads' stack and heap touched now, for the state each
    // reads as it leaves the guest in the window.
    if options.running {
        vm.warm_vcpu_threads();
    }
    let mut sender = RamSender {
        vm,
        out: &mut *link.out,
        buffer: vec![0u8; (RUN_PAGES * PAGE) as usize],
    };
    // The full pass.
    let pass_start = Instant::now();
    let sent = sender.full_pass()?;
    report.full_pass = pass_start.elapsed();
    report.ram_bytes += sent;
    report.passes = 1;
    let mut bandwidth = rate(sent, pass_start.elapsed());
    // Dirty passes until the rest fits in the downtime.
    let mut pending = log.collect(sender.vm)?;
    // Under the target, passes go on while they still shrink what is
    // left (by a tenth at least), so that the pause carries the least
    // a guest dirtying at a steady rate allows, not merely what fits
    // in the target.
    let mut previous = u64::MAX;
    let mut under_target = 0;
    loop {
        let dirty = dirty_bytes(&pending) + disk_dirty(storage);
        let estimate = Duration::from_secs_f64(dirty as f64 / bandwidth);
        let settled = dirty <= SMALL_LAST
            || dirty.saturating_mul(10) >= previous.saturating_mul(9)
            || under_target >= MAX_PASSES_UNDER_TARGET;
        if (estimate <= options.downtime && settled) || report.passes >= MAX_PASSES {
            break;
        }
        if estimate <= options.downtime {
            under_target += 1;
        }
        previous = dirty;
        if started.elapsed() >= options.timeout {
            return Err(MigrationError::Timeout {
                seconds: options.timeout.as_secs(),
                dirty_mib: dirty >> 20,
                estimate_ms: estimate.as_millis() as u64,
                target_ms: options.downtime.as_millis() as u64,
            });
        }
        let pass_start = Instant::now();
        let ram = sender.dirty_pass(&pending)?;
        report.ram_bytes += ram;
        let mut sent = ram;
        if let Some(storage) = storage.as_mut() {
            let disk = storage.dirty_pass(sender.out)?;
            report.disk_bytes += disk;
            sent += disk;
        }
        sender.out.flush().map_err(write_err)?;
        report.passes += 1;
        // The bandwidth of this pass, smoothed with the last.
        bandwidth = (bandwidth + rate(sent, pass_start.elapsed())) / 2.0;
        pending = log.collect(sender.vm)?;
    }
    // Pause, and the last pass: what was pending and what changed
    // since, the devices' pages (written until their queues drained)
    // included.
    let controller = ThreadClock::current("controller");
    let vcpus = ThreadClock::named("vcpu");
    let devices = ThreadClock::named(crate::vm::DEVICE_THREAD);
    let tids = |clocks: &[ThreadClock]| clocks.iter().map(|c| c.tid).collect::<Vec<_>>();
    let (controller_tid, vcpu_tids, device_tids) = (
        controller.as_ref().map(|c| c.tid),
        tids(&vcpus),
        tids(&devices),
    );
    let thread_clocks: Vec<ThreadClock> =
        controller.into_iter().chain(vcpus).chain(devices).collect();
    // The window's threads' policies read now, to put them back after:
    // raising each is then one system call.
    let mut boost = RealtimeBoost::new();
    for &tid in controller_tid.iter().chain(&vcpu_tids).chain(&device_tids) {
        boost.prepare(tid);
    }
    // The window's threads raised now, ahead of the disks' flush below
    // (a millisecond or more) and the pause: a thread raised just before
    // the pause that was waiting for a CPU then still had to be put on
    // one (0.16-0.18 ms in 3 of 40 migrations measured), in the window;
    // raised here it is on a CPU, its guest running, when the kick comes.
    // (A vCPU waiting for a CPU is the pause's whole tail on this host:
    // see README, `bench/migrate.sh`.)
    let window_threads = controller_tid.iter().chain(&device_tids).chain(&vcpu_tids);
    report.paused.boosted = window_threads.filter(|&&tid| boost.raise(tid)).count();
    // The disks flushed while the guest still runs: at the switch only
    // those written since need another flush.
    let flush_start = Instant::now();
    let flushed = DiskFlush::before_pause(sender.vm)?;
    report.flush_before_pause = flush_start.elapsed();
    // This thread's stack and heap touched, for the window's buffers.
    super::prefault::warm_thread();
    // The vCPUs' capture made ahead (see the pause below).
    let ready_capture = sender.vm.vcpu_capture();
    // The window opens when no disk request is in flight, so that it
    // does not wait in the drain for a guest's flush (bounded: a guest
    // that keeps requests in flight still migrates).
    let idle_start = Instant::now();
    report.idle_seen = !options.running || sender.vm.wait_for_idle_disks(IDLE_WAIT);
    report.idle_wait = idle_start.elapsed();
    let clocks = WindowClocks::start(thread_clocks);
    let paused_at = Instant::now();
    let mut mark = paused_at;
    let mut lap = || {
        let now = Instant::now();
        let took = now - mark;
        mark = now;
        took
    };
    // The window's threads run ahead of the host's time-shared ones
    // until their part is done: the vCPUs (which read their own state
    // on their way out of the guest) and the device thread (which
    // drains the queues, then answers for the devices' state) to the
    // switch sent, and this one to the Commit sent (the destination
    // resumes on it).
    // Each vCPU reads its own state as it leaves the guest (its LAPIC
    // aside), on its own thread while this one drains the devices and
    // sends the last pass; it stays real-time until the switch is sent.
    let mut capture = None;
    if options.running {
        progress.paused = true;
        if let Some(ahead) = &ready_capture {
            sender
                .vm
                .pause_vcpus_capturing(ahead)
                .map_err(MigrationError::Vm)?;
            capture = ready_capture;
        } else {
            sender.vm.pause_vcpus().map_err(MigrationError::Vm)?;
        }
        report.paused.pause = lap();
        report.paused.vcpus_out = sender.vm.last_pause();
    }
    // The queues drained (already, when paused before) and the devices'
    // queue positions and held state taken in one round trip to the
    // device thread: they do not move until a resume.
    let devices = sender.vm.drain_and_collect().map_err(MigrationError::Vm)?;
    report.paused.drain = lap();
    let last = log.collect(sender.vm)?;
    let merged = merge(&pending, &last);
    report.ram_bytes += sender.dirty_pass(&merged)?;
    if let Some(storage) = storage.as_mut() {
        // The queues are drained: these are the disks' last changes.
        report.disk_bytes += storage.dirty_pass(sender.out)?;
    }
    report.passes += 1;
    // Into the socket now, while the vCPUs may still be reading their
    // state: the switch then writes only the state.
    sender.out.flush().map_err(write_err)?;
    report.paused.last_pass = lap();
    let (machine, captures) = sender
        .vm
        .save_machine_collected(devices, capture.as_deref())?;
    report.paused.captures = captures;
    report.paused.state = lap();
    let bytes = machine.to_bytes()?;
    stream::write_frame(link.out, Tag::Machine, &[&bytes]).map_err(write_err)?;
    report.paused.send = lap();
    // The switch: the disks written since the flush above flushed again,
    // and every lock let go of, for the destination to take.
    let (again, disks) = flushed.at_switch(vm)?;
    report.paused.flushed_disks = (again, disks);
    vm.release_locks();
    progress.unlocked = true;
    report.paused.flush = lap();
    stream::write_frame(link.out, Tag::Switch, &[&[u8::from(options.resume)]])
        .map_err(write_err)?;
    link.out.flush().map_err(write_err)?;
    report.downtime_sent = paused_at.elapsed();
    report.paused.switch = lap();
    report.paused.scheduling = clocks.since_start();
    report.paused.boost_refused = boost.refused.as_ref().map(|e| e.to_string());
    device_tids
        .iter()
        .chain(&vcpu_tids)
        .for_each(|&tid| boost.lower(tid));
    expect_reply(link.reader, link.offset, Tag::Ready)?;
    report.paused.destination = lap();
    stream::write_frame(link.out, Tag::Commit, &[]).map_err(write_err)?;
    link.out.flush().map_err(write_err)?;
    report.paused.commit = lap();
    report.total = started.elapsed();
    // Committed: the guest is the destination's now, whatever follows.
    // Its Resumed ends the downtime ([`Committed::hear_resumed`]); until
    // then, and if it is not heard, the downtime runs to the Commit.
    report.downtime = paused_at.elapsed();
    let resumed = resumed.watch(link.reader, *link.offset);
    boost.lower_all();
    Ok(Switch { paused_at, resumed })
}

/// The disks' flush in two steps: all of them while the guest runs, then
/// at the switch only those the guest changed since.
struct DiskFlush {
    /// Each disk's change count when the first flush started.
    changes: Vec<u64>,
}

impl DiskFlush {
    /// Flushes every disk of the running `vm`.
    fn before_pause(vm: &Vm) -> Result<DiskFlush> {
        let changes = vm
            .disk_write_trackers()
            .iter()
            .map(|t| t.changes())
            .collect();
        vm.flush_disks()?;
        Ok(DiskFlush { changes })
    }

    /// Flushes the disks of the paused `vm` (queues drained) changed
    /// since [`DiskFlush::before_pause`]; returns how many, of how many.
    fn at_switch(self, vm: &Vm) -> Result<(usize, usize)> {
        let (disks, backends) = vm.disks();
        let trackers = vm.disk_write_trackers();
        let mut again = 0;
        for (index, (disk, backend)) in disks.iter().zip(backends).enumerate() {
            let unchanged = match (trackers.get(index), self.changes.get(index)) {
                (Some(tracker), Some(&before)) => tracker.changes() == before,
                _ => false,
            };
            if unchanged {
                continue;
            }
            backend.close().map_err(|e| {
                MigrationError::Vm(crate::Error::Disk {
                    path: disk.path.display().to_string(),
                    reason: format!("flushing: {e}"),
                })
            })?;
            again += 1;
        }
        Ok((again, disks.len()))
    }
}

/// Bytes per second, at least 1 MB/s (a first pass of almost only zero
/// pages measures little).
fn rate(bytes: u64, elapsed: Duration) -> f64 {
    (bytes as f64 / elapsed.as_secs_f64().max(1e-6)).max(1e6)
}

/// The VMM's own page table as /proc/self/pagemap shows it: a page of
/// guest RAM neither present nor swapped out was never written (an
/// anonymous mapping reads as zero there).
struct PageMap(std::fs::File);

impl PageMap {
    fn open() -> Option<PageMap> {
        std::fs::File::open("/proc/self/pagemap").ok().map(PageMap)
    }

    /// Whether none of `pages` pages at guest-physical `addr` was ever
    /// touched (false when that cannot be told).
    fn untouched(&self, mem: &vm_memory::GuestMemoryMmap, addr: u64, pages: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(host) = mem.get_host_address(GuestAddress(addr)) else {
            return false;
        };
        let host = host as u64;
        if !host.is_multiple_of(PAGE) {
            return false;
        }
        let mut entries = vec![0u8; pages as usize * 8];
        if self.0.read_exact_at(&mut entries, host / PAGE * 8).is_err() {
            return false;
        }
        // Bit 63: present; bit 62: swapped.
        entries
            .chunks_exact(8)
            .all(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")) >> 62 == 0)
    }
}

/// Whether `page` is all zero bytes (eight at a time: the full pass looks
/// at every page of RAM).
pub(super) fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(8);
    let any = words.by_ref().fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    });
    any == 0 && words.remainder().iter().all(|&b| b == 0)
}

fn dirty_bytes(regions: &[DirtyRegion]) -> u64 {
    regions.iter().map(|r| r.count() * PAGE).sum()
}

fn merge(a: &[DirtyRegion], b: &[DirtyRegion]) -> Vec<DirtyRegion> {
    a.iter()
        .zip(b)
        .map(|(x, y)| DirtyRegion {
            start: x.start,
            len: x.len,
            bits: x
                .bits
                .iter()
                .zip(y.bits.iter().chain(std::iter::repeat(&0)))
                .map(|(p, q)| p | q)
                .collect(),
        })
        .collect()
}

struct RamSender<'v, 'o, W: Write> {
    vm: &'v Vm,
    out: &'o mut W,
    buffer: Vec<u8>,
}

impl<W: Write> RamSender<'_, '_, W> {
    fn read(&mut self, addr: u64, pages: u64) -> Result<()> {
        let len = (pages * PAGE) as usize;
        self.vm
            .memory()
            .read_slice(&mut self.buffer[..len], GuestAddress(addr))
            .map_err(|e| MigrationError::Stream(format!("reading guest RAM at {addr:#x}: {e}")))
    }

    /// Every non-zero page, in runs of at most [`RUN_PAGES`].
    fn full_pass(&mut self) -> Result<u64> {
        let regions: Vec<(u64, u64)> = self
            .vm
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        let mut sent = 0;
        let pagemap = PageMap::open();
        for (start, len) in regions {
            let mut addr = start;
            while addr < start + len {
                let pages = ((start + len - addr) / PAGE).min(RUN_PAGES);
                if pagemap
                    .as_ref()
                    .is_some_and(|map| map.untouched(self.vm.memory(), addr, pages))
                {
                    // Never touched: reads as zero, and reading it would
                    // only fault in the zero page.
                    addr += pages * PAGE;
                    continue;
                }
                self.read(addr, pages)?;
                // Runs of non-zero pages inside this chunk.
                let mut run_start: Option<u64> = None;
                for page in 0..=pages {
                    let zero = page == pages
                        || is_zero(
                            &self.buffer[(page * PAGE) as usize..((page + 1) * PAGE) as usize],
                        );
                    match (zero, run_start) {
                        (false, None) => run_start = Some(page),
                        (true, Some(first)) => {
                            let bytes =
                                &self.buffer[(first * PAGE) as usize..(page * PAGE) as usize];
                            stream::write_ram(self.out, addr + first * PAGE, bytes)
                                .map_err(write_err)?;
                            sent += bytes.len() as u64;
                            run_start = None;
                        }
                        _ => {}
                    }
                }
                addr += pages * PAGE;
            }
        }
        Ok(sent)
    }

    /// Every page marked in `regions`, zero or not.
    fn dirty_pass(&mut self, regions: &[DirtyRegion]) -> Result<u64> {
        let mut sent = 0;
        for region in regions {
            for (first, count) in region.runs() {
                let mut page = first;
                while page < first + count {
                    let pages = (first + count - page).min(RUN_PAGES);
                    let addr = region.start + page * PAGE;
                    self.read(addr, pages)?;
                    let bytes = &self.buffer[..(pages * PAGE) as usize];
                    stream::write_ram(self.out, addr, bytes).map_err(write_err)?;
                    sent += bytes.len() as u64;
                    page += pages;
                }
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_and_merged_regions() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 3]));
        let a = [DirtyRegion {
            start: 0,
            len: 128 * 4096,
            bits: vec![1, 0],
        }];
        let b = [DirtyRegion {
            start: 0,
            len: 128 * 4096,
            bits: vec![2],
        }];
        let merged = merge(&a, &b);
        assert_eq!(merged[0].bits, vec![3, 0]);
        assert_eq!(dirty_bytes(&merged), 2 * 4096);
    }
}
