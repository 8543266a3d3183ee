//! `guest.mode=dirty guest.rate=MIB [guest.span=MIB]`: the guest that
//! dirties memory at a fixed rate, for migration benchmarks. It touches
//! every page of a `guest.span=` MiB buffer once (default 16), prints
//! `guest: dirtying R MiB/s over S MiB`, then on every tick of its 10 ms
//! LAPIC timer writes one word into each of the next rate/100 MiB worth
//! of pages of the buffer (round robin, each write a new value, never
//! zero), and halts until the next tick. Every second (100 ticks) it
//! prints `guest: dirty K` (K counts the seconds, 1, 2, ...), so a
//! migration's serial log shows the guest went on without a gap. Ticks
//! missed (the VM was paused) are not made up for beyond one second.

use crate::arch;
use crate::cmdline;
use crate::console::{put_bytes, put_dec, put_str};
use crate::mem::alloc_buffer;

/// Most MiB per second asked for.
const MAX_RATE_MIB: u64 = 64 << 10;
/// Most MiB of buffer.
const MAX_SPAN_MIB: u64 = 4096;
/// The buffer when `guest.span=` is not given.
const DEFAULT_SPAN_MIB: u64 = 16;
/// Timer ticks per second (a 10 ms period).
const TICKS_PER_SECOND: u64 = 100;
const PAGE: usize = 4096;

fn number(cmdline: &[u8], key: &[u8], max: u64, default: Option<u64>) -> u64 {
    match cmdline::value(cmdline, key) {
        None => match default {
            Some(n) => n,
            None => {
                put_str("guest: dirty FAIL no ");
                put_bytes(key);
                put_str("\n");
                arch::reset();
            }
        },
        Some(text) => match cmdline::parse_number(text).filter(|&n| n > 0 && n <= max) {
            Some(n) => n,
            None => {
                put_str("guest: dirty FAIL bad ");
                put_bytes(key);
                put_bytes(text);
                put_str("\n");
                arch::reset();
            }
        },
    }
}

/// Dirties memory forever.
pub fn dirty(cmdline: &[u8]) -> ! {
    let rate = number(cmdline, b"guest.rate=", MAX_RATE_MIB, None);
    let span = number(
        cmdline,
        b"guest.span=",
        MAX_SPAN_MIB,
        Some(DEFAULT_SPAN_MIB),
    );
    let Some(buffer) = alloc_buffer((span << 20) as usize) else {
        put_str("guest: dirty FAIL out of memory for ");
        put_dec(span);
        put_str(" MiB\n");
        arch::reset();
    };
    let pages = buffer.len() / PAGE;
    let mut value: u64 = 1;
    for page in buffer.chunks_exact_mut(PAGE) {
        page[..8].copy_from_slice(&value.to_le_bytes());
    }
    put_str("guest: dirtying ");
    put_dec(rate);
    put_str(" MiB/s over ");
    put_dec(span);
    put_str(" MiB\n");
    // Owed work in pages times ticks: a tick owes pages_per_second of it,
    // a page written pays TICKS_PER_SECOND (so that low rates add up).
    let pages_per_second = (rate << 20) / PAGE as u64;
    let mut owed = 0u64;
    let mut next_page = 0usize;
    let mut last_tick = arch::ticks();
    let mut ticks_done = 0u64;
    loop {
        let now = arch::ticks();
        let elapsed = now.wrapping_sub(last_tick).min(TICKS_PER_SECOND);
        if elapsed == 0 {
            arch::sti_hlt();
            continue;
        }
        last_tick = now;
        owed += pages_per_second * elapsed;
        let due = owed / TICKS_PER_SECOND;
        owed %= TICKS_PER_SECOND;
        value = value.wrapping_add(1) | 1;
        for _ in 0..due {
            let at = next_page * PAGE;
            buffer[at..at + 8].copy_from_slice(&value.to_le_bytes());
            next_page = (next_page + 1) % pages;
        }
        let before = ticks_done / TICKS_PER_SECOND;
        ticks_done += elapsed;
        if ticks_done / TICKS_PER_SECOND > before {
            put_str("guest: dirty ");
            put_dec(ticks_done / TICKS_PER_SECOND);
            put_str("\n");
        }
    }
}
