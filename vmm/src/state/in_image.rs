//! Full snapshots inside the VM's qcow2 disks, as QEMU's savevm/loadvm
//! keep them: an internal snapshot of every writable qcow2 disk, all taken
//! while the VM is paused, and the VM state (our format, [`super::image`])
//! in the first disk's VM-state area.
//!
//! Order makes a snapshot appear whole or not at all: the other disks'
//! snapshots are taken first and the first disk's, which holds the state,
//! last; a revert reads and checks the state before it reverts any disk;
//! a delete removes the first disk's snapshot (the state) first. A failure
//! part-way removes what was already created; a kill part-way leaves
//! snapshots on other disks only, which the next snapshot of that name
//! replaces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::disk::BlockBackend;
use qcow::image::{Qcow2, VmStateInfo};

use super::image::{self, RamPlace};
use super::machine::{ConfigSummary, MachineState};
use super::StateError;
use crate::config::DiskConfig;
use crate::vm::Vm;

/// The API's URL scheme of in-image snapshots: vm.snapshot's
/// destination_url and vm.restore's source_url `qcow2:NAME`.
pub const URL_SCHEME: &str = "qcow2:";

/// Longest snapshot name accepted.
pub const MAX_NAME: usize = 1024;

/// What a full snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes of VM state in the first disk.
    pub vm_state_size: u64,
    /// Bytes of RAM among them (zero pages skipped).
    pub ram_saved: u64,
    /// Disks snapshotted.
    pub disks: usize,
    /// Where the time went.
    pub phases: TakePhases,
}

/// Where a full snapshot's time went, phase by phase (each from the end
/// of the last; the caller's pause and resume are not in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TakePhases {
    /// Getting the vCPUs', the VM's and the devices' state (after any
    /// lazy RAM load finished).
    pub machine: Duration,
    /// Writing back every disk's metadata and syncing it.
    pub flush: Duration,
    /// Snapshots of the disks other than the first.
    pub other_disks: Duration,
    /// Emptying the first disk's VM-state area and opening its writer.
    pub open: Duration,
    /// Writing the state and the RAM into the area.
    pub write: Duration,
    /// Writing out the last data and the area's tables.
    pub finish: Duration,
    /// Recording the snapshot in the first disk (refcounts, tables,
    /// snapshot table, header, with their syncs).
    pub record: Duration,
}

impl std::fmt::Display for TakePhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "machine {:.1} ms, flush {:.1} ms, other disks {:.1} ms, open {:.1} ms, \
             write {:.1} ms, finish {:.1} ms, record {:.1} ms",
            ms(self.machine),
            ms(self.flush),
            ms(self.other_disks),
            ms(self.open),
            ms(self.write),
            ms(self.finish),
            ms(self.record)
        )
    }
}

/// A checked state whose disks were reverted.
pub struct Reverted {
    /// The machine to load.
    pub machine: MachineState,
    /// Where its RAM is in the first disk.
    pub ram: RamPlace,
}

fn err(text: String) -> StateError {
    StateError::InImage(text)
}

fn image_err(disk: &DiskConfig, e: qcow::Error) -> StateError {
    err(format!("disk '{}': {e}", disk.path.display()))
}

/// Checks a snapshot name given through the API.
pub fn check_name(name: &str) -> Result<(), StateError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(err(format!(
            "invalid snapshot name '{}': 1 to {MAX_NAME} bytes, no control characters",
            name.chars().take(64).collect::<String>().escape_default()
        )));
    }
    Ok(())
}

/// The writable qcow2 disks, first disk first.
fn writable_images<'a>(
    disks: &'a [DiskConfig],
    backends: &'a [Arc<dyn BlockBackend>],
) -> Vec<(&'a DiskConfig, &'a Qcow2)> {
    disks
        .iter()
        .zip(backends)
        .filter(|(d, _)| !d.readonly)
        .filter_map(|(d, b)| b.qcow2().map(|q| (d, q)))
        .filter(|(_, q)| q.is_writable())
        .collect()
}

/// The image that holds the VM state: the first disk, a writable qcow2.
pub(crate) fn state_image<'a>(
    disks: &'a [DiskConfig],
    backends: &'a [Arc<dyn BlockBackend>],
) -> Result<&'a Qcow2, StateError> {
    let first = disks.first().zip(backends.first()).ok_or_else(|| {
        err("the VM has no disk to hold its state (in-image snapshots need a qcow2 disk)".into())
    })?;
    match first.1.qcow2() {
        Some(q) if q.is_writable() && !first.0.readonly => Ok(q),
        _ => Err(err(format!(
            "the first disk '{}' is not a writable qcow2 image, which in-image snapshots need",
            first.0.path.display()
        ))),
    }
}

