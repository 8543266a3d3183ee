//! Data movers behind the subcommands.

pub mod convert;
pub mod extent_window;
pub mod salvage;
