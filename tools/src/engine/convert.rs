//! The copy engine of `img convert`: several sources, concatenated, copied
//! into one target by a few worker threads that each take the next chunk
//! (a range of the target, which may span sources), read it and find its
//! zeros in parallel, then write it. Writes go in the target's order, as
//! qemu-img's do, so that clusters are allocated where qemu-img puts them;
//! `-W` lets them go out of order. Reads of one worker overlap writes of
//! another.
//!
//! Memory stays bounded: each worker holds one chunk buffer, and the qcow2
//! metadata caches are bounded by the library.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use anyhow::{Context, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind, FileIndex};
use qcow::fs::AnyImage;
use qcow::storage::Storage;

use super::extent_window::ExtentWindow;

/// Bytes a worker copies at a time (at least one target cluster).
pub const CHUNK: u64 = 1 << 20;
/// Bytes a worker copies at a time into a target that compresses every
/// write: compressing a chunk takes long enough that a smaller one costs
/// nothing, and each worker's chunk is memory held (qemu-img holds one
/// cluster per coroutine there).
const COMPRESSED_CHUNK: u64 = 256 << 10;

/// Whether the target compresses every write (streamOptimized vmdk).
fn compresses_writes(target: &AnyImage) -> bool {
    matches!(target, AnyImage::Foreign(_, f) if f.compresses_writes())
}

fn chunk_size(target: &AnyImage) -> u64 {
    match target {
        AnyImage::Qcow2(q) => CHUNK.max(q.cluster_size()),
        AnyImage::Raw(_) => CHUNK,
        AnyImage::Foreign(_, f) if f.compresses_writes() => {
            COMPRESSED_CHUNK.max(f.cluster_size().unwrap_or(0))
        }
        // Not a whole block where the format allows it: a vhdx block is
        // 16 MiB, which made one worker of the buffer budget.
        AnyImage::Foreign(_, f) if f.concurrent_partial_unit_writes() => CHUNK,
        AnyImage::Foreign(_, f) => CHUNK.max(f.cluster_size().unwrap_or(0)),
    }
}

/// Workers for a job asking for `asked`: as many as the buffer budget
/// allows, and at most one more than there are cores (one may wait for
/// the disk while the others copy; a fourth worker on two cores bought no
/// speed and held one more chunk buffer, which put vmdk->qcow2's peak
/// RSS over qemu-img's); into a compressing target no more than there are
/// cores, where each spends its time compressing (more would only hold
/// more buffers and compressor state).
fn worker_count(target: &AnyImage, asked: usize, chunk_len: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = asked
        .clamp(1, 16)
        .min((BUFFER_BUDGET / chunk_len).max(1) as usize);
    if compresses_writes(target) {
        workers.min(cores)
    } else {
        workers.min(cores + 1)
    }
}

/// What `img convert` copies and how.
pub struct ConvertJob<'a> {
    /// Sources, concatenated in order.
    pub sources: &'a [&'a dyn BlockRead],
    /// For each source, the one file its top layer's data extents point
    /// into, if there is one ([`AnyImage::host_file`]): holes of that file
    /// inside data extents read as zero, so they are neither read nor
    /// written (as qemu-img finds them after reading zeros). Data extents
    /// in the top layer's other files (a vmdk's extent files, a qcow2 data
    /// file) are asked the same through [`BlockRead::extent_file`].
    pub source_files: &'a [Option<&'a dyn Storage>],
    /// The target image.
    pub target: &'a AnyImage,
    /// The target reads as zero everywhere already (newly created, no
    /// backing file): zero ranges need no write.
    pub target_is_zero: bool,
    /// The target has a backing file (`-B`): ranges the source's top layer
    /// does not allocate are left unallocated.
    pub target_has_backing: bool,
    /// Smallest run of zero bytes to leave sparse (`-S`); 0 writes
    /// everything.
    pub sparse_size: u64,
    /// Write compressed clusters (`-c`).
    pub compress: bool,
    /// Copy data that lies in a source file into a raw target with
    /// copy_file_range, unread (`-C`, and `-S 0`, which looks for no
    /// zeros in it anyway), falling back to reading and writing where the
    /// kernel cannot.
    pub copy_offload: bool,
    /// Write chunks in the target's order (qemu-img's default; `-W` turns
    /// it off): the target's clusters are then allocated in guest order.
    pub in_order: bool,
    /// Worker threads.
    pub workers: usize,
    /// Called with the bytes of allocated data just copied and the total
    /// to copy (what qemu-img's progress counts), from any worker; first
    /// with 0 bytes.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Read from the source and write.
    Data,
    /// Data at this byte of the source's file ([`ConvertJob::source_files`]);
    /// kept apart from [`Region::Data`] only when copies are offloaded.
    FileData(u64),
    /// Reads as zero.
    Zero,
    /// Leave to the target's backing file.
    Skip,
}

