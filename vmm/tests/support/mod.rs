//! Shared by the VMM integration tests.

// Not every test binary uses every guest.
#[allow(dead_code)]
pub mod count;
#[allow(dead_code)]
pub mod elf;
pub mod guest;
#[allow(dead_code)]
pub mod net;
#[allow(dead_code)]
pub mod vmm_api;
