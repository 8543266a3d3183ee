//! A vCPU's state taken by its own thread as it leaves the guest for a
//! pause, so that a migration's paused window reads it while the
//! controller drains the devices and sends the last pass, not after.
//!
//! The controller asks for a capture with the pause
//! ([`crate::vcpu::VcpuSet::pause_capturing`]). Each vCPU thread that
//! leaves KVM_RUN for it runs KVM_RUN once more with `immediate_exit` (as
//! every pause does: KVM finishes the port or MMIO access just handled),
//! that run storing REGS, SREGS and VCPU_EVENTS into `kvm_run`
//! (KVM_CAP_SYNC_REGS), counts itself out of the guest, then reads the
//! rest of its state but the LAPIC, holding its fd's lock. None of that
//! changes while the vCPU is out of the guest; the LAPIC does (a disk
//! request completing in the drain raises an interrupt into its IRR), so
//! the controller reads it after the drain ([`VcpuCapture::wait`]'s
//! caller). A vCPU that was parked already, or whose thread ended, takes
//! no capture: its slot stays `Slot::Absent` and the controller reads
//! that vCPU's state itself.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_sync_regs;
use kvm_ioctls::VcpuFd;

use crate::state::vcpu::VcpuState;
use crate::state::StateError;

/// What KVM_RUN stores into `kvm_run` for a capture: REGS, SREGS and
/// VCPU_EVENTS (`KVM_SYNC_X86_*`).
pub(crate) const SYNC_REGS: [kvm_ioctls::SyncReg; 3] = [
    kvm_ioctls::SyncReg::Register,
    kvm_ioctls::SyncReg::SystemRegister,
    kvm_ioctls::SyncReg::VcpuEvents,
];

/// A vCPU's state but its LAPIC, and how long its thread took to read
/// it; or why it could not be read.
pub type Captured = Result<(VcpuState, Duration), StateError>;

/// One vCPU's part of a capture.
enum Slot {
    /// Its thread took no capture (parked before, or ended).
    Absent,
    /// Its thread is out of the guest and reading its state.
    Pending,
    /// Its state but the LAPIC, or why it could not be read, and how long
    /// its thread took to read it (boxed: a vCPU's state is 6.6 KiB).
    Done(Box<Result<VcpuState, StateError>>, Duration),
    /// Handed to the controller.
    Taken,
}

/// The states the vCPU threads take as they leave the guest for one
/// pause.
pub struct VcpuCapture {
    /// KVM_GET_MSR_INDEX_LIST.
    msr_indices: Vec<u32>,
    /// Whether KVM stores the registers into `kvm_run` on exit
    /// (KVM_CAP_SYNC_REGS); without it the threads read them by ioctl.
    sync_regs: bool,
    slots: Mutex<Vec<Slot>>,
    filled: Condvar,
}

impl VcpuCapture {
    /// A capture for `vcpus` vCPUs; `msr_indices` is
    /// KVM_GET_MSR_INDEX_LIST, `sync_regs` whether KVM_CAP_SYNC_REGS is
    /// there.
    pub fn new(vcpus: usize, msr_indices: Vec<u32>, sync_regs: bool) -> Self {
        VcpuCapture {
            msr_indices,
            sync_regs,
            slots: Mutex::new((0..vcpus).map(|_| Slot::Absent).collect()),
            filled: Condvar::new(),
        }
    }

    /// Whether the leaving run is to store the registers into `kvm_run`.
    pub(crate) fn wants_sync_regs(&self) -> bool {
        self.sync_regs
    }

    /// Marks vCPU `id`'s capture as under way; called by its thread under
    /// the gate's lock as it counts itself out of the guest, so that a
    /// controller that saw every vCPU out knows which captures to wait
    /// for. False for an id the capture has no slot for.
    pub(crate) fn begin(&self, id: usize) -> bool {
        let mut slots = self.slots.lock().expect("capture lock");
        match slots.get_mut(id) {
            Some(slot) => {
                *slot = Slot::Pending;
                true
            }
            None => false,
        }
    }

    /// Reads vCPU `id`'s state but its LAPIC, on its own thread, out of
    /// the guest since its last KVM_RUN, which stored the registers into
    /// `kvm_run` if `synced`.
    pub(crate) fn take_on_vcpu(&self, id: usize, vcpu: &VcpuFd, synced: bool) {
        let started = Instant::now();
        let synced: Option<kvm_sync_regs> = synced.then(|| vcpu.sync_regs());
        let state = VcpuState::save_but_lapic(vcpu, &self.msr_indices, synced.as_ref());
        let took = started.elapsed();
        let mut slots = self.slots.lock().expect("capture lock");
        if let Some(slot) = slots.get_mut(id) {
            *slot = Slot::Done(Box::new(state), took);
        }
        self.filled.notify_all();
    }

    /// vCPU `id`'s state but its LAPIC (left zeroed), once its thread has
    /// read it, and how long the read took there; None when its thread
    /// took no capture (the caller reads that vCPU itself). Waits at most
    /// `timeout` for a capture under way.
    pub fn wait(&self, id: usize, timeout: Duration) -> Option<Captured> {
        let deadline = Instant::now() + timeout;
        let mut slots = self.slots.lock().expect("capture lock");
        loop {
            match slots.get_mut(id) {
                None | Some(Slot::Absent) | Some(Slot::Taken) => return None,
                Some(slot @ Slot::Done(..)) => match std::mem::replace(slot, Slot::Taken) {
                    Slot::Done(state, took) => return Some((*state).map(|state| (state, took))),
                    _ => unreachable!("matched Done above"),
                },
                Some(Slot::Pending) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Err(StateError::Kvm {
                    what: "the vCPU's own state capture",
                    reason: format!("vCPU {id} did not finish it within {timeout:?}"),
                }));
            }
            slots = self
                .filled
                .wait_timeout(slots, left)
                .expect("capture lock")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_not_begun_are_absent_and_pending_ones_time_out() {
        let capture = VcpuCapture::new(2, Vec::new(), true);
        assert!(capture.wants_sync_regs());
        assert!(capture.wait(0, Duration::from_millis(1)).is_none());
        assert!(capture.wait(5, Duration::from_millis(1)).is_none());
        assert!(!capture.begin(2));
        assert!(capture.begin(1));
        let started = Instant::now();
        match capture.wait(1, Duration::from_millis(20)) {
            Some(Err(StateError::Kvm { reason, .. })) => {
                assert!(reason.contains("vCPU 1"), "{reason}")
            }
            _ => panic!("a pending capture that never finishes must time out"),
        }
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
