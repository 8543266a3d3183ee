//! virt-install's command line: `--name`, `--memory`, `--vcpus`, `--disk`
//! (repeatable), `--cdrom`, `--location`, `--boot`, `--import`,
//! `--osinfo`/`--os-variant`, `--noautoconsole`/`--autoconsole`,
//! `--print-xml`, `--dry-run`, `--graphics none`, `--network` (bridge or
//! none, [`super::network`]),
//! `--extra-args`, parsed into validated [`InstallOptions`]. Options take
//! their value as the next argument or after `=`; sub-options are
//! `key=value` pairs separated by commas, as virt-install's.

use super::error::InstallError;
use super::network::{self, NetworkOption};
use crate::vm::xml::DomainName;

/// The most memory an install may ask for, in MiB (16 TiB, the XML
/// reader's limit).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;
/// The most vCPUs (the XML reader's limit).
pub const MAX_VCPUS: u32 = 254;
/// The largest disk `size=` in GiB (qcow2's practical limit here).
pub const MAX_DISK_GIB: f64 = 64.0 * 1024.0;
/// Disks at most (the XML reader's limit, less one for the disc).
pub const MAX_INSTALL_DISKS: usize = 18;
/// `--network` interfaces at most (the XML reader's limit).
pub const MAX_INSTALL_NETWORKS: usize = crate::vm::xml::interface::MAX_INTERFACES;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// qcow2.
    Qcow2,
    /// raw.
    Raw,
}

impl ImageFormat {
    /// The name in the XML and file extensions.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiskOption {
    /// `path=` (or the first bare value).
    pub path: Option<String>,
    /// `size=` in GiB.
    pub size_gib: Option<f64>,
    /// `format=`.
    pub format: Option<ImageFormat>,
    /// `device=cdrom`.
    pub cdrom: bool,
    /// `readonly=on`.
    pub readonly: bool,
    /// `cache=`.
    pub cache: Option<String>,
    /// `backing_store=`.
    pub backing_store: Option<String>,
}

/// `--boot kernel=,initrd=,kernel_args=` (or `--location PATH,kernel=,initrd=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectBoot {
    /// The kernel.
    pub kernel: Option<String>,
    /// The initrd.
    pub initrd: Option<String>,
    /// The command line (`kernel_args=` or `cmdline=`).
    pub cmdline: Option<String>,
}

/// Everything `vm install` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOptions {
    /// `--name`.
    pub name: DomainName,
    /// `--memory` (or `memory=`) in MiB: the maximum.
    pub memory_mib: u64,
    /// `currentMemory=` in MiB.
    pub current_memory_mib: Option<u64>,
    /// `maxMemory=` in MiB (memory hotplug ceiling; kept in the XML).
    pub max_memory_mib: Option<u64>,
    /// `--vcpus N`: how many run.
    pub vcpus: u32,
    /// `maxvcpus=`.
    pub max_vcpus: Option<u32>,
    /// `sockets=`, `cores=`, `threads=`.
    pub topology: Option<(u32, u32, u32)>,
    /// `cpuset=`.
    pub cpuset: Option<String>,
    /// Every `--disk`.
    pub disks: Vec<DiskOption>,
    /// `--cdrom PATH`.
    pub cdrom: Option<String>,
    /// `--location PATH` and its `kernel=`/`initrd=`.
    pub location: Option<(String, DirectBoot)>,
    /// `--boot kernel=...`.
    pub boot: DirectBoot,
    /// `--extra-args`: appended to the command line.
    pub extra_args: Option<String>,
    /// Every `--network bridge=...` (`none` adds nothing).
    pub networks: Vec<NetworkOption>,
    /// `--import`.
    pub import: bool,
    /// Attach the console after starting (`--autoconsole text`, the
    /// default).
    pub autoconsole: bool,
    /// `--print-xml`.
    pub print_xml: bool,
    /// `--dry-run`.
    pub dry_run: bool,
}

fn err(option: &'static str, reason: impl Into<String>) -> InstallError {
    InstallError::Option {
        option,
        reason: reason.into(),
    }
}

/// Options that take a value.
const VALUED: &[&str] = &[
    "name",
    "n",
    "memory",
    "ram",
    "r",
    "vcpus",
    "disk",
    "cdrom",
    "c",
    "location",
    "l",
    "boot",
    "osinfo",
    "os-variant",
    "autoconsole",
    "graphics",
    "network",
    "w",
    "extra-args",
    "x",
    "virt-type",
    "arch",
    "machine",
    "cpu",
    "console",
    "serial",
    "controller",
    "memballoon",
    "rng",
    "features",
    "clock",
    "metadata",
    "description",
    "noreboot-placeholder",
];

