//! Validation of one virtio-blk descriptor chain into backend requests.
//!
//! Everything the guest controls is checked here, once: the chain's shape
//! (a complete chain, device-readable descriptors before device-writable
//! ones, a writable status byte at the very end), every descriptor's range
//! against guest memory, the header, sector ranges against the disk size
//! (with overflow checks), and the advertised limits. Only then are guest
//! buffers turned into [`IoBuf`]s, from the host pointers of the
//! `VolatileSlice`s vm-memory hands out for those checked ranges.
//!
//! The device makes no assumption about how the request is framed into
//! descriptors (virtio 1.x, "message framing"): the readable descriptors
//! form one byte stream (header, then write data or discard segments) and
//! the writable ones another (read data or ID, then the status byte).

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemory};

use super::defs::{
    DISCARD_SEGMENT_SIZE, MAX_CHAIN_DESCRIPTORS, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_REQUEST_BYTES, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, REQUEST_HEADER_SIZE,
    REQ_DISCARD, REQ_FLUSH, REQ_GET_ID, REQ_IN, REQ_OUT, REQ_WRITE_ZEROES, SECTOR_SIZE,
    SEGMENT_FLAG_UNMAP, SERIAL_LEN, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP,
};
use super::memory::GuestView;
use crate::disk::{IoBuf, Request};

/// What the request parser needs to know about the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Disk size in bytes, a multiple of 512.
    pub size: u64,
    /// Whether writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// The ID string GET_ID returns (zero-padded).
    pub serial: [u8; SERIAL_LEN],
}

/// A chain after validation: where its status goes and what to do.
#[derive(Debug)]
pub(crate) struct ParsedChain {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// Guest address of the status byte; `None` when the chain has no
    /// usable status descriptor and is only returned with length 0.
    pub status: Option<GuestAddress>,
    /// The work the chain asks for.
    pub action: Action,
}

/// The work a valid (or refused) chain asks for.
#[derive(Debug)]
pub(crate) enum Action {
    /// Nothing for the backend: complete at once.
    Complete {
        /// Status byte to write.
        status: u8,
        /// Used-ring length (bytes written into writable buffers, status included).
        used_len: u32,
    },
    /// Hand the requests the parser left in [`ParseScratch::requests`] to
    /// the backend (one, or one per discard/write-zeroes segment); the
    /// chain completes when all of them have.
    Submit {
        /// Used-ring length when every request succeeds.
        used_len: u32,
    },
}

impl Action {
    fn fail(status: u8) -> Self {
        Action::Complete {
            status,
            used_len: 1,
        }
    }
}

/// One stretch of a byte stream: `len` bytes of guest memory at `addr`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    addr: GuestAddress,
    len: u64,
}

/// The device-readable or device-writable part of a chain as one stream.
#[derive(Debug, Default)]
struct Stream {
    pieces: Vec<Piece>,
    len: u64,
}

impl Stream {
    fn clear(&mut self) {
        self.pieces.clear();
        self.len = 0;
    }

    fn push(&mut self, addr: GuestAddress, len: u64) {
        if len > 0 {
            self.pieces.push(Piece { addr, len });
            self.len += len;
        }
    }

    /// The pieces covering `len` bytes from stream offset `offset`.
    fn range(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = offset.saturating_add(len);
        let mut start_of_piece = 0u64;
        self.pieces.iter().filter_map(move |piece| {
            let piece_start = start_of_piece;
            start_of_piece += piece.len;
            let from = offset.max(piece_start);
            let to = end.min(piece_start + piece.len);
            (from < to).then(|| Piece {
                addr: GuestAddress(piece.addr.raw_value() + (from - piece_start)),
                len: to - from,
            })
        })
    }

