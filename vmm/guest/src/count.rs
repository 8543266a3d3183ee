//! `guest.mode=count`: the guest the state tests snapshot and restore. It
//! counts in memory (a static, so the count lives in guest RAM), prints
//! `guest: count K` on the serial port every `guest.every=N` steps (K =
//! steps / N; N defaults to 100000), and, with a virtio disk, writes K to
//! sector K mod capacity and flushes before the next step; before a
//! count, the VM generation ID when it is new (`vmgenid`). It runs until
//! the VMM stops it.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch;
use crate::cmdline::{self, MmioDevice};
use crate::console::{put_bytes, put_dec, put_str};
use crate::disk::{self, Failure};
use crate::mem::alloc_buffer;

/// The steps taken, in guest RAM.
static STEPS: AtomicU64 = AtomicU64::new(0);
/// Steps between two prints when the command line gives none.
const DEFAULT_EVERY: u64 = 100_000;
/// Most steps between two prints.
const MAX_EVERY: u64 = 1 << 32;

/// Counts forever.
pub fn count(cmdline: &[u8], device: Option<MmioDevice>) -> ! {
    let every = match cmdline::value(cmdline, b"guest.every=") {
        None => DEFAULT_EVERY,
        Some(text) => match cmdline::parse_number(text).filter(|&n| n > 0 && n <= MAX_EVERY) {
            Some(n) => n,
            None => {
                put_str("guest: count FAIL bad guest.every=");
                put_bytes(text);
                put_str("\n");
                arch::reset();
            }
        },
    };
    let mut blk = match device.map(|d| disk::open(&d)) {
        None => None,
        Some(Ok(blk)) => Some(blk),
        Some(Err(failure)) => {
            disk::print_failure("count", &failure);
            arch::reset();
        }
    };
    let Some(buffer) = alloc_buffer(512) else {
        put_str("guest: count FAIL out of memory\n");
        arch::reset();
    };
    crate::fill::fill(cmdline);
    loop {
        let steps = STEPS.load(Ordering::Relaxed) + 1;
        STEPS.store(steps, Ordering::Relaxed);
        if steps % every != 0 {
            continue;
        }
        let k = steps / every;
        crate::vmgenid::report_if_changed();
        put_str("guest: count ");
        put_dec(k);
        put_str("\n");
        if let Some(blk) = blk.as_mut() {
            if let Err(failure) = write_count(blk, buffer, k) {
                disk::print_failure("count", &failure);
                arch::reset();
            }
        }
    }
}

fn write_count(blk: &mut disk::Blk, buffer: &mut [u8], k: u64) -> Result<(), Failure> {
    let sectors = blk.capacity();
    if sectors == 0 {
        return Err(Failure::Other("empty disk, sectors", 0));
    }
    buffer.fill(0);
    buffer[..8].copy_from_slice(&k.to_le_bytes());
    disk::write(blk, k % sectors, buffer)?;
    blk.flush().map_err(|error| Failure::Driver("flush", error))
}
