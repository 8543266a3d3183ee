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
pub mod options;

use std::path::{Path, PathBuf};

use iso9660::IsoImage;

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

/// The installer disc: `--cdrom`'s or `--location`'s ISO, absolute.
fn disc_path(opts: &InstallOptions, cwd: &Path) -> Result<Option<PathBuf>, InstallError> {
    let Some(path) = opts
        .cdrom
        .as_deref()
        .or(opts.location.as_ref().map(|(p, _)| p.as_str()))
    else {
        return Ok(None);
    };
    let path = cwd.join(path);
    let meta = std::fs::metadata(&path).map_err(|e| InstallError::Io {
        path: path.display().to_string(),
        reason: super::commands::define::os_reason(&e),
    })?;
    if meta.is_dir() {
        return Err(InstallError::Option {
            option: "--location",
            reason: format!(
                "'{}' is a folder: only ISO images are supported",
                path.display()
            ),
        });
    }
    Ok(Some(path))
}

/// What the disc boots: `--location`'s `kernel=`/`initrd=` paths on the
/// disc, else its configuration or known tree.
fn disc_boot(
    opts: &InstallOptions,
    disc: &Path,
) -> Result<(IsoImage<std::fs::File>, DiscBoot), InstallError> {
    let name = disc.display().to_string();
    let file = std::fs::File::open(disc).map_err(|e| InstallError::Io {
        path: name.clone(),
        reason: super::commands::define::os_reason(&e),
    })?;
    let iso = IsoImage::open(file).map_err(|e| InstallError::Disc {
        disc: name.clone(),
        reason: e.to_string(),
    })?;
    let on_disc = |path: &str| -> Result<iso9660::Entry, InstallError> {
        iso.lookup(path)
            .map_err(|e| InstallError::Disc {
                disc: name.clone(),
                reason: e.to_string(),
            })?
            .filter(|e| !e.is_dir)
            .ok_or_else(|| InstallError::Disc {
                disc: name.clone(),
                reason: format!("no file '{path}' on the disc"),
            })
    };
    let boot = match opts
        .location
        .as_ref()
        .and_then(|(_, b)| b.kernel.as_deref())
    {
        Some(kernel) => {
            let location = &opts.location.as_ref().expect("checked above").1;
            DiscBoot {
                kernel: on_disc(kernel)?,
                initrd: location.initrd.as_deref().map(on_disc).transpose()?,
                cmdline: "console=ttyS0".to_string(),
                found_in: "--location".to_string(),
            }
        }
        None => disc::find_boot(&iso, &name)?,
    };
    Ok((iso, boot))
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
    let disc = disc_path(&opts, &cwd).map_err(refused)?;
    let boot_dir = ctx.store.dir().join("boot").join(opts.name.as_str());
    let from_disc = match &disc {
        Some(disc) if opts.boot.kernel.is_none() => Some(disc_boot(&opts, disc).map_err(refused)?),
        _ => None,
    };
    let boot = match (&from_disc, &opts.boot.kernel) {
        (Some((_, found)), _) => Boot {
            kernel: boot_dir.join("kernel").display().to_string(),
            initrd: found
                .initrd
                .as_ref()
                .map(|_| boot_dir.join("initrd").display().to_string()),
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
    let def = domain::build(&opts, &planned, disc.as_deref(), &boot)?;
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
        if let Some((iso, found)) = &from_disc {
            if !opts.dry_run {
                made.boot_dir = Some(boot_dir.clone());
                disc::extract(iso, found, &boot_dir).map_err(refused)?;
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
