//! `setvcpus`, `setmem` and `setmaxmem` with libvirt's semantics and
//! messages (held against `virsh -c test:///default`). This VMM cannot
//! hot-plug vCPUs or balloon memory, so a running domain's live values
//! cannot change: `--config` changes the definition, which the next start
//! uses.

use super::size::scaled_bytes;
use crate::vm::cli::Invocation;
use crate::vm::commands::{lookup, Ctx};
use crate::vm::error::VmError;
use crate::vm::runtime::{self, procfs, QUERY_TIMEOUT};
use crate::vm::xml::DomainDef;

/// The most vCPUs a domain may have (the XML reader's limit, under KVM's
/// KVM_MAX_VCPUS).
pub const MAX_VCPUS: u32 = 254;
/// The most memory a domain may have in bytes (the XML reader's 16 TiB).
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// Whether the change goes to the definition only: `--config`, or no
/// `--live` on a domain that is not running. A running domain's live
/// values cannot change here.
fn config_only(ctx: &Ctx, inv: &Invocation, def: &DomainDef, what: &str) -> Result<(), VmError> {
    let active = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None)
        .active()
        .is_some();
    let live = inv.flag("live") || (active && !inv.flag("config"));
    if live && !active {
        return Err(VmError::Refused(
            "Requested operation is not valid: domain is not running".to_string(),
        ));
    }
    if live {
        return Err(VmError::Refused(format!(
            "Operation not supported: this VMM cannot change the {what} of a running domain (use --config)"
        )));
    }
    Ok(())
}

/// `setvcpus DOMAIN COUNT [--config] [--live] [--current] [--maximum]`.
pub fn setvcpus(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let _ = out;
    let mut def = lookup(ctx, inv.required("domain"))?;
    let text = inv.required("count");
    let count: u32 = text.parse().map_err(|_| {
        VmError::Refused(format!(
            "Numeric value '{text}' for <count> option is malformed or out of range"
        ))
    })?;
    if count == 0 {
        return Err(VmError::Refused(
            "Can't set 0 processors for a VM".to_string(),
        ));
    }
    let _lock = ctx.store.lock(&def.name)?;
    config_only(ctx, inv, &def, "vCPUs")?;
    if inv.flag("maximum") {
        if count > MAX_VCPUS {
            return Err(VmError::InvalidArgument(format!(
                "requested cpu amount exceeds maximum supported amount ({count} > {MAX_VCPUS})"
            )));
        }
        def.vcpus = count;
        def.vcpus_current = def.vcpus_current.min(count);
    } else {
        if count > def.vcpus {
            return Err(VmError::InvalidArgument(format!(
                "requested cpu amount exceeds maximum ({count} > {})",
                def.vcpus
            )));
        }
        def.vcpus_current = count;
    }
    super::tune::drop_pins_past(&mut def)?;
    ctx.store.write_definition(&def)?;
    Ok(())
}

fn size_kib(inv: &Invocation) -> Result<u64, VmError> {
    let text = inv.required("size");
    let bytes = scaled_bytes(text, MAX_MEMORY_BYTES).ok_or_else(|| {
        VmError::Refused(format!(
            "Scaled numeric value '{text}' for <size> option is malformed or out of range"
        ))
    })?;
    Ok(bytes.div_ceil(1024))
}

fn check_host(kib: u64) -> Result<(), VmError> {
    if let Some(host) = procfs::host_memory_kib() {
        if kib > host {
            return Err(VmError::InvalidArgument(format!(
                "memory of {kib} KiB is over the host's {host} KiB"
            )));
        }
    }
    Ok(())
}

/// `setmem DOMAIN SIZE [--config] [--live] [--current]`.
pub fn setmem(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let _ = out;
    let mut def = lookup(ctx, inv.required("domain"))?;
    let kib = size_kib(inv)?;
    let _lock = ctx.store.lock(&def.name)?;
    config_only(ctx, inv, &def, "memory")?;
    if kib > def.memory_kib {
        return Err(VmError::InvalidArgument(
            "cannot set memory higher than max memory".to_string(),
        ));
    }
    def.current_memory_kib = kib;
    ctx.store.write_definition(&def)?;
    Ok(())
}

/// `setmaxmem DOMAIN SIZE [--config] [--live] [--current]`.
pub fn setmaxmem(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let _ = out;
    let mut def = lookup(ctx, inv.required("domain"))?;
    let kib = size_kib(inv)?;
    let _lock = ctx.store.lock(&def.name)?;
    let active = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None)
        .active()
        .is_some();
    if inv.flag("live") || (active && !inv.flag("config")) {
        return Err(VmError::Refused(
            "Requested operation is not valid: cannot resize the maximum memory on an active domain"
                .to_string(),
        ));
    }
    if kib == 0 {
        return Err(VmError::InvalidArgument(
            "memory size must be greater than 0".to_string(),
        ));
    }
    check_host(kib)?;
    def.memory_kib = kib;
    def.current_memory_kib = def.current_memory_kib.min(kib);
    ctx.store.write_definition(&def)?;
    Ok(())
}
