//! Snapshots, as virsh's snapshot commands: `snapshot-create-as`,
//! `snapshot-list`, `snapshot-info`, `snapshot-current`, `snapshot-revert`
//! and `snapshot-delete`.
//!
//! A snapshot of a running or paused domain is a full one, taken by its
//! VMM (vm.snapshot with `qcow2:NAME`): an internal qcow2 snapshot of every
//! writable qcow2 disk and the VM state in the first disk. A snapshot of a
//! shut-off domain is an internal snapshot of its disks, taken here through
//! the qcow library. What virsh keeps beside them (description, parent,
//! current, the domain's state, the creation time) is in the store, in
//! `snapshots/DOMAIN.json`, written atomically after the images.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{lifecycle, lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::{self, reason, state};
use crate::vm::phases::PhaseLog;
use crate::vm::runtime::{self, procfs, Active, Status, QUERY_TIMEOUT};
use crate::vm::store::{read_bounded, write_atomically, DomainLock, Store};
use crate::vm::xml::{DiskFormat, DomainDef, DomainName};

/// How long a snapshot or revert call to a VMM may take (RAM is written
/// to or read from the image).
pub(super) const STATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a halted domain's VMM may take to end.
const HALT_WAIT: Duration = Duration::from_secs(10);
/// Most snapshots kept per domain.
const MAX_SNAPSHOTS: usize = 4096;
/// libvirt's VIR_DOMAIN_RUNNING_FROM_SNAPSHOT.
pub(super) const RUNNING_FROM_SNAPSHOT: u32 = 4;
/// libvirt's VIR_DOMAIN_PAUSED_FROM_SNAPSHOT.
pub(super) const PAUSED_FROM_SNAPSHOT: u32 = 7;
/// libvirt's VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT.
const SHUTOFF_FROM_SNAPSHOT: u32 = 7;

/// One snapshot as virsh knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Its name (the images' snapshot name too).
    pub name: String,
    /// The description given at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The snapshot that was current when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The domain's state then: `running`, `paused` or `shutoff`.
    pub state: String,
    /// Seconds since the epoch.
    pub creation_time: i64,
}

/// A domain's snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSet {
    /// The current snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// By name.
    #[serde(default)]
    pub snapshots: BTreeMap<String, SnapshotMeta>,
}

fn set_path(store: &Store, name: &DomainName) -> std::path::PathBuf {
    store
        .dir()
        .join("snapshots")
        .join(format!("{}.json", name.as_str()))
}

/// Reads a domain's snapshots (none if it has no file).
pub fn read_set(store: &Store, name: &DomainName) -> Result<SnapshotSet, VmError> {
    let path = set_path(store, name);
    if !path.exists() {
        return Ok(SnapshotSet::default());
    }
    let bytes = read_bounded(&path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| VmError::Internal(format!("{}: {e}", path.display())))
}

/// Removes a domain's snapshot metadata (`undefine --snapshots-metadata`).
pub fn remove_set(store: &Store, name: &DomainName) -> Result<(), VmError> {
    let path = set_path(store, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmError::Internal(format!(
            "removing {}: {e}",
            path.display()
        ))),
    }
}

fn write_set(store: &Store, name: &DomainName, set: &SnapshotSet) -> Result<(), VmError> {
    let path = set_path(store, name);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .map_err(|e| VmError::Internal(format!("{}: {e}", folder.display())))?;
    }
    let bytes = serde_json::to_vec_pretty(set).map_err(|e| VmError::Internal(e.to_string()))?;
    Ok(write_atomically(&path, &bytes)?)
}

pub(super) fn not_found(name: &str) -> VmError {
    VmError::Refused(format!(
        "Domain snapshot not found: no domain snapshot with matching name '{name}'"
    ))
}

/// The snapshot an invocation names (`snapshotname`, or `--current`).
fn chosen<'a>(
    inv: &'a Invocation,
    set: &'a SnapshotSet,
    def: &DomainDef,
) -> Result<&'a SnapshotMeta, VmError> {
    let name = match (inv.value("snapshotname"), inv.flag("current")) {
        (Some(name), _) => name,
        (None, true) => set.current.as_deref().ok_or_else(|| {
            VmError::Refused(format!(
                "domain '{}' has no current snapshot",
                def.name.as_str()
            ))
        })?,
        (None, false) => {
            return Err(VmError::Refused(
                "--snapshotname or --current is required".into(),
            ))
        }
    };
    set.snapshots.get(name).ok_or_else(|| not_found(name))
}