/// A range of the target to copy.
struct Chunk {
    target_offset: u64,
    len: u64,
}

/// Where the sources lie in the target: source `i` covers
/// `[starts[i], starts[i] + size)`.
struct Layout {
    starts: Vec<u64>,
    total: u64,
}

impl Layout {
    fn new(sources: &[&dyn BlockRead]) -> Layout {
        let mut starts = Vec::with_capacity(sources.len());
        let mut total = 0u64;
        for s in sources {
            starts.push(total);
            total += s.virtual_size();
        }
        Layout { starts, total }
    }

    /// The parts of target range `[target_offset, +len)` that each source
    /// covers: `(source, source_offset, target_offset, len)`.
    fn pieces(
        &self,
        sources: &[&dyn BlockRead],
        target_offset: u64,
        len: u64,
    ) -> Vec<(usize, u64, u64, u64)> {
        let end = target_offset + len;
        let mut out = Vec::new();
        for (i, (&start, s)) in self.starts.iter().zip(sources).enumerate() {
            let stop = start + s.virtual_size();
            let lo = target_offset.max(start);
            let hi = end.min(stop);
            if lo < hi {
                out.push((i, lo - start, lo, hi - lo));
            }
        }
        out
    }
}

/// A region of a chunk: target range and what to do with it.
#[derive(Debug, Clone, Copy)]
struct Piece {
    target_offset: u64,
    len: u64,
    region: Region,
}

/// Bytes of chunk buffers all workers together may hold.
const BUFFER_BUDGET: u64 = 4 << 20;

/// Dirty bytes after which workers ask the target to start writeback, so
/// the disk works while the copy goes on instead of all at the end.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// The target ranges to work on, cut at multiples of `chunk_len` of the
/// target: when the target already reads as zero, ranges that read as zero
/// in every source need no work.
fn plan_chunks(job: &ConvertJob<'_>, layout: &Layout, chunk_len: u64) -> Result<Vec<Chunk>> {
    let total = layout.total;
    let mut out: Vec<Chunk> = Vec::new();
    let add = |start: u64, end: u64, out: &mut Vec<Chunk>| {
        let mut c = start / chunk_len * chunk_len;
        while c < end {
            let len = chunk_len.min(total - c);
            if out.last().is_none_or(|last| last.target_offset < c) {
                out.push(Chunk {
                    target_offset: c,
                    len,
                });
            }
            c += chunk_len;
        }
    };
    // `-S 0` copies everything, zeros included.
    if !job.target_is_zero || job.target_has_backing || job.sparse_size == 0 {
        add(0, total, &mut out);
        return Ok(out);
    }
    for (source, &start) in job.sources.iter().zip(&layout.starts) {
        let size = source.virtual_size();
        let mut pos = 0;
        while pos < size {
            let extents = chain_extents(*source, pos, size - pos).map_err(|e| {
                anyhow::anyhow!(
                    "error while reading block status at offset {pos}: {}",
                    crate::commands::read_failure(&e)
                )
            })?;
            if extents.is_empty() {
                break;
            }
            for e in extents {
                let zero = matches!(
                    e.kind,
                    ExtentKind::Zero { .. } | ExtentKind::Unallocated { .. }
                );
                if !zero {
                    add(
                        start + e.guest_offset,
                        start + e.guest_offset + e.len,
                        &mut out,
                    );
                }
                pos = e.guest_offset + e.len;
            }
        }
    }
    Ok(out)
}

/// Whose turn it is to write, when chunks are written in order.
struct WriteTurn {
    next: Mutex<usize>,
    changed: Condvar,
}

