//! An in-image revert that keeps the KVM VM: the VM is paused, its disks
//! reverted, and the snapshot's state set into the same VM fd, vCPU fds,
//! memory slots, device thread and transports, then left paused. A
//! rebuild (a new KVM VM, its memory registered again, every disk closed
//! and opened again, a new device thread and vCPU threads) costs more
//! than the state itself on a nested host.
//!
//! The order is restore's (the issue's): PIT2, CLOCK and the IRQCHIP,
//! then per vCPU CPUID2 first and VCPU_EVENTS last, then RAM, then the
//! serial port, the GED and each transport (reset as a driver resets
//! it, then put into the saved state and activated, its queues served
//! at resume). A NIC keeps its device and tap queues: the reset drops
//! its queue handlers (and what their receive queues stashed), the
//! saved pairs, stashed chains and announcement are handed to it, and
//! its transport's restore activates it, so that the resume announces
//! the guest as after a rebuild. The state is read and checked ([`in_image::revert_disks`])
//! before anything changes. A failure after that leaves the VM half
//! reverted: the caller must then drop it and build the VM from the
//! snapshot instead (reverting a disk to the same snapshot again is
//! harmless).

use std::time::{Duration, Instant};

use super::Vm;
use crate::error::Error;
use crate::state::{in_image, StateError};

/// Where an in-place revert's time went, phase by phase (each from the
/// end of the last).
#[derive(Debug, Clone, Copy, Default)]
pub struct RevertPhases {
    /// Stopping the vCPUs and draining the disk queues.
    pub pause: Duration,
    /// Reading and checking the state, reverting every disk.
    pub disks: Duration,
    /// The part of `disks` that read and checked the state (the rest
    /// applied the snapshot to every disk).
    pub disks_check: Duration,
    /// KVM's VM-wide state and every vCPU's.
    pub kvm: Duration,
    /// Loading RAM over the replaced guest's.
    pub ram: Duration,
    /// Bytes of RAM loaded.
    pub ram_bytes: u64,
    /// The parts of `ram` (a lazy load's; zero when RAM was read now).
    pub ram_parts: crate::lazy_ram::LoadPhases,
    /// The serial port, the GED and the transports.
    pub devices: Duration,
    /// The part of `devices` that reset and restored the transports.
    pub devices_transports: Duration,
    /// The part of `devices` that started the new generation (the rest
    /// restored the serial port and the GED).
    pub devices_generation: Duration,
}

impl std::fmt::Display for RevertPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "pause {:.1} ms, disks {:.1} ms (check {:.1} ms, apply {:.1} ms), kvm {:.1} ms, \
             ram {:.1} ms ({} MiB: {}), devices {:.1} ms (transports {:.1} ms, generation {:.1} ms)",
            ms(self.pause),
            ms(self.disks),
            ms(self.disks_check),
            ms(self.disks.saturating_sub(self.disks_check)),
            ms(self.kvm),
            ms(self.ram),
            self.ram_bytes >> 20,
            self.ram_parts,
            ms(self.devices),
            ms(self.devices_transports),
            ms(self.devices_generation)
        )
    }
}

/// The environment variable that makes an in-place revert fail half-way,
/// once the first interface's device took its saved state (a test's fault
/// injection: the revert must then end by a rebuild).
pub const FAIL_NIC_REVERT: &str = "VMM_TEST_FAIL_NIC_REVERT";

/// Whether [`FAIL_NIC_REVERT`] is set (read once per process).
fn nic_revert_fault() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var_os(FAIL_NIC_REVERT).is_some())
}

/// Why a revert cannot keep the VM, or where it failed.
#[derive(Debug)]
pub enum InPlaceError {
    /// Nothing was changed: the VM is as it was (paused if it was
    /// paused by the revert).
    Unchanged(Error),
    /// The VM is half reverted: drop it and build it from the snapshot.
    Partial(Error),
}

impl Vm {
    /// Whether [`Vm::revert_in_place`] can revert this VM: it has its
    /// vCPU threads and device thread.
    pub fn can_revert_in_place(&self) -> bool {
        self.device_thread.is_some()
            && self.exit.reason().is_none()
            && self.vcpus.as_ref().is_some_and(|v| v.all_alive())
    }

