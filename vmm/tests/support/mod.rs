//! Shared by the VMM integration tests.

pub mod guest;