impl WriteTurn {
    /// Waits until chunk `index` may write; false if the copy failed
    /// meanwhile.
    fn wait(&self, index: usize, failed: &dyn Fn() -> bool) -> bool {
        let mut next = self.next.lock().expect("lock");
        while *next != index {
            if failed() {
                return false;
            }
            next = self
                .changed
                .wait_timeout(next, std::time::Duration::from_millis(50))
                .expect("lock")
                .0;
        }
        !failed()
    }

    /// Chunk `index` is written: the next one's turn.
    fn done(&self, index: usize) {
        let mut next = self.next.lock().expect("lock");
        *next = index + 1;
        self.changed.notify_all();
    }
}

/// Runs a conversion.
pub fn run(job: &ConvertJob<'_>) -> Result<()> {
    let chunk_len = chunk_size(job.target);
    let layout = Layout::new(job.sources);
    let chunks = plan_chunks(job, &layout, chunk_len)?;
    let copy_total: u64 = chunks.iter().map(|c| c.len).sum();
    let turn = WriteTurn {
        next: Mutex::new(0),
        changed: Condvar::new(),
    };
    (job.progress)(0, copy_total);
    let written = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let window = ExtentWindow::new(job.target_has_backing, chunk_len);
    let offload = AtomicBool::new(job.copy_offload);
    let shared_layout = SharedLayout::default();
    // Each worker holds one chunk buffer: their sum stays within
    // BUFFER_BUDGET, so peak memory stays at qemu-img's (which keeps about
    // as much in flight); on the two-core machines this runs on, more
    // workers bought no speed.
    let workers = worker_count(job.target, job.workers, chunk_len);
    // Writeback is started by a thread of its own, so that a congested
    // device never stalls the copy.
    let (kick, kicks) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while kicks.recv().is_ok() {
                while kicks.try_recv().is_ok() {}
                start_writeback(job.target);
            }
        });
        for _ in 0..workers {
            let kick = kick.clone();
            scope.spawn(|| {
                let kick = kick;
                let mut buf = vec![0u8; chunk_len as usize];
                let mut known = LayoutMemo {
                    own: KnownLayout::default(),
                    shared: &shared_layout,
                };
                loop {
                    if first_error.lock().expect("lock").is_some() {
                        return;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(chunk) = chunks.get(index) else {
                        return;
                    };
                    let failed = || first_error.lock().expect("lock").is_some();
                    let result = read_chunk(job, &layout, chunk, &mut buf, &mut known, &window)
                        .and_then(|pieces| {
                            if job.in_order && !turn.wait(index, &failed) {
                                return Ok(());
                            }
                            let written =
                                write_chunk(job, &layout, chunk, &pieces, &mut buf, &offload);
                            if job.in_order {
                                turn.done(index);
                            }
                            written
                        });
                    if let Err(e) = result {
                        let mut slot = first_error.lock().expect("lock");
                        if slot.is_none() {
                            *slot = Some(e);
                        }
                        return;
                    }
                    let before = written.fetch_add(chunk.len, Ordering::Relaxed);
                    if (before + chunk.len) / WRITEBACK_EVERY != before / WRITEBACK_EVERY {
                        let _ = kick.send(());
                    }
                    (job.progress)(chunk.len, copy_total);
                }
            });
        }
        drop(kick);
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    let flushed = job.target.flush().context("flush");
    crate::commands::report_notices(job.target);
    flushed
}

/// Host bytes the file system is asked about at once: one answer then
/// covers a long run of data, so most extents need no lseek at all.
const LAYOUT_SPAN: u64 = 1 << 40;

/// A run of a source file's layout: host bytes `[start, end)` of file
/// `file` of source `source` are all data or all hole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KnownLayout {
    source: usize,
    file: FileIndex,
    start: u64,
    end: u64,
    data: bool,
}

impl KnownLayout {
    fn holds(&self, source: usize, file: FileIndex, pos: u64) -> bool {
        self.source == source && self.file == file && self.start <= pos && pos < self.end
    }
}

/// Runs of the sources' layouts kept for all workers.
const SHARED_RUNS: usize = 16;

/// What the workers together learnt of the sources' files' layouts (the
/// last [`SHARED_RUNS`] answers). Shared because an answer can be dear:
/// tmpfs finds the next hole by walking every page up to it (5-15 ms
/// from the start of a 1 GiB file without holes), and each worker,
/// starting at its own offset, and again whenever the next chunk lay
/// before what it knew, asked anew (five such walks in one qcow2->vhdx
/// convert in tmpfs: 6% of its CPU time).
#[derive(Default)]
struct SharedLayout {
    runs: Mutex<Vec<KnownLayout>>,
}

