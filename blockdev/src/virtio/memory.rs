//! Guest memory as the virtio data path reads and writes it: a table of
//! the guest's regions with their host mappings, taken once when a queue
//! is activated, and checked accesses straight into the region that holds
//! an address.
//!
//! vm-memory's `Bytes` calls on a whole `GuestMemory` build a generic slice
//! iterator for every access (to cover ranges that cross regions and
//! IOMMU-translated memory). For the 2- to 16-byte ring and descriptor
//! accesses a request makes, that cost more than the rest of the device's
//! work together. [`GuestView`] asks vm-memory once, at activation, for a
//! slice covering each whole region, keeps its host address, and from then
//! on checks each access against its table and performs it with one
//! volatile or atomic operation on the mapping.
//!
//! Ring areas ([`Area`]) are resolved to one region at activation, so a
//! ring access is a bounds check and one operation. Everything else
//! (descriptors in indirect tables, headers, data buffers) may cross from
//! one region into an adjacent one, as vm-memory allows.
//!
//! The view holds a guard of the memory it was built from, so the mappings
//! stay alive as long as the view does (until the queue is reset). Writes
//! are marked in the region's dirty bitmap, as vm-memory's own writes are.
//! Every `unsafe` operation of the device model on guest memory is here.

use std::ops::Deref;
use std::sync::atomic::{AtomicU16, Ordering};

use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::driver::GuestRam;
use crate::disk::IoBuf;

/// Bytes of one split-ring descriptor.
pub(crate) const DESCRIPTOR_BYTES: u64 = 16;

/// One guest memory region: its guest-physical span and host mapping.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    /// One past the last byte (regions never reach 2^64: vm-memory checks).
    end: u64,
    /// Host address of the region's first byte; the region's bytes are
    /// contiguous from there (vm-memory handed out one slice for all).
    host: *mut u8,
    /// The region's position in the memory's own iteration order (for its
    /// dirty bitmap).
    source: usize,
}

/// A guest range that lies inside one region, resolved once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Area {
    region: usize,
    /// Offset of the area's first byte inside the region.
    offset: u64,
    len: u64,
}

/// Guest memory seen through a table of its regions (see the module doc).
pub(crate) struct GuestView<G> {
    guard: G,
    /// Sorted by start, not overlapping (vm-memory's invariant).
    regions: Vec<HostRegion>,
}

// SAFETY: the host pointers point into mappings that `guard` keeps alive
// wherever the view goes; they are only dereferenced through `&self`, with
// volatile or atomic operations, as vm-memory's own accesses from any
// thread are. The view is as sendable as its guard.
unsafe impl<G: Send> Send for GuestView<G> {}

impl<G> std::fmt::Debug for GuestView<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestView")
            .field("regions", &self.regions.len())
            .finish_non_exhaustive()
    }
}

