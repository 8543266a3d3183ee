//! Data movers behind the subcommands.

pub mod convert;
pub mod salvage;
pub mod extent_window;
