//! What a domain is and has: `list`, `dominfo`, `domstate`, `domid`,
//! `domname`, `domuuid`, `domblklist`, `domblkinfo`, `vcpucount` and
//! `nodeinfo`, laid out as virsh lays them out.

use super::{disk_sizes, lookup, Ctx, DiskSizes};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::{self, field, state, state_name};
use crate::vm::runtime::{self, procfs, Status, QUERY_TIMEOUT};
use crate::vm::store::Store;
use crate::vm::xml::DomainDef;

/// Inspects every domain at once (one thread each), so one hung VMM costs
/// the whole command at most [`QUERY_TIMEOUT`]; each VMM that did not
/// answer is named in a warning line.
pub fn inspect_all(store: &Store, defs: &[DomainDef]) -> Vec<Status> {
    let statuses: Vec<Status> = std::thread::scope(|scope| {
        let handles: Vec<_> = defs
            .iter()
            .map(|def| scope.spawn(|| runtime::inspect(store, &def.name, QUERY_TIMEOUT, None)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Status::Inactive { reason: 0 }))
            .collect()
    });
    for (def, status) in defs.iter().zip(&statuses) {
        // A VMM whose socket is not there yet is being started by another
        // `vm start` (state paused, starting up), not hung.
        let silent = status
            .active()
            .filter(|a| a.info.is_none() && a.run.api_socket().exists());
        if let Some(active) = silent {
            eprintln!(
                "warning: {}",
                VmError::NoAnswer {
                    name: def.name.to_string(),
                    pid: active.process.pid,
                    millis: QUERY_TIMEOUT.as_millis(),
                }
            );
        }
    }
    statuses
}

/// Domains and statuses in virsh's order: active ones by id, then
/// inactive ones by name (case-insensitive).
pub fn sorted(mut entries: Vec<(DomainDef, Status)>) -> Vec<(DomainDef, Status)> {
    entries.sort_by(|(a, sa), (b, sb)| match (sa.active(), sb.active()) {
        (Some(x), Some(y)) => x.id.cmp(&y.id),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a
            .name
            .as_str()
            .to_lowercase()
            .cmp(&b.name.as_str().to_lowercase()),
    });
    entries
}

/// `list [--all] [--inactive] [--name] [--uuid] [--id] [--state-*]`.
pub fn list(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let defs = ctx.store.definitions()?;
    let statuses = inspect_all(&ctx.store, &defs);
    let (want_active, want_inactive) = if inv.flag("all") {
        (true, true)
    } else if inv.flag("inactive") || inv.flag("state-shutoff") {
        (false, true)
    } else {
        (true, false)
    };
    let state_filters = [
        ("state-running", state::RUNNING),
        ("state-paused", state::PAUSED),
        ("state-shutoff", state::SHUTOFF),
    ];
    let any_state_filter =
        state_filters.iter().any(|(f, _)| inv.flag(f)) || inv.flag("state-other");
    let entries: Vec<_> = defs
        .into_iter()
        .zip(statuses)
        .filter(|(def, status)| {
            let active = status.active().is_some();
            let persistent = ctx.store.is_persistent(&def.name);
            // A transient domain that stopped is gone.
            if !active && !persistent {
                return false;
            }
            if !((active && want_active) || (!active && want_inactive)) {
                return false;
            }
            let (only_persistent, only_transient) = (inv.flag("persistent"), inv.flag("transient"));
            if only_persistent != only_transient && persistent != only_persistent {
                return false;
            }
            if !any_state_filter {
                return true;
            }
            let (s, _) = status.state();
            state_filters.iter().any(|(f, st)| inv.flag(f) && s == *st)
                || (inv.flag("state-other")
                    && ![state::RUNNING, state::PAUSED, state::SHUTOFF].contains(&s))
        })
        .collect();
    let entries = sorted(entries);
    let id_text = |status: &Status| match status.active() {
        Some(a) => a.id.to_string(),
        None => "-".to_string(),
    };
    let (by_uuid, by_name, by_id) = (inv.flag("uuid"), inv.flag("name"), inv.flag("id"));
    if inv.flag("table") && (by_uuid || by_name || by_id) {
        let other = if by_name {
            "name"
        } else if by_uuid {
            "uuid"
        } else {
            "id"
        };
        return Err(VmError::Refused(format!(
            "Options --table and --{other} are mutually exclusive"
        )));
    }
    if !(by_uuid || by_name || by_id) {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|(def, status)| {
                vec![
                    id_text(status),
                    def.name.to_string(),
                    state_name(status.state().0).to_string(),
                ]
            })
            .collect();
        out.push_str(&format::table(&["Id", "Name", "State"], &rows, ctx.quiet));
        return Ok(());
    }
    for (def, status) in &entries {
        let mut parts = Vec::new();
        if by_uuid {
            parts.push(def.uuid.to_string());
        }
        if by_id {
            if status.active().is_none() && !by_uuid && !by_name {
                continue;
            }
            parts.push(id_text(status));
        }
        if by_name {
            parts.push(def.name.to_string());
        }
        out.push_str(&parts.join(" "));
        out.push('\n');
    }
    Ok(())
}

