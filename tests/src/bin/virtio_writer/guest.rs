//! The guest side of the virtio writer: its memory layout (the rings, then
//! one area per request slot) and the descriptor chains of the requests of
//! `integration_tests::virtio_workload`, built with blockdev's
//! `SplitQueueDriver` as a guest driver would.

use anyhow::{Context, Result};
use blockdev::virtio::defs::{
    REQ_DISCARD, REQ_FLUSH, REQ_OUT, REQ_WRITE_ZEROES, SEGMENT_FLAG_UNMAP,
};
use blockdev::virtio::driver::{Segment, SplitQueueDriver};
use integration_tests::virtio_workload::{
    RequestKind, VirtioRequest, MAX_OUT_BYTES, MAX_OUT_SEGMENTS, MAX_RANGES, MAX_SKEW, SECTOR,
};
use integration_tests::workload::fill;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Entries of the virtqueue (a power of two, at least the depth).
pub const QUEUE_SIZE: u16 = 256;
/// Most requests the writer keeps in flight.
pub const MAX_DEPTH: usize = 32;

/// Where the rings of queue 0 start; the next queues' follow.
const RINGS: u64 = 0;
/// Bytes reserved for one queue's rings.
const RINGS_STRIDE: u64 = 8 << 10;
/// Most queues the writer drives.
pub const MAX_QUEUES: u16 = 4;
/// Where the first slot starts.
const SLOTS: u64 = 64 << 10;
/// Offsets inside a slot.
const HEADER: u64 = 0;
const STATUS: u64 = 64;
const RANGES: u64 = 128;
const TABLE: u64 = 512;
const DATA: u64 = 4096;
/// Bytes of one slot.
const SLOT_STRIDE: u64 =
    (DATA + MAX_OUT_BYTES + MAX_OUT_SEGMENTS as u64 * (MAX_SKEW as u64 + 1)).next_multiple_of(4096);

/// Guest memory with room for the rings and `MAX_DEPTH` slots.
pub fn memory() -> Result<GuestMemoryMmap<()>> {
    let size = SLOTS + SLOT_STRIDE * MAX_DEPTH as u64;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .context("mapping guest memory")
}

/// The address of queue `queue`'s rings.
pub fn rings(queue: u16) -> GuestAddress {
    const _: () = assert!(RINGS + RINGS_STRIDE * MAX_QUEUES as u64 <= SLOTS);
    GuestAddress(RINGS + RINGS_STRIDE * u64::from(queue))
}

fn slot_base(slot: usize) -> GuestAddress {
    GuestAddress(SLOTS + SLOT_STRIDE * slot as u64)
}

/// The status byte of `slot`'s request.
pub fn status_addr(slot: usize) -> GuestAddress {
    slot_base(slot).unchecked_add(STATUS)
}

/// Lays `request` out in `slot` (round `round` of `seed`'s data) and
/// publishes its chain; returns the chain's head.
pub fn submit(
    mem: &GuestMemoryMmap<()>,
    driver: &mut SplitQueueDriver,
    slot: usize,
    request: &VirtioRequest,
    seed: u64,
    round: u32,
    data: &mut Vec<u8>,
) -> Result<u16> {
    let base = slot_base(slot);
    let readable = |addr: GuestAddress, len: u64| Segment {
        addr,
        len: len as u32,
        device_writes: false,
    };
    let (request_type, sector) = match &request.kind {
        RequestKind::Out { offset, .. } => (REQ_OUT, offset / SECTOR),
        RequestKind::WriteZeroes { .. } => (REQ_WRITE_ZEROES, 0),
        RequestKind::Discard { .. } => (REQ_DISCARD, 0),
        RequestKind::Flush => (REQ_FLUSH, 0),
    };
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    let header_addr = base.unchecked_add(HEADER);
    mem.write_slice(&header, header_addr)
        .context("writing a request header")?;
    let mut segments = vec![readable(header_addr, 16)];
    match &request.kind {
        RequestKind::Out {
            offset,
            len,
            segments: pieces,
        } => {
            data.resize(*len as usize, 0);
            fill(seed, round, request.index, *offset, false, data);
            let mut cursor = base.unchecked_add(DATA);
            let mut done = 0usize;
            for piece in pieces {
                cursor = cursor.unchecked_add(u64::from(piece.skew));
                let bytes = &data[done..done + piece.len as usize];
                mem.write_slice(bytes, cursor)
                    .context("writing request data")?;
                segments.push(readable(cursor, u64::from(piece.len)));
                cursor = cursor.unchecked_add(u64::from(piece.len));
                done += piece.len as usize;
            }
        }
        RequestKind::WriteZeroes { ranges, .. } | RequestKind::Discard { ranges } => {
            let flags = match &request.kind {
                RequestKind::WriteZeroes { unmap: true, .. } => SEGMENT_FLAG_UNMAP,
                _ => 0,
            };
            let mut body = Vec::with_capacity(16 * MAX_RANGES);
            for &(offset, len) in ranges {
                body.extend_from_slice(&(offset / SECTOR).to_le_bytes());
                body.extend_from_slice(&((len / SECTOR) as u32).to_le_bytes());
                body.extend_from_slice(&flags.to_le_bytes());
            }
            let body_addr = base.unchecked_add(RANGES);
            mem.write_slice(&body, body_addr)
                .context("writing discard segments")?;
            segments.push(readable(body_addr, body.len() as u64));
        }
        RequestKind::Flush => {}
    }
    let status = status_addr(slot);
    mem.write_obj(0xffu8, status)
        .context("resetting a status byte")?;
    segments.push(Segment {
        addr: status,
        len: 1,
        device_writes: true,
    });
    let head = if request.indirect || driver.free_descriptors() < segments.len() {
        driver.add_indirect_chain(mem, &segments, base.unchecked_add(TABLE))
    } else {
        driver.add_chain(mem, &segments)
    };
    head.with_context(|| format!("publishing request {}", request.index))
}

/// The status byte the device wrote for `slot`'s request.
pub fn status(mem: &GuestMemoryMmap<()>, slot: usize) -> Result<u8> {
    mem.read_obj(status_addr(slot))
        .context("reading a status byte")
}
