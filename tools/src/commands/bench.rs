//! `img bench`.

use anyhow::{bail, Result};

use crate::cli::BenchArgs;

/// Runs `img bench`.
pub fn run(_args: &BenchArgs) -> Result<i32> {
    bail!("bench is not implemented yet")
}
