//! The benchmark's guest: a driver keeping `depth` requests of a fixed
//! size in flight through one queue, each slot with its own indirect
//! table (header, data, status), as Linux's virtio-blk lays requests out.
//!
//! It reaches guest memory through the device's region view rather than
//! vm-memory's generic accessors, so that its share of the time is near
//! what a guest's plain loads and stores cost.

use std::sync::atomic::Ordering;

use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::super::defs::*;
use super::super::driver::{
    GuestRam, RawDescriptor, SplitQueueDriver, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use super::super::memory::GuestView;
use super::BenchOptions;
use crate::{Error, Result};

/// Where the rings start.
pub(super) const RINGS_BASE: u64 = 0;
/// Where the first slot starts (after the rings of the largest queue).
pub(super) const SLOTS_BASE: u64 = 1 << 16;
const SLOT_HEADER: u64 = 64;
const SLOT_STATUS: u64 = 80;
const SLOT_DATA: u64 = 4096;

/// Bytes of guest memory a slot takes for requests of `request_size`.
pub(super) fn slot_stride(request_size: u64) -> u64 {
    (SLOT_DATA + request_size).next_multiple_of(4096)
}

fn guest_error(op: &'static str, addr: GuestAddress) -> Error {
    Error::GuestMemory {
        op,
        addr: addr.raw_value(),
    }
}

/// The driver side of the benchmark.
pub(super) struct BenchGuest<'m> {
    mem: GuestView<&'m GuestMemoryMmap>,
    driver: SplitQueueDriver,
    depth: u16,
    slot_stride: u64,
    request_type: u32,
    request_size: u64,
    blocks: u64,
    random: bool,
    /// Blocks from one request to the next when not random.
    stride: u64,
    rng: u64,
    next_block: u64,
    requests: u64,
    issued: u64,
    completed: u64,
    /// The available index as of the last [`BenchGuest::expose`].
    exposed: u16,
}

impl<'m> BenchGuest<'m> {
    /// Lay out every slot in `mem` (rings already made by `driver`).
    pub(super) fn new(
        mem: &'m GuestMemoryMmap,
        driver: SplitQueueDriver,
        options: &BenchOptions,
        blocks: u64,
    ) -> Result<Self> {
        let mem = GuestView::new(mem).ok_or(Error::DeviceState {
            reason: "bench memory is plain",
        })?;
        let request_size = u64::from(options.request_size);
        let mut guest = BenchGuest {
            mem,
            driver,
            depth: options.depth,
            slot_stride: slot_stride(request_size),
            request_type: if options.write { REQ_OUT } else { REQ_IN },
            request_size,
            blocks,
            random: options.random,
            stride: options.stride.max(1) % blocks.max(1),
            rng: options.seed | 1,
            next_block: 0,
            requests: options.requests,
            issued: 0,
            completed: 0,
            exposed: 0,
        };
        guest.lay_out_slots(options.write)?;
        guest.driver.set_used_event_on_pop(false);
        Ok(guest)
    }

    fn slot_base(&self, slot: u64) -> GuestAddress {
        GuestAddress(SLOTS_BASE + slot * self.slot_stride)
    }

