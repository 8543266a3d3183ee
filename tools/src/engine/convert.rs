//! The copy engine of `img convert`: several sources, concatenated, copied
//! into one target by a few worker threads that each take the next chunk,
//! read it, find its zeros and write the rest out of order (like
//! `qemu-img convert -W`). Reads of one worker overlap writes of another.
//!
//! Memory stays bounded: each worker holds one chunk buffer, and the qcow2
//! metadata caches are bounded by the library.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind};
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
        AnyImage::Foreign(_, f) => CHUNK.max(f.cluster_size().unwrap_or(0)),
    }
}

/// Workers for a job asking for `asked`: as many as the buffer budget
/// allows; into a compressing target no more than there are cores, where
/// each spends its time compressing (more would only hold more buffers
/// and compressor state).
fn worker_count(target: &AnyImage, asked: usize, chunk_len: u64) -> usize {
    let workers = asked
        .clamp(1, 16)
        .min((BUFFER_BUDGET / chunk_len).max(1) as usize);
    if compresses_writes(target) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        workers.min(cores)
    } else {
        workers
    }
}

/// What `img convert` copies and how.
pub struct ConvertJob<'a> {
    /// Sources, concatenated in order.
    pub sources: &'a [&'a dyn BlockRead],
    /// For each source, the one file its top layer's data extents point
    /// into, if there is one ([`AnyImage::host_file`]): holes of that file
    /// inside data extents read as zero, so they are neither read nor
    /// written (as qemu-img finds them after reading zeros).
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
    /// Data at this byte of the source's file ([`ConvertJob::source_files`]).
    FileData(u64),
    /// Reads as zero.
    Zero,
    /// Leave to the target's backing file.
    Skip,
}

struct Chunk {
    source: usize,
    offset: u64,
    len: u64,
    target_offset: u64,
}

/// Bytes of chunk buffers all workers together may hold.
const BUFFER_BUDGET: u64 = 4 << 20;

