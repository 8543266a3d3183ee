//! Arguments of `img bitmap`.

use clap::Args;

/// One action of `img bitmap`, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapAction {
    /// `--add`.
    Add,
    /// `--remove`.
    Remove,
    /// `--clear`.
    Clear,
    /// `--enable`.
    Enable,
    /// `--disable`.
    Disable,
    /// `--merge SOURCE`.
    Merge(String),
}

/// `img bitmap (--add|--remove|--clear|--enable|--disable|--merge SOURCE)...
/// [-g GRANULARITY] [-b SOURCE_FILE [-F SOURCE_FMT]] [-f FMT] FILE BITMAP`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BitmapArgs {
    /// Format of the image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// FILE is an option string (`driver=qcow2,file.filename=X`)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Add a new, enabled bitmap
    #[arg(long = "add")]
    pub add: bool,
    /// Remove the bitmap
    #[arg(long = "remove")]
    pub remove: bool,
    /// Clear every bit of the bitmap
    #[arg(long = "clear")]
    pub clear: bool,
    /// Start tracking writes
    #[arg(long = "enable")]
    pub enable: bool,
    /// Stop tracking writes
    #[arg(long = "disable")]
    pub disable: bool,
    /// Merge bitmap SOURCE into BITMAP (may repeat)
    #[arg(long = "merge", value_name = "SOURCE")]
    pub merge: Vec<String>,
    /// Granularity of a new bitmap (with --add)
    #[arg(short = 'g', long = "granularity", value_name = "GRANULARITY")]
    pub granularity: Option<String>,
    /// The image holding --merge's source bitmap
    #[arg(short = 'b', long = "source-file", value_name = "SOURCE_FILE")]
    pub source_file: Option<String>,
    /// Format of SOURCE_FILE
    #[arg(short = 'F', long = "source-format", value_name = "SOURCE_FMT")]
    pub source_format: Option<String>,
    /// The image and the bitmap's name
    #[arg(value_name = "FILE BITMAP")]
    pub positional: Vec<String>,
    /// The actions in command-line order (filled after parsing).
    #[arg(skip)]
    pub actions: Vec<BitmapAction>,
}

impl BitmapArgs {
    /// Fills [`BitmapArgs::actions`] from the raw arguments after the
    /// subcommand, in their order (clap keeps flags, not their order).
    pub fn order_actions(&mut self, raw: &[String]) {
        let mut actions = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--add" => actions.push(BitmapAction::Add),
                "--remove" => actions.push(BitmapAction::Remove),
                "--clear" => actions.push(BitmapAction::Clear),
                "--enable" => actions.push(BitmapAction::Enable),
                "--disable" => actions.push(BitmapAction::Disable),
                "--merge" => {
                    if let Some(v) = it.next() {
                        actions.push(BitmapAction::Merge(v.clone()));
                    }
                }
                "-f" | "-g" | "-b" | "-F" | "--format" | "--granularity" | "--source-file"
                | "--source-format" => {
                    it.next();
                }
                "--" => break,
                other => {
                    if let Some(v) = other.strip_prefix("--merge=") {
                        actions.push(BitmapAction::Merge(v.to_string()));
                    }
                }
            }
        }
        self.actions = actions;
    }
}
