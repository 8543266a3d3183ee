//! Statistics: `domstats` with libvirt's field names, units and enum
//! numbers, `domblkstat [--human]`, `vcpuinfo` and `dommemstat`. Disk
//! counters come from the VMM (vm.counters); CPU times from /proc.

use vmapi::DiskCounters;

use super::monitor::{inspect_all, sorted, used_memory_kib};
use super::{disk_sizes, lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::{self, field, state};
use crate::vm::runtime::{self, procfs, Active, Status, QUERY_TIMEOUT};
use crate::vm::xml::DomainDef;

/// The stat groups of `domstats`.
#[derive(Debug, Clone, Copy)]
struct Groups {
    state: bool,
    cpu: bool,
    balloon: bool,
    vcpu: bool,
    interface: bool,
    block: bool,
}

fn push(out: &mut String, name: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("  {name}={value}\n"));
}

/// A domain's disk counters by target dev; an error if its VMM did not
/// answer.
fn counters(active: &Active) -> Result<std::collections::BTreeMap<String, DiskCounters>, VmError> {
    let all = active.client(QUERY_TIMEOUT).counters()?;
    Ok(all
        .iter()
        .map(|(id, map)| (id.clone(), DiskCounters::from_map(map)))
        .collect())
}

/// One domain's record.
fn record(
    def: &DomainDef,
    status: &Status,
    groups: Groups,
    out: &mut String,
) -> Result<(), VmError> {
    out.push_str(&format!("Domain: '{}'\n", def.name));
    let active = status.active();
    if groups.state {
        let (s, r) = status.state();
        push(out, "state.state", s);
        push(out, "state.reason", r);
    }
    let stat = active.and_then(|a| procfs::stat(a.process.pid));
    let tick = procfs::ns_per_tick();
    if groups.cpu {
        // The domain's cgroup when it has one that accounts (as libvirt
        // reads cpuacct), else the VMM's /proc times.
        let from_cgroup =
            active.and_then(|a| crate::vm::resources::live::cpu_times(a.run.dir(), tick));
        let from_proc = stat.map(|s| ((s.utime + s.stime) * tick, s.utime * tick, s.stime * tick));
        if let Some((time, user, system)) = from_cgroup.or(from_proc) {
            push(out, "cpu.time", time);
            push(out, "cpu.user", user);
            push(out, "cpu.system", system);
        }
    }
    if groups.balloon {
        push(out, "balloon.current", used_memory_kib(def, status));
        push(out, "balloon.maximum", def.memory_kib);
        if let Some(rss) = active.and_then(|a| procfs::rss_kib(a.process.pid)) {
            push(out, "balloon.rss", rss);
        }
    }
    if groups.vcpu {
        push(out, "vcpu.current", def.vcpus_current);
        push(out, "vcpu.maximum", def.vcpus);
        if let Some(active) = active {
            for thread in procfs::vcpu_threads(active.process.pid) {
                // VIR_VCPU_RUNNING: the vCPU exists and is online.
                push(out, &format!("vcpu.{}.state", thread.index), 1);
                push(
                    out,
                    &format!("vcpu.{}.time", thread.index),
                    (thread.stat.utime + thread.stat.stime) * tick,
                );
                // Time spent runnable but not running (a quota's
                // throttling shows here), as libvirt's vcpu.N.delay.
                if let Some(delay) = procfs::run_delay_ns(active.process.pid, thread.tid) {
                    push(out, &format!("vcpu.{}.delay", thread.index), delay);
                }
            }
        }
    }
    if groups.interface {
        super::net::push_domstats(def, active, out).map_err(|_| VmError::NoAnswer {
            name: def.name.to_string(),
            pid: active.map_or(0, |a| a.process.pid),
            millis: QUERY_TIMEOUT.as_millis(),
        })?;
    }
    if groups.block {
        let counters = match active {
            Some(a) if a.state != state::SHUTOFF => {
                Some(counters(a).map_err(|_| VmError::NoAnswer {
                    name: def.name.to_string(),
                    pid: a.process.pid,
                    millis: QUERY_TIMEOUT.as_millis(),
                })?)
            }
            _ => None,
        };
        push(out, "block.count", def.disks.len());
        for (i, disk) in def.disks.iter().enumerate() {
            push(out, &format!("block.{i}.name"), &disk.target_dev);
            if let Some(source) = &disk.source {
                push(out, &format!("block.{i}.path"), source);
            }
            if let Some(c) = counters
                .as_ref()
                .map(|m| m.get(&disk.target_dev).copied().unwrap_or_default())
            {
                push(out, &format!("block.{i}.rd.reqs"), c.read_ops);
                push(out, &format!("block.{i}.rd.bytes"), c.read_bytes);
                push(out, &format!("block.{i}.rd.times"), c.read_time_ns);
                push(out, &format!("block.{i}.wr.reqs"), c.write_ops);
                push(out, &format!("block.{i}.wr.bytes"), c.write_bytes);
                push(out, &format!("block.{i}.wr.times"), c.write_time_ns);
                push(out, &format!("block.{i}.fl.reqs"), c.flush_ops);
                push(out, &format!("block.{i}.fl.times"), c.flush_time_ns);
            }
            if let Some(sizes) = disk.source.as_deref().and_then(|s| disk_sizes(s).ok()) {
                push(out, &format!("block.{i}.allocation"), sizes.allocation);
                push(out, &format!("block.{i}.capacity"), sizes.capacity);
                push(out, &format!("block.{i}.physical"), sizes.physical);
            }
        }
    }
    Ok(())
}