    /// Each slot: an indirect table of three descriptors (header, data,
    /// status), the head descriptor pointing at it (slot `s` always uses
    /// head `s`, as a driver reusing its free list might), and the data.
    fn lay_out_slots(&mut self, write: bool) -> Result<()> {
        let data_flags = if write { 0 } else { DESC_F_WRITE };
        for slot in 0..u64::from(self.depth) {
            let base = self.slot_base(slot);
            let table = [
                RawDescriptor {
                    addr: base.raw_value() + SLOT_HEADER,
                    len: REQUEST_HEADER_SIZE as u32,
                    flags: DESC_F_NEXT,
                    next: 1,
                },
                RawDescriptor {
                    addr: base.raw_value() + SLOT_DATA,
                    len: self.request_size as u32,
                    flags: data_flags | DESC_F_NEXT,
                    next: 2,
                },
                RawDescriptor {
                    addr: base.raw_value() + SLOT_STATUS,
                    len: 1,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            ];
            for (i, desc) in table.iter().enumerate() {
                let at = base.unchecked_add(16 * i as u64);
                SplitQueueDriver::write_descriptor_at(&self.mem, at, *desc)?;
            }
            self.driver.write_descriptor(
                &self.mem,
                slot as u16,
                RawDescriptor {
                    addr: base.raw_value(),
                    len: 48,
                    flags: DESC_F_INDIRECT,
                    next: 0,
                },
            )?;
            let fill = vec![slot as u8; self.request_size as usize];
            let data = base.unchecked_add(SLOT_DATA);
            if !self.mem.write_bytes(data, &fill) {
                return Err(guest_error("fill a data buffer", data));
            }
        }
        Ok(())
    }

    /// Stage the first request of every slot (up to the request count).
    pub(super) fn start(&mut self) -> Result<()> {
        for slot in 0..u64::from(self.depth).min(self.requests) {
            self.issue(slot)?;
        }
        Ok(())
    }

    /// Stage the next request in `slot`.
    fn issue(&mut self, slot: u64) -> Result<()> {
        let block = if self.random {
            // xorshift64
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % self.blocks
        } else {
            let block = self.next_block;
            self.next_block = (self.next_block + self.stride) % self.blocks;
            block
        };
        let base = self.slot_base(slot);
        let mut header = [0u8; REQUEST_HEADER_SIZE];
        header[0..4].copy_from_slice(&self.request_type.to_le_bytes());
        header[8..16].copy_from_slice(&(block * self.request_size / SECTOR_SIZE).to_le_bytes());
        let header_addr = base.unchecked_add(SLOT_HEADER);
        if !self.mem.write_bytes(header_addr, &header) {
            return Err(guest_error("write a header", header_addr));
        }
        let status_addr = base.unchecked_add(SLOT_STATUS);
        if !self.mem.write_bytes(status_addr, &[0xff]) {
            return Err(guest_error("reset a status", status_addr));
        }
        self.issued += 1;
        self.driver.stage(&self.mem, slot as u16, Vec::new())
    }

    /// Make the staged requests visible; whether the device asked to be
    /// notified of them (event idx: avail_event among them).
    pub(super) fn expose(&mut self) -> Result<bool> {
        let old = self.exposed;
        let new = self.driver.published();
        if old == new {
            return Ok(false);
        }
        self.driver.expose(&self.mem)?;
        self.exposed = new;
        // The store of the index must be visible before avail_event is read.
        std::sync::atomic::fence(Ordering::SeqCst);
        let event = self.driver.avail_event(&self.mem)?;
        Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
    }

    /// Take every returned request, check its status and stage the next
    /// one in its slot; how many came back.
    pub(super) fn reap(&mut self) -> Result<u64> {
        let mut reaped = 0;
        while let Some(used) = self.driver.pop_used(&self.mem)? {
            let slot = u64::from(used.id) % u64::from(self.depth);
            let status_addr = self.slot_base(slot).unchecked_add(SLOT_STATUS);
            let mut status = [0u8];
            if !self.mem.read_bytes(status_addr, &mut status) {
                return Err(guest_error("read a status", status_addr));
            }
            if status[0] != STATUS_OK {
                return Err(Error::DeviceState {
                    reason: "a benchmark request failed",
                });
            }
            self.completed += 1;
            reaped += 1;
            if self.issued < self.requests {
                self.issue(slot)?;
            }
        }
        Ok(reaped)
    }

    /// Ask for an interrupt on the next returned request (as a driver
    /// re-enabling its callback does), and say whether one came back
    /// meanwhile.
    pub(super) fn arm_interrupt(&mut self) -> Result<bool> {
        self.driver
            .set_used_event(&self.mem, self.driver.last_used())?;
        std::sync::atomic::fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Ask for no interrupts, as a driver polling its queue does (Linux's
    /// virtio-blk poll queues): used_event half the index space ahead, so
    /// the device's index never reaches it while the driver keeps up.
    pub(super) fn disable_interrupts(&mut self) -> Result<()> {
        let far = self.driver.last_used().wrapping_add(0x7fff);
        self.driver.set_used_event(&self.mem, far)
    }

    /// Whether the device returned a request not reaped yet.
    pub(super) fn has_used(&self) -> Result<bool> {
        Ok(self.driver.used_index(&self.mem)? != self.driver.last_used())
    }

    /// Requests completed so far.
    pub(super) fn completed(&self) -> u64 {
        self.completed
    }

    /// Whether every request has completed.
    pub(super) fn done(&self) -> bool {
        self.completed >= self.requests
    }
}
