//! Arguments of `img amend`.

use clap::Args;

/// `img amend [-f FMT] [-t CACHE] [--force] [-p] [-q] -o OPTIONS FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct AmendArgs {
    /// Format of the image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Cache mode (accepted)
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Format-specific options to change (may repeat; joined with commas)
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Allow changes that need it (qemu-img's --force)
    #[arg(long = "force")]
    pub force: bool,
    /// Show progress (accepted)
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet mode
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image to change (not needed for `-f FMT -o help`)
    #[arg(value_name = "FILE")]
    pub filename: Option<String>,
}
