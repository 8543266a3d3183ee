//! What the user asked for, validated: `vmm --kernel PATH [--initrd PATH]
//! [--cmdline STR] [--cpus N] [--memory SIZE] [--disk SPEC]...`, or a
//! Cloud Hypervisor `VmConfig` from the API's vm.create ([`from_api`]).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::layout::MAX_DISKS;

/// Most vCPUs (the IOAPIC and MADT here use 8-bit APIC ids).
pub const MAX_CPUS: u32 = 254;
/// Least guest memory: room for the boot structures and a tiny kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Image format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// QCOW2 (with its backing chain).
    Qcow2,
    /// A raw file.
    Raw,
    /// VMware VMDK (with its parent chain).
    Vmdk,
    /// Hyper-V VHDX.
    Vhdx,
    /// VHD (qemu-img's "vpc").
    Vpc,
    /// VirtualBox VDI.
    Vdi,
    /// QED (with its backing chain).
    Qed,
}

impl DiskFormat {
    /// The format as qemu-img and the image library name it.
    pub fn image_format(self) -> qcow::fs::Format {
        match self {
            DiskFormat::Qcow2 => qcow::fs::Format::Qcow2,
            DiskFormat::Raw => qcow::fs::Format::Raw,
            DiskFormat::Vmdk => qcow::fs::Format::Vmdk,
            DiskFormat::Vhdx => qcow::fs::Format::Vhdx,
            DiskFormat::Vpc => qcow::fs::Format::Vpc,
            DiskFormat::Vdi => qcow::fs::Format::Vdi,
            DiskFormat::Qed => qcow::fs::Format::Qed,
        }
    }
}

/// How a disk uses the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCache {
    /// O_DIRECT.
    None,
    /// Through the page cache.
    Writeback,
}

/// One `--disk path=IMG[,format=qcow2|raw|vmdk|vhdx|vpc|vdi|qed][,readonly=on][,cache=none|writeback]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format; probed when not given.
    pub format: Option<DiskFormat>,
    /// Whether the guest may only read it.
    pub readonly: bool,
    /// Page cache use.
    pub cache: DiskCache,
    /// The device id its counters are reported under (`_disk<N>` unless
    /// vm.create names it).
    pub id: String,
}

/// Where the guest's serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    /// The VMM's terminal: output to stdout, input from stdin.
    Tty,
    /// Nowhere.
    Null,
    /// Appended to a file.
    File(PathBuf),
    /// A Unix socket serving one client at a time (raw bytes both ways),
    /// and appended to `log` when given.
    Socket {
        /// The listening socket.
        socket: PathBuf,
        /// The log of everything the guest prints.
        log: Option<PathBuf>,
    },
}

/// Everything needed to build and run a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Linux bzImage or ELF vmlinux (or the test guest).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (device entries are appended).
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Disks, in order (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Network interfaces, in order (virtio-mmio slots after the disks).
    pub net: Vec<crate::net_config::NetConfig>,
    /// Whether VMM threads run under their seccomp filters.
    pub seccomp: bool,
    /// Whether terminal input goes to the guest's serial port (Tty mode).
    pub serial_input: bool,
    /// Where the serial port goes.
    pub serial: SerialSpec,
    /// CPUID features hidden from the guest (`--cpuid-mask`).
    pub cpuid_mask: Vec<String>,
    /// The longest the device thread spins on disk completions before it
    /// sleeps (`--poll-us`; zero never spins).
    pub poll_max: std::time::Duration,
}

