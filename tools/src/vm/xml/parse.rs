//! The domain XML reader: bounds the input (size, nodes, depth) before and
//! while roxmltree parses it with DTDs refused (so no entity can be
//! defined, expanded or fetched), then reads the elements we model into a
//! [`DomainDef`] and keeps every other element's text as given.

use roxmltree::{Document, Node, ParsingOptions};

use super::units::{parse_memory_kib, truncate};
use super::{
    CacheMode, Device, DiskDef, DiskFormat, DomainDef, DomainName, Item, OsDef, Uuid, XmlError,
};

/// The largest domain XML we read (libvirt's own definitions are a few
/// KiB).
pub const MAX_XML_BYTES: usize = 1 << 20;
/// The most XML nodes (elements, attributes' owners, text, comments) a
/// document may have.
pub const MAX_NODES: u32 = 20_000;
/// How deep elements may nest.
pub const MAX_DEPTH: usize = 64;
/// The most disks a domain may have (what the VMM can attach).
pub const MAX_DISKS: usize = 19;
/// The most vCPUs a domain may have (the VMM's limit).
pub const MAX_VCPUS: u32 = 254;
/// The longest path or command line we keep, in bytes.
const MAX_TEXT_BYTES: usize = 4096;

/// Parses and validates a domain XML document. A missing uuid is made
/// here (from the kernel's random source).
pub fn parse_domain(input: &[u8]) -> Result<DomainDef, XmlError> {
    if input.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge {
            bytes: input.len(),
            max: MAX_XML_BYTES,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options)
        .map_err(|e| XmlError::Malformed(one_line(&e.to_string())))?;
    check_depth(doc.root())?;
    let root = doc.root_element();
    if root.tag_name().namespace().is_some() || root.tag_name().name() != "domain" {
        return Err(XmlError::NotADomain(truncate(root.tag_name().name())));
    }
    read_domain(text, root)
}

/// A parser message on one line: control characters the message quotes
/// from the input are escaped, and the whole is cut at 200 characters.
fn one_line(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars().take(200) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Fails if elements nest deeper than [`MAX_DEPTH`] (an explicit stack:
/// no recursion over hostile input).
fn check_depth(root: Node) -> Result<(), XmlError> {
    let mut stack = vec![(root, 0usize)];
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(XmlError::TooDeep { max: MAX_DEPTH });
        }
        for child in node.children().filter(Node::is_element) {
            stack.push((child, depth + 1));
        }
    }
    Ok(())
}

/// The most namespace prefixes a document may bind.
const MAX_NAMESPACES: usize = 64;

/// Every namespace prefix bound anywhere in the document: the elements we
/// keep as text may use a prefix bound on an element we rewrite, so all of
/// them are declared again on `<domain>`. A prefix bound to two URIs is
/// refused (it could not be declared once).
fn namespace_prefixes(root: Node) -> Result<Vec<(String, String)>, XmlError> {
    let mut bound: Vec<(String, String)> = Vec::new();
    for node in root.descendants().filter(Node::is_element) {
        let in_scope = node.namespaces();
        if in_scope.len() > MAX_NAMESPACES {
            return Err(XmlError::Malformed(format!(
                "more than {MAX_NAMESPACES} namespaces"
            )));
        }
        for ns in in_scope {
            let Some(prefix) = ns.name().filter(|p| *p != "xml") else {
                continue;
            };
            match bound.iter().find(|(p, _)| p == prefix) {
                Some((_, uri)) if uri == ns.uri() => {}
                Some(_) => {
                    return Err(XmlError::Malformed(format!(
                        "namespace prefix '{}' is bound to two URIs",
                        truncate(prefix)
                    )))
                }
                None => {
                    if bound.len() >= MAX_NAMESPACES {
                        return Err(XmlError::Malformed(format!(
                            "more than {MAX_NAMESPACES} namespaces"
                        )));
                    }
                    bound.push((prefix.to_string(), ns.uri().to_string()));
                }
            }
        }
    }
    Ok(bound)
}