    /// Copy `out.len()` bytes from stream offset `offset`.
    fn read<G, M>(&self, view: &GuestView<G>, offset: u64, out: &mut [u8]) -> bool
    where
        G: Deref<Target = M>,
        M: GuestMemory + ?Sized,
    {
        let mut done = 0usize;
        for piece in self.range(offset, out.len() as u64) {
            let end = done + piece.len as usize;
            if !view.read(piece.addr.raw_value(), &mut out[done..end]) {
                return false;
            }
            done = end;
        }
        done == out.len()
    }

    /// Copy `data` to stream offset `offset`.
    fn write<G, M>(&self, view: &GuestView<G>, offset: u64, data: &[u8]) -> bool
    where
        G: Deref<Target = M>,
        M: GuestMemory + ?Sized,
    {
        let mut done = 0usize;
        for piece in self.range(offset, data.len() as u64) {
            let end = done + piece.len as usize;
            if !view.write(piece.addr.raw_value(), &data[done..end]) {
                return false;
            }
            done = end;
        }
        done == data.len()
    }

    /// Host buffers for `len` bytes from stream offset `offset`, taken from
    /// the regions of guest memory they lie in. Marks them dirty when the
    /// device will write them.
    fn io_bufs<G, M>(
        &self,
        view: &GuestView<G>,
        offset: u64,
        len: u64,
        device_writes: bool,
    ) -> Option<Vec<IoBuf>>
    where
        G: Deref<Target = M>,
        M: GuestMemory + ?Sized,
    {
        let mut bufs = Vec::new();
        let mut total = 0u64;
        for piece in self.range(offset, len) {
            if !view.host_bufs(piece.addr.raw_value(), piece.len, device_writes, &mut bufs) {
                return None;
            }
            total += piece.len;
        }
        (total == len).then_some(bufs)
    }
}

/// Buffers reused from one chain to the next, so that parsing a chain
/// allocates only what it hands to the backend.
#[derive(Debug, Default)]
pub(crate) struct ParseScratch {
    descs: Vec<Descriptor>,
    readable: Stream,
    writable: Stream,
    /// The requests of the last chain parsed when it is to be submitted
    /// ([`Action::Submit`]); empty otherwise.
    pub requests: Vec<Request>,
}

/// Validate the chain whose descriptors `descriptors` yields (as
/// virtio-queue's `DescriptorChain` does: it ends early on a loop, a bad
/// index, an unreadable or nested indirect table) and decide what to do.
/// GET_ID is answered here (the ID is written into the chain).
pub(crate) fn parse_chain<G, M, I>(
    view: &GuestView<G>,
    head: u16,
    descriptors: I,
    info: &DiskInfo,
    scratch: &mut ParseScratch,
) -> ParsedChain
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
    I: Iterator<Item = Descriptor>,
{
    let descs = &mut scratch.descs;
    descs.clear();
    let mut count = 0usize;
    let mut last: Option<Descriptor> = None;
    for desc in descriptors {
        count += 1;
        if descs.len() <= MAX_CHAIN_DESCRIPTORS {
            descs.push(desc);
        }
        last = Some(desc);
    }
    let drop = |head| ParsedChain {
        head,
        status: None,
        action: Action::fail(STATUS_IOERR),
    };
    // A chain that stopped on a descriptor still pointing onwards was cut
    // short (loop, index out of range, bad indirect table): its true end,
    // and so its status byte, is unknown.
    let Some(last) = last else { return drop(head) };
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return drop(head);
    }
    let Some(status) = last.addr().checked_add(u64::from(last.len()) - 1) else {
        return drop(head);
    };
    if !view.contains(status.raw_value(), 1) {
        return drop(head);
    }
    let action = if count > MAX_CHAIN_DESCRIPTORS {
        Action::fail(STATUS_IOERR)
    } else {
        scratch.readable.clear();
        scratch.writable.clear();
        scratch.requests.clear();
        let action = parse_valid_shape(
            view,
            &scratch.descs,
            &mut scratch.readable,
            &mut scratch.writable,
            info,
            &mut scratch.requests,
        );
        if !matches!(action, Action::Submit { .. }) {
            scratch.requests.clear();
        }
        action
    };
    ParsedChain {
        head,
        status: Some(status),
        action,
    }
}