/// The writable qcow2 disks of a definition (the ones snapshots cover),
/// refusing a writable disk of another format.
pub(super) fn snapshot_disks(def: &DomainDef) -> Result<Vec<String>, VmError> {
    let mut paths = Vec::new();
    for disk in def.disks.iter().filter(|d| !d.is_readonly()) {
        let source = disk.source.clone().unwrap_or_default();
        let qcow2 = match &disk.format {
            Some(DiskFormat::Qcow2) => true,
            Some(_) => false,
            None => qcow::fs::open_storage(Path::new(&source), false)
                .and_then(|s| qcow::fs::probe(&*s, Path::new(&source)))
                .is_ok_and(|f| f == qcow::fs::Format::Qcow2),
        };
        if !qcow2 {
            return Err(VmError::Unsupported(format!(
                "internal snapshots need qcow2 disks: '{}' is not one",
                disk.target_dev
            )));
        }
        paths.push(source);
    }
    Ok(paths)
}

fn open_image(path: &str) -> Result<qcow::image::Qcow2, VmError> {
    let p = Path::new(path);
    let storage = qcow::fs::open_storage(p, true)
        .map_err(|e| VmError::OperationFailed(format!("'{path}': {e}")))?;
    qcow::image::Qcow2::open(storage, true, &qcow::fs::FileOpener::for_image(p))
        .map_err(|e| VmError::OperationFailed(format!("'{path}': {e}")))
}

/// Runs `op` on every writable qcow2 disk of a shut-off domain.
fn each_image(
    def: &DomainDef,
    op: &dyn Fn(&qcow::image::Qcow2) -> qcow::Result<()>,
) -> Result<(), VmError> {
    for path in snapshot_disks(def)? {
        let image = open_image(&path)?;
        op(&image).map_err(|e| VmError::OperationFailed(format!("'{path}': {e}")))?;
        image
            .close()
            .map_err(|e| VmError::OperationFailed(format!("'{path}': {e}")))?;
    }
    Ok(())
}

fn api_err(e: vmapi::Error) -> VmError {
    match e {
        vmapi::Error::Status { message, .. } => VmError::OperationFailed(message),
        other => VmError::OperationFailed(other.to_string()),
    }
}

/// Stops an active domain's VMM (vmm.shutdown: its disks are flushed and
/// closed clean), recording `shutoff_reason`.
fn halt(ctx: &Ctx, def: &DomainDef, active: &Active, shutoff_reason: u32) -> Result<(), VmError> {
    active
        .client(STATE_TIMEOUT)
        .vmm_shutdown()
        .map_err(api_err)?;
    if !procfs::wait_gone(active.process, HALT_WAIT) {
        return Err(VmError::OperationFailed(format!(
            "vmm pid {} did not end",
            active.process.pid
        )));
    }
    active.run.clean();
    ctx.store.set_shutoff_reason(&def.name, shutoff_reason)?;
    Ok(())
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn domain_and_lock(
    ctx: &Ctx,
    inv: &Invocation,
) -> Result<(DomainDef, DomainLock, Status), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock));
    Ok((def, lock, status))
}

