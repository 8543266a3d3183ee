//! Lazy guest RAM: a VM restored from a snapshot's RAM stream (an
//! in-place revert, a fork from `qcow2-image://PATH#SNAP`) resumes before
//! its RAM is read, as Firecracker's snapshot restore with its UFFD
//! backend does. Its RAM is registered with a userfaultfd (`uffd`); a
//! page the guest (or a device, or KVM) touches first waits until the
//! loader thread fills it, and the loader fills every other page in the
//! background meanwhile, so the VM is whole again soon after.
//!
//! How it is settled:
//! - **The index** ([`index`]): the stream's record headers only are read
//!   before the guest resumes (payloads skipped), giving guest range →
//!   stream position, checked as the eager reader checks the stream
//!   (bounded lengths, RAM inside the VM's ranges, ascending runs without
//!   overlap, the end record's count, nothing after it). Pages in no
//!   record are zero: a fault there is served with UFFDIO_ZEROPAGE of
//!   that page, and the loader leaves them alone (once it unregisters
//!   the RAM, a missing page faults in as a zeroed page, as in a fresh
//!   mapping; so the next snapshot's mincore still skips them).
//! - **Checksums:** every record carries its own CRC (the state format is
//!   unchanged, version 1; old snapshots load lazily too). A record is
//!   read whole and its CRC checked before any of its pages is filled.
//!   A mismatch (or a read error) cannot be answered with data: the
//!   faulting thread would wait for ever, and zeros would let the guest
//!   run on wrong memory and write it to its disks. So the loader prints
//!   one line and ends the VMM at once (`exit(1)`), which leaves the
//!   images as a kill does: clean (the kill -9 snapshot tests prove
//!   that), since the loader only reads.
//! - **Faults first:** one thread does both jobs, serving every fault
//!   waiting before it fills the next record in order, so a fault waits
//!   at most for one record (at most 4 MiB). A fault in a record fills
//!   the whole record (its CRC covers all of it anyway), the faulting
//!   page first: its copy wakes the guest, which then runs while the
//!   rest of the record is copied.
//! - **The guest's first milliseconds first:** after the records wanted
//!   first ([`Registered::fill_first`]) the loader only serves faults
//!   for [`BACKGROUND_DELAY`] from its start, then fills the rest and
//!   unmaps the replaced guest's pages: on a host of two busy cores its
//!   background copying would otherwise take a core from the resumed
//!   vCPU, the rest of the revert and its client just when the guest's
//!   first instructions are measured (prefetching in address order
//!   rarely holds what the guest touches first anyway).
//! - **In the real-time class** ([`crate::thread_boost`]) until the
//!   background starts: a traced slow revert had the loader preempted for
//!   4 ms by other processes while the guest's first fault waited on it.
//! - **Its own reader:** the snapshot's VM-state area is mapped onto the
//!   image file once ([`MappedArea`]: the snapshot table and the area's
//!   L1 and L2 tables read a single time); the index and the loader then
//!   read with plain positioned reads of the file, never through the VM's
//!   disk's Qcow2 and its locks: a device thread holding them may itself
//!   wait on a missing page.
//! - **The replaced guest's RAM** (a revert): its pages are moved out of
//!   guest RAM in one `mremap` (`release`; page tables move, pages do
//!   not), leaving RAM empty at the same address, and the loader unmaps
//!   them a few MiB at a time between faults. Freeing them in place
//!   (MADV_DONTNEED) before resume is the fallback.
//! - **Nothing changes the snapshot meanwhile:** a snapshot's clusters
//!   are never written while it exists; whatever could free them or
//!   needs the whole RAM (a snapshot, snapshot-delete, another revert, a
//!   migration, a save, the VM's stop or drop) first waits for the
//!   loader ([`LazyRam::settle`], called by `Vm::settle_ram`), which then
//!   unregisters the RAM.
//! - **Where it applies:** the in-place revert, a fork, a revert that
//!   rebuilds the VM (a new VMM's vm.restore of `qcow2:NAME`, or after
//!   an in-place revert failed half-way) and vm.restore from CH's file
//!   layout, whose `memory-ranges` is the same record stream read from a
//!   file ([`mod@file`]). Where userfaultfd cannot be had, or with
//!   `VMM_EAGER_RAM=1` in the VMM's environment (for comparison), RAM is
//!   read before the guest resumes, as before.
//! - **Bytes the VMM writes over the snapshot's** ([`Registered::patch`]):
//!   a revert's new VM generation ID is laid into its page by the loader
//!   as it fills that page's record (after the record's checksum), so
//!   the reverting thread neither waits for that record nor touches the
//!   page; the guest, which can only read the page once it is filled,
//!   never sees it without the new ID.
//! - **seccomp:** the loader thread runs under its own filter
//!   ([`crate::seccomp::ThreadKind::RamLoader`]): the common list and the
//!   four userfaultfd ioctls it makes after setup, and
//!   sched_setscheduler on itself (leaving the real-time class).

