//! `vm install`: virt-install for this stack. Parses virt-install's
//! options ([`options`]), plans the disks ([`disks`]), finds what an
//! installer disc boots ([`disc`], [`boot_config`]) since the VMM has no
//! firmware, builds the domain XML ([`domain`]), then creates the disks
//! through the qcow library, copies the disc's kernel and initrd into the
//! store (`boot/NAME/`), defines the domain and starts it, printing
//! virt-install's progress lines. A failure at any step takes back what
//! the steps before it made: no domain is left defined and no image it
//! created stays.

pub mod boot_config;
pub mod disc;
pub mod disks;
pub mod domain;
pub mod error;
pub mod network;
pub mod options;
pub mod tree;

use std::path::{Path, PathBuf};

use iso9660::IsoImage;
use tree::BootTree;

use super::cli::{parse_command, Invocation};
use super::commands::{console, lifecycle, Ctx};
use super::error::VmError;
use super::output::emit;
use disc::DiscBoot;
use disks::PlannedDisk;
use domain::Boot;
use error::InstallError;
use options::InstallOptions;

/// What an install made so far, taken back if a later step fails.
#[derive(Debug, Default)]
struct Made {
    images: Vec<PathBuf>,
    boot_dir: Option<PathBuf>,
    defined: bool,
}