/// `domstats [--state] [--cpu-total] [--balloon] [--vcpu] [--block]
/// [--raw] [--list-*] [DOMAIN...]`. A VMM that does not answer in time
/// is named on stderr; the others' records are printed and the command
/// fails at the end.
pub fn domstats(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let chosen = Groups {
        state: inv.flag("state"),
        cpu: inv.flag("cpu-total"),
        balloon: inv.flag("balloon"),
        vcpu: inv.flag("vcpu"),
        interface: inv.flag("interface"),
        block: inv.flag("block"),
    };
    let groups = if chosen.state
        || chosen.cpu
        || chosen.balloon
        || chosen.vcpu
        || chosen.interface
        || chosen.block
    {
        chosen
    } else {
        Groups {
            state: true,
            cpu: true,
            balloon: true,
            vcpu: true,
            interface: true,
            block: true,
        }
    };
    let defs: Vec<DomainDef> = if inv.argv().is_empty() {
        ctx.store.definitions()?
    } else {
        inv.argv()
            .iter()
            .map(|key| lookup(ctx, key))
            .collect::<Result<_, _>>()?
    };
    let statuses = inspect_all(&ctx.store, &defs);
    let mut entries: Vec<_> = defs.into_iter().zip(statuses).collect();
    if inv.argv().is_empty() {
        entries = sorted(entries);
        let filters = [
            ("list-active", None),
            ("list-inactive", None),
            ("list-running", Some(state::RUNNING)),
            ("list-paused", Some(state::PAUSED)),
            ("list-shutoff", Some(state::SHUTOFF)),
        ];
        let any = filters.iter().any(|(f, _)| inv.flag(f));
        if any {
            entries.retain(|(_, status)| {
                let active = status.active().is_some();
                let s = status.state().0;
                (inv.flag("list-active") && active)
                    || (inv.flag("list-inactive") && !active)
                    || filters.iter().any(|(f, st)| inv.flag(f) && *st == Some(s))
            });
        }
    }
    let mut first_failure = None;
    let mut printed = 0;
    for (def, status) in &entries {
        if status.active().is_some_and(|a| a.info.is_none()) {
            first_failure.get_or_insert(VmError::NoAnswer {
                name: def.name.to_string(),
                pid: status.active().map_or(0, |a| a.process.pid),
                millis: QUERY_TIMEOUT.as_millis(),
            });
            continue;
        }
        let mut text = String::new();
        match record(def, status, groups, &mut text) {
            Ok(()) => {
                if printed > 0 {
                    out.push('\n');
                }
                out.push_str(&text);
                printed += 1;
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The running side of `inv`'s domain, or virsh's "not running".
fn active_of(ctx: &Ctx, inv: &Invocation) -> Result<(DomainDef, Active), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    match runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None) {
        Status::Active(a) => Ok((def, *a)),
        Status::Inactive { .. } => Err(VmError::NotRunning),
    }
}

/// `domblkstat DOMAIN [DEVICE] [--human]` (all disks summed when DEVICE
/// is absent, as libvirt's qemu driver does).
pub fn domblkstat(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let device = inv.value("device").unwrap_or("");
    lookup(ctx, inv.required("domain"))?;
    // virsh names the domain as given and the device (empty when summed).
    block_stats(ctx, inv, device, out).map_err(|e| {
        VmError::Refused(format!(
            "Failed to get block stats {} {device}\nerror: {e}",
            inv.required("domain")
        ))
    })
}

fn block_stats(ctx: &Ctx, inv: &Invocation, device: &str, out: &mut String) -> Result<(), VmError> {
    let (def, active) = active_of(ctx, inv)?;
    let all = counters(&active)?;
    let total = if device.is_empty() {
        let mut sum = DiskCounters::default();
        for c in all.values() {
            sum.read_ops += c.read_ops;
            sum.read_bytes += c.read_bytes;
            sum.write_ops += c.write_ops;
            sum.write_bytes += c.write_bytes;
            sum.flush_ops += c.flush_ops;
            sum.read_time_ns += c.read_time_ns;
            sum.write_time_ns += c.write_time_ns;
            sum.flush_time_ns += c.flush_time_ns;
        }
        sum
    } else {
        let disk = def
            .disk(device)
            .ok_or_else(|| VmError::InvalidArgument(format!("invalid path: {device}")))?;
        all.get(&disk.target_dev).copied().unwrap_or_default()
    };
    let human = inv.flag("human");
    let shown_device = if human {
        out.push_str(&format!("Device: {device}\n"));
        ""
    } else {
        device
    };
    let lines = [
        ("rd_req", "number of read operations:", total.read_ops),
        ("rd_bytes", "number of bytes read:", total.read_bytes),
        ("wr_req", "number of write operations:", total.write_ops),
        ("wr_bytes", "number of bytes written:", total.write_bytes),
        (
            "flush_operations",
            "number of flush operations:",
            total.flush_ops,
        ),
        (
            "rd_total_times",
            "total duration of reads (ns):",
            total.read_time_ns,
        ),
        (
            "wr_total_times",
            "total duration of writes (ns):",
            total.write_time_ns,
        ),
        (
            "flush_total_times",
            "total duration of flushes (ns):",
            total.flush_time_ns,
        ),
    ];
    for (legacy, explained, value) in lines {
        if human {
            out.push_str(&format!("{shown_device} {explained:<31} {value}\n"));
        } else {
            out.push_str(&format!("{shown_device} {legacy} {value}\n"));
        }
    }
    Ok(())
}

/// The host CPUs a thread may run on, as virsh's `yyy-` map over the
/// host's CPUs.
fn affinity_map(pid: i32, tid: Option<i32>, host_cpus: usize) -> Vec<bool> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let allowed: Option<Vec<bool>> = std::fs::read_to_string(path).ok().and_then(|status| {
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
            .trim()
            .to_string();
        let mut map = vec![false; host_cpus];
        for part in list.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
                None => {
                    let n = part.parse::<usize>().ok()?;
                    (n, n)
                }
            };
            let end = b.min(host_cpus.saturating_sub(1));
            if a <= end {
                map[a..=end].iter_mut().for_each(|allowed| *allowed = true);
            }
        }
        Some(map)
    });
    allowed.unwrap_or_else(|| vec![true; host_cpus])
}

