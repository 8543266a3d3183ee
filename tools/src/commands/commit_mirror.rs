//! The copy at the heart of `img commit`, done as QEMU 10's commit job
//! does it (qemu-img commit runs an active commit, which is a mirror job
//! from the top into the base):
//! - the work is the granules of the mirror's dirty bitmap that a layer
//!   above the base allocates, the granule being the base's cluster size
//!   within 4 KiB to 64 KiB (64 KiB for a base without clusters);
//! - each piece of it takes QEMU's block status of the whole chain
//!   ([`super::block_status`], whose answers end where QEMU's do, e.g. at
//!   a top's L2 table): data is copied (at most 1 MiB at a time); zeros
//!   are written as zeros (with unmap) only when the piece covers whole
//!   subclusters of the base, and are otherwise copied as data; a piece
//!   shorter than a granule is copied as one granule;
//! - zeros written into a raw base punch a hole in its file, as QEMU's
//!   file driver does.
//!
//! So a base whose clusters are larger than the top's, or whose end is
//! not on a granule, or a raw base, ends up with the same data, zero
//! clusters and holes as qemu-img commit leaves.

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ChainExtent, RawImage};
use qcow::fs::AnyImage;

use super::block_status::ChainStatus;
use super::io_reason;

/// QEMU's mirror buffer (DEFAULT_MIRROR_BUF_SIZE): the dirty granules one
/// iteration takes at most.
const BUF_SIZE: u64 = 16 << 20;
/// QEMU's MAX_IO_BYTES: the most data one copy request moves.
const MAX_IO_BYTES: u64 = 1 << 20;
/// The chain is asked which layer allocates what at most this much at a
/// time: the dirty runs hold one such span's extents (32 Ki extents where
/// 512-byte clusters alternate), whatever the image's size.
const STATUS_SPAN: u64 = 16 << 20;

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

/// The dirty bitmap the commit starts from, read as it goes: the
/// granule-aligned runs that hold every byte a layer above the base
/// allocates, in order, merged where they touch. QEMU keeps a bit per
/// granule (2 MiB for 1 TiB of 64 KiB granules); this holds one span's
/// extents and the run being built, so its memory is the same for any
/// image. The layers above the base do not change while the base is
/// written, so reading them as the copy goes finds what reading them
/// first would.
struct DirtyRuns<'a> {
    top: &'a dyn BlockRead,
    base_depth: u32,
    size: u64,
    granule: u64,
    /// Where the next span starts.
    pos: u64,
    /// The current span's extents not yet looked at.
    extents: std::vec::IntoIter<ChainExtent>,
    /// The run being built.
    pending: Option<(u64, u64)>,
    /// Capacity of the span's extents, for the test of the bound.
    #[cfg(test)]
    held: usize,
}

impl<'a> DirtyRuns<'a> {
    fn new(top: &'a dyn BlockRead, base_depth: u32, granule: u64) -> Self {
        DirtyRuns {
            top,
            base_depth,
            size: top.virtual_size(),
            granule,
            pos: 0,
            extents: Vec::new().into_iter(),
            pending: None,
            #[cfg(test)]
            held: 0,
        }
    }

    /// Asks the chain about the next span; false at the end.
    fn next_span(&mut self) -> Result<bool> {
        if self.pos >= self.size {
            return Ok(false);
        }
        let extents = chain_extents(self.top, self.pos, (self.size - self.pos).min(STATUS_SPAN))
            .map_err(|e| anyhow!("Block job failed: {}", super::read_failure(&e)))?;
        let next = extents.last().map_or(self.pos, |e| e.guest_offset + e.len);
        // A chain that describes nothing further ends the walk.
        self.pos = if next > self.pos { next } else { self.size };
        #[cfg(test)]
        {
            self.held = self
                .held
                .max(extents.capacity() * std::mem::size_of::<ChainExtent>());
        }
        self.extents = extents.into_iter();
        Ok(true)
    }
}

impl Iterator for DirtyRuns<'_> {
    type Item = Result<(u64, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        let g = self.granule;
        loop {
            let Some(e) = self.extents.next() else {
                match self.next_span() {
                    Ok(true) => continue,
                    Ok(false) => return self.pending.take().map(Ok),
                    Err(e) => {
                        self.pos = self.size;
                        return Some(Err(e));
                    }
                }
            };
            if !e.allocated || e.depth >= self.base_depth {
                continue;
            }
            let start = e.guest_offset / g * g;
            let end = (e.guest_offset + e.len).div_ceil(g) * g;
            match &mut self.pending {
                Some(run) if run.1 >= start => run.1 = run.1.max(end),
                Some(run) => {
                    let done = *run;
                    *run = (start, end);
                    return Some(Ok(done));
                }
                None => self.pending = Some((start, end)),
            }
        }
    }
}

