//! QEMU 10's block status of a guest range through a whole backing chain,
//! as `bdrv_block_status_above` answers it: a word of flags and how many
//! bytes it holds for. `img compare -s` fails where the two words differ,
//! and the commit job's mirror decides from them what to copy, so both the
//! flags and the lengths follow QEMU's drivers:
//! - a qcow2 layer answers for one run of clusters of one kind (data and
//!   preallocated clusters contiguous in the file), within one L2 table
//!   and for at most `INT_MAX` bytes: data is `DATA | OFFSET_VALID`, a zero
//!   cluster `ZERO` (with `OFFSET_VALID` when preallocated), compressed
//!   data `DATA | COMPRESSED`; an encrypted image gives no offsets;
//! - a raw layer answers as its file does: data, a hole
//!   (`ZERO | OFFSET_VALID`), or the hole that ends the file (`ZERO`, to
//!   the end of the question);
//! - a layer QEMU finds preallocated with metadata asks its file about the
//!   host range of its data, which is then `ZERO` as well in the file's
//!   holes (`BDRV_BLOCK_RECURSE`);
//! - `ALLOCATED` is added where a layer decides the contents (data or
//!   zero); where none does, the chain's bottom adds `ZERO`, as does a
//!   layer past the end of a shorter backing file, whose zeros count as
//!   allocated there;
//! - the chain answers with the first layer that allocates, within the
//!   range of the layers above; `EOF` marks an answer that reaches the end
//!   of the top image (or of the bottom layer, where that is shorter and
//!   nothing allocates: QEMU keeps that layer's flag).
//!
//! Other formats answer from their extents as `img map` shows them.

use std::collections::VecDeque;

use qcow::device::{BlockRead, Extent, ExtentKind, FileIndex};
use qcow::{Error, Result};

/// Data is tied to this layer (`BDRV_BLOCK_DATA`).
pub const DATA: u32 = 0x01;
/// Reads as zero (`BDRV_BLOCK_ZERO`).
pub const ZERO: u32 = 0x02;
/// A host offset is known (`BDRV_BLOCK_OFFSET_VALID`).
pub const OFFSET_VALID: u32 = 0x04;
/// Some layer decides the contents (`BDRV_BLOCK_ALLOCATED`).
pub const ALLOCATED: u32 = 0x10;
/// The answer reaches the end of the image (`BDRV_BLOCK_EOF`).
pub const EOF: u32 = 0x20;
/// Compressed data (`BDRV_BLOCK_COMPRESSED`).
pub const COMPRESSED: u32 = 0x80;

/// Guest bytes one question to a layer's extents covers: bounds the
/// extents held (a 16 MiB window of 512-byte clusters is 32 Ki extents).
const WINDOW: u64 = 16 << 20;
/// QEMU's qcow2 driver answers for at most this many bytes (`INT_MAX`).
const QCOW2_MAX_ANSWER: u64 = i32::MAX as u64;
/// QEMU sizes files in sectors: a file's block status ends at its size
/// rounded up to one.
const SECTOR: u64 = 512;
/// Deepest chain asked about (QEMU refuses deeper ones on open).
const MAX_DEPTH: usize = 1024;

/// One answer: the flags and how many bytes from the offset asked they
/// hold for (0 only at or past the end of the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `DATA`, `ZERO`, ... as QEMU sets them.
    pub flags: u32,
    /// Bytes the answer covers.
    pub len: u64,
}

impl Status {
    /// Some layer decides the contents.
    pub fn allocated(&self) -> bool {
        self.flags & ALLOCATED != 0
    }
    /// Reads as zero.
    pub fn zero(&self) -> bool {
        self.flags & ZERO != 0
    }
    /// Data (possibly also zero, in a preallocated file's hole).
    pub fn data(&self) -> bool {
        self.flags & DATA != 0
    }
}

/// A run of extents a layer's driver answers as one, remembered: qemu-img
/// asks again from inside it when the other image's answer was shorter.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    /// The bound the run was taken up to.
    bound: u64,
    kind: ExtentKind,
}

/// One layer and its extents from where it was last asked on, at most a
/// window's worth plus the run being followed.
struct Cursor<'a> {
    layer: &'a dyn BlockRead,
    extents: VecDeque<Extent>,
    /// End of the guest range `extents` describe.
    covered_end: u64,
    run: Option<Run>,
}

