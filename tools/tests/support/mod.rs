//! Shared by `vm`'s integration tests.

pub mod guest;
