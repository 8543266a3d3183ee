//! The arguments of each `img` subcommand, spelled as qemu-img spells them
//! (short and long options alike).

use clap::Args;

use super::values::{
    parse_coroutines, parse_image_size, parse_max_length, parse_output_format, parse_preallocation,
    parse_repair_mode, parse_resize_size, parse_snapshot_param, parse_source_cache,
    parse_sparse_size, parse_start_offset, parse_target_cache, CacheMode, OutputFormat, RepairMode,
    SnapshotParam,
};
use crate::opts::{OptionList, OptsError, Preallocation};
use crate::size::ResizeSize;

/// `img create [-f FMT] [-o OPTIONS]... [-b BACKING [-F BACKING_FMT]] [-u] [-q] FILE [SIZE]`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CreateArgs {
    /// Format of the new image (default: raw)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT",
        default_value = "raw"
    )]
    pub format: String,
    /// Format-specific options, key=value[,...] ('-o help' lists them)
    #[arg(
        short = 'o',
        long = "options",
        allow_hyphen_values = true,
        value_name = "OPTIONS"
    )]
    pub options: Vec<String>,
    /// Stack the new image on top of BACKING
    #[arg(
        short = 'b',
        long = "backing",
        allow_hyphen_values = true,
        value_name = "BACKING"
    )]
    pub backing: Option<String>,
    /// Format of BACKING
    #[arg(
        short = 'F',
        long = "backing-format",
        allow_hyphen_values = true,
        value_name = "BACKING_FMT"
    )]
    pub backing_format: Option<String>,
    /// Do not open the backing file (its size must not be needed)
    #[arg(short = 'u', long = "backing-unsafe")]
    pub backing_unsafe: bool,
    /// Quiet: print nothing but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Image file to create (absent only with '-o help')
    #[arg(value_name = "FILE")]
    pub filename: Option<String>,
    /// Virtual size, with optional suffix k, M, G, T, P, E (1024-based)
    #[arg(value_name = "SIZE", value_parser = parse_image_size)]
    pub size: Option<u64>,
}

impl CreateArgs {
    /// The `-o` arguments joined into one list.
    pub fn option_list(&self) -> Result<OptionList, OptsError> {
        OptionList::from_args(&self.options)
    }
}

/// `img info [-f FMT] [--output human|json] [--backing-chain] [-U] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct InfoArgs {
    /// Image format (probed when absent)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub format: Option<String>,
    /// Output format
    #[arg(long = "output", allow_hyphen_values = true, value_name = "human|json", value_parser = parse_output_format, default_value = "human")]
    pub output: OutputFormat,
    /// Show the whole backing chain
    #[arg(short = 'b', long = "backing-chain")]
    pub backing_chain: bool,
    /// Open the image in shared mode (no locking)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Image file
    #[arg(value_name = "FILE")]
    pub filename: String,
}

/// `img check [-f FMT] [-r leaks|all] [--output human|json] [-q] [-T CACHE] [-U] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CheckArgs {
    /// Image format (probed when absent)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub format: Option<String>,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Repair leaks only, or all inconsistencies
    #[arg(short = 'r', long = "repair", allow_hyphen_values = true, value_name = "leaks|all", value_parser = parse_repair_mode)]
    pub repair: Option<RepairMode>,
    /// Output format
    #[arg(long = "output", allow_hyphen_values = true, value_name = "human|json", value_parser = parse_output_format, default_value = "human")]
    pub output: OutputFormat,
    /// Quiet: print nothing but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Cache mode for the image (default: writeback)
    #[arg(short = 'T', long = "cache", allow_hyphen_values = true, value_name = "CACHE", value_parser = parse_source_cache)]
    pub cache: Option<CacheMode>,
    /// Open the image in shared mode (no locking)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Image file
    #[arg(value_name = "FILE")]
    pub filename: String,
}