/// Whether `b` continues `a` in one answer of QEMU's qcow2 driver: the same
/// kind of cluster, and for clusters with host offsets, the next host
/// cluster (count_contiguous_subclusters). Compressed clusters answer
/// one by one.
fn continues(a: &Extent, b: &Extent) -> bool {
    let next_host = |x: u64, y: u64| x + a.len == y;
    a.guest_offset + a.len == b.guest_offset
        && match (a.kind, b.kind) {
            (
                ExtentKind::Data {
                    host_offset: x,
                    file: fa,
                },
                ExtentKind::Data {
                    host_offset: y,
                    file: fb,
                },
            ) => fa == fb && next_host(x, y),
            (ExtentKind::Zero { host_offset: None }, ExtentKind::Zero { host_offset: None })
            | (
                ExtentKind::Unallocated { host_offset: None },
                ExtentKind::Unallocated { host_offset: None },
            ) => true,
            (
                ExtentKind::Zero {
                    host_offset: Some(x),
                },
                ExtentKind::Zero {
                    host_offset: Some(y),
                },
            )
            | (
                ExtentKind::Unallocated {
                    host_offset: Some(x),
                },
                ExtentKind::Unallocated {
                    host_offset: Some(y),
                },
            ) => next_host(x, y),
            _ => false,
        }
}

/// `kind` moved `by` bytes into its extent.
fn shifted(kind: ExtentKind, by: u64) -> ExtentKind {
    match kind {
        ExtentKind::Data { host_offset, file } => ExtentKind::Data {
            host_offset: host_offset + by,
            file,
        },
        ExtentKind::Zero { host_offset } => ExtentKind::Zero {
            host_offset: host_offset.map(|h| h + by),
        },
        ExtentKind::Unallocated { host_offset } => ExtentKind::Unallocated {
            host_offset: host_offset.map(|h| h + by),
        },
        compressed @ ExtentKind::Compressed { .. } => compressed,
    }
}

impl<'a> Cursor<'a> {
    fn new(layer: &'a dyn BlockRead) -> Self {
        Cursor {
            layer,
            extents: VecDeque::new(),
            covered_end: 0,
            run: None,
        }
    }

    /// Appends the next window's extents; false when there are none.
    fn fill(&mut self) -> Result<bool> {
        let size = self.layer.virtual_size();
        if self.covered_end >= size {
            return Ok(false);
        }
        let got = self
            .layer
            .extents(self.covered_end, WINDOW.min(size - self.covered_end))?;
        let end = match got.last() {
            Some(last) => last.guest_offset + last.len,
            None => return Ok(false),
        };
        if end <= self.covered_end {
            return Ok(false);
        }
        self.extents.extend(got);
        self.covered_end = end;
        Ok(true)
    }

    /// Makes the first extent held the one holding `offset`.
    fn seek(&mut self, offset: u64) -> Result<Extent> {
        while let Some(front) = self.extents.front() {
            if front.guest_offset + front.len > offset {
                break;
            }
            self.extents.pop_front();
        }
        if !matches!(self.extents.front(), Some(f) if f.guest_offset <= offset) {
            self.extents.clear();
            self.covered_end = offset;
            self.fill()?;
        }
        match self.extents.front() {
            Some(f) if f.guest_offset <= offset && offset < f.guest_offset + f.len => Ok(*f),
            _ => Err(Error::OutOfRange {
                offset,
                len: 1,
                size: self.layer.virtual_size(),
            }),
        }
    }

    /// What lies at `offset` and where the run of extents the driver
    /// answers as one ends, at most at `bound`.
    fn run(&mut self, offset: u64, bound: u64) -> Result<(ExtentKind, u64)> {
        if let Some(r) = self.run {
            if r.start <= offset && offset < r.end && r.bound == bound {
                return Ok((shifted(r.kind, offset - r.start), r.end));
            }
        }
        let first = self.seek(offset)?;
        let kind = shifted(first.kind, offset - first.guest_offset);
        let mut last = first;
        let mut end = first.guest_offset + first.len;
        // Extents wholly inside the run are let go as it is followed; the
        // one it ends in stays for the next question.
        while end < bound {
            self.extents.pop_front();
            if self.extents.is_empty() && !self.fill()? {
                break;
            }
            let next = self.extents[0];
            if !continues(&last, &next) {
                break;
            }
            end = next.guest_offset + next.len;
            last = next;
        }
        let end = end.min(bound);
        self.run = Some(Run {
            start: offset,
            end,
            bound,
            kind,
        });
        Ok((kind, end))
    }
}