impl<G, M> GuestView<G>
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
{
    /// A view of the memory `guard` holds, or `None` for memory behind an
    /// IOMMU (addresses the device sees are not guest-physical there) or a
    /// region without a host mapping.
    pub(crate) fn new(guard: G) -> Option<Self> {
        let mut regions = Vec::new();
        for (source, region) in guard.physical_memory()?.iter().enumerate() {
            let len = usize::try_from(region.len()).ok()?;
            let slice = region.get_slice(MemoryRegionAddress(0), len).ok()?;
            let start = region.start_addr().0;
            regions.push(HostRegion {
                start,
                end: start.checked_add(region.len())?,
                host: slice.ptr_guard_mut().as_ptr(),
                source,
            });
        }
        regions.sort_by_key(|span| span.start);
        Some(GuestView { guard, regions })
    }

    /// Mark `len` bytes at `offset` of region `index` (of our table) dirty.
    fn mark_dirty(&self, index: usize, offset: u64, len: usize) {
        let Some((source, start)) = self.regions.get(index).map(|r| (r.source, r.start)) else {
            return;
        };
        super::dirty_log::mark(start + offset, len as u64);
        if let Some(region) = self
            .guard
            .physical_memory()
            .and_then(|memory| memory.iter().nth(source))
        {
            region.bitmap().mark_dirty(offset as usize, len);
        }
    }

    /// The region holding `addr` and the offset of `addr` inside it.
    fn locate(&self, addr: u64) -> Option<(usize, u64)> {
        let after = self.regions.partition_point(|span| span.start <= addr);
        let index = after.checked_sub(1)?;
        let span = self.regions[index];
        (addr < span.end).then_some((index, addr - span.start))
    }

    /// Host address of `len` bytes at `addr` when they lie in one region,
    /// with that region's index and the offset in it.
    fn contiguous(&self, addr: u64, len: u64) -> Option<(*mut u8, usize, u64)> {
        let (index, offset) = self.locate(addr)?;
        let span = self.regions[index];
        if len > span.end - addr {
            return None;
        }
        // In bounds: offset + len <= the region's length.
        Some((span.host.wrapping_add(offset as usize), index, offset))
    }

    /// The pieces of `len` bytes at `addr`, one per region they touch, as
    /// (region index, offset in region, length). `None` when a byte of the
    /// range is not guest memory.
    fn pieces(&self, addr: u64, len: u64) -> Option<impl Iterator<Item = (usize, u64, u64)> + '_> {
        let end = addr.checked_add(len)?;
        let first = if len == 0 { 0 } else { self.locate(addr)?.0 };
        // Every region from `first` while they are contiguous and the range
        // goes on; the range must end inside the last one.
        let mut covered = addr;
        let mut index = first;
        while covered < end {
            let span = self.regions.get(index)?;
            if span.start > covered {
                return None;
            }
            covered = span.end;
            index += 1;
        }
        let regions = &self.regions[first..index];
        Some(regions.iter().enumerate().map(move |(n, span)| {
            let from = addr.max(span.start);
            let to = end.min(span.end);
            (first + n, from - span.start, to - from)
        }))
    }

    /// Host address of piece (`index`, `offset`) of a range `pieces` made.
    fn piece_host(&self, index: usize, offset: u64) -> *mut u8 {
        self.regions[index].host.wrapping_add(offset as usize)
    }

    /// Whether all `len` bytes at `addr` are guest memory.
    pub(crate) fn contains(&self, addr: u64, len: u64) -> bool {
        self.contiguous(addr, len).is_some() || self.pieces(addr, len).is_some()
    }

    /// Resolve `len` bytes at `addr` lying inside one region (a ring).
    pub(crate) fn area(&self, addr: u64, len: u64) -> Option<Area> {
        let (_, region, offset) = self.contiguous(addr, len)?;
        Some(Area {
            region,
            offset,
            len,
        })
    }

    /// Host address of `len` bytes at `offset` into `area`, aligned to
    /// `align`, if they lie inside it.
    fn area_ptr(&self, area: &Area, offset: u64, len: u64, align: usize) -> Option<*mut u8> {
        if offset.checked_add(len)? > area.len {
            return None;
        }
        let ptr = self.piece_host(area.region, area.offset + offset);
        (ptr as usize).is_multiple_of(align).then_some(ptr)
    }

    /// Copy `out.len()` bytes from `addr`.
    pub(crate) fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        if let Some((host, _, _)) = self.contiguous(addr, out.len() as u64) {
            // SAFETY: `contiguous` checked the bytes lie in one region's
            // mapping, which the guard keeps alive.
            unsafe { copy_from_guest(host, out) };
            return true;
        }
        let Some(pieces) = self.pieces(addr, out.len() as u64) else {
            return false;
        };
        let mut done = 0usize;
        for (index, offset, len) in pieces {
            let end = done + len as usize;
            // SAFETY: `pieces` checked each piece lies in its region.
            unsafe { copy_from_guest(self.piece_host(index, offset), &mut out[done..end]) };
            done = end;
        }
        true
    }

    /// Copy `data` to `addr` (marking it dirty).
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> bool {
        if let Some((host, index, offset)) = self.contiguous(addr, data.len() as u64) {
            // SAFETY: as in `read`.
            unsafe { copy_to_guest(data, host) };
            self.mark_dirty(index, offset, data.len());
            return true;
        }
        let Some(pieces) = self.pieces(addr, data.len() as u64) else {
            return false;
        };
        let mut done = 0usize;
        for (index, offset, len) in pieces {
            let end = done + len as usize;
            // SAFETY: `pieces` checked each piece lies in its region.
            unsafe { copy_to_guest(&data[done..end], self.piece_host(index, offset)) };
            self.mark_dirty(index, offset, len as usize);
            done = end;
        }
        true
    }

    /// Append host buffers covering `len` bytes at `addr` to `out`, marking
    /// them dirty when the device will write them. On `false` (a byte is
    /// not guest memory) `out` may hold part of the range.
    pub(crate) fn host_bufs(
        &self,
        addr: u64,
        len: u64,
        device_writes: bool,
        out: &mut Vec<IoBuf>,
    ) -> bool {
        let Some(pieces) = self.pieces(addr, len) else {
            return false;
        };
        for (index, offset, piece_len) in pieces {
            let Ok(count) = usize::try_from(piece_len) else {
                return false;
            };
            if device_writes {
                self.mark_dirty(index, offset, count);
            }
            out.push(IoBuf {
                addr: self.piece_host(index, offset),
                len: count,
            });
        }
        true
    }

    /// The descriptor at `addr` (in an indirect table: anywhere in guest
    /// memory, possibly across two regions).
    pub(crate) fn read_descriptor(&self, addr: u64) -> Option<Descriptor> {
        let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
        self.read(addr, &mut raw)
            .then(|| descriptor_from_bytes(&raw))
    }

    /// Descriptor `index` of the table `table` (the queue's own table).
    pub(crate) fn table_descriptor(&self, table: &Area, index: u16) -> Option<Descriptor> {
        let at = u64::from(index) * DESCRIPTOR_BYTES;
        let ptr = self.area_ptr(table, at, DESCRIPTOR_BYTES, 1)?;
        let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
        // SAFETY: `area_ptr` checked the 16 bytes lie inside the area,
        // which lies inside one mapped region.
        unsafe { copy_from_guest(ptr, &mut raw) };
        Some(descriptor_from_bytes(&raw))
    }

    /// The little-endian `u16` at `offset` into `area`.
    pub(crate) fn load_u16(&self, area: &Area, offset: u64, order: Ordering) -> Option<u16> {
        let ptr = self.area_ptr(area, offset, 2, 2)?;
        // SAFETY: two aligned bytes inside a mapped region (`area_ptr`),
        // accessed only atomically by the device.
        let value = unsafe { AtomicU16::from_ptr(ptr.cast::<u16>()) }.load(order);
        Some(u16::from_le(value))
    }

    /// Store `value` little-endian at `offset` into `area`.
    pub(crate) fn store_u16(&self, area: &Area, offset: u64, value: u16, order: Ordering) -> bool {
        let Some(ptr) = self.area_ptr(area, offset, 2, 2) else {
            return false;
        };
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(ptr.cast::<u16>()) }.store(value.to_le(), order);
        self.mark_dirty(area.region, area.offset + offset, 2);
        true
    }

    /// Write a used-ring element (`id`, `len`) at `offset` into `area`.
    pub(crate) fn write_used_elem(&self, area: &Area, offset: u64, id: u32, len: u32) -> bool {
        let Some(ptr) = self.area_ptr(area, offset, 8, 4) else {
            return false;
        };
        let ptr = ptr.cast::<u32>();
        // SAFETY: eight bytes, 4-aligned, inside a mapped region
        // (`area_ptr`); written with volatile stores as vm-memory does.
        unsafe {
            ptr.write_volatile(id.to_le());
            ptr.add(1).write_volatile(len.to_le());
        }
        self.mark_dirty(area.region, area.offset + offset, 8);
        true
    }

    /// Write one byte at `addr` (a status byte).
    pub(crate) fn write_u8(&self, addr: GuestAddress, value: u8) -> bool {
        self.write(addr.0, &[value])
    }
}

