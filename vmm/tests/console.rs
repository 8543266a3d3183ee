//! On a terminal the guest gets keys as they are typed (no line editing,
//! no local echo), and the terminal's settings are put back when the VMM
//! stops, even under its seccomp filter. The terminal is a pseudo-terminal
//! made by `script` (util-linux).

use std::process::Command;

#[allow(dead_code)]
mod support;

use support::elf::waiting_guest;

#[test]
fn the_terminal_is_raw_while_the_guest_runs_and_restored_after() {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let script = Command::new("script").arg("--version").output().is_ok();
    if !(kvm && script) {
        assert!(
            std::env::var_os("REQUIRE_KVM").is_none(),
            "no /dev/kvm or script(1)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("guest.elf"), waiting_guest()).unwrap();
    // Inside the pseudo-terminal: note the settings, start the guest on
    // the terminal, show the settings while it waits, stop it, compare.
    let inner = format!(
        "before=$(stty -g); \
         {vmm} --kernel guest.elf --memory 64M </dev/tty & pid=$!; \
         for i in $(seq 100); do stty -a | grep -q -- -icanon && break; sleep 0.05; done; \
         echo \"while: $(stty -a | grep -o -- '-icanon\\|-echo ' | tr '\\n' ' ')\"; \
         kill -TERM $pid; wait $pid; echo \"status: $?\"; \
         [ \"$before\" = \"$(stty -g)\" ] && echo restored",
        vmm = env!("CARGO_BIN_EXE_vmm")
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("while: -icanon -echo"), "{text}");
    assert!(text.contains("status: 0"), "{text}");
    assert!(text.lines().any(|l| l == "restored"), "{text}");
}
