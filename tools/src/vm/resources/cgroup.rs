//! A cgroup per VM for CPU and memory limits. cgroup v1 where the host
//! mounts its cpu and memory hierarchies (cpu.shares, cpu.cfs_period_us,
//! cpu.cfs_quota_us per vCPU, memory.limit_in_bytes, ...); cgroup v2 where
//! the host has a unified hierarchy with the cpu and memory controllers
//! (cpu.weight, cpu.max per vCPU in a threaded subtree, memory.max, ...).
//! Each VM's group sits under the cgroup `vm` itself runs in (a delegated
//! subtree), named `vm-NAME`, with `vcpuN` children when a quota applies,
//! as libvirt lays its groups out. `VM_CGROUP_ROOT` points v2 at another
//! folder laid out as cgroupfs (tests).

use std::fs;
use std::path::{Path, PathBuf};

use super::tune::{CpuTune, MemTune};

/// Where a VM's groups live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the cpu and memory hierarchies' parent folders.
    V1 {
        /// The parent in the cpu hierarchy.
        cpu: PathBuf,
        /// The parent in the memory hierarchy.
        memory: PathBuf,
    },
    /// cgroup v2: the parent folder (a delegated subtree).
    V2 {
        /// The parent.
        parent: PathBuf,
    },
}

/// What the VM's groups get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// cpu.shares (v1) / converted to cpu.weight (v2).
    pub shares: Option<u64>,
    /// Period in µs for each vCPU's quota (default 100000).
    pub period: Option<u64>,
    /// Quota in µs per period, for each vCPU.
    pub quota: Option<i64>,
    /// Memory hard limit in bytes.
    pub hard_limit: Option<u64>,
    /// Memory soft limit in bytes.
    pub soft_limit: Option<u64>,
    /// Memory plus swap limit in bytes.
    pub swap_hard_limit: Option<u64>,
}

impl Limits {
    /// The limits of `<cputune>` and `<memtune>`.
    pub fn new(cpu: &CpuTune, mem: &MemTune) -> Self {
        Limits {
            shares: cpu.shares,
            period: cpu.period,
            quota: cpu.quota.filter(|q| *q != -1),
            hard_limit: mem.hard_limit_kib.map(|k| k * 1024),
            soft_limit: mem.soft_limit_kib.map(|k| k * 1024),
            swap_hard_limit: mem.swap_hard_limit_kib.map(|k| k * 1024),
        }
    }

    /// Whether any limit needs a cgroup.
    pub fn any(&self) -> bool {
        self.shares.is_some()
            || self.quota.is_some()
            || self.period.is_some()
            || self.hard_limit.is_some()
            || self.soft_limit.is_some()
            || self.swap_hard_limit.is_some()
    }

    fn wants_cpu(&self) -> bool {
        self.shares.is_some() || self.quota.is_some() || self.period.is_some()
    }

    fn wants_memory(&self) -> bool {
        self.hard_limit.is_some() || self.soft_limit.is_some() || self.swap_hard_limit.is_some()
    }
}

/// The default CFS period in µs.
const DEFAULT_PERIOD: u64 = 100_000;

/// The path of this process's group in hierarchy `controller` (`""` for
/// v2) from /proc/self/cgroup.
fn own_group(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_string())
    })
}

/// Finds where the VM groups go for `limits`, or says in one line why no
/// cgroup can hold them.
pub fn find(limits: &Limits) -> Result<Hierarchy, String> {
    if let Some(root) = std::env::var_os("VM_CGROUP_ROOT").filter(|r| !r.is_empty()) {
        return v2(PathBuf::from(root), limits);
    }
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        let own = own_group("").unwrap_or_default();
        return v2(base.join(own), limits);
    }
    let cpu_root = ["cpu", "cpu,cpuacct"]
        .iter()
        .map(|d| base.join(d))
        .find(|p| p.join("cpu.shares").exists());
    let memory_root = base.join("memory");
    if limits.wants_cpu() && cpu_root.is_none() {
        return Err(
            "the host mounts no cgroup cpu controller (v1 or v2) for <cputune>".to_string(),
        );
    }
    if limits.wants_memory() && !memory_root.join("memory.limit_in_bytes").exists() {
        return Err(
            "the host mounts no cgroup memory controller (v1 or v2) for <memtune>".to_string(),
        );
    }
    if limits.swap_hard_limit.is_some() && !memory_root.join("memory.memsw.limit_in_bytes").exists()
    {
        return Err(
            "the host's memory cgroup has no swap accounting for <swap_hard_limit>".to_string(),
        );
    }
    Ok(Hierarchy::V1 {
        cpu: cpu_root
            .map(|r| r.join(own_group("cpu").unwrap_or_default()))
            .unwrap_or_default(),
        memory: memory_root.join(own_group("memory").unwrap_or_default()),
    })
}