/// A worker's view: the run it used last, without a lock, and the shared
/// runs.
struct LayoutMemo<'a> {
    own: KnownLayout,
    shared: &'a SharedLayout,
}

impl LayoutMemo<'_> {
    /// The run holding host byte `pos` of file `file_index` of source
    /// `source`, asking `file` (under the shared lock, so that workers
    /// missing together ask once) when no worker knows it.
    fn run_at(
        &mut self,
        file: &dyn Storage,
        (source, file_index): (usize, FileIndex),
        pos: u64,
    ) -> Result<KnownLayout> {
        if self.own.holds(source, file_index, pos) {
            return Ok(self.own);
        }
        let mut runs = self.shared.runs.lock().expect("layout lock");
        if let Some(run) = runs.iter().find(|r| r.holds(source, file_index, pos)) {
            self.own = *run;
            return Ok(self.own);
        }
        let (data, n) = file
            .data_extent(pos, LAYOUT_SPAN)
            .with_context(|| format!("error while finding data at byte {pos}"))?;
        let run = KnownLayout {
            source,
            file: file_index,
            start: pos,
            end: pos.saturating_add(n.max(1)),
            data,
        };
        // Runs the new one covers are dropped; the oldest goes when full.
        runs.retain(|r| {
            !(r.source == source
                && r.file == file_index
                && run.start <= r.start
                && r.end <= run.end)
        });
        if runs.len() == SHARED_RUNS {
            runs.remove(0);
        }
        runs.push(run);
        self.own = run;
        Ok(run)
    }
}

/// Splits `len` bytes at `host` of a source's file (file `file_index` of
/// source `source`) into runs of data and of holes: `(length, is_data)`
/// in order.
fn file_runs(
    file: &dyn Storage,
    which: (usize, FileIndex),
    memo: &mut LayoutMemo<'_>,
    host: u64,
    len: u64,
) -> Result<Vec<(u64, bool)>> {
    let mut runs: Vec<(u64, bool)> = Vec::new();
    let end = host.saturating_add(len);
    let mut pos = host;
    while pos < end {
        let known = memo.run_at(file, which, pos)?;
        let n = known.end.min(end) - pos;
        match runs.last_mut() {
            Some(last) if last.1 == known.data => last.0 += n,
            _ => runs.push((n, known.data)),
        }
        pos += n;
    }
    Ok(runs)
}

/// The parts of a hole of `len` bytes at `target` of the target, in a
/// source file QEMU does not ask about holes: it reads the hole and finds
/// zeros only in whole blocks of `gran` bytes of the target. Those blocks
/// are zero (true) and need no reading; the edges are read as data.
fn hole_parts(target: u64, len: u64, gran: u64) -> Vec<(u64, u64, bool)> {
    let end = target + len;
    let (lo, hi) = (target.next_multiple_of(gran), end / gran * gran);
    if lo >= hi {
        return vec![(target, len, false)];
    }
    [(target, lo, false), (lo, hi, true), (hi, end, false)]
        .into_iter()
        .filter(|(a, b, _)| a < b)
        .map(|(a, b, zero)| (a, b - a, zero))
        .collect()
}

