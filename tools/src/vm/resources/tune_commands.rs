//! `vcpupin`, `emulatorpin`, `schedinfo` and `memtune`: show and set
//! `<cputune>` and `<memtune>` as virsh lays them out. Pins change live
//! on a running domain (sched_setaffinity on its threads), in the
//! definition with `--config`, or both with `--live --config`; scheduler and memory limits change the
//! running domain's cgroups (`--live`, or `--current` on a running
//! domain, through [`super::live`]), the definition (`--config`, or a
//! domain that is not running), or both (`--live --config`).

use super::affinity;
use super::apply::threads;
use super::cpuset::CpuSet;
use super::live::{self, Setting};
use super::size::scaled_bytes;
use super::tune::{
    self, cputune, memtune, set_cputune, set_memtune, PERIOD_RANGE, QUOTA_RANGE, SHARES_RANGE,
};
use crate::vm::cli::Invocation;
use crate::vm::commands::{lookup, Ctx};
use crate::vm::error::VmError;
use crate::vm::runtime::{self, QUERY_TIMEOUT};
use crate::vm::xml::DomainDef;

/// Where a pin command acts: the running VMM (`live`, its pid) and/or the
/// definition (`config`), as virsh's `--live`, `--config` and `--current`
/// choose; both at once when setting with `--live --config`, as libvirt's
/// QEMU driver does.
struct PinTarget {
    live: Option<i32>,
    config: bool,
}

fn target(ctx: &Ctx, inv: &Invocation, def: &DomainDef) -> Result<PinTarget, VmError> {
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let pid = status.active().map(|a| a.process.pid);
    let (live, config, current) = (inv.flag("live"), inv.flag("config"), inv.flag("current"));
    if current && (live || config) {
        let other = if live { "--live" } else { "--config" };
        return Err(VmError::Refused(format!(
            "Options --current and {other} are mutually exclusive"
        )));
    }
    if live && pid.is_none() {
        return Err(VmError::Refused(
            "Requested operation is not valid: domain is not running".to_string(),
        ));
    }
    Ok(match (live, config) {
        (true, true) => PinTarget {
            live: pid,
            config: true,
        },
        (false, true) => PinTarget {
            live: None,
            config: true,
        },
        _ => PinTarget {
            live: pid,
            config: pid.is_none(),
        },
    })
}

fn parse_cpulist(text: &str) -> Result<CpuSet, VmError> {
    let set =
        CpuSet::parse(text).map_err(|_| VmError::Refused(format!("Invalid cpulist '{text}'")))?;
    let host = affinity::host_cpus();
    if set.max() >= host {
        return Err(VmError::InvalidArgument(format!(
            "cpuset '{text}' names CPU {}, the host has {host} CPUs",
            set.max()
        )));
    }
    Ok(set)
}

fn all_cpus() -> CpuSet {
    CpuSet::from_cpus(0..affinity::host_cpus())
}

/// `vcpupin DOMAIN [VCPU] [CPULIST] [--config] [--live] [--current]`.
pub fn vcpupin(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut def = lookup(ctx, inv.required("domain"))?;
    let at = target(ctx, inv, &def)?;
    let querying = inv.value("cpulist").is_none();
    if querying && at.live.is_some() && at.config {
        return Err(VmError::Refused(
            "Options --live and --config are mutually exclusive".to_string(),
        ));
    }
    let pid = at.live;
    let count = if pid.is_some() {
        def.vcpus_current
    } else {
        def.vcpus
    };
    let vcpu = match inv.value("vcpu") {
        Some(text) => {
            let n: u32 = text.parse().map_err(|_| {
                VmError::Refused(format!(
                    "Numeric value '{text}' for <vcpu> option is malformed or out of range"
                ))
            })?;
            if n >= count {
                return Err(VmError::InvalidArgument(format!(
                    "vcpu {n} is out of range of {} cpu count {count}",
                    if pid.is_some() { "live" } else { "persistent" }
                )));
            }
            Some(n)
        }
        None => None,
    };
    let mut tune = cputune(&def)?;
    if let (Some(vcpu), Some(list)) = (vcpu, inv.value("cpulist")) {
        let set = parse_cpulist(list)?;
        if let Some(pid) = pid {
            let tid = threads(pid)
                .into_iter()
                .find(|(_, v)| *v == Some(vcpu))
                .map(|(t, _)| t)
                .ok_or_else(|| VmError::OperationFailed(format!("vcpu{vcpu} has no thread")))?;
            affinity::set(tid, &set)
                .map_err(|e| VmError::OperationFailed(format!("cannot pin vcpu{vcpu}: {e}")))?;
        }
        if at.config {
            let _lock = ctx.store.lock(&def.name)?;
            tune.vcpupins.retain(|(v, _)| *v != vcpu);
            tune.vcpupins.push((vcpu, set));
            tune.vcpupins.sort_by_key(|(v, _)| *v);
            set_cputune(&mut def, &tune);
            ctx.store.write_definition(&def)?;
        }
        return Ok(());
    }
    let live: Vec<(i32, Option<u32>)> = pid.map(threads).unwrap_or_default();
    let mut rows = Vec::new();
    for index in 0..count {
        if vcpu.is_some_and(|v| v != index) {
            continue;
        }
        let set = match live.iter().find(|(_, v)| *v == Some(index)) {
            Some((tid, _)) => affinity::get(*tid).unwrap_or_else(|_| all_cpus()),
            None => tune
                .vcpupins
                .iter()
                .find(|(v, _)| *v == index)
                .map(|(_, s)| s.clone())
                .or_else(|| def.vcpu_cpuset.clone())
                .unwrap_or_else(all_cpus),
        };
        rows.push(vec![index.to_string(), set.format()]);
    }
    out.push_str(&crate::vm::format::table(
        &["VCPU", "CPU Affinity"],
        &rows,
        ctx.quiet,
    ));
    Ok(())
}