/// Whether QEMU's driver for `layer` lets an unallocated range fall
/// through to a backing file (`supports_backing`), and so calls it zero
/// at the chain's bottom.
fn supports_backing(layer: &dyn BlockRead) -> bool {
    matches!(layer.format_name(), "qcow2" | "qcow" | "qed" | "vmdk")
}

/// Block status of a file as QEMU's file driver answers it at `host`:
/// whether it is data, how far that lasts, and whether a hole is the one
/// that ends the file.
struct FileAnswer {
    data: bool,
    len: u64,
    trailing_hole: bool,
}

fn ask_file(storage: &dyn qcow::Storage, host: u64) -> Result<FileAnswer> {
    let file_len = storage.len()?;
    let (data, len) = storage.data_extent(host, u64::MAX - host)?;
    Ok(FileAnswer {
        data,
        len,
        trailing_hole: !data && host.saturating_add(len) >= file_len,
    })
}

/// The recursion QEMU's block status makes into the file of a layer whose
/// data it asks about (`BDRV_BLOCK_RECURSE`): `ZERO` where the file has a
/// hole or ends, and the answer shortened to the file's run.
fn recurse_into_file(storage: &dyn qcow::Storage, host: u64, len: u64) -> Result<(u32, u64)> {
    let file_end = storage.len()?.div_ceil(SECTOR) * SECTOR;
    if host >= file_end {
        return Ok((ZERO, len));
    }
    let asked = len.min(file_end - host);
    let answer = ask_file(storage, host)?;
    let file_len = if answer.trailing_hole {
        asked
    } else {
        answer.len.min(asked)
    };
    let at_end = host + file_len == file_end;
    match (answer.data, at_end) {
        (false, true) => Ok((ZERO, len)),
        (false, false) => Ok((ZERO, file_len)),
        (true, _) => Ok((0, file_len)),
    }
}

/// The block status of a chain, asked at increasing offsets (asking
/// backwards is right, only slower).
pub struct ChainStatus<'a> {
    layers: Vec<Cursor<'a>>,
}

impl<'a> ChainStatus<'a> {
    /// The chain below and including `top`.
    pub fn new(top: &'a dyn BlockRead) -> Self {
        let mut layers = vec![Cursor::new(top)];
        let mut below = top.backing();
        while let Some(layer) = below {
            if layers.len() >= MAX_DEPTH {
                break;
            }
            layers.push(Cursor::new(layer));
            below = layer.backing();
        }
        ChainStatus { layers }
    }

    /// The answer for `[offset, offset+bytes)` of the whole chain, as
    /// `bdrv_block_status_above(top, NULL, ...)` gives it.
    pub fn status(&mut self, offset: u64, bytes: u64) -> Result<Status> {
        let (mut flags, mut len) = self.layer_status(0, offset, bytes)?;
        if len == 0 || flags & ALLOCATED != 0 {
            return Ok(Status { flags, len });
        }
        let eof = (flags & EOF != 0).then_some(offset + len);
        let mut bytes = len;
        for depth in 1..self.layers.len() {
            let (f, n) = self.layer_status(depth, offset, bytes)?;
            if n == 0 {
                // Past the end of a shorter backing file: zeros, as if
                // allocated by the layer above.
                flags = ZERO | ALLOCATED;
                len = bytes;
                break;
            }
            (flags, len) = (f, n);
            if flags & ALLOCATED != 0 {
                flags &= !EOF;
                break;
            }
            bytes = len;
        }
        if eof == Some(offset + len) {
            flags |= EOF;
        }
        Ok(Status { flags, len })
    }

