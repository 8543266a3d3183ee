//! The paused window's threads' memory touched before the window.
//!
//! A source VMM's window allocates the state's buffers (the dirty
//! bitmaps, the vCPUs' state, its encoding) for the first time in the
//! process's life, and glibc hands them heap pages never touched before,
//! at a page fault each: in this nested host the state's first encoding
//! took 50 µs there, 12 µs once 160 KiB of heap had been allocated,
//! touched and freed on the same thread just before. [`warm_thread`]
//! does that for the calling thread's heap and stack: the controller
//! calls it before the pause, each vCPU thread when a migration starts
//! (it reads its own state in the window: `crate::vcpu_capture`;
//! `VcpuSet::warm_threads` asks it of them, so VMs never migrated do not
//! pay it). (Mapping in the
//! VMM's code beforehand, with MADV_POPULATE_READ on its text, made no
//! difference that the window's phases showed.)

/// Stack a thread touches in [`warm_thread`]: more than the window's
/// code uses (its deepest frames hold a vCPU's 4 KiB XSAVE area a few
/// times over).
const STACK_WARM: usize = 64 << 10;
/// Heap a thread allocates, touches and frees in [`warm_thread`], in
/// 4 KiB pieces: more than the window allocates (a 512 MiB guest's dirty
/// bitmaps are 16 KiB each; the state's encoding about 30 KiB). glibc
/// keeps at least 128 KiB of a freed top of its heap (M_TOP_PAD), touched.
const HEAP_WARM: usize = 192 << 10;

/// Touches `STACK_WARM` (64 KiB) of the calling thread's stack and
/// `HEAP_WARM` (192 KiB) of its heap (allocated, written, freed), so that
/// a paused window's first uses of them do not fault pages in.
#[inline(never)]
pub fn warm_thread() {
    let mut stack = [0u8; STACK_WARM];
    std::hint::black_box(&mut stack);
    let pieces: Vec<Vec<u8>> = (0..HEAP_WARM / 4096).map(|_| vec![1u8; 4096]).collect();
    std::hint::black_box(&pieces);
}

/// Heap allocated and freed once per process by [`prime_allocator`]:
/// past glibc's trim threshold (128 KiB), so that the free shrinks the
/// thread's arena.
const PRIME_HEAP: usize = 160 << 10;

/// Has glibc do, once per process and before a seccomp filter forbids
/// it, the file reads it caches for good: on a thread's first allocation
/// it counts the CPUs for its arenas (/sys/devices/system/cpu/online),
/// and the first time a thread's arena shrinks it reads
/// /proc/sys/vm/overcommit_memory. Both
/// are openat calls, which the vCPU threads' filter refuses (the process
/// is killed); vCPU threads call this before their filter. Their own
/// warming ([`warm_thread`]) comes later, when a migration starts.
pub fn prime_allocator() {
    static PRIMED: std::sync::Once = std::sync::Once::new();
    PRIMED.call_once(|| {
        let pieces: Vec<Vec<u8>> = (0..PRIME_HEAP / 4096)
            .map(|_| Vec::with_capacity(4096))
            .collect();
        std::hint::black_box(&pieces);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_warms_its_stack_and_heap() {
        // On a thread with a small stack: the warm stays within it.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                prime_allocator();
                warm_thread()
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