/// `emulatorpin DOMAIN [CPULIST] [--config] [--live] [--current]`.
pub fn emulatorpin(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut def = lookup(ctx, inv.required("domain"))?;
    let at = target(ctx, inv, &def)?;
    let pid = at.live;
    let mut tune = cputune(&def)?;
    if let Some(list) = inv.value("cpulist") {
        let set = CpuSet::parse(list)
            .map_err(|_| VmError::InvalidArgument(format!("Failed to parse bitmap '{list}'")))?;
        let set = parse_cpulist(&set.format())?;
        if let Some(pid) = pid {
            for (tid, _) in threads(pid).into_iter().filter(|(_, v)| v.is_none()) {
                affinity::set(tid, &set).map_err(|e| {
                    VmError::OperationFailed(format!("cannot pin thread {tid}: {e}"))
                })?;
            }
        }
        if at.config {
            let _lock = ctx.store.lock(&def.name)?;
            tune.emulatorpin = Some(set);
            set_cputune(&mut def, &tune);
            ctx.store.write_definition(&def)?;
        }
        return Ok(());
    }
    if pid.is_some() && at.config {
        return Err(VmError::Refused(
            "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive"
                .to_string(),
        ));
    }
    let set = match pid {
        Some(pid) => affinity::get(pid).unwrap_or_else(|_| all_cpus()),
        None => tune
            .emulatorpin
            .or_else(|| def.vcpu_cpuset.clone())
            .unwrap_or_else(all_cpus),
    };
    if !ctx.quiet {
        out.push_str("emulator: CPU Affinity\n----------------------------------\n");
    }
    out.push_str(&format!("       *: {}\n", set.format()));
    Ok(())
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{label:<15}: {value}\n"));
}

/// Where `schedinfo` and `memtune` act, as virsh's `--live`,
/// `--config` and `--current` choose: the running VMM (its pid and run
/// folder) and/or the definition.
struct Scope {
    live: Option<(i32, std::path::PathBuf)>,
    config: bool,
}

fn scope(ctx: &Ctx, inv: &Invocation, def: &DomainDef) -> Result<Scope, VmError> {
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let running = status
        .active()
        .map(|a| (a.process.pid, a.run.dir().to_path_buf()));
    let (live, config, current) = (inv.flag("live"), inv.flag("config"), inv.flag("current"));
    if current && (live || config) {
        let other = if live { "--live" } else { "--config" };
        return Err(VmError::Refused(format!(
            "Options --current and {other} are mutually exclusive"
        )));
    }
    if live && running.is_none() {
        return Err(VmError::Refused(
            "Requested operation is not valid: domain is not running".to_string(),
        ));
    }
    Ok(match (live, config) {
        (true, _) => Scope {
            live: running,
            config,
        },
        (false, true) => Scope {
            live: None,
            config: true,
        },
        // --current (or nothing): the running domain if it runs.
        (false, false) => Scope {
            config: running.is_none(),
            live: running,
        },
    })
}

fn live_failed(e: String) -> VmError {
    VmError::OperationFailed(e)
}