/// Options that are flags.
const FLAGS: &[&str] = &[
    "noautoconsole",
    "print-xml",
    "dry-run",
    "import",
    "noreboot",
    "wait-placeholder",
    "nographics",
    "hvm",
    "quiet",
    "q",
    "noapic",
    "noacpi",
];

/// Parses `vm install`'s arguments.
pub fn parse(args: &[String]) -> Result<InstallOptions, InstallError> {
    let mut name = None;
    let mut memory = None;
    let mut vcpus = None;
    let mut disks = Vec::new();
    let mut cdrom = None;
    let mut location = None;
    let mut networks = Vec::new();
    let mut boot = DirectBoot::default();
    let mut extra_args = None;
    let mut import = false;
    let mut autoconsole = true;
    let mut print_xml = false;
    let mut dry_run = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(long) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(err("vm install", format!("unrecognized argument '{arg}'")));
        };
        let (key, inline) = match long.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (long, None),
        };
        if FLAGS.contains(&key) {
            if inline.is_some() {
                return Err(err("vm install", format!("--{key} takes no value")));
            }
            match key {
                "noautoconsole" => autoconsole = false,
                "print-xml" => print_xml = true,
                "dry-run" => dry_run = true,
                "import" => import = true,
                "nographics" | "hvm" | "noreboot" | "quiet" | "q" => {}
                other => return Err(err("vm install", format!("--{other} is not supported"))),
            }
            continue;
        }
        if !VALUED.contains(&key) {
            return Err(err(
                "vm install",
                format!("unrecognized argument '--{key}'"),
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = args
                    .get(i)
                    .ok_or_else(|| err("vm install", format!("--{key} expects an argument")))?;
                i += 1;
                v.clone()
            }
        };
        match key {
            "name" | "n" => name = Some(value),
            "memory" | "ram" | "r" => memory = Some(value),
            "vcpus" => vcpus = Some(value),
            "disk" => {
                if disks.len() >= MAX_INSTALL_DISKS {
                    return Err(err("--disk", format!("at most {MAX_INSTALL_DISKS} disks")));
                }
                if value != "none" {
                    disks.push(parse_disk(&value)?);
                }
            }
            "cdrom" | "c" => cdrom = Some(value),
            "location" | "l" => location = Some(parse_location(&value)?),
            "boot" => boot = parse_boot(&value, boot)?,
            "extra-args" | "x" => extra_args = Some(value),
            "osinfo" | "os-variant" => check_osinfo(&value)?,
            "autoconsole" => match value.as_str() {
                "none" => autoconsole = false,
                "text" | "default" => autoconsole = true,
                other => {
                    return Err(err(
                        "--autoconsole",
                        format!("'{other}' is not supported (none or text)"),
                    ))
                }
            },
            "graphics" => {
                let kind = value.split(',').next().unwrap_or("");
                if kind != "none" {
                    return Err(err(
                        "--graphics",
                        format!("'{kind}' is not supported: only 'none'"),
                    ));
                }
            }
            "network" | "w" => {
                if let Some(net) = network::parse(&value)? {
                    if networks.len() >= MAX_INSTALL_NETWORKS {
                        return Err(err(
                            "--network",
                            format!("more than {MAX_INSTALL_NETWORKS} interfaces"),
                        ));
                    }
                    networks.push(net);
                }
            }
            other => {
                return Err(err("vm install", format!("--{other} is not supported")));
            }
        }
    }
    let name = name.ok_or_else(|| err("--name", "is required"))?;
    let name = DomainName::new(&name).map_err(|e| err("--name", e.to_string()))?;
    let memory =
        memory.ok_or_else(|| err("--memory", "amount in MiB is required for the install"))?;
    let (memory_mib, current_memory_mib, max_memory_mib) = parse_memory(&memory)?;
    let (vcpus, max_vcpus, topology, cpuset) = match vcpus {
        Some(v) => parse_vcpus(&v)?,
        None => (1, None, None, None),
    };
    let methods = usize::from(cdrom.is_some())
        + usize::from(location.is_some())
        + usize::from(import)
        + usize::from(boot.kernel.is_some() && cdrom.is_none() && location.is_none());
    if methods == 0 {
        return Err(err(
            "vm install",
            "an install method must be specified (--cdrom ISO, --location ISO|FOLDER, --import, --boot kernel=)",
        ));
    }
    if cdrom.is_some() && location.is_some() {
        return Err(err("--cdrom", "cannot be used with --location"));
    }
    if import && disks.is_empty() {
        return Err(err("--import", "needs at least one --disk"));
    }
    if import && boot.kernel.is_none() {
        return Err(err(
            "--import",
            "this VMM has no firmware to boot a disk: give --boot kernel=",
        ));
    }
    Ok(InstallOptions {
        name,
        memory_mib,
        current_memory_mib,
        max_memory_mib,
        vcpus,
        max_vcpus,
        topology,
        cpuset,
        disks,
        cdrom,
        location,
        boot,
        extra_args,
        networks,
        import,
        autoconsole,
        print_xml,
        dry_run,
    })
}

