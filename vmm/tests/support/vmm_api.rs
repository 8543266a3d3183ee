//! Running `vmm --api-socket` for the API tests: a VMM process in its own
//! temporary run folder, a `vmapi::Client` on its socket, and waiting for
//! the guest's serial log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `vmm --api-socket` process, killed when dropped.
pub struct ApiVmm {
    /// The process.
    pub child: Child,
    /// Its run folder (socket, console, log, disks).
    pub dir: tempfile::TempDir,
    /// Its API socket.
    pub socket: PathBuf,
}

impl ApiVmm {
    /// Starts `vmm --api-socket path=DIR/api.sock` plus `extra` and waits
    /// for the socket.
    pub fn start(extra: &[&str]) -> ApiVmm {
        Self::start_with_env(extra, &[])
    }

    /// [`ApiVmm::start`] with `env` added to the VMM's environment.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> ApiVmm {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let log = std::fs::File::create(dir.path().join("vmm.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn vmm");
        let vmm = ApiVmm { child, dir, socket };
        let start = Instant::now();
        while !vmm.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no API socket: {}",
                vmm.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    /// A client of its socket.
    pub fn client(&self) -> vmapi::Client {
        vmapi::Client::new(&self.socket).with_io_timeout(Duration::from_secs(20))
    }

    /// A path in its run folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the VMM printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("vmm.log")).unwrap_or_default()
    }

    /// The guest's serial log (Socket mode's `file`).
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.path("console.log")).unwrap_or_default()
    }

    /// Waits until the serial log contains `text` `times` times.
    pub fn wait_console(&self, text: &str, times: usize) {
        let start = Instant::now();
        while self.console_log().matches(text).count() < times {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {times} x '{text}' on the serial: {}\nvmm: {}",
                self.console_log(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to end; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vmm did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VmConfig for the test guest with `cmdline`, 32 MiB, its serial on
/// `dir`'s console.sock and console.log, and `disks`.
pub fn guest_config(
    guest: &Path,
    cmdline: &str,
    dir: &Path,
    disks: Vec<vmapi::DiskConfig>,
) -> vmapi::VmConfig {
    vmapi::VmConfig {
        cpus: vmapi::CpusConfig::default(),
        memory: vmapi::MemoryConfig { size: 32 << 20 },
        payload: vmapi::PayloadConfig {
            kernel: Some(guest.to_path_buf()),
            cmdline: Some(cmdline.to_string()),
            ..Default::default()
        },
        disks: (!disks.is_empty()).then_some(disks),
        net: None,
        serial: Some(vmapi::ConsoleConfig {
            file: Some(dir.join("console.log")),
            socket: Some(dir.join("console.sock")),
            mode: vmapi::ConsoleMode::Socket,
        }),
        console: None,
    }
}

/// Whether /dev/kvm can be used.
pub fn have_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
