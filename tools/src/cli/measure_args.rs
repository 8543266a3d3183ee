//! Arguments of `img measure`.

use clap::Args;

use super::values::{parse_image_size, parse_snapshot_param, SnapshotParam, UsageError};
use crate::report::OutputFormat;

/// Parses `measure --output`, refused in measure's own words (qemu-img
/// words this check differently in each command).
pub fn parse_measure_output(value: &str) -> Result<OutputFormat, UsageError> {
    match value {
        "human" => Ok(OutputFormat::Human),
        "json" => Ok(OutputFormat::Json),
        _ => Err(UsageError::plain(
            "--output must be used with human or json as argument.",
        )),
    }
}

/// `img measure [--output=human|json] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS] [-l SNAPSHOT] [--size N | FILE]`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MeasureArgs {
    /// Output format
    #[arg(long = "output", value_name = "human|json", value_parser = parse_measure_output, default_value = "human")]
    pub output: OutputFormat,
    /// Format of the input image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Format of the image to be created (default raw)
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub target_format: String,
    /// Creation options of the target format
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Measure a snapshot of the input image: ID_OR_NAME or
    /// snapshot.id=ID,snapshot.name=NAME
    #[arg(short = 'l', long = "snapshot", allow_hyphen_values = true, value_name = "SNAPSHOT_PARAM", value_parser = parse_snapshot_param)]
    pub snapshot: Option<SnapshotParam>,
    /// Virtual size of a new image, instead of an input image
    #[arg(long = "size", allow_hyphen_values = true, value_name = "SIZE", value_parser = parse_image_size)]
    pub size: Option<u64>,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Open the image in shared mode (accepted for compatibility)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The input image (at most one; checked by the command, in
    /// qemu-img's words)
    #[arg(value_name = "FILE")]
    pub files: Vec<String>,
}