/// Splits `a=b,c=d` (a bare first value comes back with the key "").
fn pairs(value: &str) -> Vec<(&str, &str)> {
    value
        .split(',')
        .enumerate()
        .map(|(index, part)| match part.split_once('=') {
            Some((k, v)) => (k, v),
            None if index == 0 => ("", part),
            None => (part, ""),
        })
        .collect()
}

fn number<T: std::str::FromStr>(
    option: &'static str,
    key: &str,
    value: &str,
) -> Result<T, InstallError> {
    value
        .parse()
        .map_err(|_| err(option, format!("{key}='{value}' is not a number")))
}

fn parse_memory(value: &str) -> Result<(u64, Option<u64>, Option<u64>), InstallError> {
    let mut memory = None;
    let mut current = None;
    let mut max = None;
    for (key, v) in pairs(value) {
        match key {
            "" | "memory" => memory = Some(number::<u64>("--memory", "memory", v)?),
            "currentMemory" => current = Some(number::<u64>("--memory", key, v)?),
            "maxMemory" => max = Some(number::<u64>("--memory", key, v)?),
            "maxmemory" => max = Some(number::<u64>("--memory", key, v)?),
            other => return Err(err("--memory", format!("unknown sub-option '{other}'"))),
        }
    }
    let memory = memory
        .or(current)
        .ok_or_else(|| err("--memory", "amount in MiB is required for the install"))?;
    let current = current.filter(|c| *c != memory);
    for (what, v) in [
        ("memory", Some(memory)),
        ("currentMemory", current),
        ("maxMemory", max),
    ] {
        if let Some(v) = v {
            if v == 0 || v > MAX_MEMORY_MIB {
                return Err(err(
                    "--memory",
                    format!("{what}={v} MiB is out of range (1 to {MAX_MEMORY_MIB})"),
                ));
            }
        }
    }
    if let Some(c) = current {
        if c > memory {
            return Err(err(
                "--memory",
                format!("currentMemory={c} is over memory={memory}"),
            ));
        }
    }
    if let Some(m) = max {
        if m < memory {
            return Err(err(
                "--memory",
                format!("maxMemory={m} is under memory={memory}"),
            ));
        }
    }
    Ok((memory, current, max))
}

type Vcpus = (u32, Option<u32>, Option<(u32, u32, u32)>, Option<String>);

fn parse_vcpus(value: &str) -> Result<Vcpus, InstallError> {
    let mut vcpus = None;
    let mut max = None;
    let (mut sockets, mut cores, mut threads) = (None, None, None);
    let mut cpuset = None;
    for (key, v) in pairs(value) {
        match key {
            "" | "vcpus" => vcpus = Some(number::<u32>("--vcpus", "vcpus", v)?),
            "maxvcpus" => max = Some(number::<u32>("--vcpus", key, v)?),
            "sockets" => sockets = Some(number::<u32>("--vcpus", key, v)?),
            "cores" => cores = Some(number::<u32>("--vcpus", key, v)?),
            "threads" => threads = Some(number::<u32>("--vcpus", key, v)?),
            "cpuset" => cpuset = Some(v.to_string()),
            other => return Err(err("--vcpus", format!("unknown sub-option '{other}'"))),
        }
    }
    let topology = match (sockets, cores, threads) {
        (None, None, None) => None,
        (s, c, t) => Some((s.unwrap_or(1), c.unwrap_or(1), t.unwrap_or(1))),
    };
    let topology_total = topology.map(|(s, c, t)| u64::from(s) * u64::from(c) * u64::from(t));
    let vcpus = match (vcpus, topology_total) {
        (Some(v), _) => v,
        (None, Some(total)) => u32::try_from(total).unwrap_or(u32::MAX),
        (None, None) => 1,
    };
    let ceiling = max.unwrap_or(vcpus);
    if vcpus == 0 || ceiling > MAX_VCPUS {
        return Err(err(
            "--vcpus",
            format!("{ceiling} is out of range (1 to {MAX_VCPUS})"),
        ));
    }
    if vcpus > ceiling {
        return Err(err(
            "--vcpus",
            format!("requested cpu amount exceeds maximum ({vcpus} > {ceiling})"),
        ));
    }
    if let Some(total) = topology_total {
        if total != u64::from(ceiling) {
            return Err(err(
                "--vcpus",
                format!("sockets*cores*threads ({total}) must equal the maximum vCPUs ({ceiling})"),
            ));
        }
    }
    if let Some(set) = &cpuset {
        crate::vm::resources::cpuset::CpuSet::parse(set)
            .map_err(|reason| err("--vcpus", reason))?;
    }
    Ok((vcpus, max.filter(|m| *m != vcpus), topology, cpuset))
}