fn v2(parent: PathBuf, limits: &Limits) -> Result<Hierarchy, String> {
    let controllers = fs::read_to_string(parent.join("cgroup.controllers")).map_err(|e| {
        format!(
            "cgroup v2 folder '{}' has no cgroup.controllers: {e}",
            parent.display()
        )
    })?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if limits.wants_cpu() && !has("cpu") {
        return Err(format!(
            "the cgroup v2 subtree '{}' has no cpu controller for <cputune>",
            parent.display()
        ));
    }
    if limits.wants_memory() && !has("memory") {
        return Err(format!(
            "the cgroup v2 subtree '{}' has no memory controller for <memtune>",
            parent.display()
        ));
    }
    Ok(Hierarchy::V2 { parent })
}

/// The real-time time a domain's cgroup v1 `cpu` group gets per period
/// (1 s by default): 2%, far above what the VMM's real-time threads use
/// (they sleep but for a request, a revert's few milliseconds or a
/// migration's paused window), and room for 47 domains in the root's
/// 95%.
const RT_RUNTIME_US: u64 = 20_000;

/// Puts every thread of process `pid` in the time-sharing class (best
/// effort: a thread that ended meanwhile needs nothing).
fn to_time_sharing(pid: i32) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for tid in tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let _ = super::affinity::to_time_sharing(tid);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write '{value}' to {}: {e}", path.display()))
}

fn make(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))
}

/// libvirt's cpu.shares to cpu.weight conversion.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

/// A VM's groups, made and filled.
#[derive(Debug, Clone)]
pub struct VmGroups {
    hierarchy: Hierarchy,
    group: String,
    limits: Limits,
}

