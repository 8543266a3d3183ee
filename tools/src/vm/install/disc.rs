//! Booting an installer disc without firmware: find the kernel, initrd
//! and command line an ISO 9660 disc boots (its isolinux, syslinux or
//! grub configuration, else the known trees of Debian, Ubuntu, Fedora
//! and Alpine) and copy them out, as virt-install's `--location` does for
//! install trees.

use std::io::Write;
use std::path::{Path, PathBuf};

use iso9660::{Entry, IsoImage, ReadAt};

use super::boot_config::{self, BootEntry, Syslinux};
use super::error::InstallError;

/// isolinux and syslinux configurations, in the order isolinux looks.
const SYSLINUX_CONFIGS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux.cfg",
];

/// grub configurations.
const GRUB_CONFIGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/EFI/BOOT/grub.cfg",
];

/// Known trees: kernel, initrds tried in order, the command line their
/// installers need (`{volume}` is the volume id).
const KNOWN_TREES: &[(&str, &[&str], &str)] = &[
    ("/install.amd/vmlinuz", &["/install.amd/initrd.gz"], ""),
    (
        "/casper/vmlinuz",
        &["/casper/initrd", "/casper/initrd.gz", "/casper/initrd.lz"],
        "boot=casper",
    ),
    (
        "/images/pxeboot/vmlinuz",
        &["/images/pxeboot/initrd.img"],
        "inst.stage2=hd:LABEL={volume}",
    ),
    (
        "/boot/vmlinuz-lts",
        &["/boot/initramfs-lts"],
        "modules=loop,squashfs,sd-mod,usb-storage",
    ),
    (
        "/boot/vmlinuz-virt",
        &["/boot/initramfs-virt"],
        "modules=loop,squashfs,sd-mod,usb-storage",
    ),
];

/// Configuration files read at most (with their includes).
const MAX_CONFIG_FILES: usize = 16;
/// Bytes of one configuration file at most.
const MAX_CONFIG_BYTES: u64 = 256 << 10;
/// Bytes of a kernel at most.
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
/// Bytes of an initrd at most.
pub const MAX_INITRD_BYTES: u64 = 2 << 30;

/// What a disc boots.
#[derive(Debug, Clone)]
pub struct DiscBoot {
    /// The kernel on the disc.
    pub kernel: Entry,
    /// The initrd on the disc.
    pub initrd: Option<Entry>,
    /// The command line (with `console=ttyS0` added when it names no
    /// console: the VMM's serial is the only console).
    pub cmdline: String,
    /// Which file or tree named them.
    pub found_in: String,
}