fn parse_disk(value: &str) -> Result<DiskOption, InstallError> {
    let mut disk = DiskOption::default();
    for (key, v) in pairs(value) {
        match key {
            "" | "path" => disk.path = Some(v.to_string()),
            "size" => {
                let size: f64 = number("--disk", "size", v)?;
                if !(size > 0.0 && size <= MAX_DISK_GIB) {
                    return Err(err(
                        "--disk",
                        format!("size={v} GiB is out of range (over 0, at most {MAX_DISK_GIB})"),
                    ));
                }
                disk.size_gib = Some(size);
            }
            "format" => {
                disk.format = Some(match v {
                    "qcow2" => ImageFormat::Qcow2,
                    "raw" => ImageFormat::Raw,
                    other => {
                        return Err(err(
                            "--disk",
                            format!("format '{other}' is not supported (qcow2 or raw)"),
                        ))
                    }
                })
            }
            "bus" => {
                if v != "virtio" {
                    return Err(err(
                        "--disk",
                        format!("bus '{v}' is not supported: only virtio"),
                    ));
                }
            }
            "device" => match v {
                "disk" => disk.cdrom = false,
                "cdrom" => disk.cdrom = true,
                other => {
                    return Err(err(
                        "--disk",
                        format!("device '{other}' is not supported (disk or cdrom)"),
                    ))
                }
            },
            "readonly" | "shareable" | "sparse" => {
                let on = match v {
                    "on" | "yes" | "true" | "" => true,
                    "off" | "no" | "false" => false,
                    other => {
                        return Err(err("--disk", format!("{key}='{other}' is not on or off")))
                    }
                };
                if key == "readonly" {
                    disk.readonly = on;
                }
            }
            "cache" => match v {
                "none" | "writeback" | "writethrough" | "directsync" | "unsafe" | "default" => {
                    disk.cache = Some(v.to_string())
                }
                other => {
                    return Err(err(
                        "--disk",
                        format!("cache '{other}' is not a cache mode"),
                    ))
                }
            },
            "backing_store" => disk.backing_store = Some(v.to_string()),
            other => return Err(err("--disk", format!("unknown sub-option '{other}'"))),
        }
    }
    if disk.path.as_deref() == Some("") {
        return Err(err("--disk", "empty path"));
    }
    if disk.path.is_none() && disk.size_gib.is_none() {
        return Err(err("--disk", "needs path= or size="));
    }
    Ok(disk)
}

fn parse_boot(value: &str, mut boot: DirectBoot) -> Result<DirectBoot, InstallError> {
    for (key, v) in pairs(value) {
        match key {
            "kernel" => boot.kernel = Some(v.to_string()),
            "initrd" => boot.initrd = Some(v.to_string()),
            "kernel_args" | "cmdline" => boot.cmdline = Some(v.to_string()),
            // Boot device orders mean nothing without firmware.
            "" if matches!(v, "hd" | "cdrom" | "network" | "menu=on" | "uefi") => {}
            other => return Err(err("--boot", format!("unknown sub-option '{other}'"))),
        }
    }
    Ok(boot)
}

