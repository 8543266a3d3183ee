//! Scheduler and memory limits of a running domain, read from and written
//! to its cgroups, as libvirt's `schedinfo --live` and `memtune --live`
//! do: the groups recorded in its run folder ([`cgroup::read_record`]),
//! made now (and the VMM and its vCPU threads moved into them) when the
//! domain started without any.

use std::fs;
use std::path::{Path, PathBuf};

use super::apply::threads;
use super::cgroup::{self, GroupKind, Limits, VmGroups};

/// One change to a running domain's limits; None is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `cpu_shares`.
    Shares(u64),
    /// `vcpu_period` in µs.
    Period(u64),
    /// `vcpu_quota` in µs (-1: unlimited).
    Quota(i64),
    /// `hard_limit` in KiB.
    HardLimit(Option<u64>),
    /// `soft_limit` in KiB.
    SoftLimit(Option<u64>),
    /// `swap_hard_limit` in KiB.
    SwapHardLimit(Option<u64>),
}

impl Setting {
    fn is_cpu(self) -> bool {
        matches!(
            self,
            Setting::Shares(_) | Setting::Period(_) | Setting::Quota(_)
        )
    }
}

/// What the live groups hold; None where no group sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveValues {
    /// cpu.shares (v1), or cpu.weight converted back (v2).
    pub shares: Option<u64>,
    /// vCPU 0's period in µs.
    pub period: Option<u64>,
    /// vCPU 0's quota in µs (-1 unlimited).
    pub quota: Option<i64>,
    /// Hard limit in KiB (None: unlimited).
    pub hard_limit_kib: Option<u64>,
    /// Soft limit in KiB.
    pub soft_limit_kib: Option<u64>,
    /// Memory plus swap limit in KiB.
    pub swap_hard_limit_kib: Option<u64>,
    /// Whether a cpu group was found.
    pub has_cpu: bool,
    /// Whether a memory group was found.
    pub has_memory: bool,
}

/// Byte values at or above this are "no limit" (v1 writes
/// PAGE_COUNTER_MAX pages, 0x7FFFFFFFFFFFF000 on 4 KiB pages).
const UNLIMITED_BYTES: u64 = 1 << 62;

fn read_number(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.trim().chars().take(64).collect())
}

fn bytes_to_kib(text: &str) -> Option<u64> {
    let bytes: u64 = text.parse().ok()?;
    (bytes < UNLIMITED_BYTES).then_some(bytes / 1024)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write '{value}' to {}: {e}", path.display()))
}

/// libvirt's cpu.weight back to shares (the inverse of
/// [`cgroup::shares_to_weight`], exact where that conversion is).
fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.saturating_sub(1) * 262_142).div_ceil(9999)
}

/// Reads the live values of the groups recorded in `run_dir`.
pub fn read(run_dir: &Path) -> LiveValues {
    let mut live = LiveValues::default();
    for (kind, dom) in cgroup::read_record(run_dir) {
        match kind {
            GroupKind::Cpu => {
                live.has_cpu = true;
                live.shares = read_number(&dom.join("cpu.shares")).and_then(|t| t.parse().ok());
                live.period =
                    read_number(&dom.join("vcpu0/cpu.cfs_period_us")).and_then(|t| t.parse().ok());
                live.quota =
                    read_number(&dom.join("vcpu0/cpu.cfs_quota_us")).and_then(|t| t.parse().ok());
            }
            GroupKind::Memory => {
                live.has_memory = true;
                let kib = |file: &str| read_number(&dom.join(file)).and_then(|t| bytes_to_kib(&t));
                live.hard_limit_kib = kib("memory.limit_in_bytes");
                live.soft_limit_kib = kib("memory.soft_limit_in_bytes");
                live.swap_hard_limit_kib = kib("memory.memsw.limit_in_bytes");
            }
            GroupKind::V2 => {
                live.has_cpu = dom.join("cpu.weight").exists();
                live.has_memory = dom.join("memory.max").exists();
                live.shares = read_number(&dom.join("cpu.weight"))
                    .and_then(|t| t.parse().ok())
                    .map(weight_to_shares);
                if let Some(max) = read_number(&dom.join("vcpu0/cpu.max")) {
                    let mut fields = max.split_whitespace();
                    live.quota = fields.next().map(|q| q.parse().unwrap_or(-1));
                    live.period = fields.next().and_then(|p| p.parse().ok());
                }
                let kib = |file: &str| read_number(&dom.join(file)).and_then(|t| bytes_to_kib(&t));
                live.hard_limit_kib = kib("memory.max");
                live.soft_limit_kib = kib("memory.high");
                live.swap_hard_limit_kib =
                    kib("memory.swap.max").map(|swap| swap + live.hard_limit_kib.unwrap_or(0));
            }
        }
    }
    live
}