fn invalid(option: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses a memory size such as `512M` or `2G` (binary units; a bare
/// number is MiB, as in QEMU's `-m`), bounded by the host's memory.
pub fn parse_memory(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 20),
        Some((i, _)) => {
            let shift = match &t[i..] {
                "K" | "k" | "KiB" => 10,
                "M" | "m" | "MiB" => 20,
                "G" | "g" | "GiB" => 30,
                "T" | "t" | "TiB" => 40,
                _ => return Err(invalid("--memory", text, "expected a size like 512M or 2G")),
            };
            (&t[..i], shift)
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| invalid("--memory", text, "expected a size like 512M or 2G"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| invalid("--memory", text, "too large"))?;
    if bytes < MIN_MEMORY {
        return Err(invalid("--memory", text, "at least 16 MiB is needed"));
    }
    if bytes % (4 << 10) != 0 {
        return Err(invalid("--memory", text, "must be a multiple of 4 KiB"));
    }
    let host = host_memory();
    if bytes > host {
        return Err(invalid(
            "--memory",
            text,
            format!("more than the host's {} MiB", host >> 20),
        ));
    }
    Ok(bytes)
}

/// The host's physical memory in bytes.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib << 10)
}

/// Parses one `--disk` specification.
pub fn parse_disk(spec: &str) -> Result<DiskConfig> {
    let mut path = None;
    let mut format = None;
    let mut readonly = false;
    let mut cache = DiskCache::Writeback;
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| invalid("--disk", spec, format!("'{part}' is not key=value")))?;
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "format" => {
                format = Some(match value {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    "vmdk" => DiskFormat::Vmdk,
                    "vhdx" => DiskFormat::Vhdx,
                    "vpc" => DiskFormat::Vpc,
                    "vdi" => DiskFormat::Vdi,
                    "qed" => DiskFormat::Qed,
                    _ => {
                        return Err(invalid(
                            "--disk",
                            spec,
                            "format must be qcow2, raw, vmdk, vhdx, vpc, vdi or qed",
                        ))
                    }
                })
            }
            "readonly" => {
                readonly = match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(invalid("--disk", spec, "readonly must be on or off")),
                }
            }
            "cache" => {
                cache = match value {
                    "none" => DiskCache::None,
                    "writeback" => DiskCache::Writeback,
                    _ => return Err(invalid("--disk", spec, "cache must be none or writeback")),
                }
            }
            _ => return Err(invalid("--disk", spec, format!("unknown key '{key}'"))),
        }
    }
    let path = path.ok_or_else(|| invalid("--disk", spec, "path=IMG is required"))?;
    Ok(DiskConfig {
        path,
        format,
        readonly,
        cache,
        id: String::new(),
    })
}

/// Checks the counts.
pub fn check_counts(cpus: u32, disks: usize) -> Result<()> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(invalid(
            "--cpus",
            &cpus.to_string(),
            format!("must be 1 to {MAX_CPUS}"),
        ));
    }
    if disks > MAX_DISKS {
        return Err(invalid(
            "--disk",
            &disks.to_string(),
            format!("at most {MAX_DISKS} disks"),
        ));
    }
    Ok(())
}

/// Checks that the disks and network interfaces fit the virtio-mmio
/// slots (one GSI each).
pub fn check_devices(disks: usize, nets: usize) -> Result<()> {
    if disks + nets > MAX_DISKS {
        return Err(invalid(
            "--net",
            &nets.to_string(),
            format!("at most {MAX_DISKS} disks and network interfaces together"),
        ));
    }
    Ok(())
}

/// The VMM-wide settings that come from `vmm`'s command line, not from
/// a VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmOptions {
    /// Whether VMM threads run under their seccomp filters.
    pub seccomp: bool,
    /// Whether terminal input goes to the serial port in Tty mode.
    pub serial_input: bool,
    /// CPUID features hidden from the guest.
    pub cpuid_mask: Vec<String>,
    /// The device thread's longest spin.
    pub poll_max: std::time::Duration,
}

/// Longest device id accepted from vm.create.
pub const MAX_ID_LEN: usize = 64;
/// Longest kernel command line accepted (the guest's limit, NUL excluded).
pub const MAX_CMDLINE_LEN: usize = crate::layout::CMDLINE_MAX_SIZE - 1;