/// The rest of validation, once the status byte is known to be writable.
fn parse_valid_shape<G, M>(
    view: &GuestView<G>,
    descs: &[Descriptor],
    readable: &mut Stream,
    writable: &mut Stream,
    info: &DiskInfo,
    requests: &mut Vec<Request>,
) -> Action
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
{
    for desc in descs {
        let len = u64::from(desc.len());
        if !view.contains(desc.addr().raw_value(), len) {
            return Action::fail(STATUS_IOERR);
        }
        if desc.is_write_only() {
            writable.push(desc.addr(), len);
        } else if writable.len > 0 {
            // Device-readable after device-writable breaks the layout.
            return Action::fail(STATUS_IOERR);
        } else {
            readable.push(desc.addr(), len);
        }
    }
    // The last byte of the writable stream is the status.
    let in_len = writable.len - 1;
    if readable.len > REQUEST_HEADER_SIZE as u64 + MAX_REQUEST_BYTES || in_len > MAX_REQUEST_BYTES {
        return Action::fail(STATUS_IOERR);
    }
    let mut header = [0u8; REQUEST_HEADER_SIZE];
    if readable.len < header.len() as u64 || !readable.read(view, 0, &mut header) {
        return Action::fail(STATUS_IOERR);
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let out_len = readable.len - REQUEST_HEADER_SIZE as u64;
    let header_len = REQUEST_HEADER_SIZE as u64;

    match request_type {
        REQ_IN => {
            if out_len != 0 {
                return Action::fail(STATUS_IOERR);
            }
            let Some(offset) = checked_range(sector, in_len, info.size) else {
                return Action::fail(STATUS_IOERR);
            };
            if in_len == 0 {
                return Action::Complete {
                    status: STATUS_OK,
                    used_len: 1,
                };
            }
            match writable.io_bufs(view, 0, in_len, true) {
                Some(bufs) => {
                    requests.push(Request::Read { offset, bufs });
                    Action::Submit {
                        used_len: (in_len + 1) as u32,
                    }
                }
                None => Action::fail(STATUS_IOERR),
            }
        }
        REQ_OUT => {
            if info.read_only || in_len != 0 {
                return Action::fail(STATUS_IOERR);
            }
            let Some(offset) = checked_range(sector, out_len, info.size) else {
                return Action::fail(STATUS_IOERR);
            };
            if out_len == 0 {
                return Action::Complete {
                    status: STATUS_OK,
                    used_len: 1,
                };
            }
            match readable.io_bufs(view, header_len, out_len, false) {
                Some(bufs) => {
                    requests.push(Request::Write { offset, bufs });
                    Action::Submit { used_len: 1 }
                }
                None => Action::fail(STATUS_IOERR),
            }
        }
        REQ_FLUSH => {
            requests.push(Request::Flush);
            Action::Submit { used_len: 1 }
        }
        REQ_GET_ID => {
            let n = in_len.min(SERIAL_LEN as u64) as usize;
            if writable.write(view, 0, &info.serial[..n]) {
                Action::Complete {
                    status: STATUS_OK,
                    used_len: n as u32 + 1,
                }
            } else {
                Action::fail(STATUS_IOERR)
            }
        }
        REQ_DISCARD | REQ_WRITE_ZEROES => {
            parse_segments(view, readable, request_type == REQ_DISCARD, info, requests)
        }
        _ => Action::fail(STATUS_UNSUPP),
    }
}

/// Byte offset of `len` bytes at `sector`, if they are whole sectors that
/// fit on a disk of `size` bytes.
fn checked_range(sector: u64, len: u64, size: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset)
}

