//! The domain XML an install defines: libvirt's layout of what
//! virt-install writes for a direct kernel boot (memory, vCPUs and
//! topology, os/kernel, initrd and cmdline, virtio disks, the
//! installer disc as a read-only CD-ROM, bridge interfaces, a serial
//! console), read back through the XML reader so that it meets every
//! limit a `define` would.

use std::path::Path;

use super::disks::PlannedDisk;
use super::options::InstallOptions;
use crate::vm::xml::{parse_domain, DomainDef, XmlError};

/// What the domain boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// The kernel on the host.
    pub kernel: String,
    /// The initrd on the host.
    pub initrd: Option<String>,
    /// The command line.
    pub cmdline: String,
}

fn esc(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The target name of the `index`th virtio disk (`vda`, ..., `vdz`,
/// `vdaa`).
pub fn target_dev(index: usize) -> String {
    let letters = |n: usize| char::from(b'a' + (n % 26) as u8);
    if index < 26 {
        format!("vd{}", letters(index))
    } else {
        format!("vd{}{}", letters(index / 26 - 1), letters(index))
    }
}

/// Builds the definition; `disc` is the installer ISO, attached last;
/// `macs` are the addresses of `--network`'s interfaces, in order.
pub fn build(
    opts: &InstallOptions,
    disks: &[PlannedDisk],
    disc: Option<&Path>,
    boot: &Boot,
    macs: &[String],
) -> Result<DomainDef, XmlError> {
    let mut xml = String::from("<domain type='kvm'>\n");
    xml.push_str(&format!("  <name>{}</name>\n", esc(opts.name.as_str())));
    if let Some(max) = opts.max_memory_mib {
        xml.push_str(&format!(
            "  <maxMemory slots='16' unit='KiB'>{}</maxMemory>\n",
            max * 1024
        ));
    }
    xml.push_str(&format!(
        "  <memory unit='KiB'>{}</memory>\n",
        opts.memory_mib * 1024
    ));
    xml.push_str(&format!(
        "  <currentMemory unit='KiB'>{}</currentMemory>\n",
        opts.current_memory_mib.unwrap_or(opts.memory_mib) * 1024
    ));
    let max_vcpus = opts.max_vcpus.unwrap_or(opts.vcpus);
    let mut vcpu_attrs = String::from(" placement='static'");
    if let Some(set) = &opts.cpuset {
        vcpu_attrs.push_str(&format!(" cpuset='{}'", esc(set)));
    }
    if max_vcpus != opts.vcpus {
        vcpu_attrs.push_str(&format!(" current='{}'", opts.vcpus));
    }
    xml.push_str(&format!("  <vcpu{vcpu_attrs}>{max_vcpus}</vcpu>\n"));
    xml.push_str("  <os>\n    <type arch='x86_64'>hvm</type>\n");
    xml.push_str(&format!("    <kernel>{}</kernel>\n", esc(&boot.kernel)));
    if let Some(initrd) = &boot.initrd {
        xml.push_str(&format!("    <initrd>{}</initrd>\n", esc(initrd)));
    }
    if !boot.cmdline.is_empty() {
        xml.push_str(&format!("    <cmdline>{}</cmdline>\n", esc(&boot.cmdline)));
    }
    xml.push_str("  </os>\n");
    if let Some((sockets, cores, threads)) = opts.topology {
        xml.push_str(&format!(
            "  <cpu>\n    <topology sockets='{sockets}' dies='1' cores='{cores}' threads='{threads}'/>\n  </cpu>\n"
        ));
    }
    xml.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    xml.push_str("  <devices>\n");
    let mut index = 0;
    for disk in disks {
        let device = if disk.cdrom { "cdrom" } else { "disk" };
        let cache = disk
            .cache
            .as_deref()
            .map(|c| format!(" cache='{}'", esc(c)))
            .unwrap_or_default();
        xml.push_str(&format!(
            "    <disk type='file' device='{device}'>\n      <driver name='qemu' type='{}'{cache}/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n",
            disk.format.name(),
            esc(&disk.path.to_string_lossy()),
            target_dev(index)
        ));
        if disk.readonly {
            xml.push_str("      <readonly/>\n");
        }
        xml.push_str("    </disk>\n");
        index += 1;
    }
    if let Some(disc) = disc {
        xml.push_str(&format!(
            "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n      <readonly/>\n    </disk>\n",
            esc(&disc.to_string_lossy()),
            target_dev(index)
        ));
    }
    for (net, mac) in opts.networks.iter().zip(macs) {
        xml.push_str(&format!(
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n      <mac address='{mac}'/>\n      <model type='virtio'/>\n    </interface>\n",
            esc(&net.bridge)
        ));
    }
    xml.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n");
    xml.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n",
    );
    xml.push_str("  </devices>\n</domain>\n");
    parse_domain(xml.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names() {
        assert_eq!(target_dev(0), "vda");
        assert_eq!(target_dev(25), "vdz");
        assert_eq!(target_dev(26), "vdaa");
    }
}
