//! The pages of guest memory the device models write, for live migration.
//!
//! KVM's dirty log sees only what the guest's vCPUs write; the device
//! threads write guest memory from the host (data of disk reads and
//! received frames, status bytes, used rings), which KVM never sees. While
//! a [`DeviceDirtyLog`] is installed ([`install`]), every write the device
//! models make through their view of guest memory is marked in it, by
//! guest-physical page. With none installed a write costs one relaxed
//! atomic load.
//!
//! A VMM runs one VM, so the log is process-wide: the VMM installs it when
//! a migration starts and removes it ([`uninstall`]) when it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Bytes of one page of the log.
pub const PAGE_SIZE: u64 = 4096;
/// The most guest memory a log may cover (sizes its bitmap: 1 TiB is
/// 32 MiB of bitmap).
pub const MAX_COVERED: u64 = 1 << 40;

/// One guest-physical range and its bitmap, one bit per page.
#[derive(Debug)]
struct Range {
    start: u64,
    len: u64,
    bits: Vec<AtomicU64>,
}

/// Pages written by the device models, by guest-physical range.
#[derive(Debug)]
pub struct DeviceDirtyLog {
    ranges: Vec<Range>,
}

/// Why a log cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRangeError {
    /// The range's start.
    pub start: u64,
    /// Its length.
    pub len: u64,
}

impl std::fmt::Display for LogRangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dirty log range {:#x}+{:#x} is not page-aligned or too large",
            self.start, self.len
        )
    }
}

impl std::error::Error for LogRangeError {}

impl DeviceDirtyLog {
    /// A clean log over `ranges` (guest-physical start and length, each
    /// page-aligned, together at most [`MAX_COVERED`] bytes).
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self, LogRangeError> {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            total = total.saturating_add(len);
            if !start.is_multiple_of(PAGE_SIZE)
                || !len.is_multiple_of(PAGE_SIZE)
                || total > MAX_COVERED
                || start.checked_add(len).is_none()
            {
                return Err(LogRangeError { start, len });
            }
            let pages = len / PAGE_SIZE;
            out.push(Range {
                start,
                len,
                bits: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            });
        }
        Ok(DeviceDirtyLog { ranges: out })
    }

    /// Marks the pages of `len` bytes at guest-physical `addr` (the part
    /// inside the log's ranges).
    pub fn mark(&self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = addr.saturating_add(len);
        for range in &self.ranges {
            let from = addr.max(range.start);
            let to = end.min(range.start + range.len);
            if from >= to {
                continue;
            }
            let first = (from - range.start) / PAGE_SIZE;
            let last = (to - 1 - range.start) / PAGE_SIZE;
            for page in first..=last {
                range.bits[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// The bitmap of range `index` (one bit per page, LSB first in each
    /// word), leaving it as it is.
    pub fn snapshot(&self, index: usize) -> Vec<u64> {
        self.ranges.get(index).map_or_else(Vec::new, |r| {
            r.bits.iter().map(|w| w.load(Ordering::Acquire)).collect()
        })
    }

    /// Whether any page is marked.
    pub fn any(&self) -> bool {
        self.ranges
            .iter()
            .any(|r| r.bits.iter().any(|w| w.load(Ordering::Relaxed) != 0))
    }
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static LOG: RwLock<Option<Arc<DeviceDirtyLog>>> = RwLock::new(None);

/// Makes `log` the one every device write is marked in.
pub fn install(log: Arc<DeviceDirtyLog>) {
    let mut slot = LOG.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(log);
    ACTIVE.store(true, Ordering::Release);
}

/// Stops marking device writes.
pub fn uninstall() {
    let mut slot = LOG.write().unwrap_or_else(|e| e.into_inner());
    ACTIVE.store(false, Ordering::Release);
    *slot = None;
}

/// Marks a device write of `len` bytes at guest-physical `addr` in the
/// installed log, if any (the device models' hook).
pub(crate) fn mark(addr: u64, len: u64) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let slot = LOG.read().unwrap_or_else(|e| e.into_inner());
    if let Some(log) = slot.as_ref() {
        log.mark(addr, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_pages_inside_its_ranges() {
        let log = DeviceDirtyLog::new(&[(0, 0x10000), (0x100000, 0x2000)]).unwrap();
        assert!(!log.any());
        log.mark(0x0fff, 2); // pages 0 and 1
        log.mark(0x100000 + 0x1800, 0x1000); // second range, page 1
        log.mark(0x50000, 0x1000); // outside: ignored
        assert_eq!(log.snapshot(0), vec![0b11]);
        assert_eq!(log.snapshot(1), vec![0b10]);
        assert!(log.snapshot(2).is_empty());
        assert!(DeviceDirtyLog::new(&[(1, 0x1000)]).is_err());
        assert!(DeviceDirtyLog::new(&[(0, MAX_COVERED + PAGE_SIZE)]).is_err());
    }
}