/// CPU time of the domain's cgroup in ns: (total, user, system), as
/// libvirt's domstats `cpu.*` read it (v1 cpuacct.usage and
/// cpuacct.stat in `ns_per_tick` ticks; v2 cpu.stat in µs); None without
/// a cpu group that accounts.
pub fn cpu_times(run_dir: &Path, ns_per_tick: u64) -> Option<(u64, u64, u64)> {
    let (kind, dom) = cgroup::read_record(run_dir)
        .into_iter()
        .find(|(k, _)| matches!(k, GroupKind::Cpu | GroupKind::V2))?;
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines().take(64).find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
    };
    if kind == GroupKind::V2 {
        let text = fs::read_to_string(dom.join("cpu.stat")).ok()?;
        let usec = |name| field(&text, name).map(|v| v * 1000);
        return Some((
            usec("usage_usec")?,
            usec("user_usec")?,
            usec("system_usec")?,
        ));
    }
    let total = read_number(&dom.join("cpuacct.usage"))?.parse().ok()?;
    let text = fs::read_to_string(dom.join("cpuacct.stat")).ok()?;
    let ticks = |name| field(&text, name).map(|v| v * ns_per_tick);
    Some((total, ticks("user")?, ticks("system")?))
}

/// The vCPU threads of VMM `pid`: (index, thread id).
fn vcpu_threads(pid: i32) -> Vec<(u32, i32)> {
    threads(pid)
        .into_iter()
        .filter_map(|(tid, vcpu)| Some((vcpu?, tid)))
        .collect()
}

/// Applies `settings` to running domain `name` (VMM `pid`, run folder
/// `run_dir`); a group it needs and lacks is made now.
pub fn apply(name: &str, pid: i32, run_dir: &Path, settings: &[Setting]) -> Result<(), String> {
    let record = cgroup::read_record(run_dir);
    let find = |kind: GroupKind| {
        record
            .iter()
            .find(|(k, _)| *k == kind || *k == GroupKind::V2)
            .map(|(k, p)| (*k, p.clone()))
    };
    let cpu = settings.iter().any(|s| s.is_cpu());
    let memory = settings.iter().any(|s| !s.is_cpu());
    let missing =
        (cpu && find(GroupKind::Cpu).is_none()) || (memory && find(GroupKind::Memory).is_none());
    if missing {
        make_groups(name, pid, run_dir, settings)?;
    }
    let record = cgroup::read_record(run_dir);
    for setting in settings {
        let kind = if setting.is_cpu() {
            GroupKind::Cpu
        } else {
            GroupKind::Memory
        };
        let Some((found, dom)) = record
            .iter()
            .find(|(k, _)| *k == kind || *k == GroupKind::V2)
            .cloned()
        else {
            // An unlimited value needs no group.
            continue;
        };
        write_setting(found == GroupKind::V2, &dom, pid, *setting)?;
    }
    Ok(())
}

/// Makes the groups `settings` need (with their values) and records them.
fn make_groups(name: &str, pid: i32, run_dir: &Path, settings: &[Setting]) -> Result<(), String> {
    let mut limits = Limits::default();
    for setting in settings {
        match *setting {
            Setting::Shares(v) => limits.shares = Some(v),
            Setting::Period(v) => limits.period = Some(v),
            Setting::Quota(v) if v != -1 => limits.quota = Some(v),
            Setting::Quota(_) => {}
            Setting::HardLimit(v) => limits.hard_limit = v.map(|k| k * 1024),
            Setting::SoftLimit(v) => limits.soft_limit = v.map(|k| k * 1024),
            Setting::SwapHardLimit(v) => limits.swap_hard_limit = v.map(|k| k * 1024),
        }
    }
    if !limits.any() {
        return Ok(());
    }
    let hierarchy = cgroup::find(&limits)?;
    let groups = VmGroups::create(hierarchy, name, limits, pid)?;
    groups.record(run_dir)?;
    for (index, tid) in vcpu_threads(pid) {
        groups.add_vcpu(index, tid)?;
    }
    Ok(())
}

