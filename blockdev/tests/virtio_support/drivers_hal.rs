//! The `virtio-drivers` crate's driver running over our device model: a
//! [`Transport`] whose registers are calls on [`VirtioBlock`], and a
//! [`Hal`] whose DMA memory is guest memory. Buffers the driver shares
//! from its own (host) memory are copied through bounce pages in guest
//! memory, so the device only ever sees guest-physical addresses.
//!
//! `Hal` has no `self`, so the guest memory and its page allocator live
//! in a thread-local: each test thread has its own guest.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use blockdev::disk::BlockBackend;
use blockdev::virtio::{DeviceOptions, QueueEvents, QueueHandler, VirtioBlock};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::eventfd;

const PAGE: u64 = 4096;
/// Guest memory of the virtio-drivers tests: one region.
const GUEST_BASE: u64 = 0x4000_0000;
const GUEST_PAGES: u64 = 1024;

struct GuestState {
    mem: Arc<GuestMemoryMmap>,
    used: Vec<bool>,
    /// Bounce pages of shared host buffers, by guest address: page count.
    bounces: HashMap<u64, u64>,
}

thread_local! {
    static GUEST: RefCell<Option<GuestState>> = const { RefCell::new(None) };
}

/// Give this thread a fresh guest memory and return it.
pub fn install_guest() -> Arc<GuestMemoryMmap> {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(GUEST_BASE),
            (GUEST_PAGES * PAGE) as usize,
        )])
        .expect("guest memory"),
    );
    GUEST.with(|g| {
        *g.borrow_mut() = Some(GuestState {
            mem: mem.clone(),
            used: vec![false; GUEST_PAGES as usize],
            bounces: HashMap::new(),
        })
    });
    mem
}

/// Guest pages currently allocated (DMA and bounce).
pub fn pages_in_use() -> usize {
    GUEST.with(|g| {
        g.borrow()
            .as_ref()
            .map_or(0, |s| s.used.iter().filter(|u| **u).count())
    })
}

fn with_guest<T>(f: impl FnOnce(&mut GuestState) -> T) -> T {
    GUEST.with(|g| f(g.borrow_mut().as_mut().expect("install_guest first")))
}

fn alloc_pages(state: &mut GuestState, pages: u64) -> u64 {
    let pages = pages.max(1) as usize;
    let mut run = 0;
    for i in 0..state.used.len() {
        run = if state.used[i] { 0 } else { run + 1 };
        if run == pages {
            let first = i + 1 - pages;
            state.used[first..=i].iter_mut().for_each(|u| *u = true);
            return GUEST_BASE + first as u64 * PAGE;
        }
    }
    panic!("guest memory exhausted");
}

fn free_pages(state: &mut GuestState, paddr: u64, pages: u64) {
    let first = ((paddr - GUEST_BASE) / PAGE) as usize;
    for used in &mut state.used[first..first + pages.max(1) as usize] {
        assert!(*used, "double free of guest page");
        *used = false;
    }
}

fn host_address(state: &GuestState, paddr: u64) -> NonNull<u8> {
    let ptr = state
        .mem
        .get_slice(GuestAddress(paddr), 1)
        .expect("guest address")
        .ptr_guard_mut()
        .as_ptr();
    NonNull::new(ptr).expect("mapped")
}

/// The `Hal` of the harness.
pub struct GuestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned guest memory that stays
// mapped (the thread's guest memory lives until the thread ends) and is
// not handed out again until dma_dealloc; share returns a guest address
// holding a copy of the buffer that stays valid until unshare.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        with_guest(|state| {
            let paddr = alloc_pages(state, pages as u64);
            state
                .mem
                .write_slice(&vec![0u8; pages * PAGE as usize], GuestAddress(paddr))
                .expect("zero");
            (paddr, host_address(state, paddr))
        })
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        with_guest(|state| free_pages(state, paddr, pages as u64));
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        unreachable!("no MMIO in the harness")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        with_guest(|state| {
            let pages = (len as u64).div_ceil(PAGE);
            let paddr = alloc_pages(state, pages);
            state.bounces.insert(paddr, pages);
            if direction != BufferDirection::DeviceToDriver {
                // SAFETY: the driver shares a live buffer of `len` bytes.
                let src = unsafe { std::slice::from_raw_parts(buffer.as_ptr() as *const u8, len) };
                state
                    .mem
                    .write_slice(src, GuestAddress(paddr))
                    .expect("bounce in");
            }
            paddr
        })
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        with_guest(|state| {
            if direction != BufferDirection::DriverToDevice {
                // SAFETY: the driver passes back the live buffer it shared.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(buffer.as_ptr() as *mut u8, len) };
                state
                    .mem
                    .read_slice(dst, GuestAddress(paddr))
                    .expect("bounce out");
            }
            let pages = state.bounces.remove(&paddr).expect("shared before");
            free_pages(state, paddr, pages);
        })
    }
}