/// Finds what `iso` boots; `disc` names it in messages.
pub fn find_boot<R: ReadAt>(iso: &IsoImage<R>, disc: &str) -> Result<DiscBoot, InstallError> {
    let bad = |e: iso9660::IsoError| InstallError::Disc {
        disc: disc.to_string(),
        reason: e.to_string(),
    };
    for config in SYSLINUX_CONFIGS {
        if let Some(entry) = syslinux_entry(iso, config).map_err(bad)? {
            if let Some(boot) = resolve(iso, &entry, config).map_err(bad)? {
                return Ok(boot);
            }
        }
    }
    for config in GRUB_CONFIGS {
        if let Some(file) = iso.lookup(config).map_err(bad)?.filter(|e| !e.is_dir) {
            let text = read_text(iso, &file).map_err(bad)?;
            if let Some(entry) = boot_config::grub(&text) {
                if let Some(boot) = resolve(iso, &entry, config).map_err(bad)? {
                    return Ok(boot);
                }
            }
        }
    }
    for (kernel, initrds, cmdline) in KNOWN_TREES {
        let Some(kernel_entry) = iso.lookup(kernel).map_err(bad)?.filter(|e| !e.is_dir) else {
            continue;
        };
        let mut initrd = None;
        for path in initrds.iter() {
            initrd = iso.lookup(path).map_err(bad)?.filter(|e| !e.is_dir);
            if initrd.is_some() {
                break;
            }
        }
        let volume = iso.volume_id().replace(' ', "\\x20");
        return Ok(DiscBoot {
            kernel: kernel_entry,
            initrd,
            cmdline: with_console(&cmdline.replace("{volume}", &volume)),
            found_in: (*kernel).to_string(),
        });
    }
    Err(InstallError::NoKernel {
        disc: disc.to_string(),
        looked_for: format!(
            "{}, {}, {}",
            SYSLINUX_CONFIGS.join(", "),
            GRUB_CONFIGS.join(", "),
            KNOWN_TREES
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The entry of a syslinux configuration and the files it includes.
fn syslinux_entry<R: ReadAt>(
    iso: &IsoImage<R>,
    config: &str,
) -> iso9660::Result<Option<BootEntry>> {
    let Some(file) = iso.lookup(config)?.filter(|e| !e.is_dir) else {
        return Ok(None);
    };
    let dir = parent(config);
    let mut parsed = Syslinux::default();
    let mut queue = vec![file];
    let mut read = 0;
    while let Some(file) = queue.pop() {
        read += 1;
        if read > MAX_CONFIG_FILES {
            break;
        }
        let text = read_text(iso, &file)?;
        let includes = parsed.feed(&text);
        // Depth first in reverse, so that files are fed in the order
        // they are named.
        for name in includes.iter().rev() {
            if let Some(found) = find_relative(iso, name, dir)? {
                queue.push(found);
            }
        }
    }
    Ok(parsed.chosen())
}

/// The boot entry's files, looked up next to the configuration first and
/// from the root next; None if the kernel is not on the disc.
fn resolve<R: ReadAt>(
    iso: &IsoImage<R>,
    entry: &BootEntry,
    config: &str,
) -> iso9660::Result<Option<DiscBoot>> {
    let dir = parent(config);
    let Some(kernel) = find_relative(iso, &entry.kernel, dir)? else {
        return Ok(None);
    };
    let initrd = match &entry.initrd {
        Some(path) => find_relative(iso, path, dir)?,
        None => None,
    };
    Ok(Some(DiscBoot {
        kernel,
        initrd,
        cmdline: with_console(&entry.cmdline),
        found_in: config.to_string(),
    }))
}

fn find_relative<R: ReadAt>(
    iso: &IsoImage<R>,
    path: &str,
    dir: &str,
) -> iso9660::Result<Option<Entry>> {
    if !path.starts_with('/') {
        if let Some(found) = iso.lookup(&format!("{dir}/{path}"))?.filter(|e| !e.is_dir) {
            return Ok(Some(found));
        }
    }
    Ok(iso.lookup(path)?.filter(|e| !e.is_dir))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn read_text<R: ReadAt>(iso: &IsoImage<R>, file: &Entry) -> iso9660::Result<String> {
    let bytes = iso.read_file(file, MAX_CONFIG_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `cmdline` with `console=ttyS0` added if it names no console.
fn with_console(cmdline: &str) -> String {
    if cmdline
        .split_whitespace()
        .any(|w| w.starts_with("console="))
    {
        return cmdline.trim().to_string();
    }
    // Arguments after `---` go to the installed system; ours go first.
    format!("console=ttyS0 {}", cmdline.trim())
        .trim()
        .to_string()
}

/// Copies the kernel and initrd out of the disc into `dir` (created
/// here) as `kernel` and `initrd`; returns their paths.
pub fn extract<R: ReadAt>(
    iso: &IsoImage<R>,
    boot: &DiscBoot,
    dir: &Path,
) -> Result<(PathBuf, Option<PathBuf>), InstallError> {
    let io = |path: &Path, e: std::io::Error| InstallError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let copy = |entry: &Entry, name: &str, max: u64| -> Result<PathBuf, InstallError> {
        let path = dir.join(name);
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| io(&path, e))?);
        iso.copy_file(entry, &mut file, max)
            .map_err(|e| InstallError::Disc {
                disc: entry.path.escape_debug().to_string(),
                reason: e.to_string(),
            })?;
        file.flush().map_err(|e| io(&path, e))?;
        Ok(path)
    };
    let kernel = copy(&boot.kernel, "kernel", MAX_KERNEL_BYTES)?;
    let initrd = match &boot.initrd {
        Some(entry) => Some(copy(entry, "initrd", MAX_INITRD_BYTES)?),
        None => None,
    };
    Ok((kernel, initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_added_once() {
        assert_eq!(with_console(""), "console=ttyS0");
        assert_eq!(with_console("quiet --- x"), "console=ttyS0 quiet --- x");
        assert_eq!(with_console("console=hvc0"), "console=hvc0");
        assert_eq!(parent("/isolinux/isolinux.cfg"), "/isolinux");
        assert_eq!(parent("/isolinux.cfg"), "");
    }
}
