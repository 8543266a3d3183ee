//! Booting an installer disc without firmware: find the kernel, initrd
//! and command line an ISO 9660 disc boots (its isolinux, syslinux or
//! grub configuration, else the known trees of Debian, Ubuntu, Fedora
//! and Alpine) and copy them out, as virt-install's `--location` does for
//! install trees.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::boot_config::{self, BootEntry, Syslinux};
use super::error::InstallError;
use super::tree::BootTree;

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

/// What a disc (or install tree) boots; `F` is a file of its
/// [`BootTree`].
#[derive(Debug, Clone)]
pub struct DiscBoot<F> {
    /// The kernel on the disc.
    pub kernel: F,
    /// The initrd on the disc.
    pub initrd: Option<F>,
    /// The command line (with `console=ttyS0` added when it names no
    /// console: the VMM's serial is the only console).
    pub cmdline: String,
    /// Which file or tree named them.
    pub found_in: String,
}

/// Finds what `tree` boots; `disc` names it in messages.
pub fn find_boot<T: BootTree>(tree: &T, disc: &str) -> Result<DiscBoot<T::File>, InstallError> {
    for config in SYSLINUX_CONFIGS {
        if let Some(entry) = syslinux_entry(tree, config)? {
            if let Some(boot) = resolve(tree, &entry, config)? {
                return Ok(boot);
            }
        }
    }
    for config in GRUB_CONFIGS {
        if let Some(file) = tree.find_file(config)? {
            let text = tree.read_text(&file, MAX_CONFIG_BYTES)?;
            if let Some(entry) = boot_config::grub(&text) {
                if let Some(boot) = resolve(tree, &entry, config)? {
                    return Ok(boot);
                }
            }
        }
    }
    for (kernel, initrds, cmdline) in KNOWN_TREES {
        let Some(kernel_file) = tree.find_file(kernel)? else {
            continue;
        };
        let mut initrd = None;
        for path in initrds.iter() {
            initrd = tree.find_file(path)?;
            if initrd.is_some() {
                break;
            }
        }
        let volume = tree.volume_id().replace(' ', "\\x20");
        return Ok(DiscBoot {
            kernel: kernel_file,
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
fn syslinux_entry<T: BootTree>(tree: &T, config: &str) -> Result<Option<BootEntry>, InstallError> {
    let Some(file) = tree.find_file(config)? else {
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
        let text = tree.read_text(&file, MAX_CONFIG_BYTES)?;
        let includes = parsed.feed(&text);
        // Depth first in reverse, so that files are fed in the order
        // they are named.
        for name in includes.iter().rev() {
            if let Some(found) = find_relative(tree, name, dir)? {
                queue.push(found);
            }
        }
    }
    Ok(parsed.chosen())
}

/// The boot entry's files, looked up next to the configuration first and
/// from the root next; None if the kernel is not there.
fn resolve<T: BootTree>(
    tree: &T,
    entry: &BootEntry,
    config: &str,
) -> Result<Option<DiscBoot<T::File>>, InstallError> {
    let dir = parent(config);
    let Some(kernel) = find_relative(tree, &entry.kernel, dir)? else {
        return Ok(None);
    };
    let initrd = match &entry.initrd {
        Some(path) => find_relative(tree, path, dir)?,
        None => None,
    };
    Ok(Some(DiscBoot {
        kernel,
        initrd,
        cmdline: with_console(&entry.cmdline),
        found_in: config.to_string(),
    }))
}

fn find_relative<T: BootTree>(
    tree: &T,
    path: &str,
    dir: &str,
) -> Result<Option<T::File>, InstallError> {
    if !path.starts_with('/') {
        if let Some(found) = tree.find_file(&format!("{dir}/{path}"))? {
            return Ok(Some(found));
        }
    }
    tree.find_file(path)
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
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

/// Copies the kernel and initrd out of the disc or tree into `dir`
/// (created here) as `kernel` and `initrd`; returns their paths.
pub fn extract<T: BootTree>(
    tree: &T,
    boot: &DiscBoot<T::File>,
    dir: &Path,
) -> Result<(PathBuf, Option<PathBuf>), InstallError> {
    let io = |path: &Path, e: std::io::Error| InstallError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let copy = |file: &T::File, name: &str, max: u64| -> Result<PathBuf, InstallError> {
        let path = dir.join(name);
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| io(&path, e))?);
        tree.copy(file, &mut out, max)?;
        out.flush().map_err(|e| io(&path, e))?;
        Ok(path)
    };
    let kernel = copy(&boot.kernel, "kernel", MAX_KERNEL_BYTES)?;
    let initrd = match &boot.initrd {
        Some(file) => Some(copy(file, "initrd", MAX_INITRD_BYTES)?),
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