/// An affinity as virsh prints it: `yy-y`, or with `--pretty` the CPU
/// list and the host's count, `0-1,3 (out of 4)`.
fn affinity_text(map: &[bool], pretty: bool) -> String {
    if !pretty {
        return map.iter().map(|&y| if y { 'y' } else { '-' }).collect();
    }
    let mut ranges = Vec::new();
    let mut cpu = 0;
    while cpu < map.len() {
        if !map[cpu] {
            cpu += 1;
            continue;
        }
        let first = cpu;
        while cpu + 1 < map.len() && map[cpu + 1] {
            cpu += 1;
        }
        ranges.push(if first == cpu {
            first.to_string()
        } else {
            format!("{first}-{cpu}")
        });
        cpu += 1;
    }
    format!("{} (out of {})", ranges.join(","), map.len())
}

/// The number of host CPUs (online or not), as the affinity map's width.
fn host_cpus() -> usize {
    (0..4096)
        .take_while(|n| std::path::Path::new(&format!("/sys/devices/system/cpu/cpu{n}")).exists())
        .count()
        .max(1)
}

/// `vcpuinfo DOMAIN`.
pub fn vcpuinfo(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let cpus = host_cpus();
    let pretty = inv.flag("pretty");
    // virsh puts an empty line between two vCPUs' blocks.
    let separate = |out: &mut String| {
        if !out.is_empty() {
            out.push('\n');
        }
    };
    match status.active() {
        Some(active) => {
            let pid = active.process.pid;
            let tids = thread_ids(pid);
            for thread in procfs::vcpu_threads(pid) {
                let tid = tids
                    .iter()
                    .find(|(i, _)| *i == thread.index)
                    .map(|(_, t)| *t);
                separate(out);
                out.push_str(&field("VCPU:", thread.index));
                out.push_str(&field("CPU:", thread.stat.processor));
                out.push_str(&field("State:", "running"));
                let ns = (thread.stat.utime + thread.stat.stime) * procfs::ns_per_tick();
                out.push_str(&field("CPU time:", format::cpu_seconds(ns)));
                let map = affinity_map(pid, tid, cpus);
                out.push_str(&field("CPU Affinity:", affinity_text(&map, pretty)));
            }
        }
        None => {
            for index in 0..def.vcpus_current {
                separate(out);
                out.push_str(&field("VCPU:", index));
                out.push_str(&field("CPU:", "N/A"));
                out.push_str(&field("State:", "N/A"));
                out.push_str(&field("CPU time", "N/A"));
                let map = vec![true; cpus];
                out.push_str(&field("CPU Affinity:", affinity_text(&map, pretty)));
            }
        }
    }
    Ok(())
}

/// (vCPU index, thread id) of the VMM's vCPU threads.
fn thread_ids(pid: i32) -> Vec<(u32, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .take(4096)
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let index = comm.trim().strip_prefix("vcpu")?.parse().ok()?;
            Some((index, tid))
        })
        .collect()
}

/// `dommemstat DOMAIN`: without a balloon device, what libvirt's qemu
/// driver reports: the guest's memory and the VMM's resident size.
pub fn dommemstat(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let Some(active) = status.active() else {
        return Err(VmError::Refused(format!(
            "Failed to get memory statistics for domain {}\nerror: {}",
            def.name,
            VmError::NotRunning
        )));
    };
    out.push_str(&format!("actual {}\n", used_memory_kib(&def, &status)));
    if let Some(rss) = procfs::rss_kib(active.process.pid) {
        out.push_str(&format!("rss {rss}\n"));
    }
    Ok(())
}