/// Writes zeros over `[offset, offset+len)` of a raw base as QEMU's file
/// driver does for the mirror's zero writes (which may unmap): it punches
/// a hole, so the file system keeps only the partial blocks at its edges
/// (zeroed) as data. Where the file still holds data that is not zero
/// (a file system without hole punching), zeros are written there.
fn zero_raw(base: &RawImage, offset: u64, len: u64, buf: &mut [u8]) -> Result<()> {
    let failed = |e: qcow::Error| anyhow!("Block job failed: {}", io_reason(&e));
    let storage = base.storage();
    storage.discard(offset, len).map_err(failed)?;
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let (data, n) = storage.data_extent(pos, end - pos).map_err(failed)?;
        let n = n.clamp(1, end - pos);
        if data {
            let mut at = pos;
            while at < pos + n {
                let k = (pos + n - at).min(buf.len() as u64) as usize;
                storage.read_at(&mut buf[..k], at).map_err(failed)?;
                if buf[..k].iter().any(|&b| b != 0) {
                    buf[..k].fill(0);
                    storage.write_at(&buf[..k], at).map_err(failed)?;
                }
                at += k as u64;
            }
        }
        pos += n;
    }
    Ok(())
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
    let mut chain = ChainStatus::new(top);
    for run in DirtyRuns::new(top, base_depth, g) {
        let (run_start, run_end) = run?;
        let mut offset = run_start;
        while offset < run_end.min(size) {
            let window_end = (offset + BUF_SIZE).min(run_end).min(size);
            while offset < window_end {
                let status = chain
                    .status(offset, window_end - offset)
                    .map_err(|e| anyhow!("Block job failed: {}", super::read_failure(&e)))?;
                let run = status.len.max(1);
                let mut io = if status.data() {
                    run.min(MAX_IO_BYTES)
                } else {
                    run
                };
                io -= io % g;
                let zero = if io < g {
                    io = g;
                    false
                } else {
                    !status.data() && offset % unit == 0 && (offset + io) % unit == 0
                };
                let io = io.min(size - offset);
                match (zero, base) {
                    (true, AnyImage::Qcow2(b)) => b
                        .write_zeroes(offset, io, true)
                        .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?,
                    (true, AnyImage::Raw(r)) => zero_raw(r, offset, io, &mut buf)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::device::{Extent, ExtentKind, FileIndex};

    /// A top with every other 64 KiB granule allocated, made up as asked.
    struct Alternating {
        size: u64,
    }

    const G: u64 = 64 << 10;

    impl BlockRead for Alternating {
        fn virtual_size(&self) -> u64 {
            self.size
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> qcow::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> qcow::Result<Vec<Extent>> {
            let end = (offset + len).min(self.size);
            let mut out = Vec::new();
            let mut pos = offset;
            while pos < end {
                let n = ((pos / G + 1) * G).min(end) - pos;
                let kind = if (pos / G).is_multiple_of(2) {
                    ExtentKind::Data {
                        host_offset: pos,
                        file: FileIndex::IMAGE,
                    }
                } else {
                    ExtentKind::Unallocated { host_offset: None }
                };
                out.push(Extent {
                    guest_offset: pos,
                    len: n,
                    kind,
                });
                pos += n;
            }
            Ok(out)
        }
        fn backing(&self) -> Option<&dyn BlockRead> {
            None
        }
        fn format_name(&self) -> &'static str {
            "qcow2"
        }
    }

    #[test]
    fn dirty_runs_hold_one_span_whatever_the_image() {
        // 64 GiB of alternating granules: half a million runs, which as a
        // list of ranges would take 8 MiB (128 MiB at 1 TiB).
        let top = Alternating { size: 64 << 30 };
        let mut runs = DirtyRuns::new(&top, 1, G);
        let mut count = 0u64;
        let mut expected = 0;
        for run in &mut runs {
            let run = run.unwrap();
            assert_eq!(run, (expected, expected + G));
            expected += 2 * G;
            count += 1;
        }
        assert_eq!(count, (64 << 30) / (2 * G));
        // A span's extents, with room for the vector's doubling.
        let bound = 2 * (STATUS_SPAN / G) as usize * std::mem::size_of::<ChainExtent>();
        assert!(
            runs.held > 0 && runs.held <= bound,
            "{} > {bound}",
            runs.held
        );
        assert!(bound <= 32 << 10);
    }

    #[test]
    fn dirty_runs_merge_across_spans() {
        // Granule-aligned runs that touch are one run, even across the
        // spans the chain is asked about.
        struct Full;
        impl BlockRead for Full {
            fn virtual_size(&self) -> u64 {
                3 * STATUS_SPAN + 4096
            }
            fn read_at(&self, buf: &mut [u8], _offset: u64) -> qcow::Result<()> {
                buf.fill(0);
                Ok(())
            }
            fn extents(&self, offset: u64, len: u64) -> qcow::Result<Vec<Extent>> {
                Ok(vec![Extent {
                    guest_offset: offset,
                    len: len.min(self.virtual_size() - offset),
                    kind: ExtentKind::Zero { host_offset: None },
                }])
            }
            fn backing(&self) -> Option<&dyn BlockRead> {
                None
            }
            fn format_name(&self) -> &'static str {
                "qcow2"
            }
        }
        let runs: Vec<_> = DirtyRuns::new(&Full, 1, G).map(Result::unwrap).collect();
        assert_eq!(runs, [(0, 3 * STATUS_SPAN + G)]);
    }
}
