//! virtio-drivers' `Hal` for this guest: physical memory is identity-mapped,
//! DMA memory comes from the bump allocator and is never freed.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::mem::alloc_pages;

/// The guest's HAL (identity mapping, bump-allocated DMA).
pub struct GuestHal;

// SAFETY: dma_alloc returns fresh, zeroed, page-aligned, identity-mapped RAM
// that nothing else uses; share returns the physical (= virtual) address of a
// buffer that stays where it is.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_pages(pages).and_then(NonNull::new) {
            Some(pointer) => (pointer.as_ptr() as PhysAddr, pointer),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
