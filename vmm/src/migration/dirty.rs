//! Which guest pages changed since they were last sent: KVM's dirty log
//! on every RAM slot (KVM_MEM_LOG_DIRTY_PAGES; KVM_GET_DIRTY_LOG returns a
//! slot's bitmap and clears it) joined with blockdev's
//! [`DeviceDirtyLog`] of the pages the device threads write, which KVM
//! does not see.
//!
//! The device log is never cleared during a migration: a disk read's data
//! is marked when the request starts and lands when it completes, so a
//! page marked and sent in one pass may change later. Every page a device
//! wrote is sent again in every pass, the last one included, which runs
//! after the VM is paused and its queues drained: the last copy of each is
//! its final content.

use std::sync::Arc;

use blockdev::virtio::dirty_log::{self, DeviceDirtyLog};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::{MigrationError, Result};
use crate::vm::Vm;

/// Dirty logging on a VM, on from [`DirtyLog::start`] until
/// [`DirtyLog::stop`] (the VM runs on here) or [`DirtyLog::abandon`] (its
/// guest runs elsewhere now: KVM's log is left on, since turning it off
/// re-registers every slot for nothing). It holds no borrow of the VM, so
/// the source can let go of the disks' locks while it is on; dropped
/// without either, only the device log is uninstalled.
pub struct DirtyLog {
    device: Arc<DeviceDirtyLog>,
    kvm_on: bool,
}

/// One region's dirty pages: its guest-physical start and its bitmap
/// (one bit per 4 KiB page, LSB first in each word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRegion {
    /// Guest-physical start.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// The bitmap.
    pub bits: Vec<u64>,
}

impl DirtyRegion {
    /// Pages marked.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Runs of consecutive marked pages, as (first page, page count).
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let pages = self.len / super::stream::PAGE;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = u64::from(word.trailing_zeros());
                word &= word - 1;
                let page = w as u64 * 64 + bit;
                if page >= pages {
                    break;
                }
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == page => *count += 1,
                    _ => runs.push((page, 1)),
                }
            }
        }
        runs
    }
}

impl DirtyLog {
    /// Turns on KVM's dirty log on every slot of `vm` and the device log.
    pub fn start(vm: &Vm) -> Result<Self> {
        let ranges: Vec<(u64, u64)> = vm
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        let device = Arc::new(
            DeviceDirtyLog::new(&ranges).map_err(|e| MigrationError::Stream(e.to_string()))?,
        );
        dirty_log::install(device.clone());
        let log = DirtyLog {
            device,
            kvm_on: true,
        };
        if let Err(e) = crate::vm::register_memory(vm.vm_fd(), vm.memory(), KVM_MEM_LOG_DIRTY_PAGES)
        {
            // Some slots may log already.
            log.stop(vm);
            return Err(e.into());
        }
        Ok(log)
    }

    /// Turns both logs off; `vm` runs on here.
    pub fn stop(mut self, vm: &Vm) {
        if std::mem::take(&mut self.kvm_on) {
            if let Err(e) = crate::vm::register_memory(vm.vm_fd(), vm.memory(), 0) {
                eprintln!("vmm: turning the dirty log off: {e}");
            }
        }
    }

    /// Uninstalls the device log and leaves KVM's on: the VM it logs
    /// will not run here again.
    pub fn abandon(mut self) {
        self.kvm_on = false;
    }

    /// The pages of `vm` (the VM it was started on) dirtied since the
    /// last call (KVM's, cleared by this call) and every page a device
    /// wrote since the start.
    pub fn collect(&self, vm: &Vm) -> Result<Vec<DirtyRegion>> {
        let mut regions = Vec::new();
        for (slot, region) in vm.memory().iter().enumerate() {
            let len = region.len();
            let mut bits = vm
                .vm_fd()
                .get_dirty_log(slot as u32, len as usize)
                .map_err(crate::error::kvm("KVM_GET_DIRTY_LOG"))?;
            let device = self.device.snapshot(slot);
            bits.resize(bits.len().max(device.len()), 0);
            for (word, extra) in bits.iter_mut().zip(device) {
                *word |= extra;
            }
            regions.push(DirtyRegion {
                start: region.start_addr().0,
                len,
                bits,
            });
        }
        Ok(regions)
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        dirty_log::uninstall();
        if self.kvm_on {
            eprintln!("vmm: the dirty log was dropped on: KVM's log stays on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_pages() {
        let region = DirtyRegion {
            start: 0,
            len: 130 * 4096,
            bits: vec![0b1110_0001, 1 << 63, 0b11 | (1 << 10)],
        };
        assert_eq!(region.count(), 8);
        // Page 129 is the last; bit 10 of word 2 (page 138) is past the end.
        assert_eq!(region.runs(), vec![(0, 1), (5, 3), (127, 3)]);
    }
}