/// `dominfo DOMAIN`.
pub fn dominfo(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let active = status.active();
    out.push_str(&field(
        "Id:",
        active.map_or("-".to_string(), |a| a.id.to_string()),
    ));
    out.push_str(&field("Name:", &def.name));
    out.push_str(&field("UUID:", def.uuid));
    out.push_str(&field("OS Type:", &def.os.os_type));
    out.push_str(&field("State:", state_name(status.state().0)));
    out.push_str(&field("CPU(s):", def.vcpus_current));
    if let Some(stat) = active.and_then(|a| procfs::stat(a.process.pid)) {
        let ns = (stat.utime + stat.stime) * procfs::ns_per_tick();
        if ns != 0 {
            out.push_str(&field("CPU time:", format::cpu_seconds(ns)));
        }
    }
    out.push_str(&field("Max memory:", format!("{} KiB", def.memory_kib)));
    out.push_str(&field(
        "Used memory:",
        format!("{} KiB", used_memory_kib(&def, &status)),
    ));
    let persistent = if ctx.store.is_persistent(&def.name) {
        "yes"
    } else {
        "no"
    };
    out.push_str(&field("Persistent:", persistent));
    out.push_str(&field("Autostart:", "disable"));
    out.push_str(&field("Managed save:", "no"));
    Ok(())
}

/// The memory a domain uses, in KiB: what its VMM reports while it runs,
/// else currentMemory.
pub fn used_memory_kib(def: &DomainDef, status: &Status) -> u64 {
    status
        .active()
        .and_then(|a| a.info.as_ref())
        .and_then(|i| i.memory_actual_size.or(Some(i.config.memory.size)))
        .map_or(def.current_memory_kib, |bytes| bytes / 1024)
}

/// `domstate DOMAIN [--reason]`.
pub fn domstate(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None);
    let (s, r) = status.state();
    if inv.flag("reason") {
        out.push_str(&format!(
            "{} ({})\n",
            state_name(s),
            format::reason_name(s, r)
        ));
    } else {
        out.push_str(&format!("{}\n", state_name(s)));
    }
    Ok(())
}

/// `domid DOMAIN`.
pub fn domid(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    match super::active_id(&ctx.store, &def) {
        Some(id) => out.push_str(&format!("{id}\n")),
        None => out.push_str("-\n"),
    }
    Ok(())
}

/// `domname DOMAIN` (by id or uuid).
pub fn domname(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    // virsh looks the domain up by id or uuid only here.
    let by = super::By {
        name: false,
        ..super::By::ALL
    };
    let def = super::lookup_by(ctx, inv.required("domain"), by)?;
    out.push_str(&format!("{}\n", def.name));
    Ok(())
}

/// `domuuid DOMAIN`.
pub fn domuuid(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    // virsh looks the domain up by id or name only here.
    let by = super::By {
        uuid: false,
        ..super::By::ALL
    };
    let def = super::lookup_by(ctx, inv.required("domain"), by)?;
    out.push_str(&format!("{}\n", def.uuid));
    Ok(())
}

/// `domblklist DOMAIN [--details]`.
pub fn domblklist(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let details = inv.flag("details");
    let rows: Vec<Vec<String>> = def
        .disks
        .iter()
        .map(|d| {
            let source = d.source.clone().unwrap_or_else(|| "-".to_string());
            if details {
                vec![
                    d.disk_type.clone(),
                    d.device.clone(),
                    d.target_dev.clone(),
                    source,
                ]
            } else {
                vec![d.target_dev.clone(), source]
            }
        })
        .collect();
    let headers: &[&str] = if details {
        &["Type", "Device", "Target", "Source"]
    } else {
        &["Target", "Source"]
    };
    out.push_str(&format::table(headers, &rows, ctx.quiet));
    Ok(())
}

fn sizes_cells(sizes: DiskSizes, human: bool) -> [String; 3] {
    let show = |v: u64| {
        if human {
            format::pretty_capacity(v)
        } else {
            v.to_string()
        }
    };
    if sizes == DiskSizes::default() {
        return ["-".to_string(), "-".to_string(), "-".to_string()];
    }
    [
        show(sizes.capacity),
        show(sizes.allocation),
        show(sizes.physical),
    ]
}

fn sizes_of(def: &DomainDef, dev: &str) -> Result<DiskSizes, VmError> {
    let disk = def.disk(dev).ok_or_else(|| {
        VmError::InvalidArgument(format!("invalid path {dev} not assigned to domain"))
    })?;
    match &disk.source {
        None => Ok(DiskSizes::default()),
        Some(path) => disk_sizes(path).map_err(|e| {
            VmError::Refused(format!(
                "cannot stat file '{path}': {}",
                super::define::os_reason(&e)
            ))
        }),
    }
}