/// `schedinfo DOMAIN [--set NAME=VALUE] [--config] [--live] [--current]`:
/// cpu_shares, vcpu_period, vcpu_quota; a running domain shows and
/// changes its cgroups' values.
pub fn schedinfo(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut def = lookup(ctx, inv.required("domain"))?;
    let mut tune = cputune(&def)?;
    let scope = scope(ctx, inv, &def)?;
    if let Some(setting) = inv.value("set") {
        let (name, value) = setting.split_once('=').ok_or_else(|| {
            VmError::InvalidArgument("Invalid syntax for --set, expecting name=value".to_string())
        })?;
        let bad =
            || VmError::InvalidArgument(format!("invalid value '{value}' for parameter '{name}'"));
        let change = match name {
            "cpu_shares" => {
                let v: u64 = value.parse().map_err(|_| bad())?;
                if !(SHARES_RANGE.0..=SHARES_RANGE.1).contains(&v) {
                    return Err(bad());
                }
                tune.shares = Some(v);
                Setting::Shares(v)
            }
            "vcpu_period" => {
                let v: u64 = value.parse().map_err(|_| bad())?;
                if !(PERIOD_RANGE.0..=PERIOD_RANGE.1).contains(&v) {
                    return Err(bad());
                }
                tune.period = Some(v);
                Setting::Period(v)
            }
            "vcpu_quota" => {
                let v: i64 = value.parse().map_err(|_| bad())?;
                if v != -1 && !(QUOTA_RANGE.0..=QUOTA_RANGE.1).contains(&v) {
                    return Err(bad());
                }
                tune.quota = Some(v);
                Setting::Quota(v)
            }
            other => {
                return Err(VmError::InvalidArgument(format!(
                    "invalid scheduler parameter '{other}'"
                )))
            }
        };
        let _lock = ctx.store.lock(&def.name)?;
        if let Some((pid, run_dir)) = &scope.live {
            live::apply(def.name.as_str(), *pid, run_dir, &[change]).map_err(live_failed)?;
        }
        if scope.config {
            set_cputune(&mut def, &tune);
            ctx.store.write_definition(&def)?;
        }
        if !scope.config {
            // Show what now runs.
            tune = cputune(&lookup(ctx, inv.required("domain"))?)?;
        }
    }
    let (mut shares, mut period, mut quota) = (tune.shares, tune.period, tune.quota);
    if let (Some((_, run_dir)), false) = (&scope.live, scope.config) {
        let live = live::read(run_dir);
        if live.has_cpu {
            shares = live.shares.or(shares);
            period = live.period.or(period);
            quota = live.quota.or(quota);
        }
    }
    line(out, "Scheduler", "posix");
    line(out, "cpu_shares", shares.unwrap_or(1024));
    line(out, "vcpu_period", period.unwrap_or(100_000));
    line(out, "vcpu_quota", quota.unwrap_or(-1));
    Ok(())
}

/// `memtune DOMAIN [--hard-limit N] [--soft-limit N] [--swap-hard-limit
/// N] [--config] [--live] [--current]` (sizes in KiB unless scaled, -1
/// for unlimited).
pub fn memtune_command(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let mut mem = memtune(&def)?;
    let mut changed = false;
    for (option, slot) in [
        ("hard-limit", &mut mem.hard_limit_kib),
        ("soft-limit", &mut mem.soft_limit_kib),
        ("swap-hard-limit", &mut mem.swap_hard_limit_kib),
    ] {
        let Some(text) = inv.value(option) else {
            continue;
        };
        *slot = if text == "-1" {
            None
        } else {
            let bytes = scaled_bytes(text, 16 << 40).ok_or_else(|| {
                VmError::Refused(format!("Unable to parse integer parameter {option}"))
            })?;
            Some(bytes.div_ceil(1024))
        };
        changed = true;
    }
    let scope = scope(ctx, inv, &def)?;
    if changed {
        let _lock = ctx.store.lock(&def.name)?;
        let mut checked = def.clone();
        set_memtune(&mut checked, &mem);
        tune::memtune(&checked)?;
        if let Some((pid, run_dir)) = &scope.live {
            if let Some(hard) = mem.hard_limit_kib.filter(|h| *h < def.memory_kib) {
                return Err(VmError::InvalidArgument(format!(
                    "hard_limit of {hard} KiB is below the guest's memory of {} KiB",
                    def.memory_kib
                )));
            }
            let changes: Vec<Setting> = [
                ("hard-limit", Setting::HardLimit(mem.hard_limit_kib)),
                ("soft-limit", Setting::SoftLimit(mem.soft_limit_kib)),
                (
                    "swap-hard-limit",
                    Setting::SwapHardLimit(mem.swap_hard_limit_kib),
                ),
            ]
            .into_iter()
            .filter(|(option, _)| inv.value(option).is_some())
            .map(|(_, s)| s)
            .collect();
            live::apply(def.name.as_str(), *pid, run_dir, &changes).map_err(live_failed)?;
        }
        if scope.config {
            ctx.store.write_definition(&checked)?;
        }
        return Ok(());
    }
    if let (Some((_, run_dir)), false) = (&scope.live, scope.config) {
        let live = live::read(run_dir);
        if live.has_memory {
            mem.hard_limit_kib = live.hard_limit_kib;
            mem.soft_limit_kib = live.soft_limit_kib;
            mem.swap_hard_limit_kib = live.swap_hard_limit_kib;
        }
    }
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |k| k.to_string());
    line(out, "hard_limit", show(mem.hard_limit_kib));
    line(out, "soft_limit", show(mem.soft_limit_kib));
    line(out, "swap_hard_limit", show(mem.swap_hard_limit_kib));
    Ok(())
}