fn parse_location(value: &str) -> Result<(String, DirectBoot), InstallError> {
    let mut path = None;
    let mut boot = DirectBoot::default();
    for (key, v) in pairs(value) {
        match key {
            "" => path = Some(v.to_string()),
            "kernel" => boot.kernel = Some(v.to_string()),
            "initrd" => boot.initrd = Some(v.to_string()),
            other => return Err(err("--location", format!("unknown sub-option '{other}'"))),
        }
    }
    let path = path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| err("--location", "needs a path"))?;
    Ok((path, boot))
}

/// `--osinfo`/`--os-variant`: accepted (we have no osinfo database);
/// `require=on` with an unknown name would need one, so only its known
/// keys are checked.
fn check_osinfo(value: &str) -> Result<(), InstallError> {
    for (key, v) in pairs(value) {
        match key {
            "" | "name" | "short-id" | "id" => {}
            "detect" | "require" if matches!(v, "on" | "off" | "yes" | "no") => {}
            other => return Err(err("--osinfo", format!("unknown sub-option '{other}'"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn refused(line: &str) -> String {
        parse(&args(line)).unwrap_err().to_string()
    }

    #[test]
    fn the_seed_lines() {
        let o = parse(&args(
            "--name my_vm --memory 2048 --vcpus 2 --disk size=20 --cdrom /x.iso",
        ))
        .unwrap();
        assert_eq!(o.name.as_str(), "my_vm");
        assert_eq!((o.memory_mib, o.vcpus), (2048, 2));
        assert_eq!(o.disks[0].size_gib, Some(20.0));
        assert_eq!(o.cdrom.as_deref(), Some("/x.iso"));
        assert!(o.autoconsole);
        let o = parse(&args("--name=myvm --memory=2048 --vcpus=2 --disk path=myvm.img --cdrom /x.iso --noautoconsole")).unwrap();
        assert_eq!(o.disks[0].path.as_deref(), Some("myvm.img"));
        assert!(!o.autoconsole);
    }

    #[test]
    fn sub_options() {
        let o = parse(&args(
            "--name a --memory memory=512,currentMemory=256,maxMemory=1024 --vcpus 2,maxvcpus=4,sockets=1,cores=2,threads=2 \
             --disk /d.img,size=1.5,format=raw,bus=virtio,cache=none,readonly=on --boot kernel=/k,initrd=/i,kernel_args=quiet \
             --osinfo detect=on,require=off --graphics none --network none --autoconsole none --print-xml --dry-run",
        ))
        .unwrap();
        assert_eq!(
            (o.memory_mib, o.current_memory_mib, o.max_memory_mib),
            (512, Some(256), Some(1024))
        );
        assert_eq!(
            (o.vcpus, o.max_vcpus, o.topology),
            (2, Some(4), Some((1, 2, 2)))
        );
        let d = &o.disks[0];
        assert_eq!(
            (d.path.as_deref(), d.size_gib, d.format),
            (Some("/d.img"), Some(1.5), Some(ImageFormat::Raw))
        );
        assert!(d.readonly);
        assert_eq!(o.boot.cmdline.as_deref(), Some("quiet"));
        assert!(o.print_xml && o.dry_run && !o.autoconsole);
    }

    #[test]
    fn mistakes_get_one_line() {
        assert_eq!(refused("--memory 1 --cdrom x"), "--name: is required");
        assert!(refused("--name a --cdrom x").contains("--memory"));
        assert!(refused("--name a --memory 1").contains("install method"));
        assert!(
            refused("--name a --memory 1 --cdrom x --vcpus 4,maxvcpus=2")
                .contains("requested cpu amount exceeds maximum (4 > 2)")
        );
        assert!(refused("--name a --memory 0 --cdrom x").contains("out of range"));
        assert!(refused("--name a --memory 1 --cdrom x --disk size=-1").contains("out of range"));
        assert!(
            refused("--name a --memory 1 --cdrom x --disk bus=ide,size=1").contains("only virtio")
        );
        assert!(refused("--name a --memory 1 --cdrom x --graphics vnc").contains("only 'none'"));
        assert!(refused("--name a --memory 1 --cdrom x --bogus").contains("unrecognized"));
        assert!(refused("--name a/b --memory 1 --cdrom x").contains("--name"));
        assert!(refused("--name a --memory 1 --import --disk size=1").contains("--boot kernel="));
        for line in [
            "--name a --memory x --cdrom y",
            "--name a --memory 1 --cdrom x --disk format=vmdk,size=1",
        ] {
            assert!(!refused(line).contains('\n'));
        }
    }
}
