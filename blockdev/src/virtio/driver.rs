//! A minimal virtio split-ring driver that lives in guest memory, for
//! tests and the benchmark: it lays out a descriptor table and the two
//! rings, builds descriptor chains (direct or through an indirect table,
//! well-formed or deliberately not), publishes them and reaps the used
//! ring. Every access goes through a [`GuestRam`]: vm-memory's checked
//! `Bytes` calls for any `GuestMemory`.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::{Error, Result};

/// What the driver needs of guest memory: byte copies and atomic 16-bit
/// accesses, each failing on an address that is not guest memory.
///
/// Every vm-memory `GuestMemory` is one. Inside this crate the device's
/// own region view is one too, so that the benchmark's guest side costs
/// about what a guest's plain loads and stores do.
pub trait GuestRam {
    /// Copy `data` to `addr`.
    fn write_bytes(&self, addr: GuestAddress, data: &[u8]) -> bool;
    /// Copy `out.len()` bytes from `addr`.
    fn read_bytes(&self, addr: GuestAddress, out: &mut [u8]) -> bool;
    /// Atomically load the little-endian `u16` at `addr`.
    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Option<u16>;
    /// Atomically store `value` little-endian at `addr`.
    fn store_u16(&self, addr: GuestAddress, value: u16, order: Ordering) -> bool;
}

impl<M: GuestMemory + ?Sized> GuestRam for M {
    fn write_bytes(&self, addr: GuestAddress, data: &[u8]) -> bool {
        self.write_slice(data, addr).is_ok()
    }

    fn read_bytes(&self, addr: GuestAddress, out: &mut [u8]) -> bool {
        self.read_slice(out, addr).is_ok()
    }

    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Option<u16> {
        self.load(addr, order).ok().map(u16::from_le)
    }

    fn store_u16(&self, addr: GuestAddress, value: u16, order: Ordering) -> bool {
        self.store(value.to_le(), addr, order).is_ok()
    }
}

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;

/// Bytes of one descriptor.
pub const DESCRIPTOR_SIZE: u64 = 16;

/// One descriptor exactly as it sits in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDescriptor {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor when `DESC_F_NEXT` is set.
    pub next: u16,
}

impl RawDescriptor {
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&self.addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.len.to_le_bytes());
        bytes[12..14].copy_from_slice(&self.flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&self.next.to_le_bytes());
        bytes
    }
}

/// One buffer of a well-formed chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it.
    pub device_writes: bool,
}

/// An element of the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the returned chain.
    pub id: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueueDriver {
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_avail: u16,
    last_used: u16,
    /// The used index as last read: entries up to it need no new read of
    /// the index (as Linux's driver reads it only once it has caught up).
    seen_used: u16,
    free: Vec<u16>,
    /// Descriptors each published head owns, freed when it comes back.
    owned: Vec<Vec<u16>>,
    /// Whether `pop_used` moves used_event along.
    used_event_on_pop: bool,
}

fn mem_error(op: &'static str, addr: GuestAddress) -> Error {
    Error::GuestMemory {
        op,
        addr: addr.raw_value(),
    }
}

impl SplitQueueDriver {
    /// Guest bytes the rings of a queue of `size` entries occupy.
    pub fn footprint(size: u16) -> u64 {
        let size = u64::from(size);
        let avail = 6 + 2 * size;
        let used = 6 + 8 * size;
        DESCRIPTOR_SIZE * size + avail.next_multiple_of(4) + used
    }

