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

impl Holder {
    /// Starts `qemu-io ARGS FILE` in `dir`, reading its commands from a
    /// pipe the holder keeps open: it holds FILE (and what FILE opens)
    /// until dropped, with stderr kept in `err`. No `-c 'sleep N'`:
    /// qemu-io's sleep runs on QEMU_CLOCK_HOST, the wall clock, so a
    /// host whose clock steps forward ends such a holder early, and its
    /// locks with it.
    pub fn qemu_io(dir: &Path, args: &[&str], file: &str, err: Stdio) -> Holder {
        let mut child = Command::new("qemu-io")
            .args(args)
            .arg(file)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start qemu-io");
        // qemu-io prints its prompt once FILE is open and its locks are
        // taken (or ends): until then a `qemu-img info` of FILE could
        // take its own lock first and make qemu-io fail to get "write".
        if let Some(mut out) = child.stdout.take() {
            use std::io::Read;
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while !seen.ends_with(b"qemu-io> ") && matches!(out.read(&mut byte), Ok(1)) {
                seen.push(byte[0]);
            }
            child.stdout = Some(out);
        }
        Holder(child)
    }

    /// One line on the holder for a failure message: whether it still
    /// runs, and the locks /proc/locks lists on `file`'s inode.
    pub fn state(&mut self, file: &Path) -> String {
        let process = match self.0.try_wait() {
            Ok(None) => format!("holder {} running", self.0.id()),
            Ok(Some(status)) => format!("holder {} ended ({status})", self.0.id()),
            Err(e) => format!("holder {}: {e}", self.0.id()),
        };
        format!(
            "{process}; locks on {}: {:?}",
            file.display(),
            locks_on(file)
        )
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of /proc/locks that name `file`'s inode (empty if none or
/// unreadable).
fn locks_on(file: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(file) else {
        return vec!["(file gone)".into()];
    };
    let suffix = format!(":{}", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|dev_ino| dev_ino.ends_with(&suffix))
        })
        .map(str::to_string)
        .collect()
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

/// Starts `qemu-io` holding `file` (in `dir`) open for writing (reading
/// its commands from a pipe, so no timer ends it), and waits until
/// `qemu-img info` finds it locked. A holder that ends or has not
/// locked the file within 20 s is started again, at most three times:
/// fresh-clone CI once saw one never lock its image (cause not found; see
/// the README's open problems), and each attempt's stderr is kept for the
/// message.
pub fn hold_for_writing(dir: &Path, file: &str) -> Holder {
    let mut errors = String::new();
    for attempt in 0..3 {
        let err_path = dir.join(format!("holder{attempt}.err"));
        let mut holder = Holder::qemu_io(
            dir,
            &[],
            file,
            std::fs::File::create(&err_path).unwrap().into(),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if !run(qemu_img(&["info", file]).current_dir(dir))
                .status
                .success()
            {
                return holder;
            }
            if let Ok(Some(status)) = holder.0.try_wait() {
                errors.push_str(&format!("attempt {attempt}: qemu-io ended ({status}); "));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        errors.push_str(&format!(
            "attempt {attempt} stderr: {:?}; ",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        ));
        drop(holder);
    }
    panic!("qemu-io never locked {file}: {errors}");
}

/// Runs `qemu-io -f raw FILE` in `dir` until dropped: it holds FILE
/// open for writing and shares everything, as QEMU's raw node does.
pub fn hold_raw(dir: &Path, file: &str) -> Holder {
    Holder::qemu_io(dir, &["-f", "raw"], file, Stdio::null())
}