/// Copy guest bytes at `src` into `out` with volatile loads (the guest may
/// change them meanwhile; the copy is then torn, never undefined): whole
/// aligned words where the address allows (descriptors and headers are
/// aligned), single bytes elsewhere.
///
/// # Safety
/// `src..src + out.len()` must be mapped guest memory that stays mapped
/// for the call.
unsafe fn copy_from_guest(src: *const u8, out: &mut [u8]) {
    let mut done = 0;
    if (src as usize).is_multiple_of(8) {
        while out.len() - done >= 8 {
            // SAFETY: in the caller's range, and 8-aligned (src is, and
            // `done` is a multiple of 8).
            let word = unsafe { src.add(done).cast::<u64>().read_volatile() };
            out[done..done + 8].copy_from_slice(&word.to_ne_bytes());
            done += 8;
        }
    }
    for (i, byte) in out.iter_mut().enumerate().skip(done) {
        // SAFETY: in the caller's range.
        *byte = unsafe { src.add(i).read_volatile() };
    }
}

/// Copy `data` to guest bytes at `dst` with volatile stores, as
/// [`copy_from_guest`] reads.
///
/// # Safety
/// As [`copy_from_guest`].
unsafe fn copy_to_guest(data: &[u8], dst: *mut u8) {
    let mut done = 0;
    if (dst as usize).is_multiple_of(8) {
        while data.len() - done >= 8 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&data[done..done + 8]);
            // SAFETY: in the caller's range, and 8-aligned.
            unsafe {
                dst.add(done)
                    .cast::<u64>()
                    .write_volatile(u64::from_ne_bytes(word))
            };
            done += 8;
        }
    }
    for (i, byte) in data.iter().enumerate().skip(done) {
        // SAFETY: in the caller's range.
        unsafe { dst.add(i).write_volatile(*byte) };
    }
}