    /// One layer's answer, as its driver and bdrv_co_do_block_status give
    /// it (without looking below the layer).
    fn layer_status(&mut self, depth: usize, offset: u64, bytes: u64) -> Result<(u32, u64)> {
        let cursor = &mut self.layers[depth];
        let layer = cursor.layer;
        let size = layer.virtual_size();
        if offset >= size {
            return Ok((EOF, 0));
        }
        let bytes = bytes.min(size - offset);
        if bytes == 0 {
            return Ok((0, 0));
        }
        let bound = layer.status_boundary(offset).unwrap_or(size).min(size);
        let (kind, run_end) = cursor.run(offset, bound)?;
        let mut end = run_end.min(offset + bytes);
        let raw = layer.format_name() == "raw";
        if layer.format_name() == "qcow2" {
            end = end.min(offset + QCOW2_MAX_ANSWER);
        }
        let mut len = end - offset;
        let offset_valid = if layer.hides_host_offsets() {
            0
        } else {
            OFFSET_VALID
        };
        let mut flags = match kind {
            ExtentKind::Data { host_offset, file } => {
                let mut flags = DATA | offset_valid;
                if offset_valid != 0 && layer.asks_file_about_data(file) {
                    if let Some(f) = layer.extent_file(file) {
                        let (zero, n) = recurse_into_file(&*f.storage, host_offset, len)?;
                        flags |= zero;
                        len = n;
                    }
                }
                flags
            }
            ExtentKind::Compressed { .. } => DATA | COMPRESSED,
            ExtentKind::Zero {
                host_offset: Some(host),
            } => {
                if layer.file_holes_are_data() {
                    DATA | ZERO | offset_valid
                } else if raw && ends_file(layer, host)? {
                    // The file driver's trailing hole: no offset, and the
                    // answer runs to the end of the question.
                    len = bytes;
                    ZERO
                } else {
                    ZERO | offset_valid
                }
            }
            ExtentKind::Zero { host_offset: None } => ZERO,
            ExtentKind::Unallocated { host_offset } => {
                if host_offset.is_some() {
                    offset_valid
                } else {
                    0
                }
            }
        };
        if flags & (DATA | ZERO) != 0 {
            flags |= ALLOCATED;
        } else if supports_backing(layer) {
            match layer.backing() {
                None => flags |= ZERO,
                Some(b) if offset >= b.virtual_size() => flags |= ZERO,
                Some(_) => {}
            }
        }
        if offset + len == size {
            flags |= EOF;
        }
        Ok((flags, len))
    }
}