/// The vCPU group of `index` under `dom`, made (and the thread moved in)
/// if missing.
fn vcpu_group(v2: bool, dom: &Path, index: u32, tid: i32) -> Result<PathBuf, String> {
    let dir = dom.join(format!("vcpu{index}"));
    if !dir.exists() {
        fs::create_dir(&dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        if v2 {
            write(&dom.join("cgroup.subtree_control"), "+cpu")?;
            write(&dom.join("emulator/cgroup.type"), "threaded")?;
            write(&dir.join("cgroup.type"), "threaded")?;
        }
    }
    let tasks = if v2 { "cgroup.threads" } else { "tasks" };
    write(&dir.join(tasks), &tid.to_string())?;
    Ok(dir)
}

fn write_setting(v2: bool, dom: &Path, pid: i32, setting: Setting) -> Result<(), String> {
    let bytes = |kib: Option<u64>, unlimited: &str| {
        kib.map_or(unlimited.to_string(), |k| (k * 1024).to_string())
    };
    match (setting, v2) {
        (Setting::Shares(v), false) => write(&dom.join("cpu.shares"), &v.to_string()),
        (Setting::Shares(v), true) => write(
            &dom.join("cpu.weight"),
            &cgroup::shares_to_weight(v).to_string(),
        ),
        (Setting::Period(_) | Setting::Quota(_), _) => {
            for (index, tid) in vcpu_threads(pid) {
                let dir = vcpu_group(v2, dom, index, tid)?;
                if v2 {
                    let current = read_number(&dir.join("cpu.max")).unwrap_or_default();
                    let mut fields = current.split_whitespace();
                    let mut quota = fields.next().unwrap_or("max").to_string();
                    let mut period = fields.next().unwrap_or("100000").to_string();
                    match setting {
                        Setting::Period(p) => period = p.to_string(),
                        Setting::Quota(-1) => quota = "max".to_string(),
                        Setting::Quota(q) => quota = q.to_string(),
                        _ => {}
                    }
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                } else {
                    match setting {
                        Setting::Period(p) => {
                            write(&dir.join("cpu.cfs_period_us"), &p.to_string())?
                        }
                        Setting::Quota(q) => write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?,
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        (Setting::HardLimit(k), false) => {
            write(&dom.join("memory.limit_in_bytes"), &bytes(k, "-1"))
        }
        (Setting::HardLimit(k), true) => write(&dom.join("memory.max"), &bytes(k, "max")),
        (Setting::SoftLimit(k), false) => {
            write(&dom.join("memory.soft_limit_in_bytes"), &bytes(k, "-1"))
        }
        (Setting::SoftLimit(k), true) => write(&dom.join("memory.high"), &bytes(k, "max")),
        (Setting::SwapHardLimit(k), false) => {
            write(&dom.join("memory.memsw.limit_in_bytes"), &bytes(k, "-1"))
        }
        (Setting::SwapHardLimit(k), true) => {
            let hard = read_number(&dom.join("memory.max"))
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            let swap = k.map_or("max".to_string(), |k| {
                (k * 1024).saturating_sub(hard).to_string()
            });
            write(&dom.join("memory.swap.max"), &swap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_cpu_times_v1_and_v2() {
        let run = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dom = root.path().join("vm-t");
        fs::create_dir_all(&dom).unwrap();
        let record = |kind: &str| {
            fs::write(
                run.path().join(cgroup::RECORD_FILE),
                format!("{kind} {}\n", dom.display()),
            )
            .unwrap()
        };
        record("cpu");
        assert_eq!(cpu_times(run.path(), 10), None);
        fs::write(dom.join("cpuacct.usage"), "5000\n").unwrap();
        fs::write(dom.join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
        assert_eq!(cpu_times(run.path(), 1000), Some((5000, 3000, 1000)));
        record("v2");
        fs::write(
            dom.join("cpu.stat"),
            "usage_usec 7\nuser_usec 5\nsystem_usec 2\n",
        )
        .unwrap();
        assert_eq!(cpu_times(run.path(), 1000), Some((7000, 5000, 2000)));
    }

    #[test]
    fn weights_convert_back_to_shares() {
        for shares in [2, 1024, 2048, 262_144] {
            let weight = cgroup::shares_to_weight(shares);
            assert_eq!(cgroup::shares_to_weight(weight_to_shares(weight)), weight);
        }
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }

    #[test]
    fn reads_v1_groups_and_treats_huge_limits_as_unlimited() {
        let run = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("vm-a");
        let memory = root.path().join("mem/vm-a");
        fs::create_dir_all(cpu.join("vcpu0")).unwrap();
        fs::create_dir_all(&memory).unwrap();
        fs::write(cpu.join("cpu.shares"), "512\n").unwrap();
        fs::write(cpu.join("vcpu0/cpu.cfs_period_us"), "50000\n").unwrap();
        fs::write(cpu.join("vcpu0/cpu.cfs_quota_us"), "-1\n").unwrap();
        fs::write(memory.join("memory.limit_in_bytes"), "268435456\n").unwrap();
        fs::write(
            memory.join("memory.soft_limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        fs::write(
            run.path().join(cgroup::RECORD_FILE),
            format!("cpu {}\nmemory {}\n", cpu.display(), memory.display()),
        )
        .unwrap();
        let live = read(run.path());
        assert_eq!(
            (live.shares, live.period, live.quota),
            (Some(512), Some(50_000), Some(-1))
        );
        assert_eq!(live.hard_limit_kib, Some(262_144));
        assert_eq!(live.soft_limit_kib, None);
        assert!(live.has_cpu && live.has_memory);
    }
}
