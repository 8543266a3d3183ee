//! Holding images open the way the lock tests do: a process kept
//! running until dropped, and commands' outcomes compared with the
//! program name made neutral.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{qemu_img, run};

/// Runs `program ARGS` in `dir` and returns (exit code, stdout + stderr)
/// with the program's name prefix made neutral (`img: ` and `qemu-img: `
/// both become `PROG: `) and bench's timing left out.
pub fn outcome(mut cmd: Command, dir: &Path) -> (Option<i32>, String) {
    let out = run(cmd.current_dir(dir).stdin(Stdio::null()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text
        .lines()
        .map(|l| {
            // bench's timing differs run to run.
            if l.starts_with("Run completed in ") {
                return "Run completed in T seconds.".to_string();
            }
            l.strip_prefix("qemu-img: ")
                .or_else(|| l.strip_prefix("img: "))
                .map_or_else(|| l.to_string(), |rest| format!("PROG: {rest}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.code(), text)
}

/// A child process killed when the test ends, pass or fail.
pub struct Holder(pub Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until qemu-img `args` fails in `dir`: a holder has taken its
/// locks on a file the command opens.
pub fn wait_until_refused(dir: &Path, args: &[&str]) {
    let start = Instant::now();
    while run(qemu_img(args).current_dir(dir)).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "qemu-img {args:?} was never refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `qemu-io -f raw -c 'sleep' FILE` in `dir` until dropped: it holds
/// FILE open for writing and shares everything, as QEMU's raw node does.
pub fn hold_raw(dir: &Path, file: &str) -> Holder {
    Holder(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "sleep 600000", file])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}
