//! The body of the `virtio_blk` fuzz target, shared with the stable test
//! that replays inputs (blockdev/tests/virtio_fuzz_regressions.rs), so both
//! run exactly the same steps.
//!
//! The virtio-blk device model (over an in-memory 64 KiB [`MemDisk`]) is
//! fed an arbitrary guest memory and queue layout. Guest memory is two
//! 64 KiB regions with a 64 KiB hole between them (`0..64K` and
//! `128K..192K`). An input is a header, [`ROUNDS`] round records, and the
//! memory image (short inputs are padded with zeros):
//!
//! - header byte 0, the features the driver acknowledges besides
//!   VERSION_1: [`FEAT_EVENT_IDX`], [`FEAT_INDIRECT`], [`FEAT_FLUSH`],
//!   [`FEAT_DISCARD`], [`FEAT_WRITE_ZEROES`], [`FEAT_RO`] (a read-only disk,
//!   RO acknowledged), [`FEAT_MQ`] (a device with two queues, MQ
//!   acknowledged);
//! - header byte 1, harness options: bits 0-1 a backend failure range (none,
//!   sectors 0-7, 16-23, 0-63), [`OPT_REVERSE`] (the backend completes each
//!   batch in reverse), [`OPT_Q0_NOT_READY`], [`OPT_Q1_NOT_READY`],
//!   [`OPT_NO_VERSION_1`] (FEATURES_OK is refused, activation fails);
//! - header bytes 2-3: the queue size the driver writes (any u16: the queue
//!   keeps its maximum, 256, when the size is invalid);
//! - header bytes 4-15: the descriptor table, available ring and used ring
//!   addresses (u32 each; see [`address`] for the top of the address
//!   space), anywhere: unaligned (the queue refuses those), in the hole,
//!   overlapping, past the end;
//! - header bytes 16-19: queue 1's displacement, added to each address
//!   (0: both queues share the rings);
//! - each round record ([`ROUND_LEN`] bytes): the available index the
//!   driver stores before the kick (u16), flags ([`R_KEEP_AVAIL_IDX`],
//!   [`R_QUEUE_1`], [`R_REAP`], [`R_PATCH`], [`R_RESET`], [`R_NO_KICK`], [`R_POLL`]), a
//!   patch byte and the patch address (u32, see [`address`]): a guest store
//!   between rounds, even under requests in flight;
//! - the rest: region A's bytes, then region B's.
//!
//! The device is negotiated, its queues set up and activated as a
//! transport would; each round the driver stores, kicks the queue
//! (`handle_queue_notify`) and the event loop handles completions whenever
//! the backend's completion eventfd is readable (with [`R_REAP`], at once;
//! otherwise in a later round that reaps, or after the last round);
//! [`R_RESET`] resets and reactivates the device with the same layout. Nothing may panic or hang, and:
//!
//! - the device writes guest memory only inside descriptors marked
//!   device-writable (in the queue's table, or in an indirect table one of
//!   them points at) and inside the used rings, checked byte for byte after
//!   every round (until a device write could have changed a descriptor it
//!   then used: a read into a descriptor table, or a used ring on one);
//! - once the event loop has handled every completion the backend
//!   signalled, no chain is left in flight (none is lost);
//! - afterwards a reset, a fresh valid queue and a well-formed write and
//!   read of 4 KiB succeed and read back what was written (on a read-only
//!   disk, the write fails with IOERR and the read returns the disk's
//!   contents).

use std::os::fd::RawFd;
use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::driver::{Segment, SplitQueueDriver, DESCRIPTOR_SIZE};
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use blockdev::virtio::{DeviceOptions, QueueEvents, QueueHandler, VirtioBlock};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes of each guest memory region.
pub const REGION_SIZE: u64 = 64 << 10;
/// Guest address of region A.
pub const REGION_A: u64 = 0;
/// Guest address of region B, after a hole as large as a region.
pub const REGION_B: u64 = 128 << 10;
/// Bytes of guest memory (both regions).
pub const MEMORY_BYTES: usize = 2 * REGION_SIZE as usize;
/// Bytes of the in-memory disk.
pub const DISK_SIZE: usize = 64 << 10;
/// Bytes of the input's header.
pub const HEADER_LEN: usize = 20;
/// Rounds of stores and kicks.
pub const ROUNDS: usize = 8;
/// Bytes of one round record.
pub const ROUND_LEN: usize = 8;
/// Where the memory image starts in an input.
pub const IMAGE_AT: usize = HEADER_LEN + ROUNDS * ROUND_LEN;