/// Discard and write-zeroes: one backend request per segment.
fn parse_segments<G, M>(
    view: &GuestView<G>,
    readable: &Stream,
    discard: bool,
    info: &DiskInfo,
    requests: &mut Vec<Request>,
) -> Action
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
{
    let (max_seg, max_sectors) = if discard {
        (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
    } else {
        (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
    };
    let segments_len = readable.len - REQUEST_HEADER_SIZE as u64;
    let segment_size = DISCARD_SEGMENT_SIZE as u64;
    if segments_len == 0
        || !segments_len.is_multiple_of(segment_size)
        || segments_len / segment_size > u64::from(max_seg)
    {
        return Action::fail(STATUS_IOERR);
    }
    if info.read_only {
        return Action::fail(STATUS_IOERR);
    }
    for index in 0..segments_len / segment_size {
        let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
        let at = REQUEST_HEADER_SIZE as u64 + index * segment_size;
        if !readable.read(view, at, &mut raw) {
            return Action::fail(STATUS_IOERR);
        }
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&raw[0..8]);
        let sector = u64::from_le_bytes(sector_bytes);
        let num_sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        // Unknown flags, and UNMAP on a discard, are unsupported (5.2.6.2).
        if flags & !SEGMENT_FLAG_UNMAP != 0 || (discard && flags != 0) {
            return Action::fail(STATUS_UNSUPP);
        }
        if num_sectors > max_sectors {
            return Action::fail(STATUS_IOERR);
        }
        let len = u64::from(num_sectors) * SECTOR_SIZE;
        let Some(offset) = checked_range(sector, len, info.size) else {
            return Action::fail(STATUS_IOERR);
        };
        if len == 0 {
            continue;
        }
        requests.push(if discard {
            Request::Discard { offset, len }
        } else {
            Request::WriteZeroes {
                offset,
                len,
                may_unmap: flags & SEGMENT_FLAG_UNMAP != 0,
            }
        });
    }
    if requests.is_empty() {
        return Action::Complete {
            status: STATUS_OK,
            used_len: 1,
        };
    }
    Action::Submit { used_len: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn checked_range_refuses_partial_sectors_overflow_and_the_end() {
        assert_eq!(checked_range(2, 1024, 4096), Some(1024));
        assert_eq!(checked_range(6, 1024, 4096), Some(3072));
        assert_eq!(checked_range(7, 1024, 4096), None);
        assert_eq!(checked_range(0, 100, 4096), None);
        assert_eq!(checked_range(u64::MAX / 256, 512, u64::MAX), None);
        assert_eq!(checked_range(u64::MAX / 512, 512, u64::MAX), None);
        assert_eq!(checked_range(8, 0, 4096), Some(4096));
    }

    #[test]
    fn a_stream_range_cuts_across_pieces() {
        let mut stream = Stream::default();
        stream.push(GuestAddress(0x1000), 16);
        stream.push(GuestAddress(0x2000), 0);
        stream.push(GuestAddress(0x3000), 100);
        stream.push(GuestAddress(0x5000), 50);
        assert_eq!(stream.len, 166);
        let pieces: Vec<(u64, u64)> = stream
            .range(10, 120)
            .map(|p| (p.addr.raw_value(), p.len))
            .collect();
        assert_eq!(pieces, vec![(0x100a, 6), (0x3000, 100), (0x5000, 14)]);
        assert_eq!(stream.range(166, 10).count(), 0);
    }

    #[test]
    fn io_bufs_split_at_region_boundaries_and_point_into_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .expect("memory");
        let mut stream = Stream::default();
        stream.push(GuestAddress(0xf00), 0x200);
        let view = GuestView::new(&mem).expect("plain memory");
        let bufs = stream.io_bufs(&view, 0, 0x200, true).expect("bufs");
        assert_eq!(bufs.len(), 2);
        assert_eq!(bufs[0].len + bufs[1].len, 0x200);
        let host = mem.get_host_address(GuestAddress(0xf00)).expect("host");
        assert_eq!(bufs[0].addr, host);
        // Past the end of memory: no buffers at all.
        stream.push(GuestAddress(0x1f00), 0x200);
        assert!(stream.io_bufs(&view, 0x200, 0x200, false).is_none());
    }
}
