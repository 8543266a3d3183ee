//! Network interfaces: what a domain's `<interface>` elements become in
//! the VMM's configuration (CH's `NetConfig`), the taps `vm` makes for
//! `type='bridge'`, and the commands `domiflist`, `domifstat` and
//! `domstats`' interface group in libvirt's names and layouts.
//!
//! - `type='ethernet'`: the VMM opens the tap named by `<target dev>`
//!   (the user's, with `managed='no'`; created for the VM's life if it
//!   does not exist).
//! - `type='bridge'`: `vm` opens a tap (`<target dev>`, or the first free
//!   `vnetN`), adds it to `<source bridge>` and brings it up, and hands
//!   the open tap to the VMM with vm.create (SCM_RIGHTS). It holds no
//!   other reference: the kernel removes the tap, and its bridge port,
//!   when the VMM's descriptor closes.
//!
//! Counters are the VMM's (vm.counters under CH's names), keyed by the
//! interface's id: its target dev, else `net<N>`.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use vmapi::{Client, NetConfig};

use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format;
use crate::vm::runtime::{self, Active, Status, QUERY_TIMEOUT};
use crate::vm::xml::interface::{interfaces, InterfaceDef};
use crate::vm::xml::DomainDef;

/// The counters' key of interface number `index`.
fn interface_id(iface: &InterfaceDef, index: usize) -> String {
    iface
        .target_dev
        .clone()
        .unwrap_or_else(|| format!("net{index}"))
}

fn xml_error(e: crate::vm::xml::XmlError) -> VmError {
    VmError::Xml(e)
}

/// The VMM's interfaces for `def`; bridge interfaces carry an `fd`
/// placeholder for the tap [`open_bridge_taps`] opens. Refuses (one line)
/// what the VMM cannot serve.
pub fn net_configs(def: &DomainDef) -> Result<Vec<NetConfig>, VmError> {
    let mut configs = Vec::new();
    for (index, iface) in interfaces(def).map_err(xml_error)?.iter().enumerate() {
        if let Some(model) = iface.model.as_deref().filter(|m| *m != "virtio") {
            return Err(VmError::Unsupported(format!(
                "<interface> model '{model}': only virtio is supported"
            )));
        }
        let (tap, fd) = match iface.kind.as_str() {
            "ethernet" => {
                let dev = iface.target_dev.clone().ok_or_else(|| {
                    VmError::Unsupported(
                        "<interface type='ethernet'> needs <target dev='TAP'/>".into(),
                    )
                })?;
                (Some(dev), None)
            }
            "bridge" => (None, Some(vec![-1])),
            other => {
                return Err(VmError::Unsupported(format!(
                    "<interface type='{other}'>: only ethernet and bridge interfaces are supported"
                )))
            }
        };
        configs.push(NetConfig {
            tap,
            mac: iface.mac.clone(),
            num_queues: 2,
            queue_size: 256,
            id: Some(interface_id(iface, index)),
            fd,
        });
    }
    Ok(configs)
}

/// Whether an interface `name` exists in this network namespace (asked
/// of the kernel through `ip`: /sys shows the namespace it was mounted
/// in).
fn interface_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The first `vnetN` no interface has.
fn free_vnet_name() -> Result<String, VmError> {
    (0..1024)
        .map(|n| format!("vnet{n}"))
        .find(|name| !interface_exists(name))
        .ok_or_else(|| VmError::OperationFailed("no free vnetN interface name".into()))
}

/// Runs `ip ARGS`, turning a failure into libvirt's message `what`.
fn ip(args: &[&str], what: &str) -> Result<(), VmError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| VmError::OperationFailed(format!("{what}: cannot run ip: {e}")))?;
    if !out.status.success() {
        let reason = String::from_utf8_lossy(&out.stderr);
        let reason = reason.lines().next().unwrap_or("failed").trim().to_string();
        return Err(VmError::OperationFailed(format!("{what}: {reason}")));
    }
    Ok(())
}

