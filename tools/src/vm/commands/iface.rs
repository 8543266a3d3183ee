//! `attach-interface` and `detach-interface` in virsh's words, on the
//! definition only: the VMM's virtio-mmio has no hotplug, so a running
//! domain's live interfaces cannot change (`--config` changes the
//! definition, which the next start uses), as `setmem` and `setvcpus`.
//!
//! `attach-interface DOMAIN TYPE SOURCE [--target DEV] [--mac MAC]
//! [--model MODEL]` writes the `<interface>` virsh writes (`<source
//! bridge|network|dev='SOURCE'>`; for `ethernet`, whose tap we name in
//! `<target dev>`, SOURCE is that tap, unmanaged, unless `--target` is
//! given); `detach-interface DOMAIN TYPE [--mac MAC]` removes the one
//! interface of that type (and MAC), with virsh's messages when none or
//! several match.

use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::runtime::{self, QUERY_TIMEOUT};
use crate::vm::xml::escape_attr as attr;
use crate::vm::xml::interface::{interfaces, parse_interface, MAX_INTERFACES};
use crate::vm::xml::{Device, DomainDef};

/// The interface types virsh's attach-interface knows.
const TYPES: [&str; 10] = [
    "network", "bridge", "user", "ethernet", "direct", "hostdev", "mcast", "server", "client",
    "udp",
];

/// Refuses a live change: `--live`, `--persistent` or no `--config` on
/// a running domain (virsh's flags), `--live` on one that is not.
fn definition_only(
    ctx: &Ctx,
    inv: &Invocation,
    def: &DomainDef,
    action: &str,
) -> Result<(), VmError> {
    let active = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None)
        .active()
        .is_some();
    let live = inv.flag("live") || (active && (inv.flag("persistent") || !inv.flag("config")));
    if inv.flag("live") && !active {
        return Err(VmError::Refused(format!(
            "Requested operation is not valid: domain is not running\nerror: Failed to {action} interface"
        )));
    }
    if live {
        return Err(VmError::Refused(format!(
            "Operation not supported: virtio-mmio has no hotplug: this VMM cannot change the interfaces of a running domain (use --config)\nerror: Failed to {action} interface"
        )));
    }
    Ok(())
}

/// The `<interface>` element virsh's attach-interface writes.
fn interface_text(inv: &Invocation, kind: &str, source: &str) -> String {
    let mut inner = Vec::new();
    if let Some(mac) = inv.value("mac") {
        inner.push(format!("<mac address='{}'/>", attr(mac)));
    }
    match kind {
        "network" => inner.push(format!("<source network='{}'/>", attr(source))),
        "bridge" => inner.push(format!("<source bridge='{}'/>", attr(source))),
        "ethernet" => {}
        _ => inner.push(format!("<source dev='{}'/>", attr(source))),
    }
    match (kind, inv.value("target")) {
        (_, Some(target)) => inner.push(format!("<target dev='{}'/>", attr(target))),
        ("ethernet", None) => {
            inner.push(format!("<target dev='{}' managed='no'/>", attr(source)));
        }
        _ => {}
    }
    if let Some(model) = inv.value("model") {
        inner.push(format!("<model type='{}'/>", attr(model)));
    }
    let mut text = format!("<interface type='{kind}'>\n");
    for line in inner {
        text.push_str(&format!("      {line}\n"));
    }
    text.push_str("    </interface>");
    text
}

/// `attach-interface DOMAIN TYPE SOURCE [--target] [--mac] [--model]
/// [--config] [--live] [--current] [--persistent]`.
pub fn attach_interface(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut def = lookup(ctx, inv.required("domain"))?;
    let kind = inv.required("type");
    if !TYPES.contains(&kind) {
        return Err(VmError::Refused(format!(
            "No support for {kind} in command 'attach-interface'"
        )));
    }
    let source = inv.required("source");
    let _lock = ctx.store.lock(&def.name)?;
    definition_only(ctx, inv, &def, "attach")?;
    let text = interface_text(inv, kind, source);
    let failed = |e: &dyn std::fmt::Display| {
        VmError::Refused(format!("{e}\nerror: Failed to attach interface"))
    };
    parse_interface(&text).map_err(|e| failed(&e))?;
    let count = interfaces(&def).map_err(|e| failed(&e))?.len();
    if count >= MAX_INTERFACES {
        return Err(failed(&format!(
            "operation failed: the domain has {count} interfaces, at most {MAX_INTERFACES}"
        )));
    }
    def.devices.push(Device::Other {
        element: "interface".to_string(),
        text,
    });
    ctx.store.write_definition(&def)?;
    ctx.extra(out, "Interface attached successfully\n");
    Ok(())
}

/// `detach-interface DOMAIN TYPE [--mac] [--config] [--live] [--current]
/// [--persistent]`.
pub fn detach_interface(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let mut def = lookup(ctx, inv.required("domain"))?;
    let kind = inv.required("type");
    let mac = inv.value("mac").map(str::to_ascii_lowercase);
    let _lock = ctx.store.lock(&def.name)?;
    definition_only(ctx, inv, &def, "detach")?;
    let failed =
        |text: String| VmError::Refused(format!("{text}\nerror: Failed to detach interface"));
    let all = interfaces(&def).map_err(|e| failed(e.to_string()))?;
    let matching: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == kind && (mac.is_none() || i.mac == mac))
        .map(|(n, _)| n)
        .collect();
    let which = match (matching.as_slice(), &mac) {
        ([one], _) => *one,
        ([], Some(mac)) => {
            return Err(failed(format!(
                "No interface with MAC address {mac} was found"
            )))
        }
        ([], None) => return Err(failed(format!("No interface found whose type is {kind}"))),
        (many, _) => {
            return Err(failed(format!(
                "Domain has {} interfaces. Please specify which one to detach using --mac",
                many.len()
            )))
        }
    };
    // The device list holds the interfaces in document order.
    let position = def
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, Device::Other { element, .. } if element == "interface"))
        .map(|(at, _)| at)
        .nth(which)
        .ok_or_else(|| VmError::Internal("the interface list changed".to_string()))?;
    def.devices.remove(position);
    ctx.store.write_definition(&def)?;
    ctx.extra(out, "Interface detached successfully\n");
    Ok(())
}
