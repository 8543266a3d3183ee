//! Builds the tiny test guest in `vmm/guest` (its own cargo project, not a
//! workspace member) once per test process and returns the ELF's path.
//! vmm's tests and tools' (which include this file) share it and one build
//! in `target/guest`.
//!
//! The guest runs in ring 0 under an instruction emulator that cannot run
//! SSE or x87 code, so its code-generation flags are passed here explicitly
//! through `CARGO_ENCODED_RUSTFLAGS`, which outranks any `RUSTFLAGS` the test
//! run was started with. `--target` is explicit so these flags reach only the
//! guest, not build scripts or proc macros. Dependencies (virtio-drivers and
//! its own) come from the local registry cache: the build runs `--offline`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The only target the guest builds for (no bare-metal target is installed).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The guest binary's name (vmm/guest/Cargo.toml).
const GUEST_BINARY: &str = "vmm-test-guest";
/// Code generation the guest needs: a fixed-address static image, no red
/// zone (interrupts run on the same stack), no SSE/x87 instructions.
const GUEST_RUSTFLAGS: [&str; 3] = [
    "-Crelocation-model=static",
    "-Cno-redzone=yes",
    "-Ctarget-feature=-sse,-sse2,-x87",
];

/// Builds the guest (release) the first time it is called in this process
/// and returns the path of its static ELF; panics with cargo's output if the
/// build fails.
pub fn build_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(build).clone()
}

/// The workspace's root: every crate whose tests use this file (vmm, and
/// tools, which includes it) sits one level below it.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of vmm/guest.
fn guest_dir() -> PathBuf {
    workspace().join("vmm").join("guest")
}

/// The target directory in use.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where the guest's build goes: `guest/` under the target directory in use.
fn guest_target_dir() -> PathBuf {
    target_dir().join("guest")
}

fn build() -> PathBuf {
    let guest_dir = guest_dir();
    let target_dir = guest_target_dir();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(option_env!("CARGO").unwrap_or("cargo")));
    let output = Command::new(cargo)
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
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cargo can be started to build the test guest");
    assert!(
        output.status.success(),
        "building the test guest in {} failed ({}):\n{}",
        guest_dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_BINARY);
    assert!(
        elf.is_file(),
        "the guest build produced no {}",
        elf.display()
    );
    elf
}
