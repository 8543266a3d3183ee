//! Live migration in virsh's words: `migrate DOMAIN DEST_URI [--live]
//! [--copy-storage-all | --copy-storage-inc] [--suspend] [--timeout S]
//! [--downtime-ms N]` on the source and
//! `migrate-listen URI` on the destination, the URI being `unix:PATH` or
//! `tcp:HOST:PORT` (the destination VMM's listener).
//!
//! `migrate` asks the domain's VMM (vm.send-migration) to move the guest;
//! with `--copy-storage-all` its disks go too, each created at the
//! destination under the same path as a standalone image holding the
//! whole chain's contents; with `--copy-storage-inc` only the top image
//! goes, created with the same backing file, which must be there already
//! (libvirt's two modes).
//! the domain's XML travels with it (the request's annotation). Once the
//! guest runs at the destination the VMM here ends and the domain stays
//! defined here, shut off (migrated), as libvirt leaves it.
//!
//! `migrate-listen URI [--xml FILE]` starts a VMM with no VM in a run
//! folder of its own; with `--xml` (the incoming domain's definition) it
//! first makes a tap on this host's bridge for each `type='bridge'`
//! interface and hands them over (vm.receive-migration's `net_fds`): the
//! source's taps stay there. It has the VMM wait for one migration
//! (vm.receive-migration, binding only the address given), then reads the domain's XML the source sent (bounded
//! and checked as `define` checks a file), defines the domain in this
//! store, moves the run folder to the domain's, and returns once the
//! guest runs here. A failure leaves this store as it was.

use std::time::Duration;

use vmapi::{ConsoleConfig, ConsoleMode, MigrationUrl, VmSendMigrationData};

use super::lifecycle::{api_failure, spawn_vmm, wait_for_api};
use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::{reason, state};
use crate::vm::runtime::{self, procfs, RunFolder, Status, QUERY_TIMEOUT};
use crate::vm::xml::{parse_domain, DomainName};

/// How long the API call of a migration may take beyond its own timeout.
const CALL_SLACK: Duration = Duration::from_secs(60);
/// The timeout of a migration when `--timeout` is not given (CH's).
const DEFAULT_TIMEOUT_S: u64 = vmapi::migration::DEFAULT_TIMEOUT_S;
/// How long `migrate-listen` waits for its source (the VMM's own bound).
const LISTEN_WAIT: Duration = Duration::from_secs(3600);

fn parse_number(inv: &Invocation, name: &str) -> Result<Option<u64>, VmError> {
    match inv.value(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| {
                VmError::Refused(format!(
                    "Numeric value '{text}' for <{name}> option is malformed or out of range"
                ))
            }),
    }
}

fn parse_url(text: &str) -> Result<MigrationUrl, VmError> {
    MigrationUrl::parse(text).map_err(VmError::InvalidArgument)
}

/// `migrate DOMAIN DEST_URI [--live] [--copy-storage-all |
/// --copy-storage-inc] [--suspend] [--timeout S] [--downtime-ms N]`
/// (`--suspend` leaves the guest paused at the destination). The migration is always live (the guest runs
/// until the last pass), as with Cloud Hypervisor; `--live` is accepted.
pub fn migrate(ctx: &Ctx, inv: &Invocation, _out: &mut String) -> Result<(), VmError> {
    let url = parse_url(inv.required("desturi"))?;
    let timeout_s = parse_number(inv, "timeout")?.unwrap_or(DEFAULT_TIMEOUT_S);
    let downtime_ms =
        parse_number(inv, "downtime-ms")?.unwrap_or(vmapi::migration::DEFAULT_DOWNTIME_MS);
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    let active = match runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock)) {
        Status::Active(active) => active,
        Status::Inactive { .. } => return Err(VmError::NotRunning),
    };
    let mut body = VmSendMigrationData::new(url.to_string());
    body.timeout_s = timeout_s;
    body.downtime_ms = downtime_ms;
    body.copy_storage = inv.flag("copy-storage-all");
    body.copy_storage_incremental = inv.flag("copy-storage-inc");
    body.suspend = inv.flag("suspend");
    if body.copy_storage && body.copy_storage_incremental {
        return Err(VmError::Refused(
            "Options --copy-storage-all and --copy-storage-inc are mutually exclusive".into(),
        ));
    }
    body.annotation = def.to_xml();
    let call = Duration::from_secs(timeout_s).saturating_add(CALL_SLACK);
    active
        .client(QUERY_TIMEOUT)
        .with_io_timeout(call)
        .send_migration(&body)
        .map_err(|e| match e {
            vmapi::Error::Status { message, .. } => VmError::OperationFailed(message),
            other => VmError::from(other),
        })?;
    // The VMM ends once its answer is written: wait for it, then the
    // domain is shut off here (migrated), still defined.
    if !procfs::wait_gone(active.process, Duration::from_secs(10)) {
        return Err(VmError::OperationFailed(format!(
            "the guest runs at the destination, but vmm pid {} did not end",
            active.process.pid
        )));
    }
    active.run.clean();
    ctx.store
        .set_shutoff_reason(&def.name, reason::SHUTOFF_MIGRATED)?;
    drop(lock);
    // virsh's migrate prints nothing on success.
    Ok(())
}

