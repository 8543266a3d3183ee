//! The test guest for `vm`'s tests: built by vmm's own test support
//! (included from vmm/tests/support/guest.rs, so both suites share one
//! builder and one build in target/guest), plus the `vmm` binary that `vm`
//! starts (it looks next to its own executable).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

#[path = "../../../vmm/tests/support/guest.rs"]
mod builder;

pub use builder::build_guest;
use builder::workspace;

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Makes sure an up-to-date `vmm` binary sits next to `vm` (cargo builds
/// only the tested package's binaries for its tests). Cargo is asked once
/// per test process even when a binary is there, so a `vmm` older than its
/// sources is rebuilt rather than silently tested; an up-to-date one costs
/// cargo's freshness check only.
pub fn ensure_vmm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let vm = PathBuf::from(env!("CARGO_BIN_EXE_vm"));
        let beside = vm.with_file_name("vmm");
        let mut build = cargo();
        build
            .current_dir(workspace())
            .args(["build", "--quiet", "-p", "vmm", "--bin", "vmm"]);
        if vm.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("release")) {
            build.arg("--release");
        }
        let output = build.output().expect("cargo can be started to build vmm");
        assert!(
            output.status.success(),
            "building vmm failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            beside.is_file(),
            "vmm is not next to vm at {}",
            beside.display()
        );
    });
}

/// Whether /dev/kvm can be used; panics if REQUIRE_KVM is set and it
/// cannot.
pub fn have_kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok && std::env::var_os("REQUIRE_KVM").is_some() {
        panic!("/dev/kvm is required (REQUIRE_KVM is set)");
    }
    if !ok {
        eprintln!("skipped: no /dev/kvm");
    }
    ok
}
