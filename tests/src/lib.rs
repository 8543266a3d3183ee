//! Helpers shared by the integration tests (qemu-img wrappers, file generators).
