//! Resources at start: checked before the VMM is spawned (host CPUs,
//! limits against the guest's size, a cgroup that can hold them), applied
//! once it runs: the VMM's threads pinned to `<emulatorpin>` (else `<vcpu
//! cpuset>`) and moved into the VM's cgroup before the VM is created, so
//! every thread it makes inherits both; after boot each vCPU thread
//! (named `vcpuN`) pinned to its `<vcpupin>` (else `<vcpu cpuset>`, else
//! every host CPU) and put in its quota group. A limit that cannot be
//! applied stops the start with one line.

use super::affinity;
use super::cgroup::{self, Hierarchy, Limits, VmGroups};
use super::cpuset::CpuSet;
use super::tune::{cputune, memtune, CpuTune};
use crate::vm::error::VmError;
use crate::vm::xml::DomainDef;

/// How long to wait for the vCPU threads after boot.
const VCPU_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a start applies.
#[derive(Debug)]
pub struct Plan {
    name: String,
    vcpus: u32,
    tune: CpuTune,
    vcpu_cpuset: Option<CpuSet>,
    limits: Limits,
    hierarchy: Option<Hierarchy>,
}

fn refuse(reason: String) -> VmError {
    VmError::Unsupported(reason)
}

impl Plan {
    /// Checks the definition's resources against the host; None when it
    /// asks for nothing to apply.
    pub fn new(def: &DomainDef) -> Result<Option<Plan>, VmError> {
        let tune = cputune(def)?;
        let mem = memtune(def)?;
        let host = affinity::host_cpus();
        let sets = tune
            .vcpupins
            .iter()
            .map(|(_, s)| s)
            .chain(&tune.emulatorpin)
            .chain(&def.vcpu_cpuset);
        for set in sets {
            if set.max() >= host {
                return Err(refuse(format!(
                    "cpuset '{}' names CPU {}, the host has {host} CPUs",
                    set.format(),
                    set.max()
                )));
            }
        }
        if let Some(hard) = mem.hard_limit_kib {
            if hard < def.memory_kib {
                return Err(refuse(format!(
                    "<memtune><hard_limit> of {hard} KiB is below the guest's memory of {} KiB",
                    def.memory_kib
                )));
            }
        }
        let limits = Limits::new(&tune, &mem);
        let hierarchy = if limits.any() {
            Some(cgroup::find(&limits).map_err(refuse)?)
        } else {
            None
        };
        let nothing = tune.vcpupins.is_empty()
            && tune.emulatorpin.is_none()
            && def.vcpu_cpuset.is_none()
            && hierarchy.is_none();
        if nothing {
            return Ok(None);
        }
        Ok(Some(Plan {
            name: def.name.to_string(),
            vcpus: def.vcpus_current,
            tune,
            vcpu_cpuset: def.vcpu_cpuset.clone(),
            limits,
            hierarchy,
        }))
    }

    /// Pins the VMM's threads and moves it into its cgroup (before the VM
    /// is created), recording the groups in `run_dir` so that they go
    /// when the VMM does.
    pub fn place(&self, pid: i32, run_dir: &std::path::Path) -> Result<Option<VmGroups>, VmError> {
        if let Some(set) = self.tune.emulatorpin.as_ref().or(self.vcpu_cpuset.as_ref()) {
            for (tid, _) in threads(pid) {
                affinity::set(tid, set).map_err(|e| {
                    VmError::OperationFailed(format!("cannot pin the VMM's thread {tid}: {e}"))
                })?;
            }
        }
        let Some(hierarchy) = &self.hierarchy else {
            return Ok(None);
        };
        cgroup::remove_stale(hierarchy, &self.name);
        let groups = VmGroups::create(hierarchy.clone(), &self.name, self.limits.clone(), pid)
            .map_err(refuse)?;
        groups.record(run_dir).map_err(refuse)?;
        Ok(Some(groups))
    }

    /// Pins each vCPU thread and puts it in its quota group (after boot).
    pub fn pin_vcpus(&self, pid: i32, groups: Option<&VmGroups>) -> Result<(), VmError> {
        let start = std::time::Instant::now();
        let vcpus = loop {
            let found: Vec<(i32, u32)> = threads(pid)
                .into_iter()
                .filter_map(|(tid, vcpu)| Some((tid, vcpu?)))
                .collect();
            if found.len() >= self.vcpus as usize || start.elapsed() > VCPU_WAIT {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        let all = CpuSet::from_cpus(0..affinity::host_cpus());
        for (tid, index) in vcpus {
            let set = self
                .tune
                .vcpupins
                .iter()
                .find(|(v, _)| *v == index)
                .map(|(_, s)| s)
                .or(self.vcpu_cpuset.as_ref())
                .unwrap_or(&all);
            affinity::set(tid, set).map_err(|e| {
                VmError::OperationFailed(format!("cannot pin vcpu{index} (thread {tid}): {e}"))
            })?;
            if let Some(groups) = groups {
                groups.add_vcpu(index, tid).map_err(refuse)?;
            }
        }
        Ok(())
    }
}

/// The VMM's threads: (thread id, vCPU index if it is `vcpuN`).
pub fn threads(pid: i32) -> Vec<(i32, Option<u32>)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .take(4096)
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let vcpu = comm
                .trim()
                .strip_prefix("vcpu")
                .and_then(|n| n.parse().ok());
            Some((tid, vcpu))
        })
        .collect()
}
