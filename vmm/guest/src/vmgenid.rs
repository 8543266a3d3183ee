//! The VM generation ID: 16 bytes the VMM owns at a fixed address (its
//! DSDT's `\_SB.VGEN.ADDR` returns it; this guest has no AML interpreter,
//! so the address is the VMM's `layout::VMGENID_START`), new after every
//! restore, revert and fork. `guest.mode=count` prints it as
//! `guest: vmgenid HEX` (32 hex digits, bytes in memory order) at its
//! first count and whenever it differs from the one printed last.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::console::{put_byte, put_str};

/// Where the VMM keeps the ID (`vmm::layout::VMGENID_START`).
const VMGENID_ADDRESS: usize = 0x000f_f000;

/// The ID printed last, in guest RAM (so a restored guest remembers its
/// parent's and notices the new one).
static PRINTED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static PRINTED_ONCE: AtomicBool = AtomicBool::new(false);

/// The ID now.
fn read() -> [u64; 2] {
    let at = VMGENID_ADDRESS as *const u64;
    // SAFETY: the address is identity-mapped (the VMM maps the first
    // 4 GiB), 8-byte aligned and inside the VMM's BIOS-area RAM, which it
    // reserves for the ID; volatile, since the VMM changes it under us.
    unsafe { [at.read_volatile(), at.add(1).read_volatile()] }
}

/// Prints the ID if it is new.
pub fn report_if_changed() {
    let now = read();
    let printed = [
        PRINTED[0].load(Ordering::Relaxed),
        PRINTED[1].load(Ordering::Relaxed),
    ];
    if PRINTED_ONCE.load(Ordering::Relaxed) && printed == now {
        return;
    }
    PRINTED[0].store(now[0], Ordering::Relaxed);
    PRINTED[1].store(now[1], Ordering::Relaxed);
    PRINTED_ONCE.store(true, Ordering::Relaxed);
    put_str("guest: vmgenid ");
    for word in now {
        for byte in word.to_le_bytes() {
            for nibble in [byte >> 4, byte & 0xf] {
                put_byte(b"0123456789abcdef"[usize::from(nibble)]);
            }
        }
    }
    put_str("\n");
}