/// The domain definition `--xml FILE` names, checked as `define` checks
/// it.
fn read_expected(file: &str) -> Result<crate::vm::xml::DomainDef, VmError> {
    let bytes =
        crate::vm::store::read_bounded(std::path::Path::new(file)).map_err(|e| match e {
            crate::vm::store::StoreError::Io { source, .. } => VmError::OpenFile {
                path: file.to_string(),
                reason: super::define::os_reason(&source),
            },
            other => other.into(),
        })?;
    let refused = |e: crate::vm::xml::XmlError| {
        VmError::Refused(format!("Failed to read domain from {file}: {e}"))
    };
    let def = parse_domain(&bytes).map_err(refused)?;
    crate::vm::xml::interface::interfaces(&def).map_err(refused)?;
    Ok(def)
}

/// `migrate-listen URI [--xml FILE]`: receive one migration into this
/// store.
pub fn migrate_listen(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let url = parse_url(inv.required("uri"))?;
    let staging_name = DomainName::new(&format!("migrate-incoming-{}", std::process::id()))
        .map_err(|e| VmError::Internal(e.to_string()))?;
    let expected = inv.value("xml").map(read_expected).transpose()?;
    let staging = RunFolder::new(ctx.store.make_run_dir(&staging_name)?);
    staging.clean();
    let mut child = spawn_vmm(&staging)?;
    let result = (|| {
        let client = wait_for_api(&mut child, &staging)?
            .with_io_timeout(LISTEN_WAIT.saturating_add(Duration::from_secs(DEFAULT_TIMEOUT_S)));
        let serial = ConsoleConfig {
            file: Some(staging.console_log()),
            socket: Some(staging.console_socket()),
            mode: ConsoleMode::Socket,
        };
        let (net_fds, taps) = match &expected {
            Some(def) => super::net::restored_bridge_taps(def)?,
            None => (Vec::new(), Vec::new()),
        };
        let fds: Vec<_> = taps.iter().map(std::os::fd::AsFd::as_fd).collect();
        let annotation = client
            .clone()
            .receive_migration_with_fds(&url.to_string(), Some(serial), net_fds, &fds)
            .map_err(|e| match api_failure(e, &staging) {
                VmError::OperationFailed(m) if m.contains("needs this host's tap") => {
                    VmError::OperationFailed(format!(
                        "{m}; give migrate-listen --xml FILE with the domain's definition"
                    ))
                }
                other => other,
            })?;
        drop(taps);
        // A guest paused at the source stays paused here.
        let paused = client
            .with_io_timeout(QUERY_TIMEOUT)
            .info()
            .is_ok_and(|info| info.state == vmapi::VmState::Paused);
        let def = parse_domain(annotation.as_bytes()).map_err(|e| {
            VmError::OperationFailed(format!("the domain XML the source sent: {e}"))
        })?;
        let lock = ctx.store.lock(&def.name)?;
        let defs = ctx.store.definitions()?;
        if let Some(other) = defs
            .iter()
            .find(|d| (d.name == def.name) != (d.uuid == def.uuid))
        {
            return Err(VmError::OperationFailed(format!(
                "domain '{}' is already defined here with uuid {}",
                other.name, other.uuid
            )));
        }
        if let Status::Active(_) =
            runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock))
        {
            return Err(VmError::AlreadyActive);
        }
        ctx.store.write_definition(&def)?;
        // The VMM's run folder becomes the domain's (its sockets keep
        // working: they are found by path).
        let target = ctx.store.run_dir(&def.name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| {
                VmError::Internal(format!("cannot replace {}: {e}", target.display()))
            })?;
        }
        std::fs::rename(staging.dir(), &target).map_err(|e| {
            VmError::Internal(format!(
                "cannot move the run folder to {}: {e}",
                target.display()
            ))
        })?;
        let run = RunFolder::new(target);
        let process = procfs::identify(child.id() as i32)
            .ok_or_else(|| VmError::OperationFailed("the VMM ended".into()))?;
        let id = ctx.store.next_id()?;
        run.record(process, id)
            .map_err(|e| VmError::Internal(format!("cannot write the run folder: {e}")))?;
        if paused {
            run.set_reason(state::PAUSED, reason::PAUSED_MIGRATION);
        } else {
            run.set_reason(state::RUNNING, reason::RUNNING_MIGRATED);
        }
        drop(lock);
        Ok(def)
    })();
    match result {
        Ok(def) => {
            ctx.extra(out, &format!("Domain '{}' migrated here\n", def.name));
            Ok(())
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            staging.clean();
            let _ = std::fs::remove_dir_all(staging.dir());
            Err(e)
        }
    }
}
