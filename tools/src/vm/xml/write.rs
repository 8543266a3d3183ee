//! The domain XML writer: libvirt's layout (two-space indent, single-quoted
//! attributes, memory in KiB, `placement='static'`), with the elements we
//! do not model printed back as they were given, where they were.

use super::{CacheMode, Device, DiskDef, DiskFormat, DomainDef, Item};

/// Escapes text content (a carriage return too: a parser would turn a
/// literal one into a line feed).
fn text(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\r', "&#13;")
}

/// Escapes an attribute value for single quotes (white space as character
/// references: a parser turns literal ones into spaces).
pub(crate) fn attr(value: &str) -> String {
    text(value)
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\t', "&#9;")
}

impl DomainDef {
    /// The definition as libvirt domain XML (ends with a newline).
    pub fn to_xml(&self) -> String {
        let mut out = format!("<domain type='{}'", attr(&self.domain_type));
        for (prefix, uri) in &self.namespaces {
            out.push_str(&format!(" xmlns:{prefix}='{}'", attr(uri)));
        }
        out.push_str(">\n");
        for item in &self.items {
            match item {
                Item::Name => {
                    out.push_str(&format!("  <name>{}</name>\n", text(self.name.as_str())));
                }
                Item::Uuid => self.write_uuid(&mut out),
                Item::Memory => {
                    out.push_str(&format!(
                        "  <memory unit='KiB'>{}</memory>\n",
                        self.memory_kib
                    ));
                }
                Item::CurrentMemory => self.write_current_memory(&mut out),
                Item::Vcpu => self.write_vcpu(&mut out),
                Item::Os => self.write_os(&mut out),
                Item::Devices => self.write_devices(&mut out),
                Item::Other(raw) => {
                    out.push_str("  ");
                    out.push_str(raw);
                    out.push('\n');
                }
            }
        }
        out.push_str("</domain>\n");
        out
    }

    fn write_uuid(&self, out: &mut String) {
        out.push_str(&format!("  <uuid>{}</uuid>\n", self.uuid));
    }

    fn write_current_memory(&self, out: &mut String) {
        out.push_str(&format!(
            "  <currentMemory unit='KiB'>{}</currentMemory>\n",
            self.current_memory_kib
        ));
    }

    fn write_vcpu(&self, out: &mut String) {
        let placement = self.vcpu_placement.as_deref().unwrap_or("static");
        out.push_str(&format!("  <vcpu placement='{}'", attr(placement)));
        if let Some(cpuset) = &self.vcpu_cpuset {
            out.push_str(&format!(" cpuset='{}'", cpuset.format()));
        }
        if self.vcpus_current != self.vcpus {
            out.push_str(&format!(" current='{}'", self.vcpus_current));
        }
        out.push_str(&format!(">{}</vcpu>\n", self.vcpus));
    }

    fn write_os(&self, out: &mut String) {
        let os = &self.os;
        out.push_str("  <os>\n    <type");
        if let Some(arch) = &os.arch {
            out.push_str(&format!(" arch='{}'", attr(arch)));
        }
        if let Some(machine) = &os.machine {
            out.push_str(&format!(" machine='{}'", attr(machine)));
        }
        out.push_str(&format!(">{}</type>\n", text(&os.os_type)));
        for (element, value) in [
            ("kernel", &os.kernel),
            ("initrd", &os.initrd),
            ("cmdline", &os.cmdline),
        ] {
            if let Some(value) = value {
                out.push_str(&format!("    <{element}>{}</{element}>\n", text(value)));
            }
        }
        for raw in &os.extra {
            out.push_str(&format!("    {raw}\n"));
        }
        out.push_str("  </os>\n");
    }

    fn write_devices(&self, out: &mut String) {
        out.push_str("  <devices>\n");
        for device in &self.devices {
            match device {
                Device::Disk(index) => write_disk(&self.disks[*index], out),
                Device::Other { text, .. } => out.push_str(&format!("    {text}\n")),
            }
        }
        out.push_str("  </devices>\n");
    }
}

fn write_disk(disk: &DiskDef, out: &mut String) {
    out.push_str(&format!(
        "    <disk type='{}' device='{}'>\n",
        attr(&disk.disk_type),
        attr(&disk.device)
    ));
    if disk.driver_name.is_some() || disk.format.is_some() || disk.cache.is_some() {
        out.push_str("      <driver");
        if let Some(name) = &disk.driver_name {
            out.push_str(&format!(" name='{}'", attr(name)));
        }
        if let Some(format) = &disk.format {
            let format = match format {
                DiskFormat::Qcow2 => "qcow2",
                DiskFormat::Raw => "raw",
                DiskFormat::Other(other) => other,
            };
            out.push_str(&format!(" type='{}'", attr(format)));
        }
        if let Some(cache) = &disk.cache {
            let cache = match cache {
                CacheMode::None => "none",
                CacheMode::Other(other) => other,
            };
            out.push_str(&format!(" cache='{}'", attr(cache)));
        }
        out.push_str("/>\n");
    }
    if let Some(source) = &disk.source {
        let key = if disk.disk_type == "block" {
            "dev"
        } else {
            "file"
        };
        out.push_str(&format!("      <source {key}='{}'/>\n", attr(source)));
    }
    out.push_str(&format!("      <target dev='{}'", attr(&disk.target_dev)));
    if let Some(bus) = &disk.target_bus {
        out.push_str(&format!(" bus='{}'", attr(bus)));
    }
    out.push_str("/>\n");
    if disk.readonly {
        out.push_str("      <readonly/>\n");
    }
    for raw in &disk.extra {
        out.push_str(&format!("      {raw}\n"));
    }
    out.push_str("    </disk>\n");
}
