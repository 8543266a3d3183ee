//! A virtio-mmio (version 2) register window and split virtqueues of our
//! own, for drivers virtio-drivers cannot be: `guest.mode=net-mq` needs a
//! control queue and several queue pairs, which its `VirtIONet` never
//! negotiates. Each queue lives in one zeroed page (descriptors, then the
//! available ring at 0x400, the used ring at 0x800) and has at most
//! [`MAX_QUEUE_SIZE`] entries; the driver keeps descriptor `i` for buffer
//! `i`, so a head names its buffer.

use core::sync::atomic::{fence, Ordering};

use crate::arch;
use crate::cmdline::MmioDevice;
use crate::disk::Failure;
use crate::mem::alloc_pages;

// Register offsets (virtio 1.2, 4.2.2).
pub const MAGIC: usize = 0x000;
pub const VERSION: usize = 0x004;
pub const DEVICE_FEATURES: usize = 0x010;
pub const DEVICE_FEATURES_SEL: usize = 0x014;
pub const DRIVER_FEATURES: usize = 0x020;
pub const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
pub const INTERRUPT_STATUS: usize = 0x060;
pub const INTERRUPT_ACK: usize = 0x064;
pub const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
pub const CONFIG_GENERATION: usize = 0x0fc;
pub const CONFIG: usize = 0x100;

pub const MAGIC_VALUE: u32 = 0x7472_6976;
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// Most entries of one of our queues (its rings fit one page).
pub const MAX_QUEUE_SIZE: u16 = 64;
const AVAIL_OFFSET: usize = 0x400;
const USED_OFFSET: usize = 0x800;

/// A device's register window (identity-mapped MMIO).
#[derive(Clone, Copy)]
pub struct Regs {
    base: usize,
}

impl Regs {
    /// The window of `device`, checked to be one we may touch.
    pub fn new(device: &MmioDevice) -> Result<Self, Failure> {
        if device.size < 0x200 || device.base == 0 || device.base >= 1 << 32 {
            return Err(Failure::Other(
                "bad virtio_mmio.device window at",
                device.base,
            ));
        }
        let regs = Regs {
            base: device.base as usize,
        };
        if regs.read(MAGIC) != MAGIC_VALUE || regs.read(VERSION) != 2 {
            return Err(Failure::Other(
                "no virtio-mmio version 2 device at",
                device.base,
            ));
        }
        Ok(regs)
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: inside the device's register window (checked in `new`,
        // identity-mapped below 4 GiB); MMIO, not memory Rust owns.
        unsafe { arch::mmio_read32(self.base + offset) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { arch::mmio_write32(self.base + offset, value) }
    }

    /// Reads configuration byte `offset`.
    pub fn config_byte(&self, offset: usize) -> u8 {
        // SAFETY: the configuration space follows the registers in the
        // window (at least 0x200 bytes); byte reads are allowed there.
        unsafe { ((self.base + CONFIG + offset) as *const u8).read_volatile() }
    }

    /// Reads a little-endian u16 of the configuration at `offset`, retried
    /// until the generation is stable (virtio 1.2, 4.2.2.2).
    pub fn config_u16(&self, offset: usize) -> u16 {
        loop {
            let before = self.read(CONFIG_GENERATION);
            let value =
                u16::from_le_bytes([self.config_byte(offset), self.config_byte(offset + 1)]);
            if self.read(CONFIG_GENERATION) == before {
                return value;
            }
        }
    }

    /// The 64-bit feature words the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(DEVICE_FEATURES));
        self.write(DEVICE_FEATURES_SEL, 1);
        low | u64::from(self.read(DEVICE_FEATURES)) << 32
    }

    /// Writes the driver's 64 feature bits.
    pub fn set_driver_features(&self, features: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
    }
}

/// One split virtqueue of `size` entries in a page of its own.
pub struct SplitQueue {
    index: u16,
    size: u16,
    page: usize,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueue {
    /// Sets up queue `index` with `size` entries (a power of two, at most
    /// [`MAX_QUEUE_SIZE`] and the device's QueueNumMax) and enables it.
    pub fn setup(regs: &Regs, index: u16, size: u16) -> Result<Self, Failure> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(Failure::Other("bad queue size", u64::from(size)));
        }
        regs.write(QUEUE_SEL, u32::from(index));
        let max = regs.read(QUEUE_NUM_MAX);
        if max < u32::from(size) {
            return Err(Failure::Other(
                "queue too small, QueueNumMax",
                u64::from(max),
            ));
        }
        let page = alloc_pages(1)
            .ok_or(Failure::Other("out of memory for queue", u64::from(index)))?
            as usize;
        regs.write(QUEUE_NUM, u32::from(size));
        for (low, high, offset) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, 0),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, AVAIL_OFFSET),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, USED_OFFSET),
        ] {
            let address = (page + offset) as u64;
            regs.write(low, address as u32);
            regs.write(high, (address >> 32) as u32);
        }
        regs.write(QUEUE_READY, 1);
        Ok(SplitQueue {
            index,
            size,
            page,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Writes descriptor `desc` (below the queue size).
    pub fn write_desc(&self, desc: u16, address: u64, len: u32, flags: u16, next: u16) {
        let at = self.page + usize::from(desc % self.size) * 16;
        // SAFETY: inside our queue page; the device reads a descriptor only
        // once its chain is made available, which happens after this.
        unsafe {
            (at as *mut u64).write_volatile(address);
            ((at + 8) as *mut u32).write_volatile(len);
            ((at + 12) as *mut u16).write_volatile(flags);
            ((at + 14) as *mut u16).write_volatile(next);
        }
    }

    /// Makes the chain at `head` available (without notifying).
    pub fn push(&mut self, head: u16) {
        let avail = self.page + AVAIL_OFFSET;
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: the available ring's entry and index in our queue page.
        unsafe {
            ((avail + 4 + slot * 2) as *mut u16).write_volatile(head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            ((avail + 2) as *mut u16).write_volatile(self.avail_idx);
        }
        fence(Ordering::SeqCst);
    }

    /// Tells the device the queue has new chains.
    pub fn notify(&self, regs: &Regs) {
        fence(Ordering::SeqCst);
        regs.write(QUEUE_NOTIFY, u32::from(self.index));
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx in our queue page, written by the device.
        unsafe { ((self.page + USED_OFFSET + 2) as *const u16).read_volatile() }
    }

    /// Whether the device has returned a chain not yet popped.
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// The next returned chain: (head, bytes the device wrote).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used % self.size);
        let at = self.page + USED_OFFSET + 4 + slot * 8;
        // SAFETY: a used element in our queue page, written by the device
        // before it advanced used.idx.
        let (id, len) = unsafe {
            (
                (at as *const u32).read_volatile(),
                ((at + 4) as *const u32).read_volatile(),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Makes the chain at `head` available, notifies, and spins until the
    /// device returns a chain (5 s at most); its (head, written length).
    pub fn submit_and_wait(&mut self, regs: &Regs, head: u16) -> Result<(u16, u32), Failure> {
        self.push(head);
        self.notify(regs);
        // The LAPIC timer ticks every 10 ms with interrupts on: 5 s.
        let deadline = arch::ticks() + 500;
        loop {
            if let Some(used) = self.pop_used() {
                return Ok(used);
            }
            if arch::ticks() > deadline {
                return Err(Failure::Other(
                    "the device never returned a chain of queue",
                    u64::from(self.index),
                ));
            }
            core::hint::spin_loop();
        }
    }
}
