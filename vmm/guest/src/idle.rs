//! `guest.mode=idle` and `guest.mode=io`: the guests the VMM's API tests
//! run. Idle halts until an interrupt, with the LAPIC timer stopped; on the
//! ACPI GED's power-button event it powers off through the
//! hardware-reduced sleep control register, as a Linux guest does; its
//! new-generation-ID event it reports as `vmgenid changed`. Io
//! makes exactly the reads, writes and flushes its command line asks for
//! on the first virtio disk, prints `io done`, then idles.

use crate::arch;
use crate::cmdline::{self, MmioDevice};
use crate::console::{line, put_bytes, put_dec, put_str};
use crate::disk::{self, Failure};
use crate::mem::alloc_buffer;

/// The GED's event register (the VMM's layout: `GED_START`).
const GED_EVENTS: usize = 0xfeb0_0000;
/// The GED's GSI.
const GED_GSI: u32 = 23;
/// The power-button bit of the GED's event register.
const GED_POWER_BUTTON: u32 = 1;
/// The new-VM-generation-ID bit (a restore, revert or fork).
const GED_VMGENID: u32 = 2;
/// The FADT's SLEEP_CONTROL_REG port.
const SLEEP_CONTROL_PORT: u16 = 0x600;
/// SLP_TYP 5 (`\_S5_`) with SLP_EN.
const SLEEP_S5: u8 = (5 << 2) | (1 << 5);
/// Bytes of each io-mode request.
const IO_BYTES: usize = 4096;
/// Most requests of each kind io mode accepts.
const MAX_IO_COUNT: u64 = 1 << 24;

/// Halts until the power button, then powers off.
pub fn idle() -> ! {
    arch::route_gsi(GED_GSI, arch::GED_VECTOR);
    arch::stop_lapic_timer();
    line("idle");
    // Look at the register once before waiting: a press that came before
    // the GSI was routed raised no interrupt here, but its event is
    // latched in the GED.
    let mut seen = u64::MAX;
    loop {
        arch::cli();
        let taken = arch::ged_irqs();
        if taken != seen {
            seen = taken;
            // SAFETY: the GED's register is identity-mapped MMIO; reading
            // it clears the events.
            let events = unsafe { arch::mmio_read32(GED_EVENTS) };
            if events & GED_VMGENID != 0 {
                line("vmgenid changed");
            }
            if events & GED_POWER_BUTTON != 0 {
                line("power button: powering off");
                arch::outb(SLEEP_CONTROL_PORT, SLEEP_S5);
                // The VMM stops us there; if not, reset.
                arch::reset();
            }
        }
        arch::sti_hlt();
    }
}

fn count(cmdline: &[u8], key: &[u8]) -> u64 {
    match cmdline::value(cmdline, key) {
        None => 0,
        Some(text) => match cmdline::parse_number(text).filter(|&n| n <= MAX_IO_COUNT) {
            Some(n) => n,
            None => {
                put_str("guest: io FAIL bad ");
                put_bytes(key);
                put_bytes(text);
                put_str("\n");
                arch::reset();
            }
        },
    }
}

/// Makes the requests, then idles.
pub fn io(cmdline: &[u8], device: Option<MmioDevice>) -> ! {
    let reads = count(cmdline, b"guest.reads=");
    let writes = count(cmdline, b"guest.writes=");
    let flushes = count(cmdline, b"guest.flushes=");
    let result = match device {
        None => Err(Failure::Other("no virtio_mmio.device, count", 0)),
        Some(device) => run_io(&device, reads, writes, flushes),
    };
    match result {
        Ok(()) => {
            put_str("guest: io done reads=");
            put_dec(reads);
            put_str(" writes=");
            put_dec(writes);
            put_str(" flushes=");
            put_dec(flushes);
            put_str("\n");
        }
        Err(failure) => disk::print_failure("io", &failure),
    }
    idle()
}

fn run_io(device: &MmioDevice, reads: u64, writes: u64, flushes: u64) -> Result<(), Failure> {
    let mut blk = disk::open(device)?;
    let sectors_per_request = (IO_BYTES / 512) as u64;
    let slots = blk.capacity() / sectors_per_request;
    if slots == 0 {
        return Err(Failure::Other(
            "disk smaller than one request, sectors",
            blk.capacity(),
        ));
    }
    let buffer = alloc_buffer(IO_BYTES).ok_or(Failure::Other("out of memory for", 4))?;
    for index in 0..writes {
        buffer.fill(index as u8);
        disk::write(&mut blk, (index % slots) * sectors_per_request, buffer)?;
    }
    for index in 0..reads {
        disk::read(&mut blk, (index % slots) * sectors_per_request, buffer)
            .map_err(|(failure, _)| failure)?;
    }
    for _ in 0..flushes {
        blk.flush()
            .map_err(|error| Failure::Driver("flush", error))?;
    }
    Ok(())
}