/// Splits `len` bytes at `offset` of source `index` into regions by where
/// the source has data; offsets stay the source's (the target's are
/// `delta` further).
fn regions(
    job: &ConvertJob<'_>,
    index: usize,
    offset: u64,
    len: u64,
    delta: u64,
    known: &mut LayoutMemo<'_>,
    window: &ExtentWindow,
) -> Result<Vec<(u64, u64, Region)>> {
    let source = job.sources[index];
    let file = job.source_files.get(index).copied().flatten();
    let mut out: Vec<(u64, u64, Region)> = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let extents = window.extents(index, source, pos, end)?;
        if extents.is_empty() {
            break;
        }
        let mut push = |offset: u64, len: u64, region: Region| match out.last_mut() {
            Some(last) if last.0 + last.1 == offset && follows(last.2, last.1, region) => {
                last.1 += len
            }
            _ => out.push((offset, len, region)),
        };
        for (offset, len, kind, depth) in extents {
            let region = match kind {
                ExtentKind::Unallocated { .. } if job.target_has_backing => Region::Skip,
                // `-S 0`: the target is fully allocated, zeros written as
                // data (qemu-img does not even scan the source).
                _ if job.sparse_size == 0 => Region::Data,
                ExtentKind::Zero { .. } => Region::Zero,
                ExtentKind::Unallocated { .. } => Region::Zero,
                _ => Region::Data,
            };
            // A data extent of the top layer in a file of its own (a vmdk
            // extent's file, a qcow2 data file): that file is asked for
            // its holes too, unless the layer does not hand it out (its
            // bytes are not the guest's).
            let other_file = match kind {
                ExtentKind::Data { file: f, .. } if depth == 0 && !f.is_image() => {
                    source.extent_file(f)
                }
                _ => None,
            };
            let in_file = match kind {
                ExtentKind::Data {
                    host_offset,
                    file: f,
                } if depth == 0 => match (f.is_image(), file, &other_file) {
                    (true, Some(own), _) => Some((own, f, host_offset)),
                    (false, _, Some(other)) => Some((&*other.storage, f, host_offset)),
                    _ => None,
                },
                _ => None,
            };
            match in_file {
                Some((storage, file_index, host_offset)) => {
                    // QEMU asks the file itself only where the layer says
                    // so (a metadata-preallocated qcow2, a vmdk's flat
                    // extent); elsewhere it reads the holes as data.
                    let asked = source.asks_file_about_data(file_index);
                    let mut at = offset;
                    let mut host = host_offset;
                    for (n, data) in
                        file_runs(storage, (index, file_index), known, host_offset, len)?
                    {
                        if !data && !asked && job.sparse_size != 0 {
                            for (part, part_len, zero) in
                                hole_parts(at + delta, n, zero_granularity(job))
                            {
                                let region = if zero { Region::Zero } else { Region::Data };
                                push(part - delta, part_len, region);
                            }
                            at += n;
                            host += n;
                            continue;
                        }
                        let region = match data {
                            false if job.sparse_size != 0 => Region::Zero,
                            // `-S 0` allocates the whole target, the
                            // file's holes too, as qemu-img does.
                            // Offloaded copies read the image's own file.
                            _ if job.copy_offload && file_index.is_image() => {
                                Region::FileData(host)
                            }
                            _ => Region::Data,
                        };
                        push(at, n, region);
                        at += n;
                        host += n;
                    }
                }
                None => push(offset, len, region),
            }
            pos = offset + len;
        }
    }
    Ok(out)
}

/// Whether `next` continues a region `prev` of `len` bytes: the same
/// kind, and for file data the next byte of the file.
fn follows(prev: Region, len: u64, next: Region) -> bool {
    match (prev, next) {
        (Region::FileData(a), Region::FileData(b)) => a + len == b,
        (a, b) => a == b,
    }
}

/// Copies `len` bytes of file data at `host` of the source's file to
/// `target_offset` of a raw target in the kernel; returns the bytes done
/// (0 when the target is not raw or the kernel cannot, which turns
/// `offload` off for the rest of the job).
fn offload_copy(
    job: &ConvertJob<'_>,
    file: &dyn Storage,
    host: u64,
    target_offset: u64,
    len: u64,
    offload: &AtomicBool,
) -> Result<u64> {
    let AnyImage::Raw(raw) = job.target else {
        return Ok(0);
    };
    if !offload.load(Ordering::Relaxed) {
        return Ok(0);
    }
    match qcow::storage::copy_range(file, host, &**raw.storage(), target_offset, len)
        .with_context(|| format!("error while copying at byte {target_offset}"))?
    {
        Some(n) => Ok(n),
        None => {
            offload.store(false, Ordering::Relaxed);
            Ok(0)
        }
    }
}