pub mod file;
pub mod index;
mod release;
mod uffd;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::state::record::{check_header, record_crc, HEADER_LEN};
use crate::state::StateError;
use index::{Segment, StreamSource};
pub use uffd::LOADER_IOCTLS;

/// The environment variable that forces eager RAM loading.
pub const EAGER_ENV: &str = "VMM_EAGER_RAM";

/// The environment variable that paces the background filling: at most
/// one segment per this many milliseconds, the first one pace after the
/// loader starts (faults are served at once).
/// For tests that must see the guest run before its RAM is read, and for
/// measuring; unset, the loader fills as fast as it can.
pub const PACE_ENV: &str = "VMM_LAZY_RAM_PACE_MS";

/// How long after its start the loader fills only the records wanted
/// first and those faulted on, before the others.
pub const BACKGROUND_DELAY: Duration = Duration::from_millis(50);

/// The most a pace may be (a hostile environment cannot stall a load
/// for ever).
const MAX_PACE_MS: u64 = 1000;

fn pace() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(PACE_ENV).ok()?.parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms.min(MAX_PACE_MS)))
}

/// Whether RAM should be loaded lazily (`VMM_EAGER_RAM` unset or `0`).
pub fn wanted() -> bool {
    std::env::var_os(EAGER_ENV).is_none_or(|v| v.is_empty() || v == "0")
}

/// The loader's own reader of the stream. It is made (and its image
/// opened) by the thread that starts the loader: what it allocates then
/// is freed back to that thread's arena, not shrunk from the loader's
/// own under its seccomp filter (glibc's first arena shrink opens a
/// /proc file).
pub type Source = Box<dyn StreamSource + Send>;

/// A VM's RAM being loaded lazily: the loader thread.
pub struct LazyRam {
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    progress: Arc<Progress>,
    /// Whether the loader took the patch ([`Registered::patch`]).
    patched: bool,
}

/// How far the loader is.
#[derive(Default)]
struct Progress {
    /// Bytes of guest RAM filled.
    filled: AtomicU64,
    /// Bytes of guest RAM in all.
    total: u64,
}

/// Guest RAM's regions as host ranges: (guest start, host address, len).
fn host_ranges(mem: &GuestMemoryMmap) -> Result<Vec<(u64, u64, u64)>, StateError> {
    mem.iter()
        .map(|region| {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| StateError::Write(format!("guest RAM: {e}")))?;
            Ok((region.start_addr().0, host as u64, region.len()))
        })
        .collect()
}

/// Guest RAM registered with a userfaultfd, its loader not started yet.
pub struct Registered {
    uffd: uffd::Uffd,
    ranges: Vec<(u64, u64, u64)>,
    mem: GuestMemoryMmap,
    started: Instant,
    /// The replaced guest's pages, for the loader to unmap.
    detached: Vec<release::Detached>,
    /// Guest addresses whose records the loader fills first.
    first: Vec<u64>,
    /// Bytes to lay over the snapshot's at a guest address.
    patch: Option<Patch>,
}

/// Bytes the loader lays over a record's at `guest` once the record is
/// read and checked, before any of its pages is filled.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The guest-physical address of the first byte.
    pub guest: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Registered {
    /// Registers `mem` (whose pages must all be missing: freshly mapped or
    /// discarded) with a new userfaultfd: from now on a missing page
    /// waits for the loader. An error leaves `mem` unregistered (the
    /// caller loads it eagerly).
    pub fn new(mem: &GuestMemoryMmap) -> Result<Registered, StateError> {
        let started = Instant::now();
        let ranges = host_ranges(mem)?;
        let uffd = uffd::Uffd::new().map_err(|e| StateError::Write(format!("userfaultfd: {e}")))?;
        for (i, &(_, host, len)) in ranges.iter().enumerate() {
            if let Err(e) = uffd.register(host, len) {
                for &(_, host, len) in &ranges[..i] {
                    let _ = uffd.unregister(host, len);
                }
                return Err(StateError::Write(format!(
                    "registering guest RAM with userfaultfd: {e}"
                )));
            }
        }
        Ok(Registered {
            uffd,
            ranges,
            mem: mem.clone(),
            started,
            detached: Vec::new(),
            first: Vec::new(),
            patch: None,
        })
    }

    /// Has the loader fill the records holding the guest addresses
    /// `first` before any other (and before it unmaps any of the replaced
    /// guest's pages): the pages the VMM and the vCPUs touch first after
    /// the resume ([`first_pages`]). Addresses in no record are skipped.
    pub fn fill_first(mut self, first: &[u64]) -> Registered {
        self.first.extend_from_slice(first);
        self
    }

    /// Has the loader lay `patch` over the snapshot's bytes when it fills
    /// the record holding them (a new VM generation ID: the VMM's write,
    /// done without waiting for the page). Taken only when one record
    /// holds all of it ([`LazyRam::patched`]); else the caller writes it
    /// into RAM itself.
    pub fn patch(mut self, patch: Patch) -> Registered {
        self.patch = Some(patch);
        self
    }

    /// Hands the replaced guest's pages ([`detach_all`]) to the loader,
    /// which unmaps them between the faults it serves.
    pub fn release_later(mut self, detached: Detached) -> Registered {
        self.detached.extend(detached.0);
        self
    }

    /// Starts the loader, which fills the RAM from the stream indexed as
    /// `segments`, read through `source`. `label` names the snapshot in
    /// messages.
    pub fn start(
        self,
        segments: Vec<Segment>,
        source: Source,
        seccomp: bool,
        label: String,
    ) -> Result<LazyRam, StateError> {
        let Registered {
            uffd,
            ranges,
            mem,
            started,
            detached,
            first,
            patch,
        } = self;
        // A patch must lie inside one record's segment.
        let patch = patch.and_then(|patch| {
            let end = patch.guest.checked_add(patch.bytes.len() as u64)?;
            let i = index::find(&segments, patch.guest)?;
            let segment = &segments[i];
            (segment.record.is_some() && end <= segment.start + segment.len).then_some((i, patch))
        });
        let patched = patch.is_some();
        let mut wanted: Vec<usize> = Vec::new();
        for i in first
            .iter()
            .filter_map(|&guest| index::find(&segments, guest))
        {
            if segments[i].record.is_some() && !wanted.contains(&i) {
                wanted.push(i);
            }
        }
        let progress = Arc::new(Progress {
            filled: AtomicU64::new(0),
            total: segments
                .iter()
                .filter(|s| s.record.is_some())
                .map(|s| s.len)
                .sum(),
        });
        let loader = Loader {
            uffd,
            ranges,
            wanted,
            segments,
            label,
            started,
            pace: pace(),
            progress: progress.clone(),
            detached: std::cell::RefCell::new(detached),
            patch,
            _mem: mem,
        };
        let thread = std::thread::Builder::new()
            .name("ram loader".into())
            .spawn(move || loader.run(source, seccomp))
            .map_err(|e| StateError::Write(format!("starting the RAM loader: {e}")))?;
        Ok(LazyRam {
            thread: Mutex::new(Some(thread)),
            progress,
            patched,
        })
    }
}