/// Dirty bytes after which workers ask the target to start writeback, so
/// the disk works while the copy goes on instead of all at the end.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Whether a chunk of a source needs any work: when the target already
/// reads as zero, ranges that read as zero in the source need none.
fn chunk_ranges(
    job: &ConvertJob<'_>,
    source: &dyn BlockRead,
    chunk_len: u64,
) -> Result<Vec<(u64, u64)>> {
    let size = source.virtual_size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let add = |start: u64, end: u64, out: &mut Vec<(u64, u64)>| {
        let mut c = start / chunk_len * chunk_len;
        while c < end {
            let len = chunk_len.min(size - c);
            if out.last().is_none_or(|&(s, _)| s < c) {
                out.push((c, len));
            }
            c += chunk_len;
        }
    };
    // `-S 0` copies everything, zeros included.
    if !job.target_is_zero || job.target_has_backing || job.sparse_size == 0 {
        add(0, size, &mut out);
        return Ok(out);
    }
    let mut pos = 0;
    while pos < size {
        let extents = chain_extents(source, pos, size - pos).map_err(|e| {
            anyhow::anyhow!(
                "error while reading block status at offset {pos}: {}",
                crate::commands::io_reason(&e)
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
                add(e.guest_offset, e.guest_offset + e.len, &mut out);
            }
            pos = e.guest_offset + e.len;
        }
    }
    Ok(out)
}

/// Runs a conversion.
pub fn run(job: &ConvertJob<'_>) -> Result<()> {
    let chunk_len = chunk_size(job.target);
    let mut chunks = Vec::new();
    let mut target_offset = 0u64;
    for (i, s) in job.sources.iter().enumerate() {
        let size = s.virtual_size();
        for (offset, len) in chunk_ranges(job, *s, chunk_len)? {
            chunks.push(Chunk {
                source: i,
                offset,
                len,
                target_offset: target_offset + offset,
            });
        }
        target_offset += size;
    }
    let copy_total: u64 = chunks.iter().map(|c| c.len).sum();
    (job.progress)(0, copy_total);
    let written = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let window = ExtentWindow::new(job.target_has_backing, chunk_len);
    let offload = AtomicBool::new(job.copy_offload);
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
                let mut known = KnownLayout::default();
                loop {
                    if first_error.lock().expect("lock").is_some() {
                        return;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(chunk) = chunks.get(index) else {
                        return;
                    };
                    if let Err(e) = copy_chunk(job, chunk, &mut buf, &mut known, &window, &offload)
                    {
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
    job.target.flush().context("flush")?;
    Ok(())
}

/// Host bytes the file system is asked about at once: one answer then
/// covers a long run of data, so most extents need no lseek at all.
const LAYOUT_SPAN: u64 = 1 << 40;

/// What a worker last learnt of a source file's layout: host bytes
/// `[start, end)` of source `source` are all data or all hole.
#[derive(Debug, Clone, Copy, Default)]
struct KnownLayout {
    source: usize,
    start: u64,
    end: u64,
    data: bool,
}

/// Splits `len` bytes at `host` of a source's file into runs of data and
/// of holes: `(length, is_data)` in order.
fn file_runs(
    file: &dyn Storage,
    source: usize,
    known: &mut KnownLayout,
    host: u64,
    len: u64,
) -> Result<Vec<(u64, bool)>> {
    let mut runs: Vec<(u64, bool)> = Vec::new();
    let end = host.saturating_add(len);
    let mut pos = host;
    while pos < end {
        if known.source != source || pos < known.start || pos >= known.end {
            let (data, n) = file
                .data_extent(pos, LAYOUT_SPAN)
                .with_context(|| format!("error while finding data at byte {pos}"))?;
            *known = KnownLayout {
                source,
                start: pos,
                end: pos.saturating_add(n.max(1)),
                data,
            };
        }
        let n = known.end.min(end) - pos;
        match runs.last_mut() {
            Some(last) if last.1 == known.data => last.0 += n,
            _ => runs.push((n, known.data)),
        }
        pos += n;
    }
    Ok(runs)
}

/// Splits a chunk into regions by where the source has data.
fn regions(
    job: &ConvertJob<'_>,
    chunk: &Chunk,
    known: &mut KnownLayout,
    window: &ExtentWindow,
) -> Result<Vec<(u64, u64, Region)>> {
    let source = job.sources[chunk.source];
    let file = job.source_files.get(chunk.source).copied().flatten();
    let mut out: Vec<(u64, u64, Region)> = Vec::new();
    let mut pos = chunk.offset;
    let end = chunk.offset + chunk.len;
    while pos < end {
        let extents = window.extents(chunk.source, source, pos, end)?;
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
            match (kind, file) {
                (
                    ExtentKind::Data {
                        host_offset,
                        in_data_file: false,
                    },
                    Some(file),
                ) if depth == 0 => {
                    let mut at = offset;
                    let mut host = host_offset;
                    for (n, data) in file_runs(file, chunk.source, known, host_offset, len)? {
                        let region = if data {
                            Region::FileData(host)
                        } else {
                            Region::Zero
                        };
                        push(at, n, region);
                        at += n;
                        host += n;
                    }
                }
                _ => push(offset, len, region),
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

fn copy_chunk(
    job: &ConvertJob<'_>,
    chunk: &Chunk,
    buf: &mut [u8],
    known: &mut KnownLayout,
    window: &ExtentWindow,
    offload: &AtomicBool,
) -> Result<()> {
    let source = job.sources[chunk.source];
    let delta = chunk.target_offset - chunk.offset;
    for (offset, len, region) in regions(job, chunk, known, window)? {
        let target_offset = offset + delta;
        match region {
            Region::Skip => {}
            Region::Zero => {
                if !job.target_is_zero {
                    write_zeroes(job.target, target_offset, len)?;
                }
            }
            Region::FileData(host) if job.copy_offload => {
                let file = job.source_files[chunk.source].expect("file data has a file");
                let done = offload_copy(job, file, host, target_offset, len, offload)?;
                // What the kernel did not copy (past the file's end, or no
                // offload here) is read and written.
                if done < len {
                    let data = &mut buf[..(len - done) as usize];
                    source
                        .read_at(data, offset + done)
                        .with_context(|| format!("error while reading at byte {offset}"))?;
                    write_data(job, target_offset + done, data)?;
                }
            }
            Region::Data | Region::FileData(_) => {
                let data = &mut buf[..len as usize];
                // qemu-img's words: the OS's text of the failure, once.
                source.read_at(data, offset).map_err(|e| {
                    anyhow::anyhow!(
                        "error while reading at byte {offset}: {}",
                        crate::commands::io_reason(&e)
                    )
                })?;
                write_data(job, target_offset, data)?;
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
        AnyImage::Raw(_) | AnyImage::Foreign(..) => job.sparse_size,
    }
}

/// Writes a data range, leaving aligned zero blocks sparse.
fn write_data(job: &ConvertJob<'_>, offset: u64, data: &[u8]) -> Result<()> {
    if job.compress {
        if let AnyImage::Qcow2(q) = job.target {
            return write_compressed(q, offset, data);
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
                let storage = if p.in_data_file {
                    q.data_file().expect("data file pieces need a data file")
                } else {
                    q.file()
                };
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

fn write_compressed(q: &qcow::image::Qcow2, offset: u64, data: &[u8]) -> Result<()> {
    let cs = q.cluster_size();
    let end = offset + data.len() as u64;
    let mut pos = offset;
    while pos < end {
        let cluster_end = ((pos / cs + 1) * cs).min(end);
        let part = &data[(pos - offset) as usize..(cluster_end - offset) as usize];
        if is_zero(part) {
            // Left unallocated: the new target reads zero there.
        } else if pos.is_multiple_of(cs) && part.len() as u64 == cs {
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
}