/// Header byte 0: acknowledge EVENT_IDX.
pub const FEAT_EVENT_IDX: u8 = 1;
/// Header byte 0: acknowledge INDIRECT_DESC.
pub const FEAT_INDIRECT: u8 = 2;
/// Header byte 0: acknowledge FLUSH.
pub const FEAT_FLUSH: u8 = 4;
/// Header byte 0: acknowledge DISCARD.
pub const FEAT_DISCARD: u8 = 8;
/// Header byte 0: acknowledge WRITE_ZEROES.
pub const FEAT_WRITE_ZEROES: u8 = 16;
/// Header byte 0: a read-only disk (RO offered and acknowledged).
pub const FEAT_RO: u8 = 32;
/// Header byte 0: a device with two queues (MQ acknowledged).
pub const FEAT_MQ: u8 = 64;

/// Header byte 1: the backend completes each batch in reverse order.
pub const OPT_REVERSE: u8 = 4;
/// Header byte 1: queue 0 is left disabled.
pub const OPT_Q0_NOT_READY: u8 = 8;
/// Header byte 1: queue 1 (with MQ) is left disabled.
pub const OPT_Q1_NOT_READY: u8 = 16;
/// Header byte 1: the driver leaves out VERSION_1.
pub const OPT_NO_VERSION_1: u8 = 32;

/// Round flag: leave the available index as memory holds it.
pub const R_KEEP_AVAIL_IDX: u8 = 1;
/// Round flag: the round is on queue 1 (with MQ).
pub const R_QUEUE_1: u8 = 2;
/// Round flag: the event loop handles completions right after the kick.
pub const R_REAP: u8 = 4;
/// Round flag: store the patch byte before the kick.
pub const R_PATCH: u8 = 8;
/// Round flag: reset and reactivate the device after the round.
pub const R_RESET: u8 = 16;
/// Round flag: no kick (only completions, if any are signalled).
pub const R_NO_KICK: u8 = 32;
/// Round flag: the queue runs as the VMM's polling loop runs it (kicks
/// left off), and the loop prepares to sleep after the round, taking what
/// that finds.
pub const R_POLL: u8 = 64;

/// Most times a polling round takes chains found while preparing to sleep
/// (the VMM's loop stops once a pass takes nothing).
const MAX_POLL_PASSES: usize = 4;

/// Disk sector of the health check's write and read (past every
/// failure range).
const HEALTH_SECTOR: u64 = 112;
/// Bytes of the health check's write and read.
const HEALTH_LEN: usize = 4096;
/// Most completion events the event loop handles in one go before the
/// harness gives up (the per-input timeout would catch a real hang).
const MAX_SETTLE_STEPS: usize = 100_000;

/// Guest address of a u32 from the input: below 2^31 as is, otherwise that
/// far below the top of the address space (where adding a length
/// overflows).
pub fn address(value: u32) -> u64 {
    if value & 0x8000_0000 == 0 {
        u64::from(value)
    } else {
        u64::MAX - u64::from(value & 0x7fff_ffff)
    }
}

/// The input's header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params {
    /// `FEAT_*` bits.
    pub features: u8,
    /// Failure range selector (bits 0-1) and `OPT_*` bits.
    pub options: u8,
    /// The queue size the driver writes.
    pub queue_size: u16,
    /// Descriptor table address (as in the input).
    pub desc: u32,
    /// Available ring address (as in the input).
    pub avail: u32,
    /// Used ring address (as in the input).
    pub used: u32,
    /// Added to each of queue 1's addresses.
    pub queue1_shift: u32,
}