/// Opens a tap for each `type='bridge'` interface of `def`, in document
/// order, each added to its bridge and up.
pub fn open_bridge_taps(def: &DomainDef) -> Result<Vec<OwnedFd>, VmError> {
    let mut taps = Vec::new();
    for iface in interfaces(def).map_err(xml_error)? {
        if iface.kind != "bridge" {
            continue;
        }
        let bridge = iface.source.clone().unwrap_or_default();
        if !interface_exists(&bridge) {
            return Err(VmError::OperationFailed(format!(
                "Unable to add bridge {bridge} port: no bridge named '{bridge}'"
            )));
        }
        let name = match &iface.target_dev {
            Some(dev) => dev.clone(),
            None => free_vnet_name()?,
        };
        let mut opened = blockdev::virtio::net::Tap::open(&name, 1).map_err(|e| {
            VmError::OperationFailed(format!("Unable to create tap device {name}: {e}"))
        })?;
        let tap: OwnedFd = opened.remove(0).into();
        let what = format!("Unable to add bridge {bridge} port {name}");
        ip(&["link", "set", &name, "master", &bridge], &what)?;
        ip(&["link", "set", &name, "up"], &what)?;
        taps.push(tap);
    }
    Ok(taps)
}

/// The taps for the bridge interfaces of `def` on this host, with the
/// `net_fds` entries that name them for vm.restore or
/// vm.receive-migration (one per interface, keyed as [`net_configs`]
/// keys them).
pub fn restored_bridge_taps(
    def: &DomainDef,
) -> Result<(Vec<vmapi::RestoredNetConfig>, Vec<OwnedFd>), VmError> {
    let net_fds = interfaces(def)
        .map_err(xml_error)?
        .iter()
        .enumerate()
        .filter(|(_, iface)| iface.kind == "bridge")
        .map(|(index, iface)| vmapi::RestoredNetConfig {
            id: interface_id(iface, index),
            num_fds: 1,
            fds: None,
        })
        .collect();
    Ok((net_fds, open_bridge_taps(def)?))
}

/// vm.create with the bridge taps handed over, if any.
pub fn create(client: &Client, config: &vmapi::VmConfig, taps: &[OwnedFd]) -> vmapi::Result<()> {
    if taps.is_empty() {
        client.create(config)
    } else {
        let fds: Vec<_> = taps.iter().map(AsFd::as_fd).collect();
        client.create_with_fds(config, &fds)
    }
}

/// `domiflist DOMAIN`: Interface, Type, Source, Model, MAC.
pub fn domiflist(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let rows: Vec<Vec<String>> = interfaces(&def)
        .map_err(xml_error)?
        .iter()
        .map(|i| {
            vec![
                dash(&i.target_dev),
                i.kind.clone(),
                dash(&i.source),
                dash(&i.model),
                dash(&i.mac),
            ]
        })
        .collect();
    out.push_str(&format::table(
        &["Interface", "Type", "Source", "Model", "MAC"],
        &rows,
        ctx.quiet,
    ));
    Ok(())
}

/// One interface's counters as libvirt names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct IfStats {
    rx_bytes: u64,
    rx_packets: u64,
    rx_errs: u64,
    rx_drop: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errs: u64,
    tx_drop: u64,
}

impl IfStats {
    fn from_counters(map: &std::collections::BTreeMap<String, u64>) -> IfStats {
        let get = |name: &str| map.get(name).copied().unwrap_or(0);
        IfStats {
            rx_bytes: get("rx_bytes"),
            rx_packets: get("rx_frames"),
            rx_errs: get("rx_errors"),
            rx_drop: get("rx_dropped"),
            tx_bytes: get("tx_bytes"),
            tx_packets: get("tx_frames"),
            tx_errs: get("tx_errors"),
            tx_drop: get("tx_dropped"),
        }
    }

    /// (domifstat name, domstats name, value), libvirt's order.
    fn fields(&self) -> [(&'static str, &'static str, u64); 8] {
        [
            ("rx_bytes", "rx.bytes", self.rx_bytes),
            ("rx_packets", "rx.pkts", self.rx_packets),
            ("rx_errs", "rx.errs", self.rx_errs),
            ("rx_drop", "rx.drop", self.rx_drop),
            ("tx_bytes", "tx.bytes", self.tx_bytes),
            ("tx_packets", "tx.pkts", self.tx_packets),
            ("tx_errs", "tx.errs", self.tx_errs),
            ("tx_drop", "tx.drop", self.tx_drop),
        ]
    }
}

/// Each interface's stats from the running VMM, by id.
fn live_stats(active: &Active) -> Result<std::collections::BTreeMap<String, IfStats>, VmError> {
    let all = active.client(QUERY_TIMEOUT).counters()?;
    Ok(all
        .iter()
        .map(|(id, map)| (id.clone(), IfStats::from_counters(map)))
        .collect())
}