/// Writes back the metadata every writable qcow2 disk of the paused `vm`
/// holds in memory, so that its images read from outside (`vm clone` of a
/// paused domain, `qemu-img -U`) show what the guest wrote.
pub fn flush_images(vm: &Vm) -> Result<(), StateError> {
    let (disks, backends) = vm.disks();
    for (disk, q) in writable_images(disks, backends) {
        q.flush().map_err(|e| image_err(disk, e))?;
    }
    Ok(())
}

/// Takes full snapshot `name` of the paused `vm`.
pub fn take(vm: &Vm, name: &str) -> crate::error::Result<Taken> {
    check_name(name)?;
    let (disks, backends) = vm.disks();
    let first = state_image(disks, backends)?;
    let images = writable_images(disks, backends);
    // The first disk's snapshot is taken last: a name on another disk
    // only is the orphan of a full snapshot killed part-way, replaced as
    // QEMU's savevm replaces a name; on the first disk it is a snapshot.
    if first.find_snapshot_entry(name).is_ok() {
        return Err(err(format!(
            "disk '{}' already has a snapshot named '{name}'",
            disks[0].path.display()
        ))
        .into());
    }
    let orphans: Vec<_> = images
        .iter()
        .skip(1)
        .filter(|(_, q)| q.find_snapshot_entry(name).is_ok())
        .collect();
    let mut phases = TakePhases::default();
    let mut mark = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        std::mem::replace(&mut mark, now).elapsed()
    };
    let machine = vm.save_machine()?;
    phases.machine = lap();
    for (disk, q) in &images {
        q.flush().map_err(|e| image_err(disk, e))?;
    }
    phases.flush = lap();
    for (disk, q) in orphans {
        q.delete_snapshot(name).map_err(|e| image_err(disk, e))?;
    }
    let mut created: Vec<(&DiskConfig, &Qcow2)> = Vec::new();
    let undo = |created: &[(&DiskConfig, &Qcow2)]| {
        for (_, q) in created {
            let _ = q.delete_snapshot(name);
        }
    };
    for &(disk, q) in images.iter().skip(1) {
        if let Err(e) = q.create_snapshot(name) {
            undo(&created);
            return Err(image_err(disk, e).into());
        }
        created.push((disk, q));
    }
    phases.other_disks = lap();
    let state = (|| -> Result<(u64, u64), StateError> {
        let mut writer = first
            .vm_state_writer()
            .map_err(|e| image_err(&disks[0], e))?;
        phases.open = lap();
        let ram_saved = image::write_area(&mut writer, &machine, vm.memory())?;
        phases.write = lap();
        let size = writer.finish().map_err(|e| image_err(&disks[0], e))?;
        phases.finish = lap();
        first
            .create_snapshot_with_vm_state(
                name,
                VmStateInfo {
                    vm_state_size: size,
                    vm_clock_nsec: machine.clock.clock,
                },
            )
            .map_err(|e| image_err(&disks[0], e))?;
        phases.record = lap();
        Ok((size, ram_saved))
    })();
    match state {
        Ok((vm_state_size, ram_saved)) => Ok(Taken {
            vm_state_size,
            ram_saved,
            disks: images.len(),
            phases,
        }),
        Err(e) => {
            undo(&created);
            Err(e.into())
        }
    }
}

/// Starts reading the VM state of full snapshot `name` of the first disk
/// back into the host's page cache, on a thread of its own
/// (`VmStateMap::start_read_ahead`), and returns: the state went to the
/// disk around the page cache (O_DIRECT), and a revert that follows
/// would otherwise wait for the disk at each record its guest's first
/// faults or its loader read. The map is made here (the tables were just
/// written, so it reads them from the cache); the thread holds no disk.
/// Best effort: a failure only leaves the cache cold.
pub fn read_ahead(vm: &Vm, name: &str) {
    let (_, backends) = vm.disks();
    if let Some(map) = backends
        .first()
        .and_then(|b| b.qcow2())
        .and_then(|q| q.vm_state_map(name).ok())
    {
        map.start_read_ahead();
    }
}

/// Reads and checks the state of full snapshot `name` from the first disk
/// (for a VM configured as `vm`), checks that every writable qcow2 disk
/// holds the snapshot at its current size, then reverts them all.
pub fn revert_disks(
    backends: &[Arc<dyn BlockBackend>],
    disks: &[DiskConfig],
    name: &str,
    vm: ConfigSummary,
) -> crate::error::Result<Reverted> {
    let area = check_revert(backends, disks, name, vm)?;
    apply_revert(backends, disks, name)?;
    Ok(Reverted {
        machine: area.machine,
        ram: area.ram,
    })
}

