//! The copy at the heart of `img commit`, done as QEMU 10's commit job
//! does it (qemu-img commit runs an active commit, which is a mirror job
//! from the top into the base):
//! - the work is the granules of the mirror's dirty bitmap that a layer
//!   above the base allocates, the granule being the base's cluster size
//!   within 4 KiB to 64 KiB (64 KiB for a base without clusters);
//! - each piece of it takes the block status of the whole chain: data is
//!   copied (at most 1 MiB at a time); zeros are written as zeros (with
//!   unmap) only when the piece covers whole subclusters of the base, and
//!   are otherwise copied as data; a piece shorter than a granule is
//!   copied as one granule.
//!
//! So a base whose clusters are larger than the top's, or whose end is
//! not on a granule, ends up with the same data and zero clusters as
//! qemu-img commit leaves.

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ChainExtent, ExtentKind};
use qcow::fs::AnyImage;

use super::io_reason;

/// QEMU's mirror buffer (DEFAULT_MIRROR_BUF_SIZE): the dirty granules one
/// iteration takes at most.
const BUF_SIZE: u64 = 16 << 20;
/// QEMU's MAX_IO_BYTES: the most data one copy request moves.
const MAX_IO_BYTES: u64 = 1 << 20;
/// The chain is asked about at most this much at a time.
const STATUS_SPAN: u64 = 1 << 30;

/// The mirror's granularity for `base` (bdrv_get_default_bitmap_granularity).
fn granularity(base: &AnyImage) -> u64 {
    match base {
        AnyImage::Qcow2(b) => b.cluster_size().clamp(4096, 65536),
        _ => 65536,
    }
}

/// The unit a zero write must cover whole to go down as zeros
/// (bdrv_round_to_subclusters): a qcow2 base's subcluster; anything for
/// a base without clusters.
fn zero_unit(base: &AnyImage) -> u64 {
    match base {
        AnyImage::Qcow2(b) => b.geometry().subcluster_size(),
        _ => 1,
    }
}

/// The dirty bitmap the commit starts from: granule-aligned runs holding
/// every byte a layer above `base_depth` allocates, merged.
fn dirty_runs(top: &dyn BlockRead, base_depth: u32, size: u64, g: u64) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let extents = chain_extents(top, pos, (size - pos).min(STATUS_SPAN))
            .map_err(|e| anyhow!("Block job failed: {}", super::read_failure(&e)))?;
        let Some(last) = extents.last() else {
            break;
        };
        let next = last.guest_offset + last.len;
        for e in extents
            .iter()
            .filter(|e| e.allocated && e.depth < base_depth)
        {
            let start = e.guest_offset / g * g;
            let end = (e.guest_offset + e.len).div_ceil(g) * g;
            match runs.last_mut() {
                Some(run) if run.1 >= start => run.1 = run.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        if next <= pos {
            break;
        }
        pos = next;
    }
    Ok(runs)
}

/// Whether two neighbouring extents give one block status answer: the
/// same layer, and the same kind of cluster.
fn same_status(a: &ChainExtent, b: &ChainExtent) -> bool {
    let class = |e: &ChainExtent| match e.kind {
        ExtentKind::Data { .. } => 0,
        ExtentKind::Compressed { .. } => 1,
        ExtentKind::Zero { host_offset: None } => 2,
        ExtentKind::Zero {
            host_offset: Some(_),
        } => 3,
        ExtentKind::Unallocated { .. } => 4,
    };
    a.depth == b.depth && class(a) == class(b)
}

/// The chain's block status at `offset`: whether it is data, and for how
/// many bytes (at most `len`).
fn status(top: &dyn BlockRead, offset: u64, len: u64) -> Result<(bool, u64)> {
    let extents = chain_extents(top, offset, len)
        .map_err(|e| anyhow!("Block job failed: {}", super::read_failure(&e)))?;
    let Some(first) = extents.first() else {
        return Ok((false, len));
    };
    let data = matches!(
        first.kind,
        ExtentKind::Data { .. } | ExtentKind::Compressed { .. }
    );
    let mut n = first.len;
    for pair in extents.windows(2) {
        if !same_status(&pair[0], &pair[1]) {
            break;
        }
        n += pair[1].len;
    }
    Ok((data, n.clamp(1, len)))
}

/// Copies what the layers above `base_depth` of `top` allocate into
/// `base`, calling `progress` with the offset reached.
pub fn mirror(
    top: &dyn BlockRead,
    base: &AnyImage,
    base_depth: u32,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let size = top.virtual_size();
    let g = granularity(base);
    let unit = zero_unit(base);
    let mut buf = vec![0u8; MAX_IO_BYTES as usize];
    for (run_start, run_end) in dirty_runs(top, base_depth, size, g)? {
        let mut offset = run_start;
        while offset < run_end.min(size) {
            let window_end = (offset + BUF_SIZE).min(run_end).min(size);
            while offset < window_end {
                let (data, run) = status(top, offset, window_end - offset)?;
                let mut io = if data { run.min(MAX_IO_BYTES) } else { run };
                io -= io % g;
                let zero = if io < g {
                    io = g;
                    false
                } else {
                    !data && offset % unit == 0 && (offset + io) % unit == 0
                };
                let io = io.min(size - offset);
                match (zero, base) {
                    (true, AnyImage::Qcow2(b)) => b
                        .write_zeroes(offset, io, true)
                        .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?,
                    _ => copy(top, base, offset, io, &mut buf)?,
                }
                offset += io;
                progress(offset);
            }
        }
    }
    Ok(())
}

/// Reads `[offset, offset+len)` through the top and writes it to the base.
fn copy(top: &dyn BlockRead, base: &AnyImage, offset: u64, len: u64, buf: &mut [u8]) -> Result<()> {
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(buf.len() as u64) as usize;
        top.read_at(&mut buf[..n], at)
            .map_err(|e| anyhow!("Block job failed: {}", super::read_failure(&e)))?;
        base.write_at(&buf[..n], at)
            .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?;
        at += n as u64;
    }
    Ok(())
}
