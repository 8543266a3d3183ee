//! Arguments of `img snapshot`.

use clap::Args;

/// `img snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] [-f FMT] [-q] [-U] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SnapshotArgs {
    /// List all snapshots in the image
    #[arg(short = 'l', long = "list")]
    pub list: bool,
    /// Apply (revert the disk to) the snapshot SNAPSHOT (an ID or a name)
    #[arg(short = 'a', long = "apply", value_name = "SNAPSHOT")]
    pub apply: Option<String>,
    /// Create a snapshot named SNAPSHOT
    #[arg(short = 'c', long = "create", value_name = "SNAPSHOT")]
    pub create: Option<String>,
    /// Delete the snapshot SNAPSHOT (an ID or a name)
    #[arg(short = 'd', long = "delete", value_name = "SNAPSHOT")]
    pub delete: Option<String>,
    /// Image format (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Quiet mode
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Open the image in shared mode (accepted for compatibility)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image
    #[arg(value_name = "FILE")]
    pub filename: String,
}

/// What `img snapshot` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotAction {
    /// `-l`
    List,
    /// `-a NAME`
    Apply(String),
    /// `-c NAME`
    Create(String),
    /// `-d NAME`
    Delete(String),
}

impl SnapshotArgs {
    /// The one action asked for; qemu-img's messages otherwise.
    pub fn action(&self) -> Result<SnapshotAction, String> {
        let mut actions = Vec::new();
        if self.list {
            actions.push(SnapshotAction::List);
        }
        if let Some(n) = &self.apply {
            actions.push(SnapshotAction::Apply(n.clone()));
        }
        if let Some(n) = &self.create {
            actions.push(SnapshotAction::Create(n.clone()));
        }
        if let Some(n) = &self.delete {
            actions.push(SnapshotAction::Delete(n.clone()));
        }
        match actions.len() {
            // qemu-img lists when no action is given.
            0 => Ok(SnapshotAction::List),
            1 => Ok(actions.remove(0)),
            _ => Err("Cannot mix '-l', '-a', '-c', '-d'".to_string()),
        }
    }
}