    /// Reverts this VM to full snapshot `name` of its disks without
    /// building a new one, and leaves it paused: on
    /// [`InPlaceError::Unchanged`] the VM is as it was but paused, on
    /// [`InPlaceError::Partial`] it must be dropped (and built from the
    /// snapshot).
    pub fn revert_in_place(
        &mut self,
        name: &str,
    ) -> std::result::Result<RevertPhases, InPlaceError> {
        let mut phases = RevertPhases::default();
        let mut mark = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            let spent = now - mark;
            mark = now;
            spent
        };
        if !self.can_revert_in_place() {
            return Err(InPlaceError::Unchanged(Error::GuestFault(
                "this VM is reverted by a rebuild".into(),
            )));
        }
        // The RAM of an earlier revert may still come from its snapshot.
        self.settle_ram();
        self.pause().map_err(InPlaceError::Unchanged)?;
        phases.pause = lap();
        let disks_start = Instant::now();
        // The state is read and checked (a refusal changes nothing), then
        // the disks reverted; their old trees are freed at the guest's
        // next flush or when the VM closes them, as a rebuilt VM's are.
        let reverted = in_image::check_revert(&self.backends, &self.disks, name, self.summary)
            .map_err(|e| InPlaceError::Unchanged(e.into()))?;
        // Each interface's state must fit its device (MAC, pairs) before
        // anything changes.
        let net_transports = self.transports.iter().skip(self.disks.len());
        for ((transport, net), saved) in net_transports.zip(&self.nets).zip(&reverted.machine.nets)
        {
            let transport = transport.lock().expect("transport lock");
            crate::devices::net::check_fits_device(&transport, &net.id, saved)
                .map_err(InPlaceError::Unchanged)?;
        }
        let partial = |e: StateError| InPlaceError::Partial(e.into());
        let checked = Instant::now();
        in_image::apply_revert(&self.backends, &self.disks, name).map_err(partial)?;
        phases.disks_check = checked - disks_start;
        phases.disks = lap();
        let machine = &reverted.machine;
        let kvm_err = |what: &'static str| {
            move |e: kvm_ioctls::Error| {
                InPlaceError::Partial(
                    StateError::Kvm {
                        what,
                        reason: e.to_string(),
                    }
                    .into(),
                )
            }
        };
        self.vm
            .set_pit2(&machine.pit)
            .map_err(kvm_err("KVM_SET_PIT2"))?;
        self.vm
            .set_clock(&machine.clock)
            .map_err(kvm_err("KVM_SET_CLOCK"))?;
        for chip in &machine.irqchips {
            self.vm
                .set_irqchip(chip)
                .map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        let vcpus = self.vcpus.as_ref().expect("checked above");
        for (fd, saved) in vcpus.fds().iter().zip(&machine.vcpus) {
            // Parked: its thread holds the lock only out of the gate.
            let fd = fd.lock().expect("vCPU fd lock");
            saved.restore(&fd).map_err(partial)?;
        }
        phases.kvm = lap();
        // RAM: indexed now and filled lazily (crate::lazy_ram) when it
        // can be, else read now over the replaced guest's.
        let first = self.backends[0]
            .qcow2()
            .ok_or_else(|| partial(StateError::InImage("the first disk is not qcow2".into())))?;
        // The new generation ID is laid into its page by the loader as it
        // fills it (the guest cannot read the page before), so nothing
        // here waits for that record.
        let new_id =
            crate::devices::vmgenid::GenerationId::random().map_err(InPlaceError::Partial)?;
        let (lazy, bytes) = crate::lazy_ram::load_timed(
            first,
            name,
            reverted.ram,
            machine.config,
            &self.mem,
            true,
            self.seccomp,
            &crate::lazy_ram::first_pages(machine),
            Some(crate::lazy_ram::Patch {
                guest: crate::devices::vmgenid::VMGENID_START,
                bytes: new_id.0.to_vec(),
            }),
            &mut phases.ram_parts,
        )
        .map_err(partial)?;
        let id_written = lazy.as_ref().is_some_and(|lazy| lazy.patched());
        self.lazy_ram = lazy;
        phases.ram_bytes = bytes;
        phases.ram = lap();
        self.serial
            .lock()
            .expect("serial lock")
            .restore(&machine.serial)
            .map_err(|e| {
                InPlaceError::Partial(Error::Io {
                    what: "restoring the serial port".into(),
                    source: e,
                })
            })?;
        self.ged.lock().expect("GED lock").set_events(machine.ged);
        let transports = Instant::now();
        for (slot, (transport, saved)) in self.transports.iter().zip(&machine.virtio).enumerate() {
            let mut transport = transport.lock().expect("transport lock");
            transport.reset_for_restore();
            // An interface's device takes its saved pairs, stashed
            // receive chains and announcement first (its taps stay).
            let net = slot
                .checked_sub(self.disks.len())
                .and_then(|n| Some((self.nets.get(n)?, machine.nets.get(n)?)));
            if let Some((net, saved_net)) = net {
                crate::devices::net::restore_in_place(
                    &mut transport,
                    &net.id,
                    saved_net,
                    saved.activated,
                )
                .map_err(InPlaceError::Partial)?;
                if nic_revert_fault() {
                    return Err(InPlaceError::Partial(Error::Net {
                        id: net.id.clone(),
                        reason: format!("{FAIL_NIC_REVERT} is set: the revert fails here"),
                    }));
                }
            }
            transport
                .restore_state(saved)
                .map_err(|e| InPlaceError::Partial(Error::GuestFault(e)))?;
        }
        // The snapshot's RAM runs again: a new generation, as after a
        // rebuilt revert (the GED's saved events are in place first).
        let generation = Instant::now();
        phases.devices_transports = generation - transports;
        self.start_generation(new_id, id_written)
            .map_err(InPlaceError::Partial)?;
        phases.devices = lap();
        phases.devices_generation = generation.elapsed();
        Ok(phases)
    }
}
