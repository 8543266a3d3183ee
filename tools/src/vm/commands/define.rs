//! `define`, `undefine [--remove-all-storage]` and `dumpxml`: the stored
//! definitions. A refused document leaves the store as it was.

use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::runtime::{self, QUERY_TIMEOUT};
use crate::vm::store::{read_bounded, StoreError};
use crate::vm::xml::parse_domain;

/// An OS error's text without Rust's " (os error N)" tail, as strerror
/// prints it.
pub fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// `define FILE`.
pub fn define(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let file = inv.required("file");
    let bytes = match read_bounded(std::path::Path::new(file)) {
        Ok(bytes) => bytes,
        Err(StoreError::Io { source, .. }) => {
            return Err(VmError::OpenFile {
                path: file.to_string(),
                reason: os_reason(&source),
            })
        }
        Err(e) => return Err(e.into()),
    };
    // One line for a refused document: the file and what is wrong.
    let def = parse_domain(&bytes)
        .map_err(|e| VmError::Refused(format!("Failed to define domain from {file}: {e}")))?;
    crate::vm::xml::interface::interfaces(&def)
        .map_err(|e| VmError::Refused(format!("Failed to define domain from {file}: {e}")))?;
    let _lock = ctx.store.lock(&def.name)?;
    let defs = ctx.store.definitions()?;
    if let Some(same_name) = defs.iter().find(|d| d.name == def.name) {
        if same_name.uuid != def.uuid {
            return Err(VmError::UuidClash {
                name: def.name.to_string(),
                uuid: same_name.uuid.to_string(),
            }
            .failed_define(file));
        }
    }
    if let Some(same_uuid) = defs
        .iter()
        .find(|d| d.uuid == def.uuid && d.name != def.name)
    {
        return Err(VmError::OperationFailed(format!(
            "domain '{}' is already defined with uuid {}",
            same_uuid.name, def.uuid
        ))
        .failed_define(file));
    }
    ctx.store.write_definition(&def)?;
    ctx.extra(out, &format!("Domain '{}' defined from {file}\n", def.name));
    Ok(())
}

impl VmError {
    fn failed_define(self, file: &str) -> VmError {
        VmError::Refused(format!(
            "Failed to define domain from {file}\nerror: {self}"
        ))
    }
}

/// `undefine DOMAIN [--remove-all-storage] [--snapshots-metadata]`.
pub fn undefine(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock));
    let remove_storage = inv.flag("remove-all-storage");
    if status.active().is_some() {
        if remove_storage {
            return Err(VmError::Refused(
                "Storage volume deletion is supported only on stopped domains".to_string(),
            ));
        }
        // As libvirt: the running domain stays, transient, until it stops.
        if ctx.store.is_persistent(&def.name) {
            ctx.store.make_transient(&def)?;
        }
        ctx.extra(out, &format!("Domain '{}' has been undefined\n", def.name));
        return Ok(());
    }
    // As libvirt: snapshot metadata keeps a domain defined unless
    // --snapshots-metadata removes it too (the images keep their
    // internal snapshots).
    let snapshots = super::snapshot::read_set(&ctx.store, &def.name)?
        .snapshots
        .len();
    if snapshots > 0 {
        if !inv.flag("snapshots-metadata") {
            return Err(VmError::InvalidOperation(format!(
                "cannot delete inactive domain with {snapshots} snapshots"
            ))
            .failed("undefine", def.name.as_str()));
        }
        super::snapshot::remove_set(&ctx.store, &def.name)?;
    }
    ctx.store.remove_definition(&def.name)?;
    // The kernel and initrd `vm install` copied off an installer disc are
    // the store's own files: they go with the domain.
    let _ = std::fs::remove_dir_all(ctx.store.dir().join("boot").join(def.name.as_str()));
    ctx.extra(out, &format!("Domain '{}' has been undefined\n", def.name));
    if remove_storage {
        // Writable disk images only: read-only disks and cdroms are
        // often shared bases.
        for disk in def
            .disks
            .iter()
            .filter(|d| !d.is_readonly() && d.disk_type == "file")
        {
            let Some(source) = &disk.source else { continue };
            match std::fs::remove_file(source) {
                Ok(()) => out.push_str(&format!(
                    "Volume '{}'({source}) removed.\n",
                    disk.target_dev
                )),
                Err(e) => eprintln!(
                    "error: Failed to remove storage volume '{}'({source})\nerror: {}",
                    disk.target_dev,
                    os_reason(&e)
                ),
            }
        }
    }
    Ok(())
}

/// `dumpxml DOMAIN [--inactive]`.
pub fn dumpxml(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let xml = def.to_xml();
    match super::active_id(&ctx.store, &def).filter(|_| !inv.flag("inactive")) {
        Some(id) => {
            // The live XML carries the domain's id on the root, as libvirt's.
            let head = format!("<domain type='{}'", def.domain_type);
            out.push_str(&xml.replacen(&head, &format!("{head} id='{id}'"), 1));
        }
        None => out.push_str(&xml),
    }
    Ok(())
}
