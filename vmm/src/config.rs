//! What the user asked for, validated: `vmm --kernel PATH [--initrd PATH]
//! [--cmdline STR] [--cpus N] [--memory SIZE] [--disk SPEC]...`.

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
}

/// How a disk uses the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCache {
    /// O_DIRECT.
    None,
    /// Through the page cache.
    Writeback,
}

/// One `--disk path=IMG[,format=qcow2|raw][,readonly=on][,cache=none|writeback]`.
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
    /// Whether VMM threads run under their seccomp filters.
    pub seccomp: bool,
    /// Whether terminal input goes to the guest's serial port.
    pub serial_input: bool,
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
                    _ => return Err(invalid("--disk", spec, "format must be qcow2 or raw")),
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
        let d = parse_disk("path=b.raw").unwrap();
        assert_eq!(
            (d.format, d.readonly, d.cache),
            (None, false, DiskCache::Writeback)
        );
        for bad in [
            "a.qcow2",
            "path=",
            "path=a,format=vmdk",
            "path=a,readonly=maybe",
            "path=a,x=1",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        assert!(check_counts(0, 0).is_err());
        assert!(check_counts(1, 20).is_err());
        assert!(check_counts(2, 1).is_ok());
    }
}
