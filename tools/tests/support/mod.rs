//! Shared by `vm`'s integration tests.

#[allow(dead_code)]
#[path = "../../../vmm/tests/support/count.rs"]
pub mod count;
pub mod guest;
