//! Arguments of `img measure`.

use clap::Args;

use super::values::{parse_image_size, parse_output_format};
use crate::report::OutputFormat;

/// `img measure [--output=human|json] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS] [-l SNAPSHOT] [--size N | FILE]`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MeasureArgs {
    /// Output format
    #[arg(long = "output", value_name = "human|json", value_parser = parse_output_format, default_value = "human")]
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
    /// Measure a snapshot of the input image
    #[arg(short = 'l', long = "snapshot", value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// Virtual size of a new image, instead of an input image
    #[arg(long = "size", value_name = "SIZE", value_parser = parse_image_size)]
    pub size: Option<u64>,
    /// Open the image in shared mode (accepted for compatibility)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The input image
    #[arg(value_name = "FILE")]
    pub filename: Option<String>,
}