fn bad_field(
    field: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidOption {
        option: field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Validates a Cloud Hypervisor `VmConfig` (vm.create's body) into what
/// `vmm` runs: bounded counts and sizes, a kernel that exists, formats we
/// serve, unique disk ids.
pub fn from_api(api: &vmapi::VmConfig, options: &VmmOptions) -> Result<VmConfig> {
    let cpus = &api.cpus;
    if cpus.boot_vcpus == 0 || cpus.boot_vcpus > MAX_CPUS {
        return Err(bad_field(
            "cpus.boot_vcpus",
            cpus.boot_vcpus,
            format!("must be 1 to {MAX_CPUS}"),
        ));
    }
    if cpus.max_vcpus < cpus.boot_vcpus || cpus.max_vcpus > MAX_CPUS {
        return Err(bad_field(
            "cpus.max_vcpus",
            cpus.max_vcpus,
            format!("must be boot_vcpus ({}) to {MAX_CPUS}", cpus.boot_vcpus),
        ));
    }
    let memory = api.memory.size;
    if memory < MIN_MEMORY || !memory.is_multiple_of(4 << 10) {
        return Err(bad_field(
            "memory.size",
            memory,
            "must be a multiple of 4 KiB and at least 16 MiB",
        ));
    }
    let host = host_memory();
    if memory > host {
        return Err(bad_field(
            "memory.size",
            memory,
            format!("more than the host's {} MiB", host >> 20),
        ));
    }
    let payload = &api.payload;
    if let Some(firmware) = &payload.firmware {
        return Err(bad_field(
            "payload.firmware",
            firmware.display(),
            "firmware boot is not supported; give payload.kernel",
        ));
    }
    let kernel = payload
        .kernel
        .clone()
        .ok_or_else(|| bad_field("payload.kernel", "(none)", "a kernel is required"))?;
    if !kernel.is_file() {
        return Err(bad_field(
            "payload.kernel",
            kernel.display(),
            "no such file",
        ));
    }
    if let Some(initrd) = &payload.initramfs {
        if !initrd.is_file() {
            return Err(bad_field(
                "payload.initramfs",
                initrd.display(),
                "no such file",
            ));
        }
    }
    let cmdline = payload.cmdline.clone().unwrap_or_default();
    if cmdline.len() > MAX_CMDLINE_LEN || cmdline.contains('\0') {
        return Err(bad_field(
            "payload.cmdline",
            format!("{} bytes", cmdline.len()),
            format!("at most {MAX_CMDLINE_LEN} bytes, no NUL"),
        ));
    }
    let api_disks = api.disks.as_deref().unwrap_or_default();
    if api_disks.len() > MAX_DISKS {
        return Err(bad_field(
            "disks",
            api_disks.len(),
            format!("at most {MAX_DISKS} disks"),
        ));
    }
    let mut disks: Vec<DiskConfig> = Vec::new();
    for (index, disk) in api_disks.iter().enumerate() {
        let id = disk.id.clone().unwrap_or_else(|| format!("_disk{index}"));
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control()) {
            return Err(bad_field(
                "disks[].id",
                vmapi_excerpt(&id),
                format!("1 to {MAX_ID_LEN} printable characters"),
            ));
        }
        if disks.iter().any(|d| d.id == id) {
            return Err(bad_field("disks[].id", id, "used twice"));
        }
        if disk.path.as_os_str().is_empty() {
            return Err(bad_field("disks[].path", "(empty)", "a path is required"));
        }
        let format = match disk.image_type {
            None | Some(vmapi::ImageType::Unknown) => None,
            Some(vmapi::ImageType::Qcow2) => Some(DiskFormat::Qcow2),
            Some(vmapi::ImageType::Raw) => Some(DiskFormat::Raw),
            Some(vmapi::ImageType::FlatVmdk) => Some(DiskFormat::Vmdk),
            Some(vmapi::ImageType::FixedVhd) => Some(DiskFormat::Vpc),
            Some(vmapi::ImageType::Vhdx) => Some(DiskFormat::Vhdx),
        };
        disks.push(DiskConfig {
            path: disk.path.clone(),
            format,
            readonly: disk.readonly,
            cache: if disk.direct {
                DiskCache::None
            } else {
                DiskCache::Writeback
            },
            id,
        });
    }
    let net = api
        .net
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, n)| crate::net_config::from_api(n, index, false))
        .collect::<Result<Vec<_>>>()?;
    let disk_ids: Vec<&str> = disks.iter().map(|d| d.id.as_str()).collect();
    crate::net_config::check_ids(&net, &disk_ids)?;
    check_devices(disks.len(), net.len())?;
    let serial = match &api.serial {
        None => SerialSpec::Null,
        Some(console) => serial_spec(console)?,
    };
    Ok(VmConfig {
        kernel,
        initrd: payload.initramfs.clone(),
        cmdline,
        cpus: cpus.boot_vcpus,
        memory,
        disks,
        net,
        seccomp: options.seccomp,
        serial_input: options.serial_input,
        serial,
        cpuid_mask: options.cpuid_mask.clone(),
        poll_max: options.poll_max,
    })
}

