//! libvirt domain XML: the validated definition of a domain
//! ([`DomainDef`]), read by [`parse_domain`] with limits set before any
//! parsing, and written back by [`DomainDef::to_xml`] in libvirt's layout.
//! Elements we do not model are kept as the text they were given in and
//! printed back unchanged, in their place.

pub mod interface;
mod parse;
pub mod tune;
pub mod units;
mod uuid;
mod write;
/// Escaping for attribute values (commands that write an element).
pub(crate) use write::attr as escape_attr;

pub use parse::{parse_domain, MAX_DEPTH, MAX_DISKS, MAX_NODES, MAX_XML_BYTES};
pub use uuid::Uuid;

/// Why a domain XML was refused. Each message is one line naming what is
/// wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// The input is larger than [`MAX_XML_BYTES`].
    #[error("XML error: document of {bytes} bytes is over the limit of {max}")]
    TooLarge {
        /// Size of the input.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not UTF-8.
    #[error("XML error: document is not valid UTF-8")]
    NotUtf8,
    /// The XML parser refused the document (malformed, DTD, entity, too
    /// many nodes).
    #[error("XML error: {0}")]
    Malformed(String),
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("XML error: elements nest deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The root element is not `<domain>`.
    #[error("XML error: expected root element 'domain', not '{0}'")]
    NotADomain(String),
    /// A domain type we cannot run.
    #[error("unsupported configuration: domain type '{0}' is not supported (only 'kvm')")]
    DomainType(String),
    /// A required element is missing.
    #[error("XML error: missing element '{0}'")]
    Missing(&'static str),
    /// An element that may appear once appears again.
    #[error("XML error: element '{0}' appears more than once")]
    Duplicate(String),
    /// An element's value is not acceptable.
    #[error("XML error: invalid value '{value}' in '{element}': {reason}")]
    BadValue {
        /// The element or attribute path.
        element: String,
        /// The offending value (cut to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More disks than a VM may have.
    #[error("XML error: {count} disks, at most {max} are allowed")]
    TooManyDisks {
        /// How many the document has (counted up to the limit plus one).
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// A domain name: non-empty, at most 200 bytes, no `/`, no control
/// characters, not `.` or `..` nor starting with a dot (it names files in
/// the store).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(String);

/// The longest domain name we accept, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

impl DomainName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, XmlError> {
        let bad = |reason: &str| XmlError::BadValue {
            element: "name".to_string(),
            value: units::truncate(name),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(bad("longer than 200 bytes"));
        }
        if name.contains('/') {
            return Err(bad("name cannot contain '/'"));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(bad("name cannot contain control characters"));
        }
        if name.starts_with('.') {
            return Err(bad("name cannot start with '.'"));
        }
        if name.trim() != name {
            return Err(bad("name cannot start or end with white space"));
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DomainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A disk's image format (`<driver type=...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFormat {
    /// qcow2.
    Qcow2,
    /// raw.
    Raw,
    /// Another format libvirt knows and we do not run (refused at start).
    Other(String),
}

/// A disk's cache mode (`<driver cache=...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheMode {
    /// `none`: O_DIRECT.
    None,
    /// `writeback`, `writethrough`, `directsync`, `unsafe`, `default`.
    Other(String),
}

/// One `<disk>` of `<devices>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    /// `type` attribute (`file`, `block`, `network`, ...).
    pub disk_type: String,
    /// `device` attribute (`disk`, `cdrom`, ...).
    pub device: String,
    /// `<driver name=...>`.
    pub driver_name: Option<String>,
    /// `<driver type=...>`.
    pub format: Option<DiskFormat>,
    /// `<driver cache=...>`.
    pub cache: Option<CacheMode>,
    /// `<source file=...>` (or `dev=` for block disks).
    pub source: Option<String>,
    /// `<target dev=...>`.
    pub target_dev: String,
    /// `<target bus=...>`.
    pub target_bus: Option<String>,
    /// `<readonly/>`.
    pub readonly: bool,
    /// Children we do not model (`<address>`, `<serial>`, `<boot>`, ...),
    /// as given.
    pub extra: Vec<String>,
}

impl DiskDef {
    /// Whether the guest sees the disk read-only (`<readonly/>` or a
    /// cdrom).
    pub fn is_readonly(&self) -> bool {
        self.readonly || self.device == "cdrom"
    }
}

/// `<os>`: the guest type and direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsDef {
    /// `<type>` text (`hvm`).
    pub os_type: String,
    /// `<type arch=...>`.
    pub arch: Option<String>,
    /// `<type machine=...>`.
    pub machine: Option<String>,
    /// `<kernel>`.
    pub kernel: Option<String>,
    /// `<initrd>`.
    pub initrd: Option<String>,
    /// `<cmdline>`.
    pub cmdline: Option<String>,
    /// Other children (`<boot>`, `<loader>`, ...), as given.
    pub extra: Vec<String>,
}

/// A child of `<devices>` in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A disk (index into [`DomainDef::disks`]).
    Disk(usize),
    /// Any other device, as given, with its element name (`serial`,
    /// `console`, `interface`, `graphics`, ...).
    Other {
        /// Element name.
        element: String,
        /// The element's text as given.
        text: String,
    },
}

/// A child of `<domain>` in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `<name>`.
    Name,
    /// `<uuid>`.
    Uuid,
    /// `<memory>`.
    Memory,
    /// `<currentMemory>`.
    CurrentMemory,
    /// `<vcpu>`.
    Vcpu,
    /// `<os>`.
    Os,
    /// `<devices>`.
    Devices,
    /// An element we do not model, as given.
    Other(String),
}

/// A validated libvirt domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    /// `<domain type=...>` (always `kvm`).
    pub domain_type: String,
    /// Namespace declarations of the root (`xmlns:qemu=...`), kept for
    /// the elements we print back as given.
    pub namespaces: Vec<(String, String)>,
    /// `<name>`.
    pub name: DomainName,
    /// `<uuid>` (made when absent).
    pub uuid: Uuid,
    /// `<memory>` in KiB.
    pub memory_kib: u64,
    /// `<currentMemory>` in KiB (at most `memory_kib`).
    pub current_memory_kib: u64,
    /// `<vcpu>`: the maximum number of vCPUs.
    pub vcpus: u32,
    /// `<vcpu current=...>`: how many run (at most `vcpus`).
    pub vcpus_current: u32,
    /// `<vcpu placement=...>`.
    pub vcpu_placement: Option<String>,
    /// `<vcpu cpuset=...>`: the host CPUs vCPUs without a `<vcpupin>`
    /// run on.
    pub vcpu_cpuset: Option<crate::vm::resources::cpuset::CpuSet>,
    /// `<os>`.
    pub os: OsDef,
    /// The disks in document order.
    pub disks: Vec<DiskDef>,
    /// `<devices>` children in document order.
    pub devices: Vec<Device>,
    /// `<domain>` children in document order.
    pub items: Vec<Item>,
}

impl DomainDef {
    /// The disk whose target is `dev` or whose source is `dev`, as
    /// libvirt's virDomainDiskByName looks one up.
    pub fn disk(&self, dev: &str) -> Option<&DiskDef> {
        self.disks
            .iter()
            .find(|d| d.target_dev == dev)
            .or_else(|| self.disks.iter().find(|d| d.source.as_deref() == Some(dev)))
    }

    /// Elements of `<devices>` other than disks, by element name.
    pub fn other_devices(&self) -> impl Iterator<Item = (&str, &str)> {
        self.devices.iter().filter_map(|d| match d {
            Device::Other { element, text } => Some((element.as_str(), text.as_str())),
            Device::Disk(_) => None,
        })
    }
}