/// The element's text as it stands in the input.
fn raw<'a>(text: &'a str, node: Node) -> &'a str {
    &text[node.range()]
}

/// An element name without namespace (None for namespaced elements, which
/// we never model).
fn local_name<'a>(node: Node<'a, '_>) -> Option<&'a str> {
    if node.tag_name().namespace().is_some() {
        None
    } else {
        Some(node.tag_name().name())
    }
}

/// The trimmed text of an element, bounded.
fn element_text(node: Node, element: &str) -> Result<String, XmlError> {
    let value = node.text().unwrap_or("").trim();
    bounded(element, value)
}

/// A value checked against [`MAX_TEXT_BYTES`].
fn bounded(element: &str, value: &str) -> Result<String, XmlError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(XmlError::BadValue {
            element: element.to_string(),
            value: truncate(value),
            reason: format!("longer than {MAX_TEXT_BYTES} bytes"),
        });
    }
    Ok(value.to_string())
}

/// An attribute, bounded.
fn attribute(node: Node, name: &str, element: &str) -> Result<Option<String>, XmlError> {
    node.attribute(name)
        .map(|v| bounded(&format!("{element}/@{name}"), v))
        .transpose()
}

/// Sets `slot` once; a second occurrence of the element is an error.
fn once<T>(slot: &mut Option<T>, value: T, element: &str) -> Result<(), XmlError> {
    if slot.is_some() {
        return Err(XmlError::Duplicate(element.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn read_domain(text: &str, root: Node) -> Result<DomainDef, XmlError> {
    let domain_type = root.attribute("type").unwrap_or("");
    if domain_type != "kvm" {
        return Err(XmlError::DomainType(truncate(domain_type)));
    }
    let namespaces = namespace_prefixes(root)?;
    let mut name = None;
    let mut uuid = None;
    let mut memory = None;
    let mut current = None;
    let mut vcpu = None;
    let mut vcpu_cpuset = None;
    let mut os = None;
    let mut devices = None;
    let mut items = Vec::new();
    for child in root.children().filter(Node::is_element) {
        let item = match local_name(child) {
            Some("name") => {
                once(
                    &mut name,
                    DomainName::new(child.text().unwrap_or(""))?,
                    "name",
                )?;
                Item::Name
            }
            Some("uuid") => {
                once(&mut uuid, Uuid::parse(child.text().unwrap_or(""))?, "uuid")?;
                Item::Uuid
            }
            Some("memory") => {
                let kib = memory_element(child, "memory")?;
                once(&mut memory, kib, "memory")?;
                Item::Memory
            }
            Some("currentMemory") => {
                let kib = memory_element(child, "currentMemory")?;
                once(&mut current, kib, "currentMemory")?;
                Item::CurrentMemory
            }
            Some("vcpu") => {
                once(&mut vcpu, read_vcpu(child)?, "vcpu")?;
                vcpu_cpuset = super::tune::read_vcpu_cpuset(child)?;
                Item::Vcpu
            }
            Some("os") => {
                once(&mut os, read_os(text, child)?, "os")?;
                Item::Os
            }
            Some("devices") => {
                once(&mut devices, read_devices(text, child)?, "devices")?;
                Item::Devices
            }
            _ => Item::Other(raw(text, child).to_string()),
        };
        items.push(item);
    }
    let name = name.ok_or(XmlError::Missing("name"))?;
    let memory_kib = memory.ok_or(XmlError::Missing("memory"))?;
    if memory_kib == 0 {
        return Err(XmlError::BadValue {
            element: "memory".to_string(),
            value: "0".to_string(),
            reason: "memory size must be greater than zero".to_string(),
        });
    }
    let os = os.ok_or(XmlError::Missing("os"))?;
    let uuid = match uuid {
        Some(uuid) => uuid,
        None => Uuid::generate().map_err(|e| XmlError::Malformed(format!("making a uuid: {e}")))?,
    };
    let (vcpus, vcpus_current, vcpu_placement) = vcpu.unwrap_or((1, None, None));
    // What libvirt adds to a definition: a uuid after the name,
    // currentMemory and vcpu after memory, placement 'static'.
    let mut canonical = Vec::with_capacity(items.len() + 3);
    let has = |wanted: &Item| items.contains(wanted);
    let (has_uuid, has_current, has_vcpu) = (
        has(&Item::Uuid),
        has(&Item::CurrentMemory),
        has(&Item::Vcpu),
    );
    for item in items {
        let after: &[Item] = match item {
            Item::Name if !has_uuid => &[Item::Uuid],
            Item::Memory => match (has_current, has_vcpu) {
                (false, false) => &[Item::CurrentMemory, Item::Vcpu],
                (false, true) => &[Item::CurrentMemory],
                (true, false) => &[Item::Vcpu],
                (true, true) => &[],
            },
            _ => &[],
        };
        canonical.push(item);
        canonical.extend_from_slice(after);
    }
    let items = canonical;
    let vcpu_placement = Some(vcpu_placement.unwrap_or_else(|| "static".to_string()));
    let (disks, devices) = devices.unwrap_or_default();
    Ok(DomainDef {
        domain_type: domain_type.to_string(),
        namespaces,
        name,
        uuid,
        memory_kib,
        // libvirt lowers currentMemory to memory when it is over.
        current_memory_kib: current.unwrap_or(memory_kib).min(memory_kib),
        vcpus,
        vcpus_current: vcpus_current.unwrap_or(vcpus),
        vcpu_placement,
        vcpu_cpuset,
        os,
        disks,
        devices,
        items,
    })
}

fn memory_element(node: Node, element: &str) -> Result<u64, XmlError> {
    parse_memory_kib(element, node.text().unwrap_or(""), node.attribute("unit"))
}

/// `<vcpu placement=... current=...>N</vcpu>`.
fn read_vcpu(node: Node) -> Result<(u32, Option<u32>, Option<String>), XmlError> {
    let count = |element: &str, value: &str| -> Result<u32, XmlError> {
        let bad = |reason: String| XmlError::BadValue {
            element: element.to_string(),
            value: truncate(value),
            reason,
        };
        let n: u32 = value
            .trim()
            .parse()
            .map_err(|_| bad("not a vCPU count".to_string()))?;
        if n == 0 || n > MAX_VCPUS {
            return Err(bad(format!("must be 1 to {MAX_VCPUS}")));
        }
        Ok(n)
    };
    let vcpus = count("vcpu", node.text().unwrap_or(""))?;
    let current = node
        .attribute("current")
        .map(|v| count("vcpu/@current", v))
        .transpose()?;
    if let Some(current) = current {
        if current > vcpus {
            return Err(XmlError::BadValue {
                element: "vcpu/@current".to_string(),
                value: current.to_string(),
                reason: format!("more than the maximum of {vcpus}"),
            });
        }
    }
    let placement = attribute(node, "placement", "vcpu")?;
    Ok((vcpus, current, placement))
}

fn read_os(text: &str, node: Node) -> Result<OsDef, XmlError> {
    let mut os = OsDef::default();
    let mut os_type = None;
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = None;
    for child in node.children().filter(Node::is_element) {
        match local_name(child) {
            Some("type") => {
                once(&mut os_type, element_text(child, "os/type")?, "os/type")?;
                os.arch = attribute(child, "arch", "os/type")?;
                os.machine = attribute(child, "machine", "os/type")?;
            }
            Some("kernel") => once(&mut kernel, element_text(child, "os/kernel")?, "os/kernel")?,
            Some("initrd") => once(&mut initrd, element_text(child, "os/initrd")?, "os/initrd")?,
            Some("cmdline") => once(
                &mut cmdline,
                element_text(child, "os/cmdline")?,
                "os/cmdline",
            )?,
            _ => os.extra.push(raw(text, child).to_string()),
        }
    }
    let os_type = os_type.ok_or(XmlError::Missing("os/type"))?;
    if os_type != "hvm" {
        return Err(XmlError::BadValue {
            element: "os/type".to_string(),
            value: truncate(&os_type),
            reason: "only 'hvm' guests are supported".to_string(),
        });
    }
    os.os_type = os_type;
    os.kernel = kernel;
    os.initrd = initrd;
    os.cmdline = cmdline;
    Ok(os)
}

fn read_devices(text: &str, node: Node) -> Result<(Vec<DiskDef>, Vec<Device>), XmlError> {
    let disk_count = node
        .children()
        .filter(|c| c.is_element() && local_name(*c) == Some("disk"))
        .count();
    if disk_count > MAX_DISKS {
        return Err(XmlError::TooManyDisks {
            count: disk_count,
            max: MAX_DISKS,
        });
    }
    let mut disks: Vec<DiskDef> = Vec::with_capacity(disk_count);
    let mut devices = Vec::new();
    for child in node.children().filter(Node::is_element) {
        match local_name(child) {
            Some("disk") => {
                let disk = read_disk(text, child)?;
                if disks.iter().any(|d| d.target_dev == disk.target_dev) {
                    return Err(XmlError::BadValue {
                        element: "disk/target/@dev".to_string(),
                        value: disk.target_dev,
                        reason: "target used by another disk".to_string(),
                    });
                }
                devices.push(Device::Disk(disks.len()));
                disks.push(disk);
            }
            _ => devices.push(Device::Other {
                element: child.tag_name().name().to_string(),
                text: raw(text, child).to_string(),
            }),
        }
    }
    Ok((disks, devices))
}

fn read_disk(text: &str, node: Node) -> Result<DiskDef, XmlError> {
    let mut disk = DiskDef {
        disk_type: attribute(node, "type", "disk")?.unwrap_or_else(|| "file".to_string()),
        device: attribute(node, "device", "disk")?.unwrap_or_else(|| "disk".to_string()),
        driver_name: None,
        format: None,
        cache: None,
        source: None,
        target_dev: String::new(),
        target_bus: None,
        readonly: false,
        extra: Vec::new(),
    };
    let mut seen_driver = None;
    let mut seen_source = None;
    let mut seen_target = None;
    for child in node.children().filter(Node::is_element) {
        match local_name(child) {
            Some("driver") => {
                once(&mut seen_driver, (), "disk/driver")?;
                disk.driver_name = attribute(child, "name", "disk/driver")?;
                disk.format = attribute(child, "type", "disk/driver")?.map(|t| match t.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    _ => DiskFormat::Other(t),
                });
                disk.cache = attribute(child, "cache", "disk/driver")?.map(|c| match c.as_str() {
                    "none" => CacheMode::None,
                    _ => CacheMode::Other(c),
                });
            }
            Some("source") => {
                once(&mut seen_source, (), "disk/source")?;
                disk.source = match attribute(child, "file", "disk/source")? {
                    Some(file) => Some(file),
                    None => attribute(child, "dev", "disk/source")?,
                };
            }
            Some("target") => {
                once(&mut seen_target, (), "disk/target")?;
                let dev = attribute(child, "dev", "disk/target")?
                    .ok_or(XmlError::Missing("disk/target/@dev"))?;
                if dev.is_empty()
                    || dev.len() > 32
                    || !dev.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(XmlError::BadValue {
                        element: "disk/target/@dev".to_string(),
                        value: truncate(&dev),
                        reason: "not a device name".to_string(),
                    });
                }
                disk.target_dev = dev;
                disk.target_bus = attribute(child, "bus", "disk/target")?;
            }
            Some("readonly") => disk.readonly = true,
            _ => disk.extra.push(raw(text, child).to_string()),
        }
    }
    if seen_target.is_none() {
        return Err(XmlError::Missing("disk/target"));
    }
    Ok(disk)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
