//! The `img` command line: clap definitions of the subcommands with
//! qemu-img's option spellings, and [`parse_args`], which turns clap's
//! errors into qemu-img's messages and exit codes.
//!
//! ```
//! use tools::cli::{parse_args, Command};
//! let cli = parse_args(["img", "resize", "disk.qcow2", "-1G"]).unwrap();
//! assert!(matches!(cli.command, Command::Resize(_)));
//! ```

mod amend_args;
mod args;
mod bench_args;
mod bitmap_args;
mod commit_args;
mod dd_args;
mod measure_args;
mod rebase_args;
mod snapshot_args;
mod usage;
pub mod values;

use clap::{Parser, Subcommand};

pub use amend_args::AmendArgs;
pub use args::{CheckArgs, CompareArgs, ConvertArgs, CreateArgs, InfoArgs, MapArgs, ResizeArgs};
pub use bench_args::BenchArgs;
pub use bitmap_args::{BitmapAction, BitmapArgs};
pub use commit_args::CommitArgs;
pub use dd_args::DdArgs;
pub use measure_args::MeasureArgs;
pub use rebase_args::RebaseArgs;
pub use snapshot_args::{SnapshotAction, SnapshotArgs};
pub use usage::CliError;
pub use values::{CacheMode, OutputFormat, RepairMode, SnapshotParam, UsageError};

/// `img COMMAND [command options]`: a re-implementation of qemu-img.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = crate::PROGRAM,
    version,
    about = "Disk image utility (qemu-img compatible)",
    subcommand_required = true,
    infer_long_args = true,
    args_override_self = true
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create and format a new image file
    #[command(infer_long_args = true, args_override_self = true)]
    Create(CreateArgs),
    /// Display information about an image
    #[command(infer_long_args = true, args_override_self = true)]
    Info(InfoArgs),
    /// Check basic image integrity
    #[command(infer_long_args = true, args_override_self = true)]
    Check(CheckArgs),
    /// Copy one image to another with optional format conversion
    #[command(infer_long_args = true, args_override_self = true)]
    Convert(ConvertArgs),
    /// Resize an image
    #[command(infer_long_args = true, args_override_self = true)]
    Resize(ResizeArgs),
    /// Check if two images have the same contents
    #[command(infer_long_args = true, args_override_self = true)]
    Compare(CompareArgs),
    /// Dump image metadata (allocation map)
    #[command(infer_long_args = true, args_override_self = true)]
    Map(MapArgs),
    /// Commit the changes of an image into its backing file
    #[command(infer_long_args = true, args_override_self = true)]
    Commit(CommitArgs),
    /// Change the backing file of an image
    #[command(infer_long_args = true, args_override_self = true)]
    Rebase(RebaseArgs),
    /// Measure the size of a new image, or of an image converted
    #[command(infer_long_args = true, args_override_self = true)]
    Measure(MeasureArgs),
    /// List, apply, create or delete internal snapshots
    #[command(infer_long_args = true, args_override_self = true)]
    Snapshot(SnapshotArgs),
    /// Update format-specific options of the image
    #[command(infer_long_args = true, args_override_self = true)]
    Amend(AmendArgs),
    /// Run simple image benchmark
    #[command(infer_long_args = true, args_override_self = true)]
    Bench(BenchArgs),
    /// Add, remove, clear, enable, disable or merge persistent bitmaps
    #[command(infer_long_args = true, args_override_self = true)]
    Bitmap(BitmapArgs),
    /// Copy from one image to another, as dd(1) copies
    #[command(infer_long_args = true, args_override_self = true)]
    Dd(DdArgs),
}

impl Command {
    /// The subcommand's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create(_) => "create",
            Self::Info(_) => "info",
            Self::Check(_) => "check",
            Self::Convert(_) => "convert",
            Self::Resize(_) => "resize",
            Self::Compare(_) => "compare",
            Self::Map(_) => "map",
            Self::Snapshot(_) => "snapshot",
            Self::Measure(_) => "measure",
            Self::Rebase(_) => "rebase",
            Self::Commit(_) => "commit",
            Self::Amend(_) => "amend",
            Self::Bench(_) => "bench",
            Self::Bitmap(_) => "bitmap",
            Self::Dd(_) => "dd",
        }
    }
}

/// Parses the command line (program name first). Help and version
/// requests come back as a [`CliError`] with exit code 0 and stdout text.
pub fn parse_args<I, T>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut cli = Cli::try_parse_from(&args).map_err(|err| usage::from_clap(&err, &args))?;
    usage::check_positionals(&cli)?;
    if let Command::Bitmap(b) = &mut cli.command {
        let raw: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .skip_while(|a| a != "bitmap")
            .skip(1)
            .collect();
        b.order_actions(&raw);
    }
    Ok(cli)
}

/// [`parse_args`] on the process arguments; on error prints the message
/// and exits as qemu-img would.
pub fn parse_or_exit() -> Cli {
    // `--object` may appear anywhere after the subcommand, as in qemu-img;
    // its secrets are kept aside before clap parses the rest.
    let args = match crate::opts::secret::take_objects(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{}: {e:#}", crate::program());
            std::process::exit(1);
        }
    };
    parse_args(args).unwrap_or_else(|err| err.exit())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
