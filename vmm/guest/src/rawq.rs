//! `guest.mode=bad-desc`: a virtio-blk request whose data descriptor points
//! outside guest memory, submitted through a split virtqueue of our own
//! (virtio-drivers' API cannot build one), then a normal read on the same
//! queue to show the device still works.

use core::sync::atomic::{fence, Ordering};

use crate::arch;
use crate::cmdline::MmioDevice;
use crate::console::{put_dec, put_hex, put_str};
use crate::disk::{self, wait_used, Failure, REQUEST_TIMEOUT_MS};
use crate::mem::{alloc_buffer, alloc_pages};

// virtio-mmio (version 2) registers.
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;

const MAGIC_VALUE: u32 = 0x7472_6976;
const DEVICE_ID_BLOCK: u32 = 2;
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
/// VIRTIO_F_VERSION_1, bit 32 = bit 0 of feature word 1.
const FEATURE_VERSION_1_HIGH: u32 = 1;

const QUEUE_SIZE: u16 = 8;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const REQ_IN: u32 = 0;

/// Where the bad descriptor points: 256 GiB, far beyond any test guest's RAM.
pub const BAD_ADDRESS: u64 = 0x40_0000_0000;

// Layout of the one queue page.
const DESC_OFFSET: usize = 0;
const AVAIL_OFFSET: usize = 0x100;
const USED_OFFSET: usize = 0x200;
const HEADERS_OFFSET: usize = 0x400;
const STATUS_BYTES_OFFSET: usize = 0x600;

/// A one-queue virtio-blk driver of our own, on raw registers.
struct RawQueue {
    base: usize,
    page: usize,
    avail_idx: u16,
    last_used: u16,
    next_desc: u16,
}

impl RawQueue {
    fn reg_read(&self, offset: usize) -> u32 {
        // SAFETY: the device's register window (identity-mapped MMIO).
        unsafe { arch::mmio_read32(self.base + offset) }
    }

    fn reg_write(&self, offset: usize, value: u32) {
        // SAFETY: as for reg_read.
        unsafe { arch::mmio_write32(self.base + offset, value) }
    }

