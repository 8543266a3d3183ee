//! Runs `api_curl.sh`: the control API through curl's `--unix-socket`, a
//! plain HTTP client that is not ours, against the test guest.

mod support;

use std::process::Command;

use support::guest::build_guest;
use support::vmm_api::have_kvm;

#[test]
fn curl_drives_the_api() {
    if !have_kvm() || Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("REQUIRE_KVM").is_none(),
            "REQUIRE_KVM is set but /dev/kvm or curl is missing (apt-get install curl)"
        );
        eprintln!("no /dev/kvm or curl: skipping");
        return;
    }
    let guest = build_guest();
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api_curl.sh");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", "bash", script])
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .arg(&guest)
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("api_curl: ok"), "{stdout}{stderr}");
}