impl LazyRam {
    /// Bytes of guest RAM filled so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.progress.filled.load(Ordering::Relaxed),
            self.progress.total,
        )
    }

    /// Whether the loader took the patch given ([`Registered::patch`]): it
    /// lays it into RAM itself.
    pub fn patched(&self) -> bool {
        self.patched
    }

    /// Waits until every page is filled and the RAM unregistered.
    pub fn settle(&self) {
        let thread = self.thread.lock().expect("loader lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for LazyRam {
    fn drop(&mut self) {
        self.settle();
    }
}

/// The loader thread's state.
struct Loader {
    uffd: uffd::Uffd,
    /// (guest start, host address, len) of each RAM region.
    ranges: Vec<(u64, u64, u64)>,
    /// Segments filled before the others ([`Registered::fill_first`]).
    wanted: Vec<usize>,
    segments: Vec<Segment>,
    label: String,
    started: Instant,
    /// The least time between two background segments ([`PACE_ENV`]).
    pace: Option<std::time::Duration>,
    progress: Arc<Progress>,
    /// The replaced guest's pages still to unmap.
    detached: std::cell::RefCell<Vec<release::Detached>>,
    /// The patch and the index of the segment that holds it.
    patch: Option<(usize, Patch)>,
    /// Keeps the mapping alive while the loader fills it.
    _mem: GuestMemoryMmap,
}

impl Loader {
    fn run(self, source: Source, seccomp: bool) {
        let fatal = |e: &dyn std::fmt::Display| -> ! {
            eprintln!(
                "vmm: guest RAM of snapshot '{}' cannot be loaded: {e}; stopping the VM",
                self.label
            );
            std::process::exit(1)
        };
        // The guest's first faults wait on this thread: real-time until
        // the background starts ([`BACKGROUND_DELAY`]).
        let raised = crate::thread_boost::raise(0);
        let mut buf =
            uffd::PageBuffer::new(HEADER_LEN + crate::state::record::MAX_PAYLOAD as usize)
                .unwrap_or_else(|e| fatal(&format!("a buffer: {e}")));
        if seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::RamLoader) {
                fatal(&e);
            }
        }
        match self.fill_all(source.as_ref(), &mut buf, raised) {
            Ok(report) => eprintln!(
                "vmm: lazy RAM of snapshot '{}': {} MiB in {} records filled in {:.1} ms; {} faults served: {} records and {} zero pages filled first on a fault; first faults (guest address@ms): {}",
                self.label,
                report.record_bytes >> 20,
                report.records,
                self.started.elapsed().as_secs_f64() * 1e3,
                report.faults,
                report.on_fault,
                report.zero_pages,
                report.first_faults()
            ),
            Err(e) => fatal(&e),
        }
        for &(_, host, len) in &self.ranges {
            if let Err(e) = self.uffd.unregister(host, len) {
                fatal(&format!("unregistering guest RAM: {e}"));
            }
        }
    }

    /// Serves faults first, then fills the next segment, until all are.
    /// `raised`: the thread's scheduling before it was raised, put back
    /// when the background starts.
    fn fill_all(
        &self,
        source: &(dyn StreamSource + Send),
        buf: &mut uffd::PageBuffer,
        mut raised: Option<crate::thread_boost::Before>,
    ) -> Result<Report, Failure> {
        let mut done = vec![false; self.segments.len()];
        let mut report = Report::default();
        let mut next = 0;
        let mut wanted = self.wanted.iter().copied();
        let mut wanted_left = self.wanted.len();
        let mut next_at = Instant::now() + self.pace.unwrap_or_default();
        let io = |what: &str, e: std::io::Error| StateError::Write(format!("{what}: {e}"));
        loop {
            while let Some(host) = self.uffd.next_fault().map_err(|e| io("userfaultfd", e))? {
                report.faults += 1;
                let guest = self.guest_of(host).ok_or_else(|| {
                    StateError::Write(format!("a fault at {host:#x}, outside guest RAM"))
                })?;
                let i = index::find(&self.segments, guest).ok_or_else(|| {
                    StateError::Write(format!("a fault at {guest:#x}, in no segment"))
                })?;
                if report.first_faults.len() < FAULTS_REPORTED {
                    report
                        .first_faults
                        .push((guest, self.started.elapsed(), done[i]));
                }
                if self.segments[i].record.is_none() {
                    let page = host & !(crate::state::memory::PAGE as u64 - 1);
                    let one = crate::state::memory::PAGE as u64;
                    match self.uffd.zero(page, one) {
                        Ok(uffd::Filled::All) => report.zero_pages += 1,
                        // Mapped on an earlier message for the same page.
                        Ok(uffd::Filled::SomePresent) => self
                            .uffd
                            .wake(page, one)
                            .map_err(|e| io("waking a fault", e))?,
                        Err(e) => return Err(io("mapping a zero page", e).into()),
                    }
                } else if done[i] {
                    // Filled since the fault was queued: the filling woke
                    // it; waking again is harmless.
                    let page = host & !(crate::state::memory::PAGE as u64 - 1);
                    self.uffd
                        .wake(page, crate::state::memory::PAGE as u64)
                        .map_err(|e| io("waking a fault", e))?;
                } else {
                    self.fill(source, i, buf, &mut report, Some(host))
                        .map_err(|error| Failure {
                            error,
                            fault: Some(guest),
                        })?;
                    done[i] = true;
                    report.on_fault += 1;
                }
            }
            // The background (the other records, the replaced guest's
            // pages) waits until the records wanted first are in and the
            // guest had its first milliseconds: faults only meanwhile.
            if wanted_left == 0 && self.pace.is_none() {
                let background_from = self.started + BACKGROUND_DELAY;
                let now = Instant::now();
                if now < background_from {
                    self.uffd
                        .wait(background_from - now)
                        .map_err(|e| io("waiting for a fault", e))?;
                    continue;
                }
            }
            if wanted_left == 0 {
                if Instant::now() >= self.started + BACKGROUND_DELAY {
                    if let Some(before) = raised.take() {
                        crate::thread_boost::put_back(before);
                    }
                }
                self.release_some();
            }
            if next == self.segments.len() && wanted_left == 0 {
                return Ok(report);
            }
            if let Some(pace) = self.pace {
                let now = Instant::now();
                if now < next_at {
                    std::thread::sleep((next_at - now).min(std::time::Duration::from_millis(1)));
                    continue;
                }
                next_at = now + pace;
            }
            // The records wanted first, then every record in order.
            let i = match wanted.next() {
                Some(i) => {
                    wanted_left -= 1;
                    i
                }
                None => {
                    next += 1;
                    next - 1
                }
            };
            if !done[i] && self.segments[i].record.is_some() {
                self.fill(source, i, buf, &mut report, None)?;
                done[i] = true;
            }
        }
    }

    /// Unmaps the next few MiB of the replaced guest's pages (the rest go
    /// when the loader ends).
    fn release_some(&self) {
        let mut detached = self.detached.borrow_mut();
        if let Some(first) = detached.first_mut() {
            first.release_some(RELEASE_CHUNK);
            if first.is_empty() {
                detached.remove(0);
            }
        }
    }

    /// The guest-physical address of host address `host`.
    fn guest_of(&self, host: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|&&(_, h, len)| host >= h && host < h + len)
            .map(|&(g, h, _)| g + (host - h))
    }

    /// The host address of guest-physical `guest` (inside a range).
    fn host_of(&self, guest: u64) -> Result<u64, StateError> {
        self.ranges
            .iter()
            .find(|&&(g, _, len)| guest >= g && guest < g + len)
            .map(|&(g, h, _)| h + (guest - g))
            .ok_or(StateError::OutsideMemory {
                start: guest,
                length: 0,
            })
    }

    /// Fills segment `index` from its record: the record read and
    /// checked, the patch laid over it if it holds the patch, then copied;
    /// on a fault at host address `fault`, that page first (its copy
    /// wakes the faulting thread), then the rest of the record.
    fn fill(
        &self,
        source: &(dyn StreamSource + Send),
        index: usize,
        buf: &mut uffd::PageBuffer,
        report: &mut Report,
        fault: Option<u64>,
    ) -> Result<(), StateError> {
        let segment = &self.segments[index];
        let host = self.host_of(segment.start)?;
        let io = |e: std::io::Error| {
            StateError::Write(format!("filling guest RAM at {:#x}: {e}", segment.start))
        };
        let Some(pos) = segment.record else {
            return Err(StateError::Layout(format!(
                "no record holds guest RAM at {:#x}",
                segment.start
            )));
        };
        let total = HEADER_LEN + 8 + segment.len as usize;
        let buf = buf.slice(total);
        if buf.len() < total {
            return Err(StateError::TooLong {
                kind: crate::state::record::RecordKind::Ram as u16,
                length: total as u64,
            });
        }
        source.read_at(pos, buf)?;
        let head: &[u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("20 bytes");
        let header = check_header(head, pos)?;
        let address = u64::from_le_bytes(buf[HEADER_LEN..HEADER_LEN + 8].try_into().expect("8"));
        if header.length as usize != 8 + segment.len as usize || address != segment.start {
            return Err(StateError::Layout(format!(
                "the RAM record at byte {pos} changed since it was indexed"
            )));
        }
        if record_crc(head, &buf[HEADER_LEN..]) != header.crc {
            return Err(StateError::RamChecksum {
                offset: pos,
                start: segment.start,
                last: segment.start + segment.len - 1,
            });
        }
        let pages = &mut buf[HEADER_LEN + 8..];
        if let Some((_, patch)) = self.patch.as_ref().filter(|(i, _)| *i == index) {
            // Inside the segment: checked when the loader started.
            let at = (patch.guest - segment.start) as usize;
            pages[at..at + patch.bytes.len()].copy_from_slice(&patch.bytes);
        }
        let pages = &*pages;
        let page = crate::state::memory::PAGE;
        let copy = |dst: u64, part: &[u8]| -> Result<(), StateError> {
            if part.is_empty() || self.uffd.copy(dst, part).map_err(io)? == uffd::Filled::All {
                return Ok(());
            }
            for (i, chunk) in part.chunks(page).enumerate() {
                self.uffd.copy(dst + (i * page) as u64, chunk).map_err(io)?;
            }
            Ok(())
        };
        // The faulting page's offset in the record, when inside it.
        let first = fault
            .map(|at| (at & !(page as u64 - 1)).wrapping_sub(host) as usize)
            .filter(|&at| at.checked_add(page).is_some_and(|end| end <= pages.len()));
        match first {
            Some(at) => {
                copy(host + at as u64, &pages[at..at + page])?;
                copy(host, &pages[..at])?;
                copy(host + (at + page) as u64, &pages[at + page..])?;
            }
            None => copy(host, pages)?,
        }
        report.record_bytes += segment.len;
        report.records += 1;
        self.progress
            .filled
            .fetch_add(segment.len, Ordering::Relaxed);
        Ok(())
    }
}