    /// Rings for a queue of `size` entries (a power of two) at `base`
    /// (16-byte aligned), zeroed.
    pub fn new<M: GuestRam + ?Sized>(mem: &M, base: GuestAddress, size: u16) -> Result<Self> {
        let desc_table = base;
        let avail_ring = base.unchecked_add(DESCRIPTOR_SIZE * u64::from(size));
        let avail_len = (6 + 2 * u64::from(size)).next_multiple_of(4);
        let used_ring = avail_ring.unchecked_add(avail_len);
        let zeros = vec![0u8; Self::footprint(size) as usize];
        if !mem.write_bytes(base, &zeros) {
            return Err(mem_error("zero the rings", base));
        }
        Ok(SplitQueueDriver {
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_avail: 0,
            last_used: 0,
            seen_used: 0,
            free: (0..size).rev().collect(),
            owned: vec![Vec::new(); usize::from(size)],
            used_event_on_pop: true,
        })
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest address of the descriptor table.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// Guest address of the available ring.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Guest address of the used ring.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Set a device queue up as a transport would on the driver's writes.
    pub fn configure(&self, queue: &mut Queue) {
        let split = |addr: GuestAddress| {
            let raw = addr.raw_value();
            (Some(raw as u32), Some((raw >> 32) as u32))
        };
        queue.set_size(self.size);
        let (low, high) = split(self.desc_table);
        queue.set_desc_table_address(low, high);
        let (low, high) = split(self.avail_ring);
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(self.used_ring);
        queue.set_used_ring_address(low, high);
        queue.set_ready(true);
    }

    /// Descriptors not owned by a published chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Take `count` free descriptor indices.
    pub fn alloc(&mut self, count: usize) -> Option<Vec<u16>> {
        if count > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - count))
    }

    /// Write descriptor `index` of the queue's table.
    pub fn write_descriptor<M: GuestRam + ?Sized>(
        &self,
        mem: &M,
        index: u16,
        desc: RawDescriptor,
    ) -> Result<()> {
        let addr = self
            .desc_table
            .unchecked_add(DESCRIPTOR_SIZE * u64::from(index % self.size));
        Self::write_descriptor_at(mem, addr, desc)
    }

    /// Write a descriptor anywhere (an entry of an indirect table).
    pub fn write_descriptor_at<M: GuestRam + ?Sized>(
        mem: &M,
        addr: GuestAddress,
        desc: RawDescriptor,
    ) -> Result<()> {
        if mem.write_bytes(addr, &desc.to_bytes()) {
            Ok(())
        } else {
            Err(mem_error("write a descriptor", addr))
        }
    }

    /// Publish a chain starting at `head` that owns descriptors `owned`
    /// (freed when the device returns `head`).
    pub fn publish<M: GuestRam + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        owned: Vec<u16>,
    ) -> Result<()> {
        if let Some(slot) = self.owned.get_mut(usize::from(head)) {
            slot.extend(owned);
        }
        self.publish_raw(mem, head)
    }

    /// Put `head` on the available ring as is (it may be any value, for
    /// tests of a misbehaving driver) and make it visible to the device.
    pub fn publish_raw<M: GuestRam + ?Sized>(&mut self, mem: &M, head: u16) -> Result<()> {
        self.stage_raw(mem, head)?;
        self.expose(mem)
    }

    /// Put a chain starting at `head` that owns `owned` on the available
    /// ring without moving the available index yet (see
    /// [`SplitQueueDriver::expose`]), as a driver batching kicks does.
    pub fn stage<M: GuestRam + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        owned: Vec<u16>,
    ) -> Result<()> {
        if let Some(slot) = self.owned.get_mut(usize::from(head)) {
            slot.extend(owned);
        }
        self.stage_raw(mem, head)
    }

    fn stage_raw<M: GuestRam + ?Sized>(&mut self, mem: &M, head: u16) -> Result<()> {
        let slot = u64::from(self.next_avail % self.size);
        let entry = self.avail_ring.unchecked_add(4 + 2 * slot);
        if !mem.write_bytes(entry, &head.to_le_bytes()) {
            return Err(mem_error("write the available ring", entry));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Make every staged chain visible to the device (one store of the
    /// available index).
    pub fn expose<M: GuestRam + ?Sized>(&mut self, mem: &M) -> Result<()> {
        fence(Ordering::Release);
        let idx = self.avail_ring.unchecked_add(2);
        if mem.store_u16(idx, self.next_avail, Ordering::Release) {
            Ok(())
        } else {
            Err(mem_error("write the available index", idx))
        }
    }

    /// Whether [`SplitQueueDriver::pop_used`] asks for an interrupt on the
    /// next completion (the default) or leaves used_event to the caller.
    pub fn set_used_event_on_pop(&mut self, on: bool) {
        self.used_event_on_pop = on;
    }

    /// The used index the driver has reaped up to.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Build and publish a direct chain over `segments`; returns its head.
    pub fn add_chain<M: GuestRam + ?Sized>(
        &mut self,
        mem: &M,
        segments: &[Segment],
    ) -> Result<u16> {
        let indices = self.alloc(segments.len()).ok_or(Error::DeviceState {
            reason: "driver out of descriptors",
        })?;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = if segment.device_writes {
                DESC_F_WRITE
            } else {
                0
            };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let desc = RawDescriptor {
                addr: segment.addr.raw_value(),
                len: segment.len,
                flags,
                next: if last { 0 } else { indices[i + 1] },
            };
            self.write_descriptor(mem, indices[i], desc)?;
        }
        let head = *indices.first().ok_or(Error::DeviceState {
            reason: "a chain needs at least one segment",
        })?;
        self.publish(mem, head, indices)?;
        Ok(head)
    }

    /// Build and publish a chain over `segments` through an indirect table
    /// written at `table` (16 bytes per segment); returns its head.
    pub fn add_indirect_chain<M: GuestRam + ?Sized>(
        &mut self,
        mem: &M,
        segments: &[Segment],
        table: GuestAddress,
    ) -> Result<u16> {
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = if segment.device_writes {
                DESC_F_WRITE
            } else {
                0
            };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let desc = RawDescriptor {
                addr: segment.addr.raw_value(),
                len: segment.len,
                flags,
                next: if last { 0 } else { i as u16 + 1 },
            };
            Self::write_descriptor_at(mem, table.unchecked_add(DESCRIPTOR_SIZE * i as u64), desc)?;
        }
        let indices = self.alloc(1).ok_or(Error::DeviceState {
            reason: "driver out of descriptors",
        })?;
        let head = indices[0];
        let desc = RawDescriptor {
            addr: table.raw_value(),
            len: (DESCRIPTOR_SIZE * segments.len() as u64) as u32,
            flags: DESC_F_INDIRECT,
            next: 0,
        };
        self.write_descriptor(mem, head, desc)?;
        self.publish(mem, head, indices)?;
        Ok(head)
    }

    /// The next chain the device returned, if any; frees its descriptors
    /// and asks to be interrupted on the next one (used_event).
    pub fn pop_used<M: GuestRam + ?Sized>(&mut self, mem: &M) -> Result<Option<UsedElem>> {
        if self.seen_used == self.last_used {
            self.seen_used = self.used_index(mem)?;
        }
        if self.seen_used == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let elem_addr = self.used_ring.unchecked_add(4 + 8 * slot);
        let mut elem = [0u8; 8];
        if !mem.read_bytes(elem_addr, &mut elem) {
            return Err(mem_error("read the used ring", elem_addr));
        }
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        if let Some(owned) = self.owned.get_mut(id as usize) {
            self.free.append(owned);
        }
        if self.used_event_on_pop {
            self.set_used_event(mem, self.last_used)?;
        }
        Ok(Some(UsedElem { id, len }))
    }

    /// Ask the device to interrupt once the used index passes `value`.
    pub fn set_used_event<M: GuestRam + ?Sized>(&self, mem: &M, value: u16) -> Result<()> {
        let addr = self.avail_ring.unchecked_add(4 + 2 * u64::from(self.size));
        if mem.store_u16(addr, value, Ordering::Release) {
            Ok(())
        } else {
            Err(mem_error("write used_event", addr))
        }
    }

    /// The avail_event the device published (event-idx kick suppression).
    pub fn avail_event<M: GuestRam + ?Sized>(&self, mem: &M) -> Result<u16> {
        let addr = self.used_ring.unchecked_add(4 + 8 * u64::from(self.size));
        mem.load_u16(addr, Ordering::Acquire)
            .ok_or(mem_error("read avail_event", addr))
    }

    /// The used index the device published.
    pub fn used_index<M: GuestRam + ?Sized>(&self, mem: &M) -> Result<u16> {
        let addr = self.used_ring.unchecked_add(2);
        mem.load_u16(addr, Ordering::Acquire)
            .ok_or(mem_error("read the used index", addr))
    }

    /// Chains published so far (the available index).
    pub fn published(&self) -> u16 {
        self.next_avail
    }
}
