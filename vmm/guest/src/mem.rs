//! The C memory functions the compiler calls (we have no libc), written with
//! string instructions and plain loops so no SSE sneaks in, and a bump
//! allocator over guest RAM for DMA and I/O buffers.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Copies `len` bytes from `src` to `dst` (non-overlapping): 8 bytes per
/// `rep movsq` step, then the tail with `rep movsb` (the ring-0 emulator
/// pays per step, so wide steps matter).
///
/// # Safety
/// The ranges must be valid for `len` bytes and not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; both copies go forward.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
             tail = in(reg) len % 8,
             inout("rcx") len / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// Copies `len` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// Both ranges must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(len) {
        // SAFETY: forward copy is correct when dst is below src or the ranges are apart.
        return unsafe { memcpy(dst, src, len) };
    }
    // SAFETY: backward copy with the direction flag set, restored before returning.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") len => _,
             inout("rdi") dst.add(len).wrapping_sub(1) => _,
             inout("rsi") src.add(len).wrapping_sub(1) => _,
             options(nostack));
    }
    dst
}

/// Fills `len` bytes at `dst` with the low byte of `value` (`rep stosq`,
/// then `rep stosb` for the tail).
///
/// # Safety
/// The range must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, len: usize) -> *mut u8 {
    let word = u64::from(value as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!("rep stosq", "mov rcx, {tail}", "rep stosb",
             tail = in(reg) len % 8,
             inout("rcx") len / 8 => _, inout("rdi") dst => _, in("rax") word,
             options(nostack, preserves_flags));
    }
    dst
}

/// Copies `words` u64s from `src` to `dst` strictly forward, one `rep movsq`:
/// with `dst` = `src` + n (overlapping) it repeats the first n bytes.
///
/// # Safety
/// Both ranges must be valid for `words * 8` bytes.
pub unsafe fn copy_words_forward(dst: *mut u8, src: *const u8, words: usize) {
    // SAFETY: the caller guarantees the ranges; DF is clear (cld at entry).
    unsafe {
        asm!("rep movsq", inout("rcx") words => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
}

/// Compares `words` u64s with one `repe cmpsq`; the index of the first
/// differing word, or None.
///
/// # Safety
/// Both ranges must be valid for `words * 8` bytes.
pub unsafe fn first_different_word(a: *const u8, b: *const u8, words: usize) -> Option<usize> {
    if words == 0 {
        return None;
    }
    let remaining: usize;
    let equal: u8;
    // SAFETY: the caller guarantees the ranges; DF is clear.
    unsafe {
        asm!("repe cmpsq", "sete {equal}",
             equal = out(reg_byte) equal,
             inout("rcx") words => remaining, inout("rsi") a => _, inout("rdi") b => _,
             options(nostack, readonly));
    }
    if equal != 0 {
        None
    } else {
        // rcx counts down past the differing word too.
        Some(words - remaining - 1)
    }
}

/// Compares `len` bytes; the sign of the first difference, or 0.
///
/// # Safety
/// Both ranges must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    let mut i = 0;
    while i < len {
        // SAFETY: i < len, within both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Like memcmp, but only says whether the ranges differ.
///
/// # Safety
/// Both ranges must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, len) }
}

/// Page size of the allocator's granularity.
pub const PAGE_SIZE: usize = 4096;

/// Next free byte of the RAM region handed to the bump allocator.
static BUMP_NEXT: AtomicUsize = AtomicUsize::new(0);
/// End (exclusive) of that region.
static BUMP_END: AtomicUsize = AtomicUsize::new(0);

/// Hands the RAM range `[start, end)` to the bump allocator.
pub fn init_bump(start: usize, end: usize) {
    BUMP_NEXT.store(align_up(start, PAGE_SIZE), Ordering::SeqCst);
    BUMP_END.store(end, Ordering::SeqCst);
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub const fn align_up(value: usize, align: usize) -> usize {
    (value + align - 1) & !(align - 1)
}

/// Takes `pages` page-aligned pages; None when RAM is exhausted. Nothing is
/// ever freed: the guest runs one test and resets.
fn bump(pages: usize) -> Option<*mut u8> {
    let bytes = pages.checked_mul(PAGE_SIZE)?;
    let start = BUMP_NEXT.load(Ordering::SeqCst);
    let end = start.checked_add(bytes)?;
    if start == 0 || end > BUMP_END.load(Ordering::SeqCst) {
        return None;
    }
    BUMP_NEXT.store(end, Ordering::SeqCst);
    Some(start as *mut u8)
}

/// Allocates `pages` zeroed, page-aligned pages (for virtqueues).
pub fn alloc_pages(pages: usize) -> Option<*mut u8> {
    let ptr = bump(pages)?;
    // SAFETY: [ptr, ptr + pages * PAGE_SIZE) is unused RAM from the e820 map,
    // identity-mapped, handed out once.
    unsafe { memset(ptr, 0, pages * PAGE_SIZE) };
    Some(ptr)
}

/// Allocates a byte buffer of `len` bytes (rounded up to pages) without
/// zeroing it (every caller overwrites it; zeroing costs emulated cycles).
pub fn alloc_buffer(len: usize) -> Option<&'static mut [u8]> {
    let pages = align_up(len, PAGE_SIZE) / PAGE_SIZE;
    let ptr = bump(pages)?;
    // SAFETY: freshly allocated, exclusively owned, valid for len bytes forever.
    Some(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}