/// Why the loader stopped, and whether a fault was waiting on it.
#[derive(Debug)]
struct Failure {
    error: StateError,
    /// The guest-physical address of the fault being served, if any.
    fault: Option<u64>,
}

impl From<StateError> for Failure {
    fn from(error: StateError) -> Failure {
        Failure { error, fault: None }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fault {
            Some(guest) => write!(f, "{}, found on a fault at {guest:#x}", self.error),
            None => write!(f, "{}, found while filling in the background", self.error),
        }
    }
}

/// What the loader did.
#[derive(Debug, Default)]
struct Report {
    record_bytes: u64,
    records: u64,
    zero_pages: u64,
    faults: u64,
    on_fault: u64,
    /// The first faults: the guest address, when it was read (from the
    /// registration), and whether its segment was filled by then.
    first_faults: Vec<(u64, Duration, bool)>,
}

/// How many first faults the loader's report names.
const FAULTS_REPORTED: usize = 8;

impl Report {
    /// The first faults, as `GUEST@MS` (`+` when already filled).
    fn first_faults(&self) -> String {
        let named: Vec<String> = self
            .first_faults
            .iter()
            .map(|&(guest, at, filled)| {
                format!(
                    "{guest:#x}@{:.1}{}",
                    at.as_secs_f64() * 1000.0,
                    if filled { "+" } else { "" }
                )
            })
            .collect();
        named.join(" ")
    }
}

