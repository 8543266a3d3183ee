//! The virtio-blk tests driven by virtio-drivers (code we did not write):
//! `guest.mode=disk` and `guest.mode=past-end`. Every request waits for its
//! completion in `sti; hlt` (woken by the device's interrupt or the LAPIC
//! timer, which bounds the wait).

use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::Error;
use zerocopy::IntoBytes;

use crate::arch::{self, TIMER_PERIOD_MS, VIRTIO_VECTOR};
use crate::cmdline::MmioDevice;
use crate::console::{put_dec, put_hex, put_str};
use crate::hal::GuestHal;
use crate::mem::alloc_buffer;
use crate::pattern;

/// The block driver over the MMIO transport.
pub type Blk = VirtIOBlk<GuestHal, MmioTransport<'static>>;

/// How long one request may take before the guest gives up.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Bytes of the host's pattern that the guest checks.
pub const CHECK_BYTES: usize = 64 * 1024;
/// Bytes the guest writes, flushes and reads back.
pub const WRITE_BYTES: usize = 200 * 1024;

/// Why a test failed; printed after `guest: disk FAIL `.
pub enum Failure {
    /// The transport or driver reported an error.
    Driver(&'static str, Error),
    /// The device did not complete a request in time.
    Timeout(&'static str),
    /// Data read back differs from the pattern.
    Mismatch {
        what: &'static str,
        offset: usize,
        got: u8,
        want: u8,
    },
    /// Something else, described.
    Other(&'static str, u64),
}

/// Names a virtio-drivers error without core::fmt.
pub fn error_name(error: &Error) -> &'static str {
    match error {
        Error::QueueFull => "queue-full",
        Error::NotReady => "not-ready",
        Error::WrongToken => "wrong-token",
        Error::AlreadyUsed => "already-used",
        Error::InvalidParam => "invalid-param",
        Error::DmaError => "dma-error",
        Error::IoError => "io-error",
        Error::Unsupported => "unsupported",
        Error::ConfigSpaceTooSmall => "config-space-too-small",
        Error::ConfigSpaceMissing => "config-space-missing",
        _ => "other-error",
    }
}

/// Prints `guest: <prefix> FAIL <reason>`.
pub fn print_failure(prefix: &str, failure: &Failure) {
    put_str("guest: ");
    put_str(prefix);
    put_str(" FAIL ");
    match failure {
        Failure::Driver(what, error) => {
            put_str(what);
            put_str(": ");
            put_str(error_name(error));
        }
        Failure::Timeout(what) => {
            put_str(what);
            put_str(": no completion within ");
            put_dec(REQUEST_TIMEOUT_MS);
            put_str(" ms");
        }
        Failure::Mismatch {
            what,
            offset,
            got,
            want,
        } => {
            put_str(what);
            put_str(": byte ");
            put_dec(*offset as u64);
            put_str(" is ");
            put_hex(u64::from(*got));
            put_str(", expected ");
            put_hex(u64::from(*want));
        }
        Failure::Other(what, value) => {
            put_str(what);
            put_str(" ");
            put_dec(*value);
        }
    }
    put_str("\n");
}

/// Routes the device's interrupt and initialises the driver on it. The
/// driver is never dropped: virtio-drivers' `Drop` writes 0 to QueueReady
/// and spins until it reads back 0, forever on a device that ignores it; the
/// guest resets with the device live instead (see `stop_queue`).
pub fn open(device: &MmioDevice) -> Result<ManuallyDrop<Blk>, Failure> {
    if device.size < 0x200 || device.base == 0 || device.base >= 1 << 32 {
        return Err(Failure::Other(
            "bad virtio_mmio.device window at",
            device.base,
        ));
    }
    arch::route_gsi(device.irq, VIRTIO_VECTOR);
    let header = NonNull::new(device.base as *mut VirtIOHeader)
        .ok_or(Failure::Other("virtio_mmio.device at", 0))?;
    // SAFETY: the VMM maps a virtio-mmio register window of `size` bytes at
    // `base` (identity-mapped), used by nothing else for the guest's life.
    let transport = unsafe { MmioTransport::new(header, device.size as usize) }.map_err(|_| {
        Failure::Other(
            "no virtio-mmio device (bad magic or version) at",
            device.base,
        )
    })?;
    if transport.device_type() != DeviceType::Block {
        return Err(Failure::Other("not a block device at", device.base));
    }
    let mut blk = Blk::new(transport).map_err(|error| Failure::Driver("init", error))?;
    blk.enable_interrupts();
    Ok(ManuallyDrop::new(blk))
}

/// Waits for the next used-ring entry: `sti; hlt` until the device's
/// interrupt (or a timer tick) wakes us, acknowledging the device's interrupt
/// status each time. False on timeout.
pub fn wait_used(mut ready: impl FnMut() -> bool, mut ack: impl FnMut(), timeout_ms: u64) -> bool {
    let deadline = arch::ticks() + timeout_ms / TIMER_PERIOD_MS + 1;
    loop {
        arch::cli();
        ack();
        if ready() {
            arch::sti();
            return true;
        }
        if arch::ticks() >= deadline {
            arch::sti();
            return false;
        }
        arch::sti_hlt();
    }
}

fn wait(blk: &mut Blk, what: &'static str) -> Result<(), Failure> {
    let blk_ptr: *mut Blk = blk;
    // SAFETY: the two closures run one after the other, never at once, on
    // the same single-threaded driver.
    let ready = || unsafe { (*blk_ptr).peek_used().is_some() };
    let ack = || {
        // SAFETY: as above.
        unsafe { (*blk_ptr).ack_interrupt() };
    };
    if wait_used(ready, ack, REQUEST_TIMEOUT_MS) {
        Ok(())
    } else {
        Err(Failure::Timeout(what))
    }
}

/// Reads `buffer.len()` bytes at `sector`; on a device error, returns its
/// status byte as well.
pub fn read(blk: &mut Blk, sector: u64, buffer: &mut [u8]) -> Result<(), (Failure, u8)> {
    let mut request = BlkReq::default();
    let mut response = BlkResp::default();
    // SAFETY: request, buffer and response are not touched until the request
    // completes (or the guest resets after a timeout).
    let token = unsafe { blk.read_blocks_nb(sector as usize, &mut request, buffer, &mut response) }
        .map_err(|error| (Failure::Driver("read submit", error), 0xff))?;
    wait(blk, "read").map_err(|failure| (failure, 0xff))?;
    // SAFETY: the same buffers as submitted.
    let result = unsafe { blk.complete_read_blocks(token, &request, buffer, &mut response) };
    let status = response.status().as_bytes()[0];
    result.map_err(|error| (Failure::Driver("read", error), status))
}

/// Writes `buffer` at `sector`.
pub fn write(blk: &mut Blk, sector: u64, buffer: &[u8]) -> Result<(), Failure> {
    let mut request = BlkReq::default();
    let mut response = BlkResp::default();
    // SAFETY: as for read.
    let token =
        unsafe { blk.write_blocks_nb(sector as usize, &mut request, buffer, &mut response) }
            .map_err(|error| Failure::Driver("write submit", error))?;
    wait(blk, "write")?;
    // SAFETY: the same buffers as submitted.
    unsafe { blk.complete_write_blocks(token, &request, buffer, &mut response) }
        .map_err(|error| Failure::Driver("write", error))
}

fn check_room(blk: &Blk, sector: u64, bytes: usize, what: &'static str) -> Result<(), Failure> {
    let sectors = (bytes / SECTOR_SIZE) as u64;
    match sector.checked_add(sectors) {
        Some(end) if end <= blk.capacity() => Ok(()),
        _ => Err(Failure::Other(what, blk.capacity())),
    }
}

/// `guest.mode=disk`: verify the host's pattern, write ours, flush, read it
/// back and compare.
pub fn run_disk(device: &MmioDevice, check_sector: u64, write_sector: u64) -> Result<(), Failure> {
    let mut blk = open(device)?;
    check_room(
        &blk,
        check_sector,
        CHECK_BYTES,
        "check region past capacity",
    )?;
    check_room(
        &blk,
        write_sector,
        WRITE_BYTES,
        "write region past capacity",
    )?;

    let check = alloc_buffer(CHECK_BYTES).ok_or(Failure::Other("out of memory for", 64))?;
    read(&mut blk, check_sector, check).map_err(|(failure, _)| failure)?;
    if let Some(offset) = pattern::HOST.first_mismatch(check) {
        return Err(Failure::Mismatch {
            what: "host pattern",
            offset,
            got: check[offset],
            want: pattern::HOST.byte(offset),
        });
    }

    let written = alloc_buffer(WRITE_BYTES).ok_or(Failure::Other("out of memory for", 200))?;
    pattern::GUEST.fill(written);
    write(&mut blk, write_sector, written)?;
    if !blk.readonly() {
        blk.flush()
            .map_err(|error| Failure::Driver("flush", error))?;
    }
    let readback = alloc_buffer(WRITE_BYTES).ok_or(Failure::Other("out of memory for", 200))?;
    read(&mut blk, write_sector, readback).map_err(|(failure, _)| failure)?;
    if let Some(offset) = pattern::GUEST.first_mismatch(readback) {
        return Err(Failure::Mismatch {
            what: "read back",
            offset,
            got: readback[offset],
            want: pattern::GUEST.byte(offset),
        });
    }

    put_str("guest: disk interrupts virtio=");
    put_dec(arch::virtio_irqs());
    put_str(" timer=");
    put_dec(arch::ticks());
    put_str("\n");
    put_str("guest: disk ok capacity=");
    put_dec(blk.capacity());
    put_str(" read=");
    put_dec(CHECK_BYTES as u64);
    put_str(" written=");
    put_dec(WRITE_BYTES as u64);
    put_str("\n");
    stop_queue(device);
    Ok(())
}

/// `guest.mode=past-end`: a one-sector read at sector = capacity, which the
/// device must fail with IOERR; then a normal read of the last sector.
pub fn run_past_end(device: &MmioDevice) -> Result<(), Failure> {
    let mut blk = open(device)?;
    let capacity = blk.capacity();
    let buffer = alloc_buffer(SECTOR_SIZE).ok_or(Failure::Other("out of memory for", 1))?;
    let status = match read(&mut blk, capacity, buffer) {
        Ok(()) => 0,
        Err((Failure::Driver(_, _), status)) => status,
        Err((failure, _)) => return Err(failure),
    };
    put_str("guest: past-end status=");
    put_dec(u64::from(status));
    put_str("\n");
    if capacity > 0 {
        read(&mut blk, capacity - 1, buffer).map_err(|(failure, _)| failure)?;
        put_str("guest: after past-end read ok\n");
    }
    stop_queue(device);
    Ok(())
}

/// QueueReady (virtio-mmio register) and QueueSel.
const QUEUE_READY: usize = 0x44;
const QUEUE_SEL: usize = 0x30;
/// How often to read QueueReady back after writing 0.
const QUEUE_STOP_POLLS: u32 = 1000;

/// Stops queue 0 as virtio-drivers' `Drop` would (write 0 to QueueReady and
/// read it back, virtio 1.x 4.2.2.2), but with a bounded wait instead of its
/// endless one, and says how the device answered:
/// `guest: queue stop ok` or `guest: queue stop ignored (QueueReady reads 1)`.
fn stop_queue(device: &MmioDevice) {
    let base = device.base as usize;
    // SAFETY: the device's register window (identity-mapped MMIO).
    let stopped = unsafe {
        arch::mmio_write32(base + QUEUE_SEL, 0);
        arch::mmio_write32(base + QUEUE_READY, 0);
        (0..QUEUE_STOP_POLLS).any(|_| arch::mmio_read32(base + QUEUE_READY) == 0)
    };
    if stopped {
        put_str("guest: queue stop ok\n");
    } else {
        put_str("guest: queue stop ignored (QueueReady reads 1)\n");
    }
}
