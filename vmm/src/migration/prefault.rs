//! The VMM's own code and read-only data mapped in before a migration's
//! paused window.
//!
//! A source VMM runs the window's code (the vCPUs' state reads, the
//! devices' collection, the state's encoding and its CRCs) for the first
//! time in its life inside the window, and each page of the executable
//! met the first time costs a page fault there: in this nested host the
//! state's first encoding took 40-70 µs against 10-15 µs the second time
//! in the same window. [`map_in_code`] populates the page tables of every
//! file-backed mapping that is executable or read-only (the VMM's text
//! and rodata and its shared libraries') with one `madvise` each, before
//! the pause; the pages are in the page cache already (the process runs
//! from them), so this reads nothing from disk.
//!
//! The same goes for the threads' memory: the window's first allocations
//! of the state's buffers came from heap pages never touched before, at a
//! page fault each (the state's encoding took 50 µs there, 12 µs after
//! 160 KiB of heap were allocated, touched and freed just before).
//! [`warm_thread`] does that for the calling thread's stack and heap: the
//! controller calls it before the pause, each vCPU thread as it starts
//! (it reads its own state in the window: `crate::vcpu_capture`).

use std::time::{Duration, Instant};

/// `MADV_POPULATE_READ` (Linux 5.14): populate the page tables as reads
/// would, without touching the pages' contents.
const MADV_POPULATE_READ: libc::c_int = 22;

/// Mappings this long at most are populated (a larger file-backed
/// read-only mapping is data, not code: it is left alone).
const MAX_MAPPING: u64 = 256 << 20;

/// Stack a thread touches in [`warm_thread`]: more than the window's
/// code uses (its deepest frames hold a vCPU's 4 KiB XSAVE area a few
/// times over).
const STACK_WARM: usize = 64 << 10;
/// Heap a thread allocates, touches and frees in [`warm_thread`], in
/// 4 KiB pieces: more than the window allocates (a 512 MiB guest's dirty
/// bitmaps are 16 KiB each; the state's encoding about 30 KiB). glibc
/// keeps at least 128 KiB of a freed top of its heap (M_TOP_PAD), touched.
const HEAP_WARM: usize = 192 << 10;

/// What [`map_in_code`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefaulted {
    /// Mappings populated.
    pub mappings: usize,
    /// Their bytes.
    pub bytes: u64,
    /// How long it took.
    pub took: Duration,
}

/// A mapping of `/proc/self/maps` worth populating: its start and end.
fn code_mapping(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    // offset, device, inode, then the path of a file-backed mapping.
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?;
    let perms = perms.as_bytes();
    if inode == 0 || !path.starts_with('/') || perms.len() < 4 {
        return None;
    }
    // Readable, not writable (the text and rodata of a file; a
    // writable one is data that copy-on-write would copy).
    if perms[0] != b'r' || perms[1] != b'-' {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (end > start && end - start <= MAX_MAPPING).then_some((start, end))
}

/// Populates the page tables of the process's code and read-only data
/// (see the module's comment); best effort: a mapping the kernel refuses
/// is skipped.
pub fn map_in_code() -> Prefaulted {
    let started = Instant::now();
    let mut done = Prefaulted::default();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return done;
    };
    for (start, end) in maps.lines().filter_map(code_mapping) {
        // SAFETY: the range is a mapping of this process as the kernel
        // listed it just now; MADV_POPULATE_READ only faults its pages in
        // for reading (no content changes), and fails harmlessly (EINVAL,
        // ENOMEM) for a range that is no longer mapped.
        let result = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                (end - start) as usize,
                MADV_POPULATE_READ,
            )
        };
        if result == 0 {
            done.mappings += 1;
            done.bytes += end - start;
        }
    }
    done.took = started.elapsed();
    done
}

/// Touches [`STACK_WARM`] bytes of the calling thread's stack and
/// [`HEAP_WARM`] bytes of its heap (allocated, written, freed), so that
/// a paused window's first uses of them do not fault pages in.
#[inline(never)]
pub fn warm_thread() {
    let mut stack = [0u8; STACK_WARM];
    std::hint::black_box(&mut stack);
    let pieces: Vec<Vec<u8>> = (0..HEAP_WARM / 4096).map(|_| vec![1u8; 4096]).collect();
    std::hint::black_box(&pieces);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_taken() {
        assert_eq!(
            code_mapping("55d0c0000000-55d0c0200000 r-xp 00001000 fd:01 1234 /usr/bin/vmm"),
            Some((0x55d0_c000_0000, 0x55d0_c020_0000))
        );
        assert_eq!(
            code_mapping("7f00-8f00 r--p 00000000 fd:01 99 /usr/lib/libc.so.6"),
            Some((0x7f00, 0x8f00))
        );
        // Writable data, anonymous memory, the heap, the vdso.
        assert_eq!(
            code_mapping("7f00-8f00 rw-p 00000000 fd:01 99 /lib/x.so"),
            None
        );
        assert_eq!(code_mapping("7f00-8f00 r-xp 00000000 00:00 0"), None);
        assert_eq!(code_mapping("7f00-8f00 rw-p 00000000 00:00 0 [heap]"), None);
        assert_eq!(code_mapping("7fff-8fff r-xp 00000000 00:00 0 [vdso]"), None);
        // Too long to be code, malformed.
        assert_eq!(
            code_mapping("0-40000000 r--p 00000000 fd:01 7 /var/big.img"),
            None
        );
        assert_eq!(code_mapping("zz-8f00 r-xp 0 fd:01 7 /x"), None);
        assert_eq!(code_mapping(""), None);
    }

    #[test]
    fn a_thread_warms_its_stack_and_heap() {
        // On a thread with a small stack: the warm stays within it.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(warm_thread)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn this_test_binary_is_mapped_in() {
        let done = map_in_code();
        assert!(done.mappings > 0, "{done:?}");
        assert!(done.bytes > 0);
    }
}