/// Finds a chunk's regions and reads its data into `buf` (at the data's
/// offset in the chunk); file data to be copied in the kernel is left for
/// [`write_chunk`]. With `-c`, a cluster that is not all one kind is read
/// whole, as qemu-img writes compressed clusters whole.
fn read_chunk(
    job: &ConvertJob<'_>,
    layout: &Layout,
    chunk: &Chunk,
    buf: &mut [u8],
    known: &mut LayoutMemo<'_>,
    window: &ExtentWindow,
) -> Result<Vec<Piece>> {
    let mut pieces: Vec<Piece> = Vec::new();
    for (index, source_offset, target_offset, len) in
        layout.pieces(job.sources, chunk.target_offset, chunk.len)
    {
        let delta = target_offset - source_offset;
        for (offset, len, region) in regions(job, index, source_offset, len, delta, known, window)?
        {
            pieces.push(Piece {
                target_offset: offset + delta,
                len,
                region,
            });
        }
    }
    // A compressed cluster (and a streamOptimized vmdk's grain) is
    // written whole, once: a partial one is refused.
    let whole_unit = match job.target {
        AnyImage::Qcow2(q) if job.compress => Some(q.cluster_size()),
        AnyImage::Foreign(_, f) if f.compresses_writes() => f.cluster_size(),
        _ => None,
    };
    if let Some(unit) = whole_unit {
        // Whole clusters are read, not offloaded: file positions do not
        // survive the regrouping.
        for p in &mut pieces {
            if let Region::FileData(_) = p.region {
                p.region = Region::Data;
            }
        }
        pieces = whole_clusters(&pieces, chunk, unit);
    }
    for p in &pieces {
        if p.region == Region::Data {
            let at = (p.target_offset - chunk.target_offset) as usize;
            read_target_range(
                job,
                layout,
                p.target_offset,
                &mut buf[at..at + p.len as usize],
            )?;
        }
    }
    Ok(pieces)
}

/// Reads target range `[target_offset, +buf.len())` from the sources.
fn read_target_range(
    job: &ConvertJob<'_>,
    layout: &Layout,
    target_offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    for (index, source_offset, at, len) in
        layout.pieces(job.sources, target_offset, buf.len() as u64)
    {
        let start = (at - target_offset) as usize;
        // qemu-img's words: the OS's text of the failure, once.
        job.sources[index]
            .read_at(&mut buf[start..start + len as usize], source_offset)
            .map_err(|e| {
                anyhow::anyhow!(
                    "error while reading at byte {source_offset}: {}",
                    crate::commands::read_failure(&e)
                )
            })?;
    }
    Ok(())
}

/// Regroups a chunk's regions by target cluster: a cluster all of one kind
/// keeps it, any other cluster becomes data (qemu-img's rule for `-c`).
fn whole_clusters(pieces: &[Piece], chunk: &Chunk, cluster_size: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let end = chunk.target_offset + chunk.len;
    let mut cluster = chunk.target_offset / cluster_size * cluster_size;
    while cluster < end {
        let lo = cluster.max(chunk.target_offset);
        let hi = (cluster + cluster_size).min(end);
        let mut kinds = pieces
            .iter()
            .filter(|p| p.target_offset < hi && p.target_offset + p.len > lo)
            .map(|p| p.region);
        let first = kinds.next().unwrap_or(Region::Zero);
        let region = if kinds.all(|r| r == first) {
            first
        } else {
            Region::Data
        };
        match out.last_mut() {
            Some(last) if last.region == region && last.target_offset + last.len == lo => {
                last.len += hi - lo
            }
            _ => out.push(Piece {
                target_offset: lo,
                len: hi - lo,
                region,
            }),
        }
        cluster += cluster_size;
    }
    out
}

/// Writes a chunk whose data [`read_chunk`] read into `buf`; file data is
/// copied in the kernel where it can be, and read here where it cannot.
fn write_chunk(
    job: &ConvertJob<'_>,
    layout: &Layout,
    chunk: &Chunk,
    pieces: &[Piece],
    buf: &mut [u8],
    offload: &AtomicBool,
) -> Result<()> {
    for p in pieces {
        match p.region {
            Region::Skip => {}
            Region::Zero => {
                if !job.target_is_zero {
                    write_zeroes(job.target, p.target_offset, p.len)?;
                }
            }
            Region::Data => {
                let at = (p.target_offset - chunk.target_offset) as usize;
                write_data(job, p.target_offset, &buf[at..at + p.len as usize])?;
            }
            Region::FileData(host) => {
                let (index, _, _, _) = layout.pieces(job.sources, p.target_offset, 1)[0];
                let file = job.source_files[index].expect("file data has a file");
                let done = offload_copy(job, file, host, p.target_offset, p.len, offload)?;
                // What the kernel did not copy (past the file's end, or no
                // offload here) is read and written.
                if done < p.len {
                    let at = (p.target_offset - chunk.target_offset + done) as usize;
                    let data = &mut buf[at..at + (p.len - done) as usize];
                    read_target_range(job, layout, p.target_offset + done, data)?;
                    write_data(job, p.target_offset + done, data)?;
                }
            }
        }
    }
    Ok(())
}