/// Bytes of the replaced guest's RAM the loader unmaps at a time, between
/// the faults it serves.
const RELEASE_CHUNK: usize = 8 << 20;

/// The replaced guest's pages, moved out of guest RAM ([`detach_all`]).
pub struct Detached(Vec<release::Detached>);

/// Moves every page of `mem` out of it (see `release`), so that all
/// are missing, as [`discard_all`] does but without freeing them now:
/// they are freed by the loader ([`Registered::release_later`]), or when
/// the returned value is dropped. An error leaves `mem` as it was, or
/// some regions emptied: the caller then discards it all.
pub fn detach_all(mem: &GuestMemoryMmap) -> Result<Detached, StateError> {
    host_ranges(mem)?
        .into_iter()
        .map(|(_, host, len)| release::Detached::detach(host, len))
        .collect::<std::io::Result<Vec<_>>>()
        .map(Detached)
        .map_err(|e| StateError::Write(format!("moving the replaced guest's RAM away: {e}")))
}

/// Gives every page of `mem` back to the kernel, so that all are missing
/// (before [`Registered::start`] over RAM that held another guest).
pub fn discard_all(mem: &GuestMemoryMmap) -> Result<(), StateError> {
    for region in mem.iter() {
        crate::state::resident::discard(mem, region.start_addr(), region.len())
            .map_err(|e| StateError::Write(format!("discarding guest RAM: {e}")))?;
    }
    Ok(())
}