/// One round record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// The available index the driver stores.
    pub avail_idx: u16,
    /// `R_*` bits.
    pub flags: u8,
    /// The byte the patch stores.
    pub patch_value: u8,
    /// Where the patch stores it (see [`address`]).
    pub patch_addr: u32,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Params {
    fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        Params {
            features: bytes[0],
            options: bytes[1],
            queue_size: u16_at(bytes, 2),
            desc: u32_at(bytes, 4),
            avail: u32_at(bytes, 8),
            used: u32_at(bytes, 12),
            queue1_shift: u32_at(bytes, 16),
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0] = self.features;
        bytes[1] = self.options;
        bytes[2..4].copy_from_slice(&self.queue_size.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.desc.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.avail.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.used.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.queue1_shift.to_le_bytes());
        bytes
    }

    fn num_queues(&self) -> u16 {
        if self.features & FEAT_MQ != 0 {
            2
        } else {
            1
        }
    }

    /// The three ring addresses of queue `index` as the driver writes them.
    fn rings(&self, index: u16) -> [u64; 3] {
        let shift = if index == 0 { 0 } else { self.queue1_shift };
        [self.desc, self.avail, self.used].map(|a| address(a.wrapping_add(shift)))
    }

    fn driver_features(&self) -> u64 {
        let mut features = 0;
        if self.options & OPT_NO_VERSION_1 == 0 {
            features |= F_VERSION_1;
        }
        for (bit, feature) in [
            (FEAT_EVENT_IDX, F_RING_EVENT_IDX),
            (FEAT_INDIRECT, F_RING_INDIRECT_DESC),
            (FEAT_FLUSH, F_BLK_FLUSH),
            (FEAT_DISCARD, F_BLK_DISCARD),
            (FEAT_WRITE_ZEROES, F_BLK_WRITE_ZEROES),
            (FEAT_RO, F_BLK_RO),
            (FEAT_MQ, F_BLK_MQ),
        ] {
            if self.features & bit != 0 {
                features |= feature;
            }
        }
        features
    }

    fn disk_options(&self) -> MemDiskOptions {
        let sector = SECTOR_SIZE;
        MemDiskOptions {
            read_only: self.features & FEAT_RO != 0,
            reverse_completions: self.options & OPT_REVERSE != 0,
            fail_range: match self.options & 3 {
                0 => None,
                1 => Some(0..8 * sector),
                2 => Some(16 * sector..24 * sector),
                _ => Some(0..64 * sector),
            },
        }
    }
}

impl Round {
    fn parse(bytes: &[u8; ROUND_LEN]) -> Self {
        Round {
            avail_idx: u16_at(bytes, 0),
            flags: bytes[2],
            patch_value: bytes[3],
            patch_addr: u32_at(bytes, 4),
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; ROUND_LEN] {
        let mut bytes = [0u8; ROUND_LEN];
        bytes[0..2].copy_from_slice(&self.avail_idx.to_le_bytes());
        bytes[2] = self.flags;
        bytes[3] = self.patch_value;
        bytes[4..8].copy_from_slice(&self.patch_addr.to_le_bytes());
        bytes
    }
}

/// An input from its parts (the image is region A's bytes, then region B's;
/// trailing zeros may be left out). Rounds past those given are idle: a
/// kick with nothing new, completions handled.
pub fn encode(params: &Params, rounds: &[Round], image: &[u8]) -> Vec<u8> {
    let mut data = params.encode().to_vec();
    let idle = Round {
        flags: R_KEEP_AVAIL_IDX | R_REAP,
        ..Round::default()
    };
    for i in 0..ROUNDS {
        data.extend_from_slice(&rounds.get(i).copied().unwrap_or(idle).encode());
    }
    data.extend_from_slice(&image[..image.len().min(MEMORY_BYTES)]);
    data
}

/// The guest memory of every run: two regions with a hole.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION_A), REGION_SIZE as usize),
        (GuestAddress(REGION_B), REGION_SIZE as usize),
    ])
    .expect("two small regions map")
}

/// Both regions' bytes, region A first.
pub fn memory_image(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut image = vec![0u8; MEMORY_BYTES];
    read_image(mem, &mut image);
    image
}