/// Asks the target's files to start writing back (best effort).
fn start_writeback(target: &AnyImage) {
    match target {
        AnyImage::Qcow2(q) => {
            let _ = q.file().start_writeback();
            if let Some(d) = q.data_file() {
                let _ = d.start_writeback();
            }
        }
        AnyImage::Raw(r) => {
            let _ = r.storage().start_writeback();
        }
        AnyImage::Foreign(_, f) => {
            let _ = f.storage().start_writeback();
        }
    }
}

fn write_zeroes(target: &AnyImage, offset: u64, len: u64) -> Result<()> {
    match target {
        AnyImage::Qcow2(q) => q.write_zeroes(offset, len, true),
        other => {
            let zeros = vec![0u8; len.min(CHUNK) as usize];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(CHUNK);
                other.write_at(&zeros[..n as usize], pos)?;
                pos += n;
            }
            Ok(())
        }
    }
    .with_context(|| format!("error while writing zeroes at byte {offset}"))
}

/// Granularity of zero detection in the target.
fn zero_granularity(job: &ConvertJob<'_>) -> u64 {
    match job.target {
        // `-S 0`: every block is written, zeros too.
        _ if job.sparse_size == 0 => 0,
        AnyImage::Qcow2(q) => job.sparse_size.max(q.geometry().subcluster_size()),
        // Grains are written whole: a grain of zeros is skipped whole.
        AnyImage::Foreign(_, f) if f.compresses_writes() => {
            job.sparse_size.max(f.cluster_size().unwrap_or(0))
        }
        AnyImage::Raw(_) | AnyImage::Foreign(..) => job.sparse_size,
    }
}

/// Writes a data range, leaving aligned zero blocks sparse.
fn write_data(job: &ConvertJob<'_>, offset: u64, data: &[u8]) -> Result<()> {
    if job.compress {
        if let AnyImage::Qcow2(q) = job.target {
            return write_compressed(job, q, offset, data);
        }
    }
    let gran = zero_granularity(job);
    if gran == 0 {
        return write_plain(job.target, offset, data);
    }
    // Walk aligned blocks; runs of data are written whole, zero blocks are
    // skipped (or zeroed when the target does not read as zero).
    let end = offset + data.len() as u64;
    let mut pos = offset;
    let mut run_start: Option<u64> = None;
    while pos < end {
        let block_end = ((pos / gran + 1) * gran).min(end);
        let block = &data[(pos - offset) as usize..(block_end - offset) as usize];
        let zero = is_zero(block);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(start)) => {
                write_plain(
                    job.target,
                    start,
                    &data[(start - offset) as usize..(pos - offset) as usize],
                )?;
                run_start = None;
            }
            _ => {}
        }
        if zero && !job.target_is_zero {
            write_zeroes(job.target, pos, block_end - pos)?;
        }
        pos = block_end;
    }
    if let Some(start) = run_start {
        write_plain(job.target, start, &data[(start - offset) as usize..])?;
    }
    Ok(())
}

fn write_plain(target: &AnyImage, offset: u64, data: &[u8]) -> Result<()> {
    match target {
        // Encrypted clusters go through the image's cipher.
        AnyImage::Qcow2(q) if q.is_encrypted() => q.write_at(data, offset),
        AnyImage::Qcow2(q) => {
            let plan = q.begin_write(offset, data.len() as u64)?;
            let mut result = Ok(());
            for p in &plan.pieces {
                let start = (p.guest_offset - offset) as usize;
                let storage = q
                    .file_storage(p.file)
                    .expect("a write plan names only the image's own files");
                result = storage.write_at(&data[start..start + p.len as usize], p.host_offset);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Ok(()) => q.finish_write(plan),
                Err(e) => {
                    q.abort_write(plan);
                    Err(e)
                }
            }
        }
        other => other.write_at(data, offset),
    }
    .with_context(|| format!("error while writing at byte {offset}"))
}