/// Reverts every writable qcow2 disk to snapshot `name`, checked by
/// [`check_revert`] first. Each disk's new active table is on disk when
/// this returns; its header's sync and the freeing of its old tree are
/// left for [`free_replaced_trees`] once the guest runs again (or the
/// guest's next flush, or the VM closing its disks, whichever comes
/// first): `Qcow2::apply_snapshot_deferring_free` says why a crash
/// meanwhile leaks clusters only.
pub fn apply_revert(
    backends: &[Arc<dyn BlockBackend>],
    disks: &[DiskConfig],
    name: &str,
) -> Result<(), StateError> {
    for (disk, q) in writable_images(disks, backends) {
        q.apply_snapshot_deferring_free(name)
            .map_err(|e| image_err(disk, e))?;
    }
    Ok(())
}

/// Frees the active trees [`apply_revert`] replaced on `vm`'s disks (in
/// their metadata caches, written at the next flush); returns how many
/// disks had one.
pub fn free_replaced_trees(vm: &Vm) -> Result<usize, StateError> {
    let (disks, backends) = vm.disks();
    let mut freed = 0;
    for (disk, q) in writable_images(disks, backends) {
        freed += q.free_replaced_trees().map_err(|e| image_err(disk, e))?;
    }
    Ok(freed)
}

/// A [`revert_disks`] running on its own thread, so that the disks'
/// metadata writes and flushes (a third to a half of a revert on this
/// kind of host) overlap the building of the new KVM VM, which needs
/// nothing from them until the state is loaded.
///
/// The thread holds its own references to the disks' backends; dropping
/// a `PendingRevert` unfinished (a build that failed meanwhile) waits for
/// the thread, so no disk is written after the VM that locked it is
/// gone.
pub struct PendingRevert {
    thread: Option<std::thread::JoinHandle<crate::error::Result<Reverted>>>,
}

impl PendingRevert {
    /// Starts reverting `disks` (opened as `backends`) to full snapshot
    /// `name`, for a VM configured as `vm`.
    pub fn start(
        backends: &[Arc<dyn BlockBackend>],
        disks: &[DiskConfig],
        name: &str,
        vm: ConfigSummary,
    ) -> crate::error::Result<PendingRevert> {
        let (backends, disks, name) = (backends.to_vec(), disks.to_vec(), name.to_string());
        let thread = std::thread::Builder::new()
            .name("revert-disks".into())
            .spawn(move || revert_disks(&backends, &disks, &name, vm))
            .map_err(|e| crate::error::Error::Io {
                what: "starting the disk revert thread".into(),
                source: e,
            })?;
        Ok(PendingRevert {
            thread: Some(thread),
        })
    }

    /// Waits for the revert; its result.
    pub fn finish(mut self) -> crate::error::Result<Reverted> {
        let thread = self.thread.take().expect("finished once");
        thread
            .join()
            .unwrap_or_else(|_| Err(err("the disk revert thread panicked".into()).into()))
    }
}

impl Drop for PendingRevert {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What [`revert_disks`] checks, without changing anything: used before a
/// running VM is stopped for a revert.
pub fn check_revert(
    backends: &[Arc<dyn BlockBackend>],
    disks: &[DiskConfig],
    name: &str,
    vm: ConfigSummary,
) -> Result<image::AreaState, StateError> {
    check_name(name)?;
    let first = state_image(disks, backends)?;
    for (disk, q) in writable_images(disks, backends) {
        let snapshot = q
            .find_snapshot_entry(name)
            .map_err(|e| image_err(disk, e))?;
        if let Some(size) = snapshot.disk_size.filter(|&s| s != q.size()) {
            return Err(err(format!(
                "disk '{}' was {size} bytes at snapshot '{name}' and is {} now",
                disk.path.display(),
                q.size()
            )));
        }
    }
    image::read_machine(first, name, vm)
}

/// Deletes snapshot `name` from every writable qcow2 disk that holds it,
/// the first disk (its state) first.
pub fn delete(vm: &Vm, name: &str) -> Result<usize, StateError> {
    check_name(name)?;
    // RAM loaded lazily may still be read from this snapshot.
    vm.settle_ram();
    let (disks, backends) = vm.disks();
    let mut deleted = 0;
    for (disk, q) in writable_images(disks, backends) {
        match q.delete_snapshot(name) {
            Ok(()) => deleted += 1,
            Err(qcow::Error::SnapshotNotFound { .. }) => {}
            Err(e) => return Err(image_err(disk, e)),
        }
    }
    if deleted == 0 {
        return Err(err(format!("no disk has a snapshot named '{name}'")));
    }
    Ok(deleted)
}