/// A snapshot's VM-state area read through a qcow2 image.
pub struct AreaSource<I> {
    /// The image (owned, or borrowed from the VM's disk).
    pub image: I,
    /// The snapshot's name.
    pub snapshot: String,
}

impl<I: std::borrow::Borrow<qcow::image::Qcow2>> StreamSource for AreaSource<I> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError> {
        self.image
            .borrow()
            .read_vm_state(&self.snapshot, pos, buf)
            .map_err(|e| StateError::Read(format!("snapshot '{}': {e}", self.snapshot)))
    }
}

/// A snapshot's VM-state area read through its map onto the image file
/// ([`qcow::image::VmStateMap`]): the snapshot and its tables were looked
/// up once, each read is plain positioned reads of the file. It takes no
/// lock of the image it was mapped from, so the loader may read through
/// it while a device thread holding that image's locks waits on a page.
pub struct MappedArea {
    /// The area's map.
    pub map: qcow::image::VmStateMap,
    /// The snapshot's name.
    pub snapshot: String,
}

impl MappedArea {
    /// Maps the VM-state area of snapshot `snapshot` of `image`.
    pub fn new(image: &qcow::image::Qcow2, snapshot: &str) -> Result<MappedArea, StateError> {
        let map = image
            .vm_state_map(snapshot)
            .map_err(|e| StateError::Read(format!("snapshot '{snapshot}': {e}")))?;
        Ok(MappedArea {
            map,
            snapshot: snapshot.to_string(),
        })
    }
}

impl StreamSource for MappedArea {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError> {
        self.map
            .read_at(pos, buf)
            .map_err(|e| StateError::Read(format!("snapshot '{}': {e}", self.snapshot)))
    }
}

/// Where a lazy load's time before resume went, part by part (each from
/// the end of the last): what a revert's `ram` phase is made of.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadPhases {
    /// Mapping the snapshot's VM-state area onto the image file.
    pub map: Duration,
    /// Reading the record headers into the index.
    pub index: Duration,
    /// Emptying guest RAM of the replaced guest's pages (a revert only).
    pub discard: Duration,
    /// Registering RAM with userfaultfd and starting the loader.
    pub start: Duration,
}

impl std::fmt::Display for LoadPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "map {:.1} ms, index {:.1} ms, discard {:.1} ms, start {:.1} ms",
            ms(self.map),
            ms(self.index),
            ms(self.discard),
            ms(self.start)
        )
    }
}

/// Guest RAM `mem` of a VM configured as `vm` set up from the RAM stream
/// at `place` of snapshot `snapshot` in `image`: lazily when [`wanted`]
/// and userfaultfd works, else read now (`over`: `mem` holds another
/// guest's RAM). Returns the loader if lazy, and the bytes of RAM the
/// stream holds. A lazy loader reads the snapshot's area through a map
/// onto the image file ([`MappedArea`]), not through `image`: the caller
/// may close `image` once this returns (a fork's own reader), or keep
/// using it (the VM's disk).
#[allow(clippy::too_many_arguments)]
pub fn load(
    image: &qcow::image::Qcow2,
    snapshot: &str,
    place: crate::state::image::RamPlace,
    vm: crate::state::machine::ConfigSummary,
    mem: &GuestMemoryMmap,
    over: bool,
    seccomp: bool,
    first: &[u64],
) -> Result<(Option<LazyRam>, u64), StateError> {
    load_timed(
        image,
        snapshot,
        place,
        vm,
        mem,
        over,
        seccomp,
        first,
        None,
        &mut LoadPhases::default(),
    )
}

/// The guest addresses a restored machine touches first, whose records
/// a lazy load fills before any other ([`Registered::fill_first`]): the
/// VM generation ID, which the VMM writes (or the loader lays in, a
/// revert's [`Registered::patch`]) before the guest runs, the
/// rings of every active virtio queue, which the device thread reads as
/// the transports are restored, then per vCPU its page-table root (CR3),
/// and its RIP and RSP, which are guest physical addresses only where the
/// guest maps memory one to one (as the test guest does; elsewhere they
/// fall outside RAM or on some other record, which costs one record's
/// read out of order).
pub fn first_pages(machine: &crate::state::machine::MachineState) -> Vec<u64> {
    let mut first = vec![crate::devices::vmgenid::VMGENID_START];
    for transport in machine.virtio.iter().filter(|t| t.activated) {
        for queue in transport.queues.iter().filter(|q| q.ready) {
            first.extend([queue.desc, queue.avail, queue.used]);
        }
    }
    for vcpu in &machine.vcpus {
        first.push(vcpu.sregs.cr3 & !(crate::state::memory::PAGE as u64 - 1));
        first.push(vcpu.regs.rip);
        first.push(vcpu.regs.rsp);
    }
    first
}