/// What the transport drives; shared so tests can inspect it.
pub struct Inner {
    pub device: VirtioBlock,
    pub handlers: Vec<QueueHandler<Arc<GuestMemoryMmap>>>,
    pub notifies: Vec<EventFd>,
    pub kicks: u64,
}

/// The transport of the harness.
#[derive(Clone)]
pub struct HarnessTransport {
    pub inner: Rc<RefCell<Inner>>,
    mem: Arc<GuestMemoryMmap>,
}

impl HarnessTransport {
    /// A transport over a new device on `backend`, in this thread's guest.
    pub fn new(backend: Arc<dyn BlockBackend>, serial: &[u8]) -> Self {
        let mem = GUEST.with(|g| {
            g.borrow()
                .as_ref()
                .expect("install_guest first")
                .mem
                .clone()
        });
        let device = VirtioBlock::new(
            backend,
            DeviceOptions {
                num_queues: 1,
                queue_size: 64,
                serial: serial.to_vec(),
            },
        )
        .expect("device");
        HarnessTransport {
            inner: Rc::new(RefCell::new(Inner {
                device,
                handlers: Vec::new(),
                notifies: Vec::new(),
                kicks: 0,
            })),
            mem,
        }
    }
}

fn split(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

impl Transport for HarnessTransport {
    fn device_type(&self) -> DeviceType {
        let inner = self.inner.borrow();
        DeviceType::try_from(inner.device.device_type()).expect("known type")
    }

    fn read_device_features(&mut self) -> u64 {
        let inner = self.inner.borrow();
        u64::from(inner.device.device_features_page(0))
            | (u64::from(inner.device.device_features_page(1)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let mut inner = self.inner.borrow_mut();
        inner
            .device
            .set_driver_features_page(0, driver_features as u32);
        inner
            .device
            .set_driver_features_page(1, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        u32::from(self.inner.borrow().device.queue_max_size())
    }

    fn notify(&mut self, queue: u16) {
        let mut inner = self.inner.borrow_mut();
        inner.kicks += 1;
        inner.notifies[usize::from(queue)].write(1).expect("kick");
        let handler = &mut inner.handlers[usize::from(queue)];
        handler.handle_queue_notify().expect("notify");
        handler.run_until_idle().expect("process");
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(u32::from(self.inner.borrow().device.status()))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        inner.device.set_status(status.bits() as u8);
        if status.is_empty() {
            inner.handlers.clear();
            inner.notifies.clear();
        } else if inner.device.driver_ok() && !inner.device.is_activated() {
            let mut events = Vec::new();
            for _ in 0..inner.device.num_queues() {
                let notify = eventfd();
                inner.notifies.push(notify.try_clone().expect("clone"));
                events.push(QueueEvents { notify });
            }
            inner.handlers = inner
                .device
                .activate(self.mem.clone(), events)
                .expect("activate");
        }
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut inner = self.inner.borrow_mut();
        let q = inner.device.queue_mut(queue).expect("queue");
        q.set_size(size as u16);
        let (low, high) = split(descriptors);
        q.set_desc_table_address(low, high);
        let (low, high) = split(driver_area);
        q.set_avail_ring_address(low, high);
        let (low, high) = split(device_area);
        q.set_used_ring_address(low, high);
        q.set_ready(true);
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.inner.borrow_mut().device.queue_mut(queue) {
            q.set_ready(false);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner
            .borrow()
            .device
            .queue(queue)
            .is_some_and(|q| q.ready())
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let inner = self.inner.borrow();
        let mut any = false;
        for handler in &inner.handlers {
            any |= handler.take_interrupt().expect("interrupt");
        }
        if any {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.borrow().device.config_generation()
    }

    fn read_config_space<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut bytes = vec![0u8; std::mem::size_of::<T>()];
        self.inner
            .borrow()
            .device
            .read_config(offset as u64, &mut bytes);
        // SAFETY: T is FromBytes (every bit pattern is a valid T) and
        // `bytes` holds exactly size_of::<T>() bytes; read_unaligned copes
        // with the Vec's alignment.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }

    fn write_config_space<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        // SAFETY: T is IntoBytes (no padding, every byte initialised) and
        // Immutable, so viewing `value` as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((&value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        };
        self.inner
            .borrow_mut()
            .device
            .write_config(offset as u64, bytes);
        Ok(())
    }
}