/// `img convert [-f FMT] [-O FMT] [-o OPTIONS]... [-c] [-p] [-q] [-S SIZE]
/// [-B BACKING [-F BACKING_FMT]] [-n] [-m N] [-W] [-t CACHE] [-T CACHE]
/// [-l SNAPSHOT_PARAM] SRC... DST`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ConvertArgs {
    /// Source format (probed when absent)
    #[arg(
        short = 'f',
        long = "source-format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub source_format: Option<String>,
    /// Target format (default: raw)
    #[arg(
        short = 'O',
        long = "target-format",
        allow_hyphen_values = true,
        value_name = "FMT",
        default_value = "raw"
    )]
    pub target_format: String,
    /// Target format options, key=value[,...] ('-o help' lists them)
    #[arg(
        short = 'o',
        long = "target-options",
        allow_hyphen_values = true,
        value_name = "OPTIONS"
    )]
    pub options: Vec<String>,
    /// Compress the target (qcow2 only)
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show progress
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet: print nothing but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Zero bytes needed to leave a hole (multiple of 512, default 4k; 0 = fully allocate)
    #[arg(short = 'S', long = "sparse-size", allow_hyphen_values = true, value_name = "SIZE", value_parser = parse_sparse_size)]
    pub sparse_size: Option<u64>,
    /// Make the target a copy-on-write overlay of BACKING
    #[arg(
        short = 'B',
        long = "backing",
        allow_hyphen_values = true,
        value_name = "BACKING"
    )]
    pub backing: Option<String>,
    /// Format of BACKING
    #[arg(
        short = 'F',
        long = "backing-format",
        allow_hyphen_values = true,
        value_name = "BACKING_FMT"
    )]
    pub backing_format: Option<String>,
    /// Do not create the target: it must exist
    #[arg(short = 'n', long = "no-create")]
    pub no_create: bool,
    /// Parallel requests (1 to 16, default 8)
    #[arg(short = 'm', long = "parallel", allow_hyphen_values = true, value_name = "N", value_parser = parse_coroutines)]
    pub parallel: Option<u64>,
    /// Allow out-of-order writes to the target
    #[arg(short = 'W', long = "oob-writes")]
    pub oob_writes: bool,
    /// Cache mode for the target (default: unsafe)
    #[arg(short = 't', long = "target-cache", allow_hyphen_values = true, value_name = "CACHE", value_parser = parse_target_cache)]
    pub target_cache: Option<CacheMode>,
    /// Cache mode for the sources (default: writeback)
    #[arg(short = 'T', long = "source-cache", allow_hyphen_values = true, value_name = "CACHE", value_parser = parse_source_cache)]
    pub source_cache: Option<CacheMode>,
    /// Convert an internal snapshot: ID_OR_NAME or snapshot.id=ID,snapshot.name=NAME
    #[arg(short = 'l', long = "source-snapshot", allow_hyphen_values = true, value_name = "SNAPSHOT_PARAM", value_parser = parse_snapshot_param)]
    pub snapshot: Option<SnapshotParam>,
    /// Deprecated spelling of '-l ID_OR_NAME' (removed from qemu-img)
    #[arg(
        short = 's',
        allow_hyphen_values = true,
        value_name = "SNAPSHOT",
        hide = true
    )]
    pub snapshot_id_or_name: Option<String>,
    /// Assume the target reads as zeroes (needs -n)
    #[arg(long = "target-is-zero")]
    pub target_is_zero: bool,
    /// Open the sources in shared mode (no locking)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Copy offloading (qemu-img's -C): refused with -c, an explicit -S or
    /// --salvage, as qemu-img refuses it; img's engine copies the same data
    #[arg(short = 'C')]
    pub copy_range: bool,
    /// Go on past read and block-status errors of the sources, warning
    /// about each sector and writing zeros for what cannot be read
    /// (qemu-img's --salvage)
    #[arg(long = "salvage")]
    pub salvage: bool,
    /// Sources, then the target
    #[arg(value_name = "FILES")]
    pub files: Vec<String>,
}

impl ConvertArgs {
    /// The `-o` arguments joined into one list.
    pub fn option_list(&self) -> Result<OptionList, OptsError> {
        OptionList::from_args(&self.options)
    }

    /// The snapshot to read, from `-l` or the hidden `-s` (`-l` wins).
    pub fn snapshot_param(&self) -> Option<SnapshotParam> {
        self.snapshot.clone().or_else(|| {
            self.snapshot_id_or_name
                .clone()
                .map(SnapshotParam::IdOrName)
        })
    }