/// [`load`], with `patch` laid over the snapshot's bytes by a lazy load
/// ([`Registered::patch`]; [`LazyRam::patched`] says whether it took it),
/// recording where its time went in `phases`.
#[allow(clippy::too_many_arguments)]
pub fn load_timed(
    image: &qcow::image::Qcow2,
    snapshot: &str,
    place: crate::state::image::RamPlace,
    vm: crate::state::machine::ConfigSummary,
    mem: &GuestMemoryMmap,
    over: bool,
    seccomp: bool,
    first: &[u64],
    patch: Option<Patch>,
    phases: &mut LoadPhases,
) -> Result<(Option<LazyRam>, u64), StateError> {
    let mut mark = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let spent = now - mark;
        mark = now;
        spent
    };
    let read_now = |image: &qcow::image::Qcow2, over: bool| {
        crate::state::image::read_memory(image, snapshot, place, vm, mem, over)
    };
    if !wanted() {
        return Ok((None, read_now(image, over)?));
    }
    // The area is mapped onto the image file once: the index and the
    // loader read it without looking the snapshot up again, and without
    // a handle of their own.
    let area = MappedArea::new(image, snapshot)?;
    phases.map = lap();
    let (start, end) = place.stream();
    let (segments, bytes) = index::build(&area, start, end, vm)?;
    phases.index = lap();
    // The replaced guest's pages are moved away now and freed by the
    // loader (or dropped in place where they cannot be moved).
    let detached = if over {
        match detach_all(mem) {
            Ok(detached) => Some(detached),
            Err(e) => {
                eprintln!("vmm: {e}; discarding it now");
                discard_all(mem)?;
                None
            }
        }
    } else {
        None
    };
    phases.discard = lap();
    let mut registered = match Registered::new(mem) {
        Ok(registered) => registered,
        Err(e) => {
            // `mem` is all zero now (fresh, or emptied): read as fresh.
            eprintln!("vmm: {e}; loading guest RAM now");
            return Ok((None, read_now(image, false)?));
        }
    };
    if let Some(detached) = detached {
        registered = registered.release_later(detached);
    }
    registered = registered.fill_first(first);
    if let Some(patch) = patch {
        registered = registered.patch(patch);
    }
    let source: Source = Box::new(area);
    let lazy = registered.start(segments, source, seccomp, snapshot.to_string())?;
    phases.start = lap();
    Ok((Some(lazy), bytes))
}