/// Read both regions into `image` (reused: each round reads two images,
/// and fresh 128 KiB buffers cost more than the rest of a round).
fn read_image(mem: &GuestMemoryMmap, image: &mut [u8]) {
    let (a, b) = image.split_at_mut(REGION_SIZE as usize);
    mem.read_slice(a, GuestAddress(REGION_A))
        .expect("region A is mapped");
    mem.read_slice(b, GuestAddress(REGION_B))
        .expect("region B is mapped");
}

/// Index into a memory image of guest address `addr`, if it is mapped.
pub fn image_index(addr: u64) -> Option<usize> {
    for (base, at) in [(REGION_A, 0), (REGION_B, REGION_SIZE)] {
        if addr >= base && addr - base < REGION_SIZE {
            return Some((at + addr - base) as usize);
        }
    }
    None
}

/// A descriptor (address, length, flags) read from a memory image, if its
/// 16 bytes are mapped.
fn descriptor(image: &[u8], addr: u64) -> Option<(u64, u32, u16)> {
    let first = image_index(addr)?;
    let last = image_index(addr.checked_add(DESCRIPTOR_SIZE - 1)?)?;
    if last != first + DESCRIPTOR_SIZE as usize - 1 {
        return None;
    }
    let raw = &image[first..=last];
    Some((
        u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
        u32_at(raw, 8),
        u16_at(raw, 12),
    ))
}

