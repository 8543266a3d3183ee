//! Shared by `vm`'s integration tests.

// Not every test binary uses every helper.
#[allow(dead_code)]
pub mod cli;
#[allow(dead_code)]
#[path = "../../../vmm/tests/support/count.rs"]
pub mod count;
#[allow(dead_code, unused_imports)]
pub mod guest;
#[allow(dead_code)]
pub mod virsh;