/// `snapshot-create-as DOMAIN [NAME] [DESCRIPTION] [--disk-only] [--halt]`.
pub fn create_as(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, status) = domain_and_lock(ctx, inv)?;
    let mut set = read_set(&ctx.store, &def.name)?;
    let created = now_seconds();
    let name = inv
        .value("name")
        .map_or_else(|| created.to_string(), str::to_string);
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(VmError::InvalidArgument(format!(
            "invalid snapshot name '{}'",
            name.escape_default()
        )));
    }
    if set.snapshots.contains_key(&name) {
        return Err(VmError::OperationFailed(format!(
            "domain moment {name} already exists"
        )));
    }
    if set.snapshots.len() >= MAX_SNAPSHOTS {
        return Err(VmError::OperationFailed(format!(
            "domain has {MAX_SNAPSHOTS} snapshots, the most kept"
        )));
    }
    let taken_state = match status.active() {
        Some(active) => {
            if inv.flag("disk-only") {
                return Err(VmError::Unsupported(
                    "disk-only snapshots of an active domain are external in libvirt; \
                     this VMM takes internal snapshots with the VM state (omit --disk-only)"
                        .into(),
                ));
            }
            let paused = active.state == state::PAUSED;
            active
                .client(STATE_TIMEOUT)
                .snapshot(&format!("qcow2:{name}"))
                .map_err(api_err)?;
            if inv.flag("halt") {
                halt(ctx, &def, active, SHUTOFF_FROM_SNAPSHOT)?;
            }
            if paused {
                "paused"
            } else {
                "running"
            }
        }
        None => {
            each_image(&def, &|image| image.create_snapshot(&name).map(|_| ()))?;
            "shutoff"
        }
    };
    let parent = set.current.replace(name.clone());
    set.snapshots.insert(
        name.clone(),
        SnapshotMeta {
            name: name.clone(),
            description: inv.value("description").map(str::to_string),
            parent,
            state: taken_state.to_string(),
            creation_time: created,
        },
    );
    write_set(&ctx.store, &def.name, &set)?;
    ctx.extra(out, &format!("Domain snapshot {name} created"));
    Ok(())
}

/// Local time as virsh prints a creation time (`%Y-%m-%d %H:%M:%S %z`).
fn creation_time(seconds: i64) -> String {
    let local = crate::report::localtime::format_local(seconds);
    let utc = crate::report::localtime::format_utc(seconds);
    let offset_minutes = (seconds_of(&local) - seconds_of(&utc)) / 60;
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let minutes = offset_minutes.abs();
    format!("{local} {sign}{:02}{:02}", minutes / 60, minutes % 60)
}

