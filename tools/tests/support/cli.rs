//! Running `vm` the way the tests do: against a store of their own
//! (`vm -c STORE`), with the `vmm` found next to `vm` (`VM_VMM` unset).

use std::path::Path;
use std::process::{Command, Output};

/// `vm -c STORE ARGS...`, its output.
pub fn vm(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm"))
        .arg("-c")
        .arg(store)
        .args(args)
        .env_remove("VM_VMM")
        .output()
        .expect("vm can be started")
}

/// Bytes of output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vm -c STORE ARGS...`, which must succeed; its standard output.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let out = vm(store, args);
    assert!(
        out.status.success(),
        "vm {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}
