//! Inputs the fuzzers found (hangs, panics, unbounded allocations)
//! replayed on stable: each file under `tests/fuzz_regressions/` goes
//! through the body of the fuzz target its name starts with (`open_image`
//! or `snapshot_table`) and must finish without a panic. The bodies are
//! the fuzz targets' own code, included from `fuzz/fuzz_targets/`.

#[path = "../../fuzz/fuzz_targets/open_image_body.rs"]
mod open_image_body;
#[path = "../../fuzz/fuzz_targets/snapshot_table_body.rs"]
mod snapshot_table_body;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The largest single allocation any input may make: the in-memory image
/// may grow to 64 MiB and a growing `Vec` asks for up to twice that.
/// Without the sanitizer's allocation limit, this is what catches a
/// regression of the unbounded allocations the fuzzers found.
const MAX_ALLOCATION: usize = 160 << 20;

/// Records the largest allocation request.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; the
// wrapper only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator (so from System) with
        // `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Longest one input may take here (the fuzzers' per-input timeout is
/// 30 s under the sanitizer; these run optimised without it).
const MAX_PER_INPUT: Duration = Duration::from_secs(10);

#[test]
fn replay_fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut counts = [0usize; 2];
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let started = Instant::now();
        LARGEST.store(0, Ordering::Relaxed);
        if name.starts_with("open_image") {
            open_image_body::open_image_body(&data);
            counts[0] += 1;
        } else if name.starts_with("snapshot_table") {
            snapshot_table_body::snapshot_table_body(&data);
            counts[1] += 1;
        } else {
            panic!("{name}: the name must start with the fuzz target's name");
        }
        let took = started.elapsed();
        assert!(took < MAX_PER_INPUT, "{name} took {took:?}");
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= MAX_ALLOCATION,
            "{name} allocated {largest} bytes at once"
        );
    }
    assert!(counts[0] > 0, "no open_image inputs in {}", dir.display());
    eprintln!(
        "replayed {} open_image and {} snapshot_table inputs",
        counts[0], counts[1]
    );
}
