//! Builds the test guest of vmm/guest (as vmm's own tests do, see
//! vmm/tests/support/guest.rs: a static ring-0 image without red zone,
//! SSE or x87, built offline for the host target) into the same
//! target/guest folder, so both test suites share one build, and the `vmm`
//! binary `vm` starts (it looks next to its own executable).
//!
//! This is vmm's builder with the paths seen from tools/: the logic should
//! move to one place both use (a shared test-support crate).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_BINARY: &str = "vmm-test-guest";
const GUEST_RUSTFLAGS: [&str; 3] = [
    "-Crelocation-model=static",
    "-Cno-redzone=yes",
    "-Ctarget-feature=-sse,-sse2,-x87",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The guest's ELF, built the first time it is asked for in this process.
pub fn build_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let guest_dir = workspace().join("vmm").join("guest");
            let target = target_dir().join("guest");
            let output = cargo()
                .current_dir(&guest_dir)
                .args([
                    "build",
                    "--release",
                    "--offline",
                    "--quiet",
                    "--target",
                    GUEST_TARGET,
                ])
                .arg("--manifest-path")
                .arg(guest_dir.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"))
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_BUILD_RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .output()
                .expect("cargo can be started to build the test guest");
            assert!(
                output.status.success(),
                "building the test guest failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let elf = target.join(GUEST_TARGET).join("release").join(GUEST_BINARY);
            assert!(elf.is_file(), "no {}", elf.display());
            elf
        })
        .clone()
}

/// Makes sure the `vmm` binary sits next to `vm` (cargo builds only the
/// tested package's binaries for its tests).
pub fn ensure_vmm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let vm = PathBuf::from(env!("CARGO_BIN_EXE_vm"));
        let beside = vm.with_file_name("vmm");
        if beside.is_file() {
            return;
        }
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