/// `domifstat DOMAIN INTERFACE`: the interface by target dev or MAC.
pub fn domifstat(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let wanted = inv.required("interface");
    let failed = |cause: VmError| {
        VmError::Refused(format!(
            "Failed to get interface stats {} {wanted}\nerror: {cause}",
            def.name
        ))
    };
    let active = match runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None) {
        Status::Active(a) => *a,
        Status::Inactive { .. } => return Err(failed(VmError::NotRunning)),
    };
    let ifaces = interfaces(&def).map_err(xml_error)?;
    let found = ifaces.iter().enumerate().find(|(_, i)| {
        i.target_dev.as_deref() == Some(wanted)
            || i.mac.as_deref() == Some(wanted.to_ascii_lowercase().as_str())
    });
    let Some((index, iface)) = found else {
        return Err(failed(VmError::InvalidArgument(format!(
            "'{wanted}' is not a known interface"
        ))));
    };
    let stats = live_stats(&active)
        .map_err(failed)?
        .get(&interface_id(iface, index))
        .copied()
        .unwrap_or_default();
    for (name, _, value) in stats.fields() {
        out.push_str(&format!("{wanted} {name} {value}\n"));
    }
    out.push('\n');
    Ok(())
}

/// domstats' interface group: `net.count`, `net.N.name`, and the
/// counters of a running domain.
pub fn push_domstats(
    def: &DomainDef,
    active: Option<&Active>,
    out: &mut String,
) -> Result<(), VmError> {
    let ifaces = interfaces(def).map_err(xml_error)?;
    let stats = match active {
        Some(a) if a.state != crate::vm::format::state::SHUTOFF => Some(live_stats(a)?),
        _ => None,
    };
    out.push_str(&format!("  net.count={}\n", ifaces.len()));
    for (index, iface) in ifaces.iter().enumerate() {
        let id = interface_id(iface, index);
        out.push_str(&format!("  net.{index}.name={id}\n"));
        if let Some(stats) = &stats {
            let s = stats.get(&id).copied().unwrap_or_default();
            for (_, name, value) in s.fields() {
                out.push_str(&format!("  net.{index}.{name}={value}\n"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(devices: &str) -> DomainDef {
        crate::vm::xml::parse_domain(
            format!(
                "<domain type='kvm'><name>n</name><memory>65536</memory><vcpu>1</vcpu>\
                 <os><type>hvm</type><kernel>/k</kernel></os><devices>{devices}</devices></domain>"
            )
            .as_bytes(),
        )
        .expect("domain")
    }

    #[test]
    fn interfaces_become_ch_net_configs() {
        let def = domain(
            "<interface type='ethernet'><mac address='52:54:00:12:34:56'/>\
             <target dev='tap0' managed='no'/><model type='virtio'/></interface>\
             <interface type='bridge'><source bridge='br0'/></interface>",
        );
        let configs = net_configs(&def).expect("configs");
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].tap.as_deref(), Some("tap0"));
        assert_eq!(configs[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(configs[0].id.as_deref(), Some("tap0"));
        assert!(configs[0].fd.is_none());
        assert_eq!(configs[1].tap, None);
        assert_eq!(configs[1].fd, Some(vec![-1]), "a placeholder for vm's tap");
        assert_eq!(configs[1].id.as_deref(), Some("net1"));
        for (devices, expected) in [
            (
                "<interface type='ethernet'><target dev='t'/><model type='e1000'/></interface>",
                "only virtio",
            ),
            (
                "<interface type='network'><source network='default'/></interface>",
                "only ethernet and bridge",
            ),
            ("<interface type='ethernet'/>", "needs <target dev"),
        ] {
            let err = net_configs(&domain(devices))
                .expect_err(devices)
                .to_string();
            assert!(err.contains(expected), "{devices}: {err}");
        }
    }

    #[test]
    fn libvirt_names_of_ch_counters() {
        let map = [
            ("rx_bytes", 10),
            ("rx_frames", 2),
            ("rx_errors", 1),
            ("rx_dropped", 3),
            ("tx_bytes", 20),
            ("tx_frames", 4),
            ("tx_errors", 5),
            ("tx_dropped", 6),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let s = IfStats::from_counters(&map);
        let names: Vec<_> = s.fields().iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            names,
            [
                ("rx_bytes", 10),
                ("rx_packets", 2),
                ("rx_errs", 1),
                ("rx_drop", 3),
                ("tx_bytes", 20),
                ("tx_packets", 4),
                ("tx_errs", 5),
                ("tx_drop", 6)
            ]
        );
    }
}