/// What the split-ring code needs of guest memory ([`GuestView`] is it),
/// so that the ring code carries no memory type parameters of its own.
pub(crate) trait RingMemory {
    /// See [`GuestView::area`].
    fn area(&self, addr: u64, len: u64) -> Option<Area>;
    /// See [`GuestView::load_u16`].
    fn load_u16(&self, area: &Area, offset: u64, order: Ordering) -> Option<u16>;
    /// See [`GuestView::store_u16`].
    fn store_u16(&self, area: &Area, offset: u64, value: u16, order: Ordering) -> bool;
    /// See [`GuestView::write_used_elem`].
    fn write_used_elem(&self, area: &Area, offset: u64, id: u32, len: u32) -> bool;
    /// See [`GuestView::table_descriptor`].
    fn table_descriptor(&self, table: &Area, index: u16) -> Option<Descriptor>;
    /// See [`GuestView::read_descriptor`].
    fn read_descriptor(&self, addr: u64) -> Option<Descriptor>;
}

impl<G, M> RingMemory for GuestView<G>
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
{
    fn area(&self, addr: u64, len: u64) -> Option<Area> {
        GuestView::area(self, addr, len)
    }

    fn load_u16(&self, area: &Area, offset: u64, order: Ordering) -> Option<u16> {
        GuestView::load_u16(self, area, offset, order)
    }

    fn store_u16(&self, area: &Area, offset: u64, value: u16, order: Ordering) -> bool {
        GuestView::store_u16(self, area, offset, value, order)
    }

    fn write_used_elem(&self, area: &Area, offset: u64, id: u32, len: u32) -> bool {
        GuestView::write_used_elem(self, area, offset, id, len)
    }

    fn table_descriptor(&self, table: &Area, index: u16) -> Option<Descriptor> {
        GuestView::table_descriptor(self, table, index)
    }

    fn read_descriptor(&self, addr: u64) -> Option<Descriptor> {
        GuestView::read_descriptor(self, addr)
    }
}

impl<G, M> GuestRam for GuestView<G>
where
    G: Deref<Target = M>,
    M: GuestMemory + ?Sized,
{
    fn write_bytes(&self, addr: GuestAddress, data: &[u8]) -> bool {
        self.write(addr.0, data)
    }

    fn read_bytes(&self, addr: GuestAddress, out: &mut [u8]) -> bool {
        self.read(addr.0, out)
    }

    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Option<u16> {
        let area = self.area(addr.0, 2)?;
        GuestView::load_u16(self, &area, 0, order)
    }

    fn store_u16(&self, addr: GuestAddress, value: u16, order: Ordering) -> bool {
        self.area(addr.0, 2)
            .is_some_and(|area| GuestView::store_u16(self, &area, 0, value, order))
    }
}

