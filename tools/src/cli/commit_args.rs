//! Arguments of `img commit`.

use clap::Args;

/// `img commit [-f FMT] [-b BASE] [-d] [-p] [-q] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CommitArgs {
    /// Format of the image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// The backing file to commit into (default: the image's backing file)
    #[arg(short = 'b', long = "base", value_name = "BASE")]
    pub base: Option<String>,
    /// Keep the image's contents (do not empty it)
    #[arg(short = 'd', long = "drop")]
    pub keep: bool,
    /// Show progress (accepted)
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet mode
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image to commit
    #[arg(value_name = "FILE")]
    pub filename: String,
}
