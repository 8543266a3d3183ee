//! Arguments of `img dd`.

use clap::Args;

/// `img dd [-f FMT] [-O OUTPUT_FMT] [-U] [--image-opts] [bs=BLOCK_SIZE]
/// [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT`: the `key=value`
/// operands are taken as given and parsed by the command, as qemu-img
/// parses them (in order, the last of a key winning).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DdArgs {
    /// Format of the input image (probed if not given)
    #[arg(
        short = 'f',
        long = "format",
        allow_hyphen_values = true,
        value_name = "FMT"
    )]
    pub format: Option<String>,
    /// Format of the output image (default raw)
    #[arg(
        short = 'O',
        long = "target-format",
        allow_hyphen_values = true,
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub target_format: String,
    /// Open the input image in shared mode
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The input is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// `bs=`, `count=`, `if=`, `of=` and `skip=` operands
    #[arg(value_name = "OPERAND")]
    pub operands: Vec<String>,
}