/// Seconds since the epoch of a `YYYY-MM-DD HH:MM:SS` read as UTC.
fn seconds_of(text: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| -> i64 {
        text.get(range).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// `snapshot-list DOMAIN [--parent] [--name]`.
pub fn list(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let set = read_set(&ctx.store, &def.name)?;
    if inv.flag("name") {
        for name in set.snapshots.keys() {
            out.push_str(name);
            out.push('\n');
        }
        return Ok(());
    }
    let parent = inv.flag("parent");
    let mut headers = vec!["Name", "Creation Time", "State"];
    if parent {
        headers.push("Parent");
    }
    let rows: Vec<Vec<String>> = set
        .snapshots
        .values()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                creation_time(s.creation_time),
                s.state.clone(),
            ];
            if parent {
                row.push(s.parent.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    out.push_str(&format::table(&headers, &rows, ctx.quiet));
    Ok(())
}

fn descendants(set: &SnapshotSet, name: &str) -> usize {
    set.snapshots
        .values()
        .filter(|s| s.parent.as_deref() == Some(name))
        .map(|child| 1 + descendants(set, &child.name))
        .sum()
}

/// `snapshot-info DOMAIN [SNAPSHOTNAME] [--current]`.
pub fn info(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let set = read_set(&ctx.store, &def.name)?;
    let s = chosen(inv, &set, &def)?;
    let current = set.current.as_deref() == Some(s.name.as_str());
    let children = set
        .snapshots
        .values()
        .filter(|c| c.parent.as_deref() == Some(s.name.as_str()))
        .count();
    out.push_str(&format::field("Name:", &s.name));
    out.push_str(&format::field("Domain:", def.name.as_str()));
    out.push_str(&format::field(
        "Current:",
        if current { "yes" } else { "no" },
    ));
    out.push_str(&format::field("State:", &s.state));
    out.push_str(&format::field("Location:", "internal"));
    out.push_str(&format::field(
        "Parent:",
        s.parent.as_deref().unwrap_or("-"),
    ));
    out.push_str(&format::field("Children:", children));
    out.push_str(&format::field("Descendants:", descendants(&set, &s.name)));
    out.push_str(&format::field("Metadata:", "yes"));
    Ok(())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The snapshot's XML, as snapshot-current and snapshot-dumpxml print it.
fn snapshot_xml(s: &SnapshotMeta, def: &DomainDef) -> String {
    let mut xml = String::from("<domainsnapshot>\n");
    xml.push_str(&format!("  <name>{}</name>\n", xml_escape(&s.name)));
    if let Some(d) = &s.description {
        xml.push_str(&format!("  <description>{}</description>\n", xml_escape(d)));
    }
    xml.push_str(&format!("  <state>{}</state>\n", s.state));
    if let Some(p) = &s.parent {
        xml.push_str(&format!(
            "  <parent>\n    <name>{}</name>\n  </parent>\n",
            xml_escape(p)
        ));
    }
    xml.push_str(&format!(
        "  <creationTime>{}</creationTime>\n",
        s.creation_time
    ));
    let memory = if s.state == "shutoff" {
        "no"
    } else {
        "internal"
    };
    xml.push_str(&format!("  <memory snapshot='{memory}'/>\n  <disks>\n"));
    for disk in &def.disks {
        let kind = if disk.is_readonly() { "no" } else { "internal" };
        xml.push_str(&format!(
            "    <disk name='{}' snapshot='{kind}'/>\n",
            xml_escape(&disk.target_dev)
        ));
    }
    xml.push_str("  </disks>\n");
    for line in def.to_xml().lines() {
        xml.push_str("  ");
        xml.push_str(line);
        xml.push('\n');
    }
    xml.push_str("</domainsnapshot>\n");
    xml
}

/// `snapshot-current DOMAIN [--name] [SNAPSHOTNAME]`: shows the current
/// snapshot, or makes SNAPSHOTNAME current.
pub fn current(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    if let Some(name) = inv.value("snapshotname") {
        let _lock = ctx.store.lock(&def.name)?;
        let mut set = read_set(&ctx.store, &def.name)?;
        if !set.snapshots.contains_key(name) {
            return Err(not_found(name));
        }
        set.current = Some(name.to_string());
        write_set(&ctx.store, &def.name, &set)?;
        ctx.extra(out, &format!("Snapshot {name} set as current"));
        return Ok(());
    }
    let set = read_set(&ctx.store, &def.name)?;
    let s = set
        .current
        .as_deref()
        .and_then(|c| set.snapshots.get(c))
        .ok_or_else(|| {
            VmError::Refused(format!(
                "domain '{}' has no current snapshot",
                def.name.as_str()
            ))
        })?;
    if inv.flag("name") {
        // virsh prints the bare name: its only newline is the one after
        // every command.
        out.push_str(&s.name);
    } else {
        out.push_str(&snapshot_xml(s, &def));
    }
    Ok(())
}

/// `snapshot-revert DOMAIN [SNAPSHOTNAME] [--current] [--running]
/// [--paused]`.
pub fn revert(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut phases = PhaseLog::new("snapshot-revert");
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    phases.lap("lookup");
    // Whether a VMM runs is all a revert needs to know (no vm.info round
    // trip): its vm.restore answers for the VM's state itself.
    let status = runtime::inspect_recorded(&ctx.store, &def.name, Some(&lock));
    let mut set = read_set(&ctx.store, &def.name)?;
    let s = chosen(inv, &set, &def)?.clone();
    phases.lap("status");
    if inv.flag("running") && inv.flag("paused") {
        return Err(VmError::Refused(format!(
            "Failed to revert snapshot {}\nerror: Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' \
             and 'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive",
            s.name
        )));
    }
    let run_after = inv.flag("running") || (s.state == "running" && !inv.flag("paused"));
    let full = s.state != "shutoff";
    let url = format!("qcow2:{}", s.name);
    match (full, status.active()) {
        (true, Some(active)) => {
            // One request: vm.restore runs the guest too (CH's `resume`).
            let client = active.client(STATE_TIMEOUT);
            client.restore_then(&url, run_after).map_err(api_err)?;
            phases.lap("vm.restore");
            if run_after {
                active.run.set_reason(state::RUNNING, RUNNING_FROM_SNAPSHOT);
            } else {
                active.run.set_reason(state::PAUSED, PAUSED_FROM_SNAPSHOT);
            }
        }
        (true, None) => {
            lifecycle::launch_with(&def, ctx, &|client| {
                client.restore_then(&url, run_after)?;
                Ok(if run_after {
                    (state::RUNNING, RUNNING_FROM_SNAPSHOT)
                } else {
                    (state::PAUSED, PAUSED_FROM_SNAPSHOT)
                })
            })?;
            phases.lap("vmm started and vm.restore");
        }
        (false, active) => {
            if let Some(active) = active {
                halt(ctx, &def, active, SHUTOFF_FROM_SNAPSHOT)?;
            }
            each_image(&def, &|image| image.apply_snapshot(&s.name))?;
            ctx.store
                .set_shutoff_reason(&def.name, SHUTOFF_FROM_SNAPSHOT)?;
            if inv.flag("running") || inv.flag("paused") {
                let paused = inv.flag("paused");
                lifecycle::launch_with(&def, ctx, &|client| {
                    client.boot(paused)?;
                    Ok(if paused {
                        (state::PAUSED, PAUSED_FROM_SNAPSHOT)
                    } else {
                        (state::RUNNING, reason::RUNNING_BOOTED)
                    })
                })?;
            }
        }
    }
    // The set is written (and synced) only when the current snapshot
    // changes: a revert to the current one changes nothing in it.
    if set.current.as_deref() != Some(s.name.as_str()) {
        set.current = Some(s.name.clone());
        write_set(&ctx.store, &def.name, &set)?;
    }
    phases.lap("store");
    phases.report();
    ctx.extra(out, &format!("Domain snapshot {} reverted\n", s.name));
    Ok(())
}

/// `snapshot-delete DOMAIN [SNAPSHOTNAME] [--current]`: its children
/// take its parent, as libvirt does.
pub fn delete(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, status) = domain_and_lock(ctx, inv)?;
    let mut set = read_set(&ctx.store, &def.name)?;
    let s = chosen(inv, &set, &def)?.clone();
    match status.active() {
        Some(active) => match active.client(STATE_TIMEOUT).snapshot_delete(&s.name) {
            Ok(()) => {}
            // Already gone from the images (a delete killed before the
            // store was written): forget it.
            Err(vmapi::Error::Status { message, .. }) if message.contains("no disk has") => {}
            Err(e) => return Err(api_err(e)),
        },
        None => each_image(&def, &|image| match image.delete_snapshot(&s.name) {
            Err(qcow::Error::SnapshotNotFound { .. }) => Ok(()),
            other => other,
        })?,
    }
    set.snapshots.remove(&s.name);
    for child in set.snapshots.values_mut() {
        if child.parent.as_deref() == Some(s.name.as_str()) {
            child.parent = s.parent.clone();
        }
    }
    if set.current.as_deref() == Some(s.name.as_str()) {
        set.current = s.parent.clone();
    }
    write_set(&ctx.store, &def.name, &set)?;
    ctx.extra(out, &format!("Domain snapshot {} deleted\n", s.name));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_time_is_local_with_its_offset() {
        // The offset is whatever the local zone says; the text is local.
        let text = creation_time(1_796_576_614);
        assert_eq!(text.len(), "2026-12-06 17:03:34 +0000".len(), "{text}");
        assert_eq!(seconds_of("1970-01-01 00:00:00"), 0);
        assert_eq!(seconds_of("2026-12-06 17:03:34"), 1_796_576_614);
        assert_eq!(seconds_of("2000-03-01 00:00:00"), 951_868_800);
    }

    #[test]
    fn descendants_count_the_whole_subtree() {
        let mut set = SnapshotSet::default();
        for (name, parent) in [
            ("a", None),
            ("b", Some("a")),
            ("c", Some("b")),
            ("d", Some("a")),
        ] {
            set.snapshots.insert(
                name.into(),
                SnapshotMeta {
                    name: name.into(),
                    description: None,
                    parent: parent.map(String::from),
                    state: "running".into(),
                    creation_time: 0,
                },
            );
        }
        assert_eq!(descendants(&set, "a"), 3);
        assert_eq!(descendants(&set, "b"), 1);
        assert_eq!(descendants(&set, "c"), 0);
    }
}