/// Writes data compressed, cluster by cluster; zero clusters are left to
/// read as zero, unless `-S 0` asks for every cluster to be written.
fn write_compressed(
    job: &ConvertJob<'_>,
    q: &qcow::image::Qcow2,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let cs = q.cluster_size();
    let write_zeros = job.sparse_size == 0;
    let end = offset + data.len() as u64;
    let mut pos = offset;
    while pos < end {
        let cluster_end = ((pos / cs + 1) * cs).min(end);
        let part = &data[(pos - offset) as usize..(cluster_end - offset) as usize];
        let whole =
            pos.is_multiple_of(cs) && (part.len() as u64 == cs || cluster_end == q.virtual_size());
        if !write_zeros && is_zero(part) {
            // A zero cluster: nothing to write when the target reads zero.
            if !job.target_is_zero {
                q.write_zeroes(pos, part.len() as u64, true)
                    .with_context(|| format!("error while writing zeroes at byte {pos}"))?;
            }
        } else if whole {
            q.write_compressed(pos / cs, part)
                .with_context(|| format!("error while writing at byte {pos}"))?;
        } else {
            // A partial cluster (the disk's last, or a source boundary):
            // stored plainly, completing the cluster by copy-on-write.
            write_plain_qcow2(q, pos, part)?;
        }
        pos = cluster_end;
    }
    Ok(())
}

fn write_plain_qcow2(q: &qcow::image::Qcow2, offset: u64, data: &[u8]) -> Result<()> {
    q.write_at(data, offset)
        .with_context(|| format!("error while writing at byte {offset}"))
}

/// Whether a buffer is all zero (16 bytes at a time).
pub fn is_zero(buf: &[u8]) -> bool {
    let (body, tail) = buf.split_at(buf.len() / 16 * 16);
    body.chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 100]));
        let mut b = vec![0u8; 100];
        b[99] = 1;
        assert!(!is_zero(&b));
        b[99] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }

    /// A file of data at `[0, 1 MiB)`, a hole to 2 MiB and data to 3 MiB
    /// that counts how often its layout is asked for.
    #[derive(Default)]
    struct CountingFile {
        asked: AtomicU64,
    }

    impl Storage for CountingFile {
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> qcow::Result<()> {
            buf.fill(1);
            Ok(())
        }
        fn write_at(&self, _buf: &[u8], _offset: u64) -> qcow::Result<()> {
            Ok(())
        }
        fn flush(&self) -> qcow::Result<()> {
            Ok(())
        }
        fn len(&self) -> qcow::Result<u64> {
            Ok(3 << 20)
        }
        fn set_len(&self, _len: u64) -> qcow::Result<()> {
            Ok(())
        }
        fn data_extent(&self, offset: u64, len: u64) -> qcow::Result<(bool, u64)> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let (data, end) = match offset >> 20 {
                0 => (true, 1 << 20),
                1 => (false, 2 << 20),
                2 => (true, 3 << 20),
                _ => return Ok((false, len)),
            };
            Ok((data, (end - offset).min(len)))
        }
    }

    #[test]
    fn workers_share_what_they_learnt_of_a_file_layout() {
        let file = CountingFile::default();
        let shared = SharedLayout::default();
        let mut first = LayoutMemo {
            own: KnownLayout::default(),
            shared: &shared,
        };
        let mut second = LayoutMemo {
            own: KnownLayout::default(),
            shared: &shared,
        };
        let which = (0, FileIndex::IMAGE);
        let runs = file_runs(&file, which, &mut first, 4096, (3 << 20) - 4096).expect("runs");
        assert_eq!(
            runs,
            vec![((1 << 20) - 4096, true), (1 << 20, false), (1 << 20, true)]
        );
        assert_eq!(file.asked.load(Ordering::Relaxed), 3);
        // Another worker, before and inside what the first learnt: only
        // the byte before it is new.
        let runs = file_runs(&file, which, &mut second, 0, 2 << 20).expect("runs");
        assert_eq!(runs, vec![(1 << 20, true), (1 << 20, false)]);
        assert_eq!(file.asked.load(Ordering::Relaxed), 4);
        // Another source's file is not this one.
        file_runs(&file, (1, FileIndex::IMAGE), &mut second, 0, 4096).expect("runs");
        assert_eq!(file.asked.load(Ordering::Relaxed), 5);
    }
}