/// Whether the hole of a raw layer at `host` lasts to the end of its file.
fn ends_file(layer: &dyn BlockRead, host: u64) -> Result<bool> {
    match layer.extent_file(FileIndex::IMAGE) {
        Some(f) => Ok(ask_file(&*f.storage, host)?.trailing_hole),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use qcow::device::RawImage;
    use qcow::{FileStorage, Storage};

    /// A layer whose extents are given; unallocated past them.
    struct Fixed {
        size: u64,
        extents: Vec<Extent>,
        backing: Option<Box<dyn BlockRead>>,
        format: &'static str,
        boundary: Option<u64>,
    }

    impl BlockRead for Fixed {
        fn virtual_size(&self) -> u64 {
            self.size
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
            let end = offset + len;
            Ok(self
                .extents
                .iter()
                .filter(|e| e.guest_offset < end && e.guest_offset + e.len > offset)
                .map(|e| {
                    let start = e.guest_offset.max(offset);
                    let stop = (e.guest_offset + e.len).min(end);
                    Extent {
                        guest_offset: start,
                        len: stop - start,
                        kind: shifted(e.kind, start - e.guest_offset),
                    }
                })
                .collect())
        }
        fn backing(&self) -> Option<&dyn BlockRead> {
            self.backing.as_deref()
        }
        fn format_name(&self) -> &'static str {
            self.format
        }
        fn status_boundary(&self, offset: u64) -> Option<u64> {
            self.boundary.map(|b| (offset / b + 1) * b)
        }
    }

    fn data(guest_offset: u64, len: u64, host_offset: u64) -> Extent {
        Extent {
            guest_offset,
            len,
            kind: ExtentKind::Data {
                host_offset,
                file: FileIndex::IMAGE,
            },
        }
    }

    fn unallocated(guest_offset: u64, len: u64) -> Extent {
        Extent {
            guest_offset,
            len,
            kind: ExtentKind::Unallocated { host_offset: None },
        }
    }

    fn qcow2(size: u64, extents: Vec<Extent>, backing: Option<Box<dyn BlockRead>>) -> Fixed {
        Fixed {
            size,
            extents,
            backing,
            format: "qcow2",
            boundary: Some(1 << 20),
        }
    }

    #[test]
    fn a_qcow2_answer_ends_with_its_l2_table_and_eof_only_at_the_end() {
        let top = qcow2(3 << 20, vec![unallocated(0, 3 << 20)], None);
        let mut chain = ChainStatus::new(&top);
        let first = chain.status(0, 3 << 20).unwrap();
        assert_eq!((first.flags, first.len), (ZERO, 1 << 20));
        let last = chain.status(2 << 20, 1 << 20).unwrap();
        assert_eq!((last.flags, last.len), (ZERO | EOF, 1 << 20));
    }

    #[test]
    fn data_runs_split_where_the_host_clusters_do() {
        let top = qcow2(
            256 << 10,
            vec![
                data(0, 64 << 10, 1 << 20),
                data(64 << 10, 64 << 10, (1 << 20) + (64 << 10)),
                data(128 << 10, 128 << 10, 4 << 20),
            ],
            None,
        );
        let mut chain = ChainStatus::new(&top);
        let s = chain.status(0, 256 << 10).unwrap();
        assert_eq!(
            (s.flags, s.len),
            (DATA | OFFSET_VALID | ALLOCATED, 128 << 10)
        );
        // Asked again from inside the run: the same end.
        let s = chain.status(4096, 252 << 10).unwrap();
        assert_eq!(s.len, (128 << 10) - 4096);
        let s = chain.status(128 << 10, 128 << 10).unwrap();
        assert_eq!(
            (s.flags, s.len),
            (DATA | OFFSET_VALID | ALLOCATED | EOF, 128 << 10)
        );
    }

    #[test]
    fn a_shorter_backing_file_keeps_its_eof_and_zeros_past_it_are_allocated() {
        let base = qcow2(1 << 20, vec![unallocated(0, 1 << 20)], None);
        let top = qcow2(2 << 20, vec![unallocated(0, 2 << 20)], Some(Box::new(base)));
        let mut chain = ChainStatus::new(&top);
        let s = chain.status(0, 2 << 20).unwrap();
        assert_eq!((s.flags, s.len), (ZERO | EOF, 1 << 20));
        let s = chain.status(1 << 20, 1 << 20).unwrap();
        assert_eq!((s.flags, s.len), (ZERO | ALLOCATED | EOF, 1 << 20));
    }

    #[test]
    fn a_raw_file_ends_in_a_hole_without_an_offset() {
        let file = tempfile::tempfile().unwrap();
        let storage = Arc::new(FileStorage::new(file));
        storage.write_at(&[1u8; 4096], 0).unwrap();
        storage.set_len(1 << 20).unwrap();
        let raw = RawImage::new(storage).unwrap();
        let mut chain = ChainStatus::new(&raw);
        let s = chain.status(0, 1 << 20).unwrap();
        assert!(s.data() && s.allocated());
        let s = chain.status(s.len, (1 << 20) - s.len).unwrap();
        assert_eq!(s.flags & (ZERO | OFFSET_VALID | EOF), ZERO | EOF);
    }

    #[test]
    fn the_extents_held_stay_within_a_window() {
        // 1 GiB of alternating 512-byte data and unallocated clusters.
        let size = 1u64 << 30;
        let extents: Vec<Extent> = (0..size / 512)
            .map(|i| {
                if i % 2 == 0 {
                    data(i * 512, 512, (1 << 40) + i * 4096)
                } else {
                    unallocated(i * 512, 512)
                }
            })
            .take(1 << 16)
            .collect();
        let top = qcow2(size, extents, None);
        let mut chain = ChainStatus::new(&top);
        let mut offset = 0;
        let mut most = 0;
        while offset < 32 << 20 {
            let s = chain.status(offset, size - offset).unwrap();
            assert_eq!(s.len, 512);
            most = most.max(chain.layers[0].extents.len());
            offset += s.len;
        }
        assert!(most as u64 <= WINDOW / 512, "{most} extents held");
    }
}