/// `domblkinfo DOMAIN DEVICE [--human]` or `--all`.
pub fn domblkinfo(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    if inv.flag("all") && inv.value("device").is_some() {
        return Err(VmError::Refused(
            "Options --all and --device are mutually exclusive".to_string(),
        ));
    }
    let def = lookup(ctx, inv.required("domain"))?;
    let human = inv.flag("human");
    if inv.flag("all") {
        let mut rows = Vec::new();
        for disk in &def.disks {
            let [c, a, p] = sizes_cells(sizes_of(&def, &disk.target_dev)?, human);
            rows.push(vec![disk.target_dev.clone(), c, a, p]);
        }
        out.push_str(&format::table(
            &["Target", "Capacity", "Allocation", "Physical"],
            &rows,
            ctx.quiet,
        ));
        return Ok(());
    }
    let Some(dev) = inv.value("device") else {
        return Err(VmError::Refused(
            "command 'domblkinfo' requires <device> option".to_string(),
        ));
    };
    let [c, a, p] = sizes_cells(sizes_of(&def, dev)?, human);
    out.push_str(&field("Capacity:", c));
    out.push_str(&field("Allocation:", a));
    out.push_str(&field("Physical:", p));
    Ok(())
}

/// `vcpucount DOMAIN [--maximum] [--active] [--live] [--config] [--current]`.
pub fn vcpucount(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let active = super::active_id(&ctx.store, &def).is_some();
    let live = inv.flag("live");
    if live && !active {
        return Err(VmError::NotRunning);
    }
    let filtered = ["maximum", "active", "live", "config", "current"]
        .iter()
        .any(|f| inv.flag(f));
    if filtered {
        let count = if inv.flag("maximum") {
            def.vcpus
        } else {
            def.vcpus_current
        };
        out.push_str(&format!("{count}\n"));
        return Ok(());
    }
    let line = |kind: &str, scope: &str, n: u32| format!("{kind:<12} {scope:<12} {n:3}\n");
    out.push_str(&line("maximum", "config", def.vcpus));
    if active {
        out.push_str(&line("maximum", "live", def.vcpus));
    }
    out.push_str(&line("current", "config", def.vcpus_current));
    if active {
        out.push_str(&line("current", "live", def.vcpus_current));
    }
    Ok(())
}

/// The host's CPU topology as libvirt's virHostCPUGetInfo reads it.
/// (online CPUs, MHz, sockets per NUMA cell, cores per socket, threads
/// per core, NUMA cells).
fn host_topology() -> (u32, u32, u32, u32, u32, u32) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|v| {
            v.trim_start_matches([' ', '\t', ':'])
                .split('.')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let mut online = 0u32;
    let mut sockets = std::collections::BTreeSet::new();
    let mut cores = std::collections::BTreeSet::new();
    for cpu in 0..4096u32 {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}");
        if !std::path::Path::new(&base).exists() {
            break;
        }
        let is_online = std::fs::read_to_string(format!("{base}/online"))
            .map(|s| s.trim() == "1")
            .unwrap_or(true);
        if !is_online {
            continue;
        }
        online += 1;
        let read = |f: &str| {
            std::fs::read_to_string(format!("{base}/topology/{f}"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };
        let package = read("physical_package_id");
        sockets.insert(package);
        cores.insert((package, read("core_id")));
    }
    let nodes = (0..1024)
        .take_while(|n| std::path::Path::new(&format!("/sys/devices/system/node/node{n}")).exists())
        .count()
        .max(1) as u32;
    let online = online.max(1);
    let socket_count = (sockets.len() as u32).max(1);
    let cores_per_socket = ((cores.len() as u32) / socket_count).max(1);
    let threads = (online / (socket_count * cores_per_socket)).max(1);
    let sockets_per_node = (socket_count / nodes).max(1);
    (
        online,
        mhz,
        sockets_per_node,
        cores_per_socket,
        threads,
        nodes,
    )
}

/// `nodeinfo`.
pub fn nodeinfo(_ctx: &Ctx, _inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (cpus, mhz, sockets, cores, threads, nodes) = host_topology();
    let line = |label: &str, value: String| format!("{label:<20} {value}\n");
    out.push_str(&line("CPU model:", std::env::consts::ARCH.to_string()));
    out.push_str(&line("CPU(s):", cpus.to_string()));
    out.push_str(&line("CPU frequency:", format!("{mhz} MHz")));
    out.push_str(&line("CPU socket(s):", sockets.to_string()));
    out.push_str(&line("Core(s) per socket:", cores.to_string()));
    out.push_str(&line("Thread(s) per core:", threads.to_string()));
    out.push_str(&line("NUMA cell(s):", nodes.to_string()));
    out.push_str(&line(
        "Memory size:",
        format!("{} KiB", procfs::host_memory_kib().unwrap_or(0)),
    ));
    Ok(())
}