impl VmGroups {
    /// Makes the groups of VM `name` and moves process `pid` (with all
    /// its threads) into them, with every limit set.
    pub fn create(
        hierarchy: Hierarchy,
        name: &str,
        limits: Limits,
        pid: i32,
    ) -> Result<Self, String> {
        let groups = VmGroups {
            hierarchy,
            group: format!("vm-{name}"),
            limits,
        };
        let l = &groups.limits;
        match &groups.hierarchy {
            Hierarchy::V1 { cpu, memory } => {
                if l.wants_cpu() {
                    let dom = cpu.join(&groups.group);
                    make(&dom)?;
                    if let Some(shares) = l.shares {
                        write(&dom.join("cpu.shares"), &shares.to_string())?;
                    }
                    // With RT_GROUP_SCHED a new group has no real-time
                    // time, and the kernel refuses to move a process with
                    // a real-time thread into it (EINVAL): the VMM's API
                    // thread runs real-time, as a revert's and a
                    // migration's threads do for a few milliseconds.
                    let rt = dom.join("cpu.rt_runtime_us");
                    if rt.exists() && fs::write(&rt, RT_RUNTIME_US.to_string()).is_err() {
                        // The parent's real-time time is all given (some
                        // 47 domains): this VMM's threads go back to
                        // time-sharing, so that the move succeeds; in
                        // the group they cannot be raised again.
                        to_time_sharing(pid);
                    }
                    write(&dom.join("cgroup.procs"), &pid.to_string())?;
                }
                if l.wants_memory() {
                    let dom = memory.join(&groups.group);
                    make(&dom)?;
                    if let Some(bytes) = l.hard_limit {
                        write(&dom.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                    if let Some(bytes) = l.soft_limit {
                        write(&dom.join("memory.soft_limit_in_bytes"), &bytes.to_string())?;
                    }
                    if let Some(bytes) = l.swap_hard_limit {
                        write(&dom.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
                    }
                    write(&dom.join("cgroup.procs"), &pid.to_string())?;
                }
            }
            Hierarchy::V2 { parent } => {
                let mut enable = Vec::new();
                if l.wants_cpu() {
                    enable.push("+cpu");
                }
                if l.wants_memory() {
                    enable.push("+memory");
                }
                write(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
                let dom = parent.join(&groups.group);
                make(&dom)?;
                if let Some(shares) = l.shares {
                    write(
                        &dom.join("cpu.weight"),
                        &shares_to_weight(shares).to_string(),
                    )?;
                }
                if let Some(bytes) = l.hard_limit {
                    write(&dom.join("memory.max"), &bytes.to_string())?;
                }
                if let Some(bytes) = l.soft_limit {
                    write(&dom.join("memory.high"), &bytes.to_string())?;
                }
                if let Some(bytes) = l.swap_hard_limit {
                    let swap = bytes.saturating_sub(l.hard_limit.unwrap_or(0));
                    write(&dom.join("memory.swap.max"), &swap.to_string())?;
                }
                // Processes live in a leaf: dom/emulator (threaded when
                // vCPUs get groups of their own).
                let emulator = dom.join("emulator");
                make(&emulator)?;
                if l.quota.is_some() {
                    write(&dom.join("cgroup.subtree_control"), "+cpu")?;
                    write(&emulator.join("cgroup.type"), "threaded")?;
                }
                write(&emulator.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(groups)
    }

    /// Puts vCPU `index`'s thread `tid` in a group of its own with the
    /// per-vCPU quota (nothing without a quota).
    pub fn add_vcpu(&self, index: u32, tid: i32) -> Result<(), String> {
        let Some(quota) = self.limits.quota else {
            return Ok(());
        };
        let period = self.limits.period.unwrap_or(DEFAULT_PERIOD);
        match &self.hierarchy {
            Hierarchy::V1 { cpu, .. } => {
                let dir = cpu.join(&self.group).join(format!("vcpu{index}"));
                make(&dir)?;
                write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&dir.join("tasks"), &tid.to_string())
            }
            Hierarchy::V2 { parent } => {
                let dir = parent.join(&self.group).join(format!("vcpu{index}"));
                make(&dir)?;
                write(&dir.join("cgroup.type"), "threaded")?;
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                write(&dir.join("cgroup.threads"), &tid.to_string())
            }
        }
    }
}

/// The file in a domain's run folder that lists the groups its VMM was
/// put in, one `KIND PATH` line each (`cpu` and `memory` for v1, `v2`).
pub const RECORD_FILE: &str = "cgroups";
/// Lines of a record read at most.
const MAX_RECORD_LINES: usize = 8;

/// Which hierarchy a recorded group sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// The v1 cpu hierarchy.
    Cpu,
    /// The v1 memory hierarchy.
    Memory,
    /// The v2 unified hierarchy.
    V2,
}

impl GroupKind {
    fn word(self) -> &'static str {
        match self {
            GroupKind::Cpu => "cpu",
            GroupKind::Memory => "memory",
            GroupKind::V2 => "v2",
        }
    }
}

impl VmGroups {
    /// The domain groups made, by hierarchy.
    pub fn dirs(&self) -> Vec<(GroupKind, PathBuf)> {
        match &self.hierarchy {
            Hierarchy::V1 { cpu, memory } => {
                let mut dirs = Vec::new();
                if self.limits.wants_cpu() {
                    dirs.push((GroupKind::Cpu, cpu.join(&self.group)));
                }
                if self.limits.wants_memory() {
                    dirs.push((GroupKind::Memory, memory.join(&self.group)));
                }
                dirs
            }
            Hierarchy::V2 { parent } => vec![(GroupKind::V2, parent.join(&self.group))],
        }
    }

    /// Adds the groups to the record in `run_dir`, so that they are
    /// removed when the VMM is gone ([`remove_recorded`]).
    pub fn record(&self, run_dir: &Path) -> Result<(), String> {
        let mut all = read_record(run_dir);
        for dir in self.dirs() {
            if !all.contains(&dir) {
                all.push(dir);
            }
        }
        let text: String = all
            .iter()
            .map(|(kind, path)| format!("{} {}\n", kind.word(), path.display()))
            .collect();
        write(&run_dir.join(RECORD_FILE), &text)
    }
}

/// The groups recorded in `run_dir`. Only lines naming an absolute
/// `vm-*` folder count (the record is ours, but a hand-edited one must
/// not make us remove other folders).
pub fn read_record(run_dir: &Path) -> Vec<(GroupKind, PathBuf)> {
    let Ok(text) = fs::read_to_string(run_dir.join(RECORD_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .take(MAX_RECORD_LINES)
        .filter_map(|line| {
            let (word, path) = line.split_once(' ')?;
            let kind = match word {
                "cpu" => GroupKind::Cpu,
                "memory" => GroupKind::Memory,
                "v2" => GroupKind::V2,
                _ => return None,
            };
            let path = PathBuf::from(path);
            let ours = path.is_absolute()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vm-"));
            ours.then_some((kind, path))
        })
        .collect()
}

/// Removes the groups recorded in `run_dir` (their `vcpuN` and
/// `emulator` children first) once the VMM is gone, then the record. A
/// group the kernel will not remove yet (it still has tasks) keeps the
/// record, for the next clean-up or start.
pub fn remove_recorded(run_dir: &Path) {
    let record = read_record(run_dir);
    let mut left = false;
    for (_, dom) in &record {
        remove_group(dom);
        left |= dom.exists();
    }
    if !left {
        let _ = fs::remove_file(run_dir.join(RECORD_FILE));
    }
}

/// Removes a group folder and its child groups (empty ones only).
fn remove_group(dom: &Path) {
    if let Ok(children) = fs::read_dir(dom) {
        for child in children.flatten().take(4096).filter(|c| c.path().is_dir()) {
            let _ = fs::remove_dir(child.path());
        }
    }
    let _ = fs::remove_dir(dom);
}

/// Removes VM `name`'s groups that are left from an earlier run (empty
/// ones only: the kernel refuses to remove a group with tasks).
pub fn remove_stale(hierarchy: &Hierarchy, name: &str) {
    let group = format!("vm-{name}");
    let doms: Vec<PathBuf> = match hierarchy {
        Hierarchy::V1 { cpu, memory } => vec![cpu.join(&group), memory.join(&group)],
        Hierarchy::V2 { parent } => vec![parent.join(&group)],
    };
    for dom in doms {
        remove_group(&dom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            shares: Some(2048),
            period: Some(50_000),
            quota: Some(10_000),
            hard_limit: Some(256 << 20),
            soft_limit: None,
            swap_hard_limit: Some(512 << 20),
        }
    }

    #[test]
    fn v2_against_a_folder_laid_out_as_cgroupfs() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let hierarchy = v2(root.path().to_path_buf(), &limits()).unwrap();
        let groups = VmGroups::create(hierarchy, "web", limits(), 4242).unwrap();
        groups.add_vcpu(1, 4244).unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory");
        assert_eq!(
            read("vm-web/cpu.weight"),
            shares_to_weight(2048).to_string()
        );
        assert_eq!(read("vm-web/memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("vm-web/memory.swap.max"), (256u64 << 20).to_string());
        assert_eq!(read("vm-web/cgroup.subtree_control"), "+cpu");
        assert_eq!(read("vm-web/emulator/cgroup.type"), "threaded");
        assert_eq!(read("vm-web/emulator/cgroup.procs"), "4242");
        assert_eq!(read("vm-web/vcpu1/cgroup.type"), "threaded");
        assert_eq!(read("vm-web/vcpu1/cpu.max"), "10000 50000");
        assert_eq!(read("vm-web/vcpu1/cgroup.threads"), "4244");
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn recorded_groups_are_removed_with_their_children() {
        let root = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let hierarchy = v2(root.path().to_path_buf(), &limits()).unwrap();
        let groups = VmGroups::create(hierarchy, "gone", limits(), 4242).unwrap();
        groups.add_vcpu(0, 4243).unwrap();
        groups.record(run.path()).unwrap();
        groups.record(run.path()).unwrap();
        let dom = root.path().join("vm-gone");
        assert_eq!(read_record(run.path()), vec![(GroupKind::V2, dom.clone())]);
        // cgroupfs folders hold only kernel files, which go with rmdir;
        // a plain folder needs its files gone first.
        for sub in ["", "emulator", "vcpu0"] {
            for file in fs::read_dir(dom.join(sub)).unwrap().flatten() {
                if file.path().is_file() {
                    fs::remove_file(file.path()).unwrap();
                }
            }
        }
        remove_recorded(run.path());
        assert!(!dom.exists());
        assert!(!run.path().join(RECORD_FILE).exists());
        // A record naming a folder that is not a vm group is ignored.
        let other = root.path().join("keep");
        fs::create_dir(&other).unwrap();
        fs::write(
            run.path().join(RECORD_FILE),
            format!("v2 {}\nv2 vm-rel\n", other.display()),
        )
        .unwrap();
        assert!(read_record(run.path()).is_empty());
        remove_recorded(run.path());
        assert!(other.exists());
    }

    #[test]
    fn v2_without_a_controller_is_refused_in_one_line() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "pids\n").unwrap();
        let e = v2(root.path().to_path_buf(), &limits()).unwrap_err();
        assert!(e.contains("no cpu controller") && !e.contains('\n'), "{e}");
        let only_memory = Limits {
            hard_limit: Some(1),
            ..Limits::default()
        };
        let e = v2(root.path().to_path_buf(), &only_memory).unwrap_err();
        assert!(e.contains("no memory controller"), "{e}");
        assert!(v2(root.path().join("nowhere"), &only_memory).is_err());
    }

    /// With real-time group scheduling and no real-time time left in the
    /// parent, a VMM whose thread runs real-time still moves into its
    /// group, back in the time-sharing class (on a cgroup v1 host, as
    /// root; elsewhere it says why it did not run).
    #[test]
    fn a_real_time_process_moves_into_a_group_when_no_real_time_is_left() {
        let root = Path::new("/sys/fs/cgroup/cpu");
        if !root.join("cpu.rt_runtime_us").exists()
            || fs::create_dir_all(root.join("probe-rt-access")).is_err()
        {
            eprintln!(
                "skipped: no writable cgroup v1 cpu hierarchy with real-time group scheduling"
            );
            return;
        }
        let _ = fs::remove_dir(root.join("probe-rt-access"));
        let parent = root.join(format!("vm-test-rt-{}", std::process::id()));
        make(&parent).unwrap();
        // Less real-time time than a domain's group asks for.
        write(&parent.join("cpu.rt_runtime_us"), "10000").unwrap();
        let mut child = std::process::Command::new("chrt")
            .args(["-f", "1", "sleep", "30"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // chrt execs sleep in the same process, real-time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // SAFETY: reads process `pid`'s policy only.
        while unsafe { libc::sched_getscheduler(pid) } != libc::SCHED_FIFO {
            assert!(
                std::time::Instant::now() < deadline,
                "chrt never ran sleep real-time"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let hierarchy = Hierarchy::V1 {
            cpu: parent.clone(),
            memory: PathBuf::from("/nonexistent"),
        };
        let limits = Limits {
            shares: Some(1024),
            ..Limits::default()
        };
        let made = VmGroups::create(hierarchy, "rt", limits, pid);
        let procs = fs::read_to_string(parent.join("vm-rt/cgroup.procs")).unwrap_or_default();
        // SAFETY: reads process `pid`'s policy only.
        let policy = unsafe { libc::sched_getscheduler(pid) };
        let _ = child.kill();
        let _ = child.wait();
        remove_group(&parent.join("vm-rt"));
        remove_group(&parent);
        made.unwrap();
        assert_eq!(procs.trim(), pid.to_string());
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