fn descriptor_from_bytes(raw: &[u8; DESCRIPTOR_BYTES as usize]) -> Descriptor {
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&raw[0..8]);
    Descriptor::new(
        u64::from_le_bytes(addr),
        u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        u16::from_le_bytes([raw[12], raw[13]]),
        u16::from_le_bytes([raw[14], raw[15]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap {
        // Two adjacent regions, a hole, and a third region.
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x4000), 0x1000),
        ])
        .expect("memory")
    }

    #[test]
    fn ranges_may_cross_adjacent_regions_but_not_holes() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        assert!(view.contains(0xff0, 0x20));
        assert!(view.contains(0, 0x2000));
        assert!(!view.contains(0, 0x2001));
        assert!(!view.contains(0x1ff0, 0x20));
        assert!(view.contains(0x4000, 0x1000));
        assert!(!view.contains(0x4001, 0x1000));
        assert!(!view.contains(0x3000, 1));
        assert!(!view.contains(u64::MAX, 2));
        assert!(view.contains(0x3000, 0), "an empty range is always inside");
        let data: Vec<u8> = (0..0x40).collect();
        assert!(view.write(0xfe0, &data));
        let mut back = [0u8; 0x40];
        assert!(view.read(0xfe0, &mut back));
        assert_eq!(&back[..], &data[..]);
        let mut vm_back = [0u8; 0x40];
        mem.read_slice(&mut vm_back, GuestAddress(0xfe0))
            .expect("read");
        assert_eq!(back, vm_back);
        assert!(!view.read(0x1ff0, &mut back));
        assert!(!view.write(0x4ff0, &data));
    }

    #[test]
    fn areas_stay_inside_one_region_and_check_every_access() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        assert!(
            view.area(0xff0, 0x20).is_none(),
            "crosses into the next region"
        );
        let area = view.area(0x4100, 0x10).expect("inside region three");
        assert!(view.store_u16(&area, 2, 0xbeef, Ordering::Release));
        assert_eq!(view.load_u16(&area, 2, Ordering::Acquire), Some(0xbeef));
        let raw: u16 = mem.read_obj(GuestAddress(0x4102)).expect("read");
        assert_eq!(raw, 0xbeef);
        assert_eq!(view.load_u16(&area, 15, Ordering::Acquire), None);
        assert!(!view.store_u16(&area, 0x10, 1, Ordering::Relaxed));
        assert!(view.write_used_elem(&area, 8, 7, 512));
        assert!(!view.write_used_elem(&area, 9, 7, 512));
        let elem: [u32; 2] = mem.read_obj(GuestAddress(0x4108)).expect("read");
        assert_eq!(elem, [7, 512]);
    }

    #[test]
    fn descriptors_read_from_tables_anywhere() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&0x1234_5678u64.to_le_bytes());
        raw[8..12].copy_from_slice(&4096u32.to_le_bytes());
        raw[12..14].copy_from_slice(&3u16.to_le_bytes());
        raw[14..16].copy_from_slice(&9u16.to_le_bytes());
        // Across the boundary of the two adjacent regions.
        mem.write_slice(&raw, GuestAddress(0xff8)).expect("write");
        let desc = view.read_descriptor(0xff8).expect("descriptor");
        assert_eq!(
            (desc.addr().0, desc.len(), desc.flags(), desc.next()),
            (0x1234_5678, 4096, 3, 9)
        );
        assert!(view.read_descriptor(0x1ff8).is_none());
        mem.write_slice(&raw, GuestAddress(0x4020)).expect("write");
        let table = view.area(0x4000, 0x40).expect("table");
        let desc = view.table_descriptor(&table, 2).expect("descriptor 2");
        assert_eq!(desc.next(), 9);
        assert!(view.table_descriptor(&table, 4).is_none());
    }

    #[test]
    fn writes_through_the_view_mark_the_regions_dirty_bitmap() {
        use vm_memory::bitmap::AtomicBitmap;
        use vm_memory::GuestMemoryRegion;
        let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10000), 0x4000),
        ])
        .expect("memory");
        let view = GuestView::new(&mem).expect("plain memory");
        let second = mem.iter().nth(1).expect("region two");
        assert!(!second.bitmap().dirty_at(0x2000));
        assert!(view.write(0x12000, &[1, 2, 3]));
        assert!(second.bitmap().dirty_at(0x2000));
        let used = view.area(0x13000, 16).expect("area");
        assert!(view.store_u16(&used, 2, 5, Ordering::Release));
        assert!(second.bitmap().dirty_at(0x3000));
        let first = mem.iter().next().expect("region one");
        let mut bufs = Vec::new();
        assert!(view.host_bufs(0x1000, 0x100, true, &mut bufs));
        assert!(first.bitmap().dirty_at(0x1000));
        assert!(!first.bitmap().dirty_at(0x3000), "only what was written");
    }

    #[test]
    fn host_buffers_split_at_region_boundaries() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        let mut bufs = Vec::new();
        assert!(view.host_bufs(0xf00, 0x200, true, &mut bufs));
        assert_eq!(bufs.len(), 2);
        assert_eq!(bufs[0].len + bufs[1].len, 0x200);
        let host = mem.get_host_address(GuestAddress(0xf00)).expect("host");
        assert_eq!(bufs[0].addr, host);
        bufs.clear();
        assert!(!view.host_bufs(0x1f00, 0x200, false, &mut bufs));
        assert!(view.write_u8(GuestAddress(0x4fff), 1));
        assert!(!view.write_u8(GuestAddress(0x5000), 1));
    }
}