    /// Resets the device and sets up queue 0 with VERSION_1 only.
    fn open(device: &MmioDevice) -> Result<Self, Failure> {
        let page = alloc_pages(1).ok_or(Failure::Other("out of memory for", 1))? as usize;
        let queue = Self {
            base: device.base as usize,
            page,
            avail_idx: 0,
            last_used: 0,
            next_desc: 0,
        };
        if queue.reg_read(MAGIC) != MAGIC_VALUE || queue.reg_read(VERSION) != 2 {
            return Err(Failure::Other(
                "no virtio-mmio version 2 device at",
                device.base,
            ));
        }
        if queue.reg_read(DEVICE_ID) != DEVICE_ID_BLOCK {
            return Err(Failure::Other("not a block device at", device.base));
        }
        arch::route_gsi(device.irq, arch::VIRTIO_VECTOR);
        queue.reg_write(STATUS, 0);
        queue.reg_write(STATUS, STATUS_ACKNOWLEDGE);
        queue.reg_write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        queue.reg_write(DEVICE_FEATURES_SEL, 1);
        if queue.reg_read(DEVICE_FEATURES) & FEATURE_VERSION_1_HIGH == 0 {
            return Err(Failure::Other(
                "device lacks VERSION_1, features high word",
                u64::from(queue.reg_read(DEVICE_FEATURES)),
            ));
        }
        queue.reg_write(DRIVER_FEATURES_SEL, 0);
        queue.reg_write(DRIVER_FEATURES, 0);
        queue.reg_write(DRIVER_FEATURES_SEL, 1);
        queue.reg_write(DRIVER_FEATURES, FEATURE_VERSION_1_HIGH);
        queue.reg_write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if queue.reg_read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(Failure::Other(
                "device refused features, status",
                u64::from(queue.reg_read(STATUS)),
            ));
        }
        queue.reg_write(QUEUE_SEL, 0);
        let max = queue.reg_read(QUEUE_NUM_MAX);
        if max < u32::from(QUEUE_SIZE) {
            return Err(Failure::Other("queue too small, max", u64::from(max)));
        }
        queue.reg_write(QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, high, offset) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, DESC_OFFSET),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, AVAIL_OFFSET),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, USED_OFFSET),
        ] {
            let address = (page + offset) as u64;
            queue.reg_write(low, address as u32);
            queue.reg_write(high, (address >> 32) as u32);
        }
        queue.reg_write(QUEUE_READY, 1);
        queue.reg_write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        Ok(queue)
    }

    fn write_desc(&self, index: u16, address: u64, len: u32, flags: u16, next: u16) {
        let desc = self.page + DESC_OFFSET + usize::from(index) * 16;
        // SAFETY: inside our queue page (index < QUEUE_SIZE); the device only
        // reads descriptors we have not yet made available.
        unsafe {
            (desc as *mut u64).write_volatile(address);
            ((desc + 8) as *mut u32).write_volatile(len);
            ((desc + 12) as *mut u16).write_volatile(flags);
            ((desc + 14) as *mut u16).write_volatile(next);
        }
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx in our queue page, written by the device.
        unsafe { ((self.page + USED_OFFSET + 2) as *const u16).read_volatile() }
    }

    /// Submits a read of `len` bytes at `sector` into `data_address` (not
    /// necessarily in RAM) and waits; the status byte, or None on timeout.
    fn read(&mut self, sector: u64, data_address: u64, len: u32) -> Option<u8> {
        let head = self.next_desc;
        self.next_desc = (self.next_desc + 3) % (QUEUE_SIZE - QUEUE_SIZE % 3);
        let slot = usize::from(head / 3);
        let header = self.page + HEADERS_OFFSET + slot * 16;
        let status = self.page + STATUS_BYTES_OFFSET + slot;
        // SAFETY: header and status slots inside our queue page, not in use
        // by the device (each request has its own slot).
        unsafe {
            (header as *mut u32).write_volatile(REQ_IN);
            ((header + 4) as *mut u32).write_volatile(0);
            ((header + 8) as *mut u64).write_volatile(sector);
            (status as *mut u8).write_volatile(0xff);
        }
        self.write_desc(head, header as u64, 16, DESC_F_NEXT, head + 1);
        self.write_desc(
            head + 1,
            data_address,
            len,
            DESC_F_NEXT | DESC_F_WRITE,
            head + 2,
        );
        self.write_desc(head + 2, status as u64, 1, DESC_F_WRITE, 0);
        let avail = self.page + AVAIL_OFFSET;
        // SAFETY: avail ring entry and index in our queue page.
        unsafe {
            ((avail + 4 + usize::from(self.avail_idx % QUEUE_SIZE) * 2) as *mut u16)
                .write_volatile(head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            ((avail + 2) as *mut u16).write_volatile(self.avail_idx);
        }
        fence(Ordering::SeqCst);
        self.reg_write(QUEUE_NOTIFY, 0);
        let target = self.last_used.wrapping_add(1);
        let this: &Self = self;
        let done = wait_used(
            || this.used_idx() != this.last_used,
            || {
                let pending = this.reg_read(INTERRUPT_STATUS);
                if pending != 0 {
                    this.reg_write(INTERRUPT_ACK, pending);
                }
            },
            REQUEST_TIMEOUT_MS,
        );
        if !done {
            return None;
        }
        self.last_used = target;
        // SAFETY: the status byte in our queue page.
        Some(unsafe { (status as *const u8).read_volatile() })
    }
}

/// Runs the bad-descriptor test and the read after it.
pub fn run_bad_desc(device: &MmioDevice, check_sector: u64) -> Result<(), Failure> {
    let mut queue = RawQueue::open(device)?;
    let bad = queue.read(check_sector, BAD_ADDRESS, 4096);
    put_str("guest: bad-desc addr=");
    put_hex(BAD_ADDRESS);
    put_str(" status=");
    match bad {
        Some(status) => put_dec(u64::from(status)),
        None => put_str("none"),
    }
    let device_status = queue.reg_read(STATUS);
    put_str(" device-status=");
    put_hex(u64::from(device_status));
    put_str("\n");

    let buffer = alloc_buffer(4096).ok_or(Failure::Other("out of memory for", 1))?;
    if device_status & STATUS_NEEDS_RESET == 0 {
        if let Some(0) = queue.read(check_sector, buffer.as_ptr() as u64, 4096) {
            put_str("guest: after bad-desc read ok\n");
            return Ok(());
        }
    }
    // The device wants a reset (or the queue is stuck): start over with
    // virtio-drivers and read there.
    let mut blk = disk::open(device)?;
    disk::read(&mut blk, check_sector, buffer).map_err(|(failure, _)| failure)?;
    put_str("guest: after bad-desc read ok (after reset)\n");
    Ok(())
}