    /// The source images (all files but the last).
    pub fn sources(&self) -> &[String] {
        match self.files.split_last() {
            Some((_, sources)) => sources,
            None => &[],
        }
    }

    /// The target image (the last file).
    pub fn target(&self) -> Option<&str> {
        self.files.last().map(String::as_str)
    }

    /// The target named for `-o help`: qemu-img takes the last file only
    /// when there is at least one source before it.
    pub fn help_target(&self) -> Option<&str> {
        if self.files.len() >= 2 {
            self.target()
        } else {
            None
        }
    }

    /// qemu-img's checks of `-C` against the options it cannot go with, in
    /// its order and words (checked before [`Self::no_create_conflict`]).
    pub fn copy_offload_conflict(&self) -> Option<&'static str> {
        if !self.copy_range {
            None
        } else if self.compress {
            Some("Cannot enable copy offloading when -c is used")
        } else if self.sparse_size.is_some() {
            Some("Cannot enable copy offloading when -S is used")
        } else if self.salvage {
            Some("Cannot use copy offloading in salvaging mode")
        } else {
            None
        }
    }

    /// qemu-img's checks of `-n` against what only creation uses.
    pub fn no_create_conflict(&self) -> Option<&'static str> {
        if self.no_create && !self.options.is_empty() {
            Some("-o has no effect when skipping image creation")
        } else if self.target_is_zero && !self.no_create {
            Some("--target-is-zero requires use of -n flag")
        } else {
            None
        }
    }
}

/// `img resize [--shrink] [-f FMT] [-q] [--preallocation MODE] FILE [+-]SIZE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ResizeArgs {
    /// Allow the image to shrink
    #[arg(long = "shrink")]
    pub shrink: bool,
    /// Image format (probed when absent)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub format: Option<String>,
    /// Quiet: print nothing but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Preallocation of the new space (off, metadata, falloc, full)
    #[arg(long = "preallocation", allow_hyphen_values = true, value_name = "MODE", value_parser = parse_preallocation)]
    pub preallocation: Option<Preallocation>,
    /// Image file
    #[arg(value_name = "FILE")]
    pub filename: String,
    /// New size, or +SIZE / -SIZE to grow or shrink by
    #[arg(value_name = "[+-]SIZE", allow_hyphen_values = true, value_parser = parse_resize_size)]
    pub size: ResizeSize,
}

/// `img compare [-f FMT] [-F FMT] [-s] [-q] [-p] [-T CACHE] [-U] FILE1 FILE2`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CompareArgs {
    /// Format of FILE1 (probed when absent)
    #[arg(
        short = 'f',
        long = "a-format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub a_format: Option<String>,
    /// Format of FILE2 (probed when absent)
    #[arg(
        short = 'F',
        long = "b-format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub b_format: Option<String>,
    /// Strict: sizes and allocation must match too
    #[arg(short = 's', long = "strict")]
    pub strict: bool,
    /// Quiet: print nothing but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Show progress
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Cache mode for the images (default: writeback)
    #[arg(short = 'T', long = "cache", allow_hyphen_values = true, value_name = "CACHE", value_parser = parse_source_cache)]
    pub cache: Option<CacheMode>,
    /// Open the images in shared mode (no locking)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// First image
    #[arg(value_name = "FILE1")]
    pub filename1: String,
    /// Second image
    #[arg(value_name = "FILE2")]
    pub filename2: String,
}

/// `img map [-f FMT] [--output human|json] [--start-offset N] [--max-length N] [-U] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MapArgs {
    /// Image format (probed when absent)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub format: Option<String>,
    /// Output format
    #[arg(long = "output", allow_hyphen_values = true, value_name = "human|json", value_parser = parse_output_format, default_value = "human")]
    pub output: OutputFormat,
    /// First guest offset to map
    #[arg(long = "start-offset", allow_hyphen_values = true, value_name = "OFFSET", value_parser = parse_start_offset, default_value = "0")]
    pub start_offset: u64,
    /// Bytes to map from the start offset (default: to the end)
    #[arg(long = "max-length", allow_hyphen_values = true, value_name = "LENGTH", value_parser = parse_max_length)]
    pub max_length: Option<u64>,
    /// Open the image in shared mode (no locking)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Image file
    #[arg(value_name = "FILE")]
    pub filename: String,
}
