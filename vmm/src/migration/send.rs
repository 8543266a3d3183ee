//! The source of a migration: connect, send the configuration, a full
//! pass of RAM (zero pages skipped: the destination's RAM starts zeroed),
//! dirty passes until the estimated downtime (dirty bytes over the
//! measured bandwidth) is under the target or the timeout strikes, then
//! pause, the last pass, the machine's state, flush the disks and let go
//! of their locks, the switch; on the destination's Ready, Commit.
//!
//! Whatever fails, [`send`] puts the VM back as it was (locks taken
//! again, running again if it ran) before it returns the error.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmapi::MigrationUrl;

use super::dirty::{DirtyLog, DirtyRegion};
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
#[derive(Debug, Clone, Copy, Default)]
pub struct SendReport {
    /// From the connection to the destination's Ready.
    pub total: Duration,
    /// From the pause to the Commit sent.
    pub downtime: Duration,
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

/// The paused window, phase by phase (each from the end of the last).
#[derive(Debug, Clone, Copy, Default)]
pub struct PausedPhases {
    /// Stopping the vCPUs and draining the disk queues.
    pub pause: Duration,
    /// The last dirty pass (RAM, then the disks' last changes).
    pub last_pass: Duration,
    /// Collecting the vCPUs' and devices' state, dirty logging off.
    pub state: Duration,
    /// Encoding and writing the state.
    pub send: Duration,
    /// Flushing the disks and letting go of their locks.
    pub flush: Duration,
    /// From the switch to the destination's Ready (its VM built).
    pub destination: Duration,
    /// Sending the Commit.
    pub commit: Duration,
}

impl std::fmt::Display for PausedPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "pause {:.1} ms, last pass {:.1} ms, state {:.1} ms, send {:.1} ms, flush {:.1} ms, destination {:.1} ms, commit {:.1} ms",
            ms(self.pause),
            ms(self.last_pass),
            ms(self.state),
            ms(self.send),
            ms(self.flush),
            ms(self.destination),
            ms(self.commit)
        )
    }
}

/// Where the source stands, for putting it back after a failure.
#[derive(Default)]
struct Progress {
    paused: bool,
    unlocked: bool,
}

/// Migrates `vm` (described by `config_json`, the API's VmConfig) to
/// `options.url`. On success the guest runs at the destination and `vm`
/// must be abandoned ([`Vm::abandon`]); on failure `vm` is as it was.
pub fn send(vm: &mut Vm, config_json: &[u8], options: &SendOptions) -> Result<SendReport> {
    let mut progress = Progress::default();
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
) -> Result<SendReport> {
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
    if result.is_err() {
        // Tell the destination at once (it may be blocked reading).
        connection.shutdown();
    }
    result
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
) -> Result<SendReport> {
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
    let disk_dirty = |storage: &Option<storage_send::StorageSource>| {
        storage.as_ref().map_or(0, |s| s.dirty_bytes())
    };
    let machine = {
        let log = DirtyLog::start(vm)?;
        let mut sender = RamSender {
            vm,
            out: &mut out,
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
        let mut pending = log.collect()?;
        // Under the target, passes go on while they still shrink what is
        // left (by a tenth at least), so that the pause carries the least
        // a guest dirtying at a steady rate allows, not merely what fits
        // in the target.
        let mut previous = u64::MAX;
        let mut under_target = 0;
        loop {
            let dirty = dirty_bytes(&pending) + disk_dirty(&storage);
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
            pending = log.collect()?;
        }
        // Pause, and the last pass: what was pending and what changed
        // since, the devices' pages (written until their queues drained)
        // included.
        let paused_at = Instant::now();
        if options.running {
            vm_pause(sender.vm)?;
            progress.paused = true;
        }
        let mut mark = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            let took = now - mark;
            mark = now;
            took
        };
        report.paused.pause = lap();
        let last = log.collect()?;
        let merged = merge(&pending, &last);
        report.ram_bytes += sender.dirty_pass(&merged)?;
        if let Some(storage) = storage.as_mut() {
            // The queues are drained: these are the disks' last changes.
            report.disk_bytes += storage.dirty_pass(sender.out)?;
        }
        report.passes += 1;
        report.paused.last_pass = lap();
        let machine = sender.vm.save_machine()?;
        drop(log);
        report.paused.state = lap();
        (machine, paused_at)
    };
    let (machine, paused_at) = machine;
    let mut mark = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let took = now - mark;
        mark = now;
        took
    };
    let bytes = machine.to_bytes()?;
    stream::write_frame(&mut out, Tag::Machine, &[&bytes]).map_err(write_err)?;
    report.paused.send = lap();
    // The switch: the disks flushed and their locks let go of, for the
    // destination to take.
    vm.flush_disks()?;
    vm.release_locks();
    progress.unlocked = true;
    report.paused.flush = lap();
    stream::write_frame(&mut out, Tag::Switch, &[&[u8::from(options.resume)]])
        .map_err(write_err)?;
    out.flush().map_err(write_err)?;
    expect_reply(reader, &mut offset, Tag::Ready)?;
    report.paused.destination = lap();
    stream::write_frame(&mut out, Tag::Commit, &[]).map_err(write_err)?;
    out.flush().map_err(write_err)?;
    report.paused.commit = lap();
    report.downtime = paused_at.elapsed();
    report.total = started.elapsed();
    Ok(report)
}

fn vm_pause(vm: &Vm) -> Result<()> {
    vm.pause().map_err(MigrationError::Vm)
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
