//! `img convert --salvage`: a sequential copy that goes on past errors of
//! the source, as qemu-img's does. A block-status query that fails is
//! retried on a quarter of the range until it covers one sector, which is
//! then warned about and copied as data; a read that fails is retried
//! sector by sector, and each sector that still fails is warned about and
//! written as zeros. Like qemu-img, the status is walked twice (once to
//! count the data, once to copy it), so its warnings show twice.

use anyhow::{Context, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind, SECTOR_SIZE};

use super::convert::{ConvertJob, CHUNK};

/// The longest range one block-status query asks about (QEMU's
/// `BDRV_REQUEST_MAX_SECTORS`).
const MAX_REQUEST_SECTORS: u64 = (i32::MAX as u64) >> 9;

/// What a range of the source is, for the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Data,
    Zero,
    /// Left to the target's backing file.
    Unallocated,
}

/// Runs a conversion that goes on past the source's errors, warning about
/// each unless `quiet`.
pub fn run(job: &ConvertJob<'_>, quiet: bool) -> Result<()> {
    let warn = |text: String| {
        if !quiet {
            eprintln!("{}: warning: {text}", crate::program());
        }
    };
    // The count of data to copy, as qemu-img makes it before copying.
    let mut total = 0u64;
    for source in job.sources {
        walk(job, *source, &warn, |status, _, len| {
            if status == Status::Data {
                total += len;
            }
            Ok(())
        })?;
    }
    (job.progress)(0, total);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut target_offset = 0u64;
    for source in job.sources {
        let base = target_offset;
        walk(job, *source, &warn, |status, offset, len| {
            copy_range(job, *source, status, offset, len, base, &mut buf, &warn)?;
            if status == Status::Data {
                (job.progress)(len, total);
            }
            Ok(())
        })?;
        target_offset += source.virtual_size();
    }
    job.target.flush().context("flush")?;
    Ok(())
}

/// Walks a source's block status from start to end, calling `each` with
/// every range's status in order.
fn walk(
    job: &ConvertJob<'_>,
    source: &dyn BlockRead,
    warn: &dyn Fn(String),
    mut each: impl FnMut(Status, u64, u64) -> Result<()>,
) -> Result<()> {
    let size = source.virtual_size();
    let mut offset = 0u64;
    while offset < size {
        let (status, len) = status_at(job, source, offset, warn);
        let len = len.clamp(1, size - offset);
        each(status, offset, len)?;
        offset += len;
    }
    Ok(())
}

/// The status of the range at `offset` and its length, narrowing the
/// query on errors as qemu-img does.
fn status_at(
    job: &ConvertJob<'_>,
    source: &dyn BlockRead,
    offset: u64,
    warn: &dyn Fn(String),
) -> (Status, u64) {
    let left = source.virtual_size() - offset;
    let mut sectors = left.div_ceil(SECTOR_SIZE).min(MAX_REQUEST_SECTORS);
    loop {
        let len = (sectors * SECTOR_SIZE).min(left);
        let answer = if job.target_has_backing {
            source
                .extents(offset, len)
                .map(|e| e.first().map(|e| (e.guest_offset, e.len, e.kind)))
        } else {
            chain_extents(source, offset, len)
                .map(|e| e.first().map(|e| (e.guest_offset, e.len, e.kind)))
        };
        match answer {
            Ok(first) => {
                let Some((start, extent_len, kind)) = first else {
                    return (Status::Data, len);
                };
                let status = match kind {
                    ExtentKind::Data { .. } | ExtentKind::Compressed { .. } => Status::Data,
                    ExtentKind::Zero { .. } => Status::Zero,
                    ExtentKind::Unallocated { .. } if job.target_has_backing => Status::Unallocated,
                    ExtentKind::Unallocated { .. } => Status::Zero,
                };
                let end = (start + extent_len).min(offset + len);
                return (status, end.saturating_sub(offset).max(1));
            }
            Err(e) if sectors == 1 => {
                warn(format!(
                    "error while reading block status at offset {offset}: {}",
                    crate::commands::read_failure(&e)
                ));
                return (Status::Data, len);
            }
            Err(_) => sectors = sectors.div_ceil(4),
        }
    }
}

/// Copies one range of a source into the target at `base + offset`.
#[allow(clippy::too_many_arguments)]
fn copy_range(
    job: &ConvertJob<'_>,
    source: &dyn BlockRead,
    status: Status,
    offset: u64,
    len: u64,
    base: u64,
    buf: &mut [u8],
    warn: &dyn Fn(String),
) -> Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let at = offset + done;
        let part = &mut buf[..n];
        match status {
            Status::Unallocated => {}
            Status::Zero => {
                if !job.target_is_zero {
                    part.fill(0);
                    write(job, part, base + at)?;
                }
            }
            Status::Data => {
                read_salvaged(source, part, at, warn);
                let all_zero = part.iter().all(|&b| b == 0);
                if !(all_zero && job.target_is_zero && job.sparse_size > 0) {
                    write(job, part, base + at)?;
                }
            }
        }
        done += n as u64;
    }
    Ok(())
}

/// Reads `buf` at `offset`; when that fails, sector by sector, each
/// sector that still fails warned about and read as zeros.
fn read_salvaged(source: &dyn BlockRead, buf: &mut [u8], offset: u64, warn: &dyn Fn(String)) {
    if source.read_at(buf, offset).is_ok() {
        return;
    }
    for (i, sector) in buf.chunks_mut(SECTOR_SIZE as usize).enumerate() {
        let at = offset + i as u64 * SECTOR_SIZE;
        if let Err(e) = source.read_at(sector, at) {
            warn(format!(
                "error while reading offset {at}: {}",
                crate::commands::io_reason(&e)
            ));
            sector.fill(0);
        }
    }
}

fn write(job: &ConvertJob<'_>, data: &[u8], offset: u64) -> Result<()> {
    job.target.write_at(data, offset).map_err(|e| {
        anyhow::anyhow!(
            "error while writing at byte {offset}: {}",
            crate::commands::io_reason(&e)
        )
    })
}
