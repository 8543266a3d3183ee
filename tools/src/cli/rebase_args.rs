//! Arguments of `img rebase`.

use clap::Args;

/// `img rebase [-f FMT] [-u] [-c] [-b NEW_BACKING] [-F NEW_FMT] [-p] [-q] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RebaseArgs {
    /// Format of the image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Unsafe mode: only rewrite the backing file name and format
    #[arg(short = 'u', long = "unsafe")]
    pub unsafe_mode: bool,
    /// The new backing file ("" for none)
    #[arg(
        short = 'b',
        long = "backing",
        value_name = "BACKING",
        allow_hyphen_values = true
    )]
    pub backing: Option<String>,
    /// Format of the new backing file
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Write the copied clusters compressed
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show progress (accepted)
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet mode
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Open images in shared mode (accepted for compatibility)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image whose backing file changes
    #[arg(value_name = "FILE")]
    pub filename: String,
}