/// Guest ranges `(start, end)` sorted, with overlapping and touching ones
/// merged.
fn merge(ranges: &mut Vec<(u64, u64)>) {
    ranges.retain(|(start, end)| start < end);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Whether merged `ranges` cover guest byte `addr`.
fn covers(ranges: &[(u64, u64)], addr: u64) -> bool {
    let after = ranges.partition_point(|(start, _)| *start <= addr);
    after > 0 && addr < ranges[after - 1].1
}

/// Whether merged `ranges` meet `start..end`.
fn meets(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let after = ranges.partition_point(|(s, _)| *s < end);
    after > 0 && start < ranges[after - 1].1
}

/// What the device may write, from the queues' layout and the descriptors
/// in memory now: device-writable descriptors (of the tables and of the
/// indirect tables they point at) and the used rings, as guest ranges.
/// Also whether such a range meets a descriptor table (the device could
/// then write descriptors it goes on to use, which this check cannot
/// follow).
fn device_writable(image: &[u8], queues: &[(u64, u16, u64)]) -> (Vec<(u64, u64)>, bool) {
    let range = |start: u64, len: u64| (start, start.saturating_add(len));
    let mut writable = Vec::new();
    let mut tables = Vec::new();
    for &(desc_table, size, used_ring) in queues {
        let size = u64::from(size);
        tables.push(range(desc_table, DESCRIPTOR_SIZE * size));
        writable.push(range(used_ring, 6 + 8 * size));
        for i in 0..size {
            let Some(at) = desc_table.checked_add(DESCRIPTOR_SIZE * i) else {
                break;
            };
            let Some((addr, len, flags)) = descriptor(image, at) else {
                continue;
            };
            if flags & 2 != 0 {
                writable.push(range(addr, u64::from(len)));
            }
            if flags & 4 == 0 {
                continue;
            }
            tables.push(range(addr, u64::from(len)));
            for j in 0..u64::from(len) / DESCRIPTOR_SIZE {
                let Some(entry_at) = addr.checked_add(DESCRIPTOR_SIZE * j) else {
                    break;
                };
                // An indirect table ends where memory does.
                let Some((entry_addr, entry_len, entry_flags)) = descriptor(image, entry_at) else {
                    break;
                };
                if entry_flags & 2 != 0 {
                    writable.push(range(entry_addr, u64::from(entry_len)));
                }
            }
        }
    }
    merge(&mut tables);
    let self_modifying = writable
        .iter()
        .any(|(start, end)| meets(&tables, *start, *end));
    (writable, self_modifying)
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// Whether `fd` is readable now.
fn readable(fd: RawFd) -> bool {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll_fd` is one valid pollfd for the duration of the call,
    // and a zero timeout makes poll return at once.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    ready > 0 && poll_fd.revents & libc::POLLIN != 0
}

type Handler = QueueHandler<Arc<GuestMemoryMmap>>;

/// What a run did, for tests of the inputs the harness builds.
#[derive(Debug)]
pub struct Outcome {
    /// Successful activations.
    pub activations: u32,
    /// Handler calls that returned an error.
    pub errors: u32,
    /// Guest memory after the rounds (before the health check).
    pub memory: Vec<u8>,
}

/// The device, its handlers and guest memory.
struct Rig {
    mem: Arc<GuestMemoryMmap>,
    device: VirtioBlock,
    handlers: Vec<Handler>,
    params: Params,
    activations: u32,
    errors: u32,
}

impl Rig {
    /// Negotiate, set the queues up and activate, as a transport forwards
    /// a driver's register writes. Activation may fail (bad features,
    /// rings outside memory): the device then has no handlers.
    fn activate(&mut self) {
        let device = &mut self.device;
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = self.params.driver_features();
        device.set_driver_features_page(0, features as u32);
        device.set_driver_features_page(1, (features >> 32) as u32);
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for index in 0..device.num_queues() {
            let not_ready = if index == 0 {
                OPT_Q0_NOT_READY
            } else {
                OPT_Q1_NOT_READY
            };
            if self.params.options & not_ready != 0 {
                continue;
            }
            let [desc, avail, used] = self.params.rings(index);
            let queue = device
                .queue_mut(index)
                .expect("queues are set up before activation");
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            queue.set_size(self.params.queue_size);
            let (low, high) = split(desc);
            queue.set_desc_table_address(low, high);
            let (low, high) = split(avail);
            queue.set_avail_ring_address(low, high);
            let (low, high) = split(used);
            queue.set_used_ring_address(low, high);
            queue.set_ready(true);
        }
        device.set_status(device.status() | STATUS_DRIVER_OK);
        let events = (0..device.num_queues())
            .map(|_| QueueEvents { notify: eventfd() })
            .collect();
        if let Ok(handlers) = device.activate(self.mem.clone(), events) {
            self.handlers = handlers;
            self.activations += 1;
        }
    }

    /// Reset as a transport does on status 0: handlers first.
    fn reset(&mut self) {
        self.handlers.clear();
        self.device.set_status(0);
        assert!(!self.device.is_activated());
    }

    /// The event loop: handle completion events while the backend's eventfd
    /// is readable.
    fn settle(&mut self, queue: usize) {
        let Some(handler) = self.handlers.get_mut(queue) else {
            return;
        };
        for _ in 0..MAX_SETTLE_STEPS {
            if !readable(handler.completion_fd()) {
                return;
            }
            if handler.handle_completion_event().is_err() {
                self.errors += 1;
            }
        }
    }

    /// (descriptor table, size, used ring) of every active queue.
    fn layouts(&self) -> Vec<(u64, u16, u64)> {
        self.handlers
            .iter()
            .map(|h| {
                (
                    h.queue().desc_table(),
                    h.queue().size(),
                    h.queue().used_ring(),
                )
            })
            .collect()
    }

    /// The queue a round is on.
    fn round_queue(&self, round: &Round) -> u16 {
        u16::from(round.flags & R_QUEUE_1 != 0 && self.params.num_queues() == 2)
    }

    /// The driver's stores of a round: the patch, the available index.
    fn store(&mut self, round: &Round) {
        if round.flags & R_PATCH != 0 {
            let _ = self
                .mem
                .write_obj(round.patch_value, GuestAddress(address(round.patch_addr)));
        }
        if round.flags & R_KEEP_AVAIL_IDX == 0 {
            let avail = self.params.rings(self.round_queue(round))[1];
            if let Some(idx_addr) = avail.checked_add(2) {
                let _ = self
                    .mem
                    .write_obj(round.avail_idx.to_le(), GuestAddress(idx_addr));
            }
        }
    }

    /// The device's part of a round: the kick, and completions if the
    /// event loop gets to them now.
    fn kick(&mut self, round: &Round) {
        let queue_index = self.round_queue(round);
        let Some(slot) = self.handlers.iter().position(|h| h.index() == queue_index) else {
            return;
        };
        let polling = round.flags & R_POLL != 0;
        self.handlers[slot].set_polling(polling);
        if round.flags & R_NO_KICK == 0 && self.handlers[slot].handle_queue_notify().is_err() {
            self.errors += 1;
        }
        if round.flags & R_REAP != 0 {
            self.settle(slot);
        }
        if polling {
            for _ in 0..MAX_POLL_PASSES {
                match self.handlers[slot].prepare_to_sleep() {
                    Ok(true) => {
                        if self.handlers[slot].process_queue().is_err() {
                            self.errors += 1;
                        }
                    }
                    Ok(false) => break,
                    Err(_) => {
                        self.errors += 1;
                        break;
                    }
                }
            }
        }
    }

    /// Every handler's completions, then no chain may be left in flight.
    fn settle_all(&mut self) {
        for slot in 0..self.handlers.len() {
            self.settle(slot);
            let handler = &self.handlers[slot];
            assert_eq!(
                handler.in_flight(),
                0,
                "queue {}: chains left in flight once every completion was handled",
                handler.index()
            );
        }
    }
}

/// Checks the device wrote only where it may between two images.
struct WriteCheck {
    /// Guest ranges the device may have written so far, merged (chains
    /// parsed in an earlier round may complete in a later one).
    allowed: Vec<(u64, u64)>,
    /// Off once a round could have rewritten descriptors.
    on: bool,
}

impl WriteCheck {
    fn before_round(&mut self, image: &[u8], queues: &[(u64, u16, u64)]) {
        if !self.on {
            return;
        }
        let (writable, self_modifying) = device_writable(image, queues);
        if self_modifying {
            self.on = false;
            return;
        }
        self.allowed.extend(writable);
        merge(&mut self.allowed);
    }

    fn after_round(&self, before: &[u8], after: &[u8]) {
        if !self.on {
            return;
        }
        const CHUNK: usize = 256;
        for (chunk, (a, b)) in before.chunks(CHUNK).zip(after.chunks(CHUNK)).enumerate() {
            if a == b {
                continue;
            }
            for (i, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
                let at = (chunk * CHUNK + i) as u64;
                let addr = if at < REGION_SIZE {
                    REGION_A + at
                } else {
                    REGION_B + (at - REGION_SIZE)
                };
                assert!(
                    covers(&self.allowed, addr),
                    "the device wrote guest byte {addr:#x} outside device-writable descriptors and used rings"
                );
            }
        }
    }
}

/// A clean device, a fresh queue in region B, a write and a read back.
fn health_check(rig: &mut Rig, disk: &MemDisk) {
    rig.reset();
    let mem = rig.mem.clone();
    let device = &mut rig.device;
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let features = F_VERSION_1 | (rig.params.driver_features() & F_RING_EVENT_IDX);
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let base = GuestAddress(REGION_B);
    let mut driver = SplitQueueDriver::new(&*mem, base, 16).expect("rings fit in region B");
    driver.configure(device.queue_mut(0).expect("queue 0"));
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = (0..device.num_queues())
        .map(|_| QueueEvents { notify: eventfd() })
        .collect();
    rig.handlers = device
        .activate(mem.clone(), events)
        .expect("a valid queue activates after a reset");
    let header = |request_type: u32, at: u64| {
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&HEALTH_SECTOR.to_le_bytes());
        mem.write_slice(&bytes, base.unchecked_add(at))
            .expect("region B");
    };
    let segment = |at: u64, len: usize, device_writes: bool| Segment {
        addr: base.unchecked_add(at),
        len: len as u32,
        device_writes,
    };
    let status = base.unchecked_add(0x3000);
    let data: Vec<u8> = (0..HEALTH_LEN).map(|i| (i * 7 + 3) as u8).collect();
    mem.write_slice(&data, base.unchecked_add(0x4000))
        .expect("region B");
    let run = |rig: &mut Rig, driver: &mut SplitQueueDriver, segments: &[Segment]| {
        mem.write_obj(0xffu8, status).expect("region B");
        let head = driver.add_chain(&*mem, segments).expect("chain");
        rig.handlers[0]
            .handle_queue_notify()
            .expect("a valid queue processes");
        rig.settle(0);
        let used = driver.pop_used(&*mem).expect("used ring");
        let used = used.expect("the chain comes back");
        assert_eq!(used.id, u32::from(head));
        assert_eq!(driver.pop_used(&*mem).expect("used ring"), None);
        (mem.read_obj::<u8>(status).expect("region B"), used.len)
    };
    header(REQ_OUT, 0x1000);
    let (write_status, _) = run(
        rig,
        &mut driver,
        &[
            segment(0x1000, 16, false),
            segment(0x4000, HEALTH_LEN, false),
            segment(0x3000, 1, true),
        ],
    );
    let read_only = rig.params.features & FEAT_RO != 0;
    let expected = if read_only {
        assert_eq!(write_status, STATUS_IOERR, "a write to a read-only disk");
        let offset = HEALTH_SECTOR as usize * SECTOR_SIZE as usize;
        disk.contents()[offset..offset + HEALTH_LEN].to_vec()
    } else {
        assert_eq!(write_status, STATUS_OK, "a clean write after a reset");
        data
    };
    header(REQ_IN, 0x2000);
    let (read_status, used_len) = run(
        rig,
        &mut driver,
        &[
            segment(0x2000, 16, false),
            segment(0x5000, HEALTH_LEN, true),
            segment(0x3000, 1, true),
        ],
    );
    assert_eq!(read_status, STATUS_OK, "a clean read after a reset");
    assert_eq!(used_len as usize, HEALTH_LEN + 1);
    let mut back = vec![0u8; HEALTH_LEN];
    mem.read_slice(&mut back, base.unchecked_add(0x5000))
        .expect("region B");
    assert!(back == expected, "the read returns what was written");
    rig.reset();
}

/// Runs one input (see the module documentation for its layout).
pub fn virtio_blk_body(data: &[u8]) -> Outcome {
    let mut padded = [0u8; IMAGE_AT];
    let n = data.len().min(IMAGE_AT);
    padded[..n].copy_from_slice(&data[..n]);
    let params = Params::parse(padded[..HEADER_LEN].try_into().expect("header length"));
    let rounds: Vec<Round> = padded[HEADER_LEN..]
        .chunks_exact(ROUND_LEN)
        .map(|r| Round::parse(r.try_into().expect("round length")))
        .collect();
    let image = data.get(IMAGE_AT..).unwrap_or_default();
    let image = &image[..image.len().min(MEMORY_BYTES)];

    let mem = guest_memory();
    let (a, b) = image.split_at(image.len().min(REGION_SIZE as usize));
    mem.write_slice(a, GuestAddress(REGION_A))
        .expect("region A is mapped");
    mem.write_slice(b, GuestAddress(REGION_B))
        .expect("region B is mapped");
    let mem = Arc::new(mem);

    let disk = MemDisk::new(DISK_SIZE, params.disk_options());
    let contents: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    disk.fill(0, &contents);
    let device = VirtioBlock::new(
        Arc::new(disk.clone()),
        DeviceOptions {
            num_queues: params.num_queues(),
            queue_size: QUEUE_MAX_SIZE,
            serial: b"virtio-fuzz".to_vec(),
        },
    )
    .expect("valid device options");
    let mut rig = Rig {
        mem,
        device,
        handlers: Vec::new(),
        params,
        activations: 0,
        errors: 0,
    };
    rig.activate();
    let mut check = WriteCheck {
        allowed: Vec::new(),
        on: true,
    };
    let mut before = vec![0u8; MEMORY_BYTES];
    let mut after = vec![0u8; MEMORY_BYTES];
    for round in &rounds {
        rig.store(round);
        read_image(&rig.mem, &mut before);
        check.before_round(&before, &rig.layouts());
        rig.kick(round);
        read_image(&rig.mem, &mut after);
        check.after_round(&before, &after);
        if round.flags & R_RESET != 0 {
            rig.reset();
            rig.activate();
        }
    }
    read_image(&rig.mem, &mut before);
    check.before_round(&before, &rig.layouts());
    rig.settle_all();
    read_image(&rig.mem, &mut after);
    check.after_round(&before, &after);
    let memory = after;
    health_check(&mut rig, &disk);
    Outcome {
        activations: rig.activations,
        errors: rig.errors,
        memory,
    }
}
