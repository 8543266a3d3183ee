//! `img amend`.

use anyhow::{bail, Result};

use crate::cli::AmendArgs;

/// Runs `img amend`.
pub fn run(_args: &AmendArgs) -> Result<i32> {
    bail!("amend is not implemented yet")
}