/// The configuration of a one-vCPU VM with `memory` bytes of RAM and no
/// devices, for the tests of this module and its children.
#[cfg(test)]
pub(crate) fn one_cpu_summary(memory: u64) -> crate::state::machine::ConfigSummary {
    crate::state::machine::ConfigSummary {
        cpus: 1,
        memory,
        disks: 0,
        nets: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    struct Shared(std::sync::Arc<Vec<u8>>);

    impl StreamSource for Shared {
        fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError> {
            self.0.as_ref().read_at(pos, buf)
        }
    }

    #[test]
    fn the_index_through_the_map_equals_the_index_through_the_tables() {
        let size = 16u64 << 20;
        let summary = one_cpu_summary(size);
        let saved = crate::vm::map_guest_memory(size).unwrap();
        for addr in [0x1000u64, 0x20_0000, 0x80_0000, size - 3 * 4096] {
            saved
                .write_slice(&[addr as u8 | 1; 3 * 4096], GuestAddress(addr))
                .unwrap();
        }
        // 5 MiB of data: one run longer than a record.
        saved
            .write_slice(&vec![9u8; 5 << 20], GuestAddress(0x90_0000))
            .unwrap();
        // The stream after other bytes, as in a snapshot's area.
        let lead = 70_001u64;
        let mut area = vec![3u8; lead as usize];
        crate::state::memory::save(&saved, summary, &mut area).unwrap();
        let opts = qcow::create::CreateOptions {
            size: 1 << 20,
            ..Default::default()
        };
        let image = qcow::create::create(
            std::sync::Arc::new(qcow::MemStorage::default()),
            None,
            None,
            &opts,
        )
        .unwrap();
        let mut writer = image.vm_state_writer().unwrap();
        writer.write_all(&area).unwrap();
        let vm_state_size = writer.finish().unwrap();
        image
            .create_snapshot_with_vm_state(
                "s",
                qcow::image::VmStateInfo {
                    vm_state_size,
                    vm_clock_nsec: 0,
                },
            )
            .unwrap();
        let tables = AreaSource {
            image: &image,
            snapshot: "s".to_string(),
        };
        let mapped = MappedArea::new(&image, "s").unwrap();
        let end = area.len() as u64;
        let by_tables = index::build(&tables, lead, end, summary).unwrap();
        let by_map = index::build(&mapped, lead, end, summary).unwrap();
        assert_eq!(by_tables, by_map);
        assert_eq!(by_map.1, 12 * 4096 + (5 << 20));
        // Each record reads the same both ways.
        for segment in by_map.0.iter().filter(|s| s.record.is_some()) {
            let pos = segment.record.unwrap();
            let len = (HEADER_LEN as u64 + 8 + segment.len) as usize;
            let (mut a, mut b) = (vec![0u8; len], vec![1u8; len]);
            tables.read_at(pos, &mut a).unwrap();
            mapped.read_at(pos, &mut b).unwrap();
            assert!(a == b, "record at {pos}");
            assert!(a == area[pos as usize..pos as usize + len]);
        }
        assert!(MappedArea::new(&image, "none").is_err());
    }

    #[test]
    fn pages_touched_before_the_loader_reaches_them_are_served() {
        let size = 16u64 << 20;
        let summary = one_cpu_summary(size);
        let saved = crate::vm::map_guest_memory(size).unwrap();
        for (i, addr) in [0x1000u64, 0x20_0000, 0x80_0000, size - 4096]
            .iter()
            .enumerate()
        {
            saved
                .write_slice(&[i as u8 + 1; 4096], GuestAddress(*addr))
                .unwrap();
        }
        let mut stream = Vec::new();
        crate::state::memory::save(&saved, summary, &mut stream).unwrap();
        let stream = std::sync::Arc::new(stream);
        let (segments, bytes) =
            index::build(stream.as_ref(), 0, stream.len() as u64, summary).unwrap();
        assert_eq!(bytes, 4 * 4096);
        let mem = crate::vm::map_guest_memory(size).unwrap();
        let shared = stream.clone();
        let source: Source = Box::new(Shared(shared));
        // Wanted first: a record's page (twice), a zero page and an
        // address outside RAM (both skipped).
        let first = [size - 4096, 0x40_0000, size - 4096, u64::MAX - 5];
        let lazy = match Registered::new(&mem) {
            Ok(registered) => registered
                .fill_first(&first)
                .start(segments, source, false, "t".into())
                .unwrap(),
            Err(e) => {
                eprintln!("userfaultfd unavailable here ({e}): skipped");
                return;
            }
        };
        // Read at once, from this thread: each read waits for its page.
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(size - 4096))
            .unwrap();
        assert_eq!(page, [4u8; 4096]);
        mem.read_slice(&mut page, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(page, [0u8; 4096]);
        lazy.settle();
        let (mut a, mut b) = (vec![0u8; size as usize], vec![0u8; size as usize]);
        saved.read_slice(&mut a, GuestAddress(0)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
    }

    #[test]
    fn a_patch_inside_a_record_is_laid_over_it_and_one_outside_is_refused() {
        let size = 16u64 << 20;
        let summary = one_cpu_summary(size);
        let saved = crate::vm::map_guest_memory(size).unwrap();
        saved
            .write_slice(&[7u8; 2 * 4096], GuestAddress(0x20_0000))
            .unwrap();
        let mut stream = Vec::new();
        crate::state::memory::save(&saved, summary, &mut stream).unwrap();
        let stream = std::sync::Arc::new(stream);
        let start = |at: u64, len: usize| {
            let (segments, _) =
                index::build(stream.as_ref(), 0, stream.len() as u64, summary).unwrap();
            let mem = crate::vm::map_guest_memory(size).unwrap();
            let source: Source = Box::new(Shared(stream.clone()));
            let registered = Registered::new(&mem).ok()?;
            let lazy = registered
                .fill_first(&[at])
                .patch(Patch {
                    guest: at,
                    bytes: vec![0xa5; len],
                })
                .start(segments, source, false, "t".into())
                .unwrap();
            Some((lazy, mem))
        };
        // Inside the record, across its two pages: laid over it, the
        // rest of the record as saved.
        let Some((lazy, mem)) = start(0x20_0ff8, 16) else {
            eprintln!("userfaultfd unavailable here: skipped");
            return;
        };
        assert!(lazy.patched());
        let mut pages = [0u8; 2 * 4096];
        mem.read_slice(&mut pages, GuestAddress(0x20_0000)).unwrap();
        lazy.settle();
        let mut expected = [7u8; 2 * 4096];
        expected[0xff8..0x1008].fill(0xa5);
        assert_eq!(pages, expected);
        // Running past the record's end, or where no record is: refused
        // (the caller writes it), and RAM is the snapshot's.
        for (at, len) in [(0x20_1ff8, 16), (0x40_0000, 16)] {
            let (lazy, mem) = start(at, len).unwrap();
            assert!(!lazy.patched(), "{at:#x}");
            lazy.settle();
            let mut page = [0u8; 16];
            mem.read_slice(&mut page, GuestAddress(at)).unwrap();
            assert!(!page.contains(&0xa5), "{at:#x}");
        }
    }
}
