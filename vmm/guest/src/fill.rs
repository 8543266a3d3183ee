//! `guest.fill=MIB` (with `guest.mode=count`): before counting, the guest
//! fills MIB MiB of its RAM with data no page of which is zero or equal to
//! another, and prints `guest: filled MIB MiB`, so that a snapshot or a
//! migration has that much RAM to carry (bench/state.sh runs 512 MiB
//! guests with 256 MiB of data).

use crate::arch;
use crate::cmdline;
use crate::console::{put_bytes, put_dec, put_str};
use crate::mem::alloc_buffer;

/// Most MiB filled.
const MAX_FILL_MIB: u64 = 4096;

/// Fills the RAM `guest.fill=` asks for, if any.
pub fn fill(cmdline: &[u8]) {
    let Some(text) = cmdline::value(cmdline, b"guest.fill=") else {
        return;
    };
    let mib = match cmdline::parse_number(text).filter(|&n| n > 0 && n <= MAX_FILL_MIB) {
        Some(n) => n,
        None => {
            put_str("guest: fill FAIL bad guest.fill=");
            put_bytes(text);
            put_str("\n");
            arch::reset();
        }
    };
    let Some(buffer) = alloc_buffer((mib << 20) as usize) else {
        put_str("guest: fill FAIL out of memory for ");
        put_dec(mib);
        put_str(" MiB\n");
        arch::reset();
    };
    // A page at a time with one `rep stosq` (a slow, instruction-emulating
    // host runs it as one instruction), each page its own odd word.
    for (index, page) in buffer.chunks_exact_mut(4096).enumerate() {
        let value = (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        // SAFETY: `page` is 4096 bytes of RAM we own exclusively; rep stosq
        // writes 512 eight-byte words from RDI upward (the direction flag
        // is clear, as the ABI keeps it) and touches nothing else.
        unsafe {
            core::arch::asm!(
                "rep stosq",
                inout("rdi") page.as_mut_ptr() => _,
                inout("rcx") 512usize => _,
                in("rax") value,
                options(nostack),
            );
        }
    }
    put_str("guest: filled ");
    put_dec(mib);
    put_str(" MiB\n");
}