impl Made {
    fn take_back(&self, ctx: &Ctx, opts: &InstallOptions) {
        if self.defined {
            if let Ok(_lock) = ctx.store.lock(&opts.name) {
                let _ = ctx.store.remove_definition(&opts.name);
                // The failed start's run folder (its vmm.log) goes too.
                let _ = std::fs::remove_dir_all(ctx.store.run_dir(&opts.name));
            }
        }
        for image in &self.images {
            let _ = std::fs::remove_file(image);
        }
        if let Some(dir) = &self.boot_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn refused(e: InstallError) -> VmError {
    VmError::Refused(e.to_string())
}

/// Where the installer comes from: `--cdrom`'s or `--location`'s path,
/// absolute, and whether it is an install tree (a folder) rather than an
/// ISO image.
fn installer_path(
    opts: &InstallOptions,
    cwd: &Path,
) -> Result<Option<(PathBuf, bool)>, InstallError> {
    let (option, path) = match (&opts.cdrom, &opts.location) {
        (Some(path), _) => ("--cdrom", path.as_str()),
        (None, Some((path, _))) => ("--location", path.as_str()),
        (None, None) => return Ok(None),
    };
    let path = cwd.join(path);
    let meta = std::fs::metadata(&path).map_err(|e| InstallError::Io {
        path: path.display().to_string(),
        reason: super::commands::define::os_reason(&e),
    })?;
    if meta.is_dir() && option == "--cdrom" {
        return Err(InstallError::Option {
            option,
            reason: format!(
                "'{}' is a folder: give an ISO image (or the folder to --location)",
                path.display()
            ),
        });
    }
    Ok(Some((path, meta.is_dir())))
}

/// Copies an installer's kernel and initrd into a folder.
type Extract = Box<dyn Fn(&Path) -> Result<(), InstallError>>;

/// What an installer boots, found and ready to copy into the store.
struct FoundBoot {
    cmdline: String,
    has_initrd: bool,
    /// Copies the kernel and initrd into a folder.
    extract: Extract,
}

/// What the installer at `path` boots: `--location`'s `kernel=`/`initrd=`
/// paths in it, else its configuration or known tree.
fn installer_boot(
    opts: &InstallOptions,
    path: &Path,
    is_folder: bool,
) -> Result<FoundBoot, InstallError> {
    let name = path.display().to_string();
    if is_folder {
        return found_in(
            tree::FolderTree {
                root: path.to_path_buf(),
            },
            opts,
            &name,
        );
    }
    let file = std::fs::File::open(path).map_err(|e| InstallError::Io {
        path: name.clone(),
        reason: super::commands::define::os_reason(&e),
    })?;
    let iso = IsoImage::open(file).map_err(|e| InstallError::Disc {
        disc: name.clone(),
        reason: e.to_string(),
    })?;
    found_in(
        tree::IsoTree {
            iso,
            name: name.clone(),
        },
        opts,
        &name,
    )
}

fn found_in<T: BootTree + 'static>(
    tree: T,
    opts: &InstallOptions,
    name: &str,
) -> Result<FoundBoot, InstallError> {
    let named = |path: &str| -> Result<T::File, InstallError> {
        tree.find_file(path)?.ok_or_else(|| InstallError::Disc {
            disc: name.to_string(),
            reason: format!("no file '{}' there", path.escape_debug()),
        })
    };
    let overrides = opts.location.as_ref().map(|(_, b)| b);
    let boot = match overrides.and_then(|b| b.kernel.as_deref()) {
        Some(kernel) => DiscBoot {
            kernel: named(kernel)?,
            initrd: overrides
                .and_then(|b| b.initrd.as_deref())
                .map(named)
                .transpose()?,
            cmdline: "console=ttyS0".to_string(),
            found_in: "--location".to_string(),
        },
        None => disc::find_boot(&tree, name)?,
    };
    Ok(FoundBoot {
        cmdline: boot.cmdline.clone(),
        has_initrd: boot.initrd.is_some(),
        extract: Box::new(move |dir| disc::extract(&tree, &boot, dir).map(|_| ())),
    })
}

/// The command line with `--extra-args` (and `--boot kernel_args=`).
fn cmdline(base: &str, opts: &InstallOptions) -> String {
    let mut line = opts
        .boot
        .cmdline
        .clone()
        .unwrap_or_else(|| base.to_string());
    if let Some(extra) = &opts.extra_args {
        line = format!("{line} {extra}").trim().to_string();
    }
    line
}

/// `install ARGS...` (virt-install's grammar).
pub fn install(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let opts = options::parse(inv.argv()).map_err(refused)?;
    let cwd = std::env::current_dir()
        .map_err(|e| VmError::Internal(format!("cannot read the current folder: {e}")))?;
    let lock = ctx.store.lock(&opts.name)?;
    if ctx.store.read_definition(&opts.name)?.is_some() {
        return Err(VmError::Refused(format!(
            "Guest name '{}' is already in use.",
            opts.name
        )));
    }
    let images_dir = ctx.store.dir().join("images");
    let planned = disks::plan(&opts, &images_dir, &cwd).map_err(refused)?;
    let installer = installer_path(&opts, &cwd).map_err(refused)?;
    // Only an ISO is attached (as the guest's CD-ROM); a tree is not.
    let disc = installer
        .as_ref()
        .filter(|(_, is_folder)| !is_folder)
        .map(|(path, _)| path.clone());
    let boot_dir = ctx.store.dir().join("boot").join(opts.name.as_str());
    let from_disc = match &installer {
        Some((path, is_folder)) if opts.boot.kernel.is_none() => {
            Some(installer_boot(&opts, path, *is_folder).map_err(refused)?)
        }
        _ => None,
    };
    let boot = match (&from_disc, &opts.boot.kernel) {
        (Some(found), _) => Boot {
            kernel: boot_dir.join("kernel").display().to_string(),
            initrd: found
                .has_initrd
                .then(|| boot_dir.join("initrd").display().to_string()),
            cmdline: cmdline(&found.cmdline, &opts),
        },
        (None, Some(kernel)) => Boot {
            kernel: cwd.join(kernel).display().to_string(),
            initrd: opts
                .boot
                .initrd
                .as_ref()
                .map(|i| cwd.join(i).display().to_string()),
            cmdline: cmdline("", &opts),
        },
        (None, None) => {
            return Err(refused(InstallError::Option {
                option: "--boot",
                reason: "no kernel: give --boot kernel= (the VMM has no firmware)".to_string(),
            }))
        }
    };
    let macs = opts
        .networks
        .iter()
        .map(|n| n.mac.clone().map_or_else(network::random_mac, Ok))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)?;
    let def = domain::build(&opts, &planned, disc.as_deref(), &boot, &macs)?;
    if opts.print_xml {
        out.push_str(&def.to_xml());
        return Ok(());
    }
    let progress = |line: &str| {
        if !ctx.quiet {
            emit(&format!("{line}\n"));
        }
    };
    progress("Starting install...");
    let mut made = Made::default();
    let result = (|| -> Result<(), VmError> {
        for disk in planned.iter().filter(|d| d.create_bytes.is_some()) {
            allocate(disk, &opts, &mut made, &progress)?;
        }
        if let Some(found) = &from_disc {
            if !opts.dry_run {
                made.boot_dir = Some(boot_dir.clone());
                (found.extract)(&boot_dir).map_err(refused)?;
            }
        }
        progress("Creating domain...");
        if opts.dry_run {
            return Ok(());
        }
        ctx.store.write_definition(&def)?;
        made.defined = true;
        Ok(())
    })();
    drop(lock);
    let result = result.and_then(|()| {
        if opts.dry_run {
            return Ok(());
        }
        let start = parse_command("start", &[opts.name.to_string()])
            .map_err(|e| VmError::Internal(e.to_string()))?;
        let mut quiet = String::new();
        lifecycle::start(ctx, &start, &mut quiet)
    });
    if let Err(e) = result {
        made.take_back(ctx, &opts);
        // One line: what failed, without start's "Failed to start" head.
        return Err(match e {
            VmError::Failed { cause, .. } => *cause,
            other => other,
        });
    }
    if opts.dry_run {
        progress("Dry run completed successfully");
        return Ok(());
    }
    if opts.autoconsole {
        console::attach(&def, ctx, out)?;
        progress("Domain creation completed.");
    } else {
        progress("Domain creation completed.");
        ctx.extra(
            out,
            "Domain is still running. Installation may be in progress.\n\
             You can reconnect to the console to complete the installation process.\n",
        );
    }
    Ok(())
}

fn allocate(
    disk: &PlannedDisk,
    opts: &InstallOptions,
    made: &mut Made,
    progress: &impl Fn(&str),
) -> Result<(), VmError> {
    let file_name = disk
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress(&format!("Allocating '{file_name}'"));
    if opts.dry_run {
        return Ok(());
    }
    disks::create_image(disk).map_err(refused)?;
    made.images.push(disk.path.clone());
    Ok(())
}