fn vmapi_excerpt(text: &str) -> String {
    text.chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

fn serial_spec(console: &vmapi::ConsoleConfig) -> Result<SerialSpec> {
    use vmapi::ConsoleMode;
    Ok(match console.mode {
        ConsoleMode::Off | ConsoleMode::Null => SerialSpec::Null,
        ConsoleMode::Tty => SerialSpec::Tty,
        ConsoleMode::File => SerialSpec::File(
            console
                .file
                .clone()
                .ok_or_else(|| bad_field("serial.file", "(none)", "File mode needs a file"))?,
        ),
        ConsoleMode::Socket => SerialSpec::Socket {
            socket: console.socket.clone().ok_or_else(|| {
                bad_field("serial.socket", "(none)", "Socket mode needs a socket")
            })?,
            log: console.file.clone(),
        },
        ConsoleMode::Pty => {
            return Err(bad_field(
                "serial.mode",
                "Pty",
                "not supported; use Socket, File, Tty or Null",
            ))
        }
    })
}

/// The Cloud Hypervisor `VmConfig` describing a VM given on `vmm`'s
/// command line (for vm.info), with CH's default disk ids.
pub fn to_api(config: &VmConfig) -> vmapi::VmConfig {
    vmapi::VmConfig {
        cpus: vmapi::CpusConfig {
            boot_vcpus: config.cpus,
            max_vcpus: config.cpus,
        },
        memory: vmapi::MemoryConfig {
            size: config.memory,
        },
        payload: vmapi::PayloadConfig {
            firmware: None,
            kernel: Some(config.kernel.clone()),
            cmdline: Some(config.cmdline.clone()),
            initramfs: config.initrd.clone(),
        },
        disks: Some(
            config
                .disks
                .iter()
                .map(|d| vmapi::DiskConfig {
                    path: d.path.clone(),
                    readonly: d.readonly,
                    direct: d.cache == DiskCache::None,
                    id: Some(d.id.clone()),
                    // CH has no type for vdi and qed disks: Unknown (probed).
                    image_type: d.format.map(|f| match f {
                        DiskFormat::Qcow2 => vmapi::ImageType::Qcow2,
                        DiskFormat::Raw => vmapi::ImageType::Raw,
                        DiskFormat::Vmdk => vmapi::ImageType::FlatVmdk,
                        DiskFormat::Vhdx => vmapi::ImageType::Vhdx,
                        DiskFormat::Vpc => vmapi::ImageType::FixedVhd,
                        DiskFormat::Vdi | DiskFormat::Qed => vmapi::ImageType::Unknown,
                    }),
                })
                .collect(),
        ),
        net: (!config.net.is_empty())
            .then(|| config.net.iter().map(crate::net_config::to_api).collect()),
        serial: Some(match &config.serial {
            SerialSpec::Tty => vmapi::ConsoleConfig::of_mode(vmapi::ConsoleMode::Tty),
            SerialSpec::Null => vmapi::ConsoleConfig::of_mode(vmapi::ConsoleMode::Null),
            SerialSpec::File(file) => vmapi::ConsoleConfig {
                file: Some(file.clone()),
                socket: None,
                mode: vmapi::ConsoleMode::File,
            },
            SerialSpec::Socket { socket, log } => vmapi::ConsoleConfig {
                file: log.clone(),
                socket: Some(socket.clone()),
                mode: vmapi::ConsoleMode::Socket,
            },
        }),
        console: None,
    }
}

/// The configuration as vm.info reports it: as given, with defaults
/// filled (disk ids, serial mode, max_vcpus).
pub fn with_defaults(api: &vmapi::VmConfig) -> vmapi::VmConfig {
    let mut filled = api.clone();
    if let Some(disks) = &mut filled.disks {
        for (index, disk) in disks.iter_mut().enumerate() {
            disk.id.get_or_insert_with(|| format!("_disk{index}"));
        }
    }
    if let Some(nets) = &mut filled.net {
        for (index, net) in nets.iter_mut().enumerate() {
            net.id.get_or_insert_with(|| format!("_net{index}"));
        }
    }
    filled
        .serial
        .get_or_insert_with(|| vmapi::ConsoleConfig::of_mode(vmapi::ConsoleMode::Null));
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("128M").unwrap(), 128 << 20);
        assert_eq!(parse_memory("256").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        for bad in [
            "0",
            "0M",
            "1M",
            "12X",
            "",
            "M",
            "99999999999999999999G",
            "100000T",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_specs() {
        let d = parse_disk("path=a.qcow2,format=qcow2,readonly=on,cache=none").unwrap();
        assert_eq!(d.path, PathBuf::from("a.qcow2"));
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert!(d.readonly);
        assert_eq!(d.cache, DiskCache::None);
        for (name, want) in [
            ("vmdk", DiskFormat::Vmdk),
            ("vhdx", DiskFormat::Vhdx),
            ("vpc", DiskFormat::Vpc),
            ("vdi", DiskFormat::Vdi),
            ("qed", DiskFormat::Qed),
        ] {
            let d = parse_disk(&format!("path=d.{name},format={name}")).unwrap();
            assert_eq!(d.format, Some(want));
            assert_eq!(want.image_format().name(), name);
        }
        let d = parse_disk("path=b.raw").unwrap();
        assert_eq!(
            (d.format, d.readonly, d.cache),
            (None, false, DiskCache::Writeback)
        );
        for bad in [
            "a.qcow2",
            "path=",
            "path=a,format=vhd",
            "path=a,format=qcow",
            "path=a,readonly=maybe",
            "path=a,x=1",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        assert!(check_counts(0, 0).is_err());
        assert!(check_counts(1, 20).is_err());
        assert!(check_counts(2, 1).is_ok());
    }

    fn options() -> VmmOptions {
        VmmOptions {
            seccomp: true,
            serial_input: false,
            cpuid_mask: Vec::new(),
            poll_max: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn api_configs_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, b"x").unwrap();
        let json = |extra: &str| {
            format!(
                r#"{{"payload": {{"kernel": "{}"}}, "memory": {{"size": 33554432}}{extra}}}"#,
                kernel.display()
            )
        };
        let good: vmapi::VmConfig = serde_json::from_str(&json(
            r#", "disks": [{"path": "/a", "image_type": "Qcow2", "direct": true}, {"path": "/b", "id": "vdb"}], "serial": {"mode": "Socket", "socket": "/s", "file": "/l"}"#,
        ))
        .unwrap();
        let config = from_api(&good, &options()).unwrap();
        assert_eq!(config.memory, 32 << 20);
        assert_eq!(
            (config.disks[0].id.as_str(), config.disks[1].id.as_str()),
            ("_disk0", "vdb")
        );
        assert_eq!(config.disks[0].format, Some(DiskFormat::Qcow2));
        assert_eq!(config.disks[0].cache, DiskCache::None);
        assert!(matches!(config.serial, SerialSpec::Socket { .. }));
        assert_eq!(
            with_defaults(&good).disks.unwrap()[0].id.as_deref(),
            Some("_disk0")
        );
        let round = to_api(&config);
        assert_eq!(round.disks.as_ref().unwrap()[1].id.as_deref(), Some("vdb"));
        for bad in [
            r#", "cpus": {"boot_vcpus": 0, "max_vcpus": 1}"#,
            r#", "cpus": {"boot_vcpus": 2, "max_vcpus": 1}"#,
            r#", "cpus": {"boot_vcpus": 1000, "max_vcpus": 1000}"#,
            r#", "disks": [{"path": "/a", "id": "x"}, {"path": "/b", "id": "x"}]"#,
            r#", "serial": {"mode": "Socket"}"#,
            r#", "serial": {"mode": "Pty"}"#,
        ] {
            let config: vmapi::VmConfig = serde_json::from_str(&json(bad)).unwrap();
            let err = from_api(&config, &options()).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
        let vhdx: vmapi::VmConfig = serde_json::from_str(&json(
            r#", "disks": [{"path": "/a", "image_type": "Vhdx"}]"#,
        ))
        .unwrap();
        let config = from_api(&vhdx, &options()).unwrap();
        assert_eq!(config.disks[0].format, Some(DiskFormat::Vhdx));
        let mut no_kernel = good.clone();
        no_kernel.payload.kernel = Some(dir.path().join("missing"));
        assert!(from_api(&no_kernel, &options())
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        let mut small = good;
        small.memory.size = 1 << 20;
        assert!(from_api(&small, &options()).is_err());
    }
}
