//! The network guest tests' shared parts: root, /dev/kvm and the tools
//! checked, a fresh network namespace per test, taps in it, and a VMM
//! running the test guest with its serial lines on a channel.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use super::guest::build_guest;

/// The tap's (host's) address.
pub const HOST_IP: &str = "10.99.0.1";
/// The guest's address.
pub const GUEST_IP: &str = "10.99.0.2";
/// The guest's MAC address.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// The vmm binary under test.
pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

/// Whether `program` runs.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this process may run the test; says why not.
pub fn can_run() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing = [
        (!kvm, "/dev/kvm"),
        (!root, "root"),
        (!Path::new("/dev/net/tun").exists(), "/dev/net/tun"),
        (!have("ip"), "ip (iproute2)"),
        (!have("ping"), "ping (iputils-ping)"),
    ];
    let missing: Vec<&str> = missing.iter().filter(|m| m.0).map(|m| m.1).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("REQUIRE_KVM").is_none(),
        "REQUIRE_KVM is set but the net guest tests lack {missing:?}"
    );
    eprintln!("net guest tests skipped: no {}", missing.join(", "));
    false
}

/// Runs `body` on a thread of its own moved into a fresh network
/// namespace; processes it starts are in it too.
pub fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the
        // calling thread.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `ip ARGS` (iproute2) in this thread's namespace.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A persistent tap `name` with the host's address, up.
pub fn make_tap(name: &str) {
    make_tap_queues(name, false);
}

/// [`make_tap`], with IFF_MULTI_QUEUE when `multi_queue`.
pub fn make_tap_queues(name: &str, multi_queue: bool) {
    ip(&["link", "set", "lo", "up"]);
    let mut add = vec!["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"];
    if multi_queue {
        add.push("multi_queue");
    }
    ip(&add);
    ip(&["link", "set", name, "addrgenmode", "none"]);
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", name]);
    ip(&["link", "set", name, "up"]);
}

/// A running VMM with the test guest, its serial lines on a channel.
pub struct GuestVm {
    /// The VMM process.
    pub child: Child,
    lines: Receiver<String>,
    seen: String,
    /// Its API socket.
    pub api: PathBuf,
    /// The folder of its API socket (and a migration's socket).
    pub _dir: tempfile::TempDir,
}

impl GuestVm {
    /// The guest in `mode` with the interface `net` (a `--net` spec).
    pub fn start(mode: &str, net: &str) -> GuestVm {
        GuestVm::start_cmdline(&guest_cmdline(mode), net)
    }

    /// The guest with `cmdline` and the interface `net`.
    pub fn start_cmdline(cmdline: &str, net: &str) -> GuestVm {
        let guest = build_guest();
        let mut vm = GuestVm::spawn(&[
            "--kernel".as_ref(),
            guest.as_os_str(),
            "--memory".as_ref(),
            "32M".as_ref(),
            "--cmdline".as_ref(),
            cmdline.as_ref(),
            "--net".as_ref(),
            net.as_ref(),
        ]);
        vm.wait_api();
        vm
    }

    /// The guest in `mode` with a fresh 1 MiB qcow2 first disk in
    /// `images` (an in-image snapshot needs one) and an interface with
    /// `num_queues` queues (`id=net0`) on a new tap `tap` (multiqueue when
    /// there is more than one pair); returns once the guest printed a
    /// serial line starting with `ready`.
    pub fn start_with_disk(
        mode: &str,
        images: &Path,
        tap: &str,
        num_queues: u16,
        ready: &str,
    ) -> GuestVm {
        GuestVm::start_with_disk_env(mode, images, tap, num_queues, ready, &[])
    }

    /// [`GuestVm::start_with_disk`] with `env` set for the VMM (a test's
    /// fault hook).
    pub fn start_with_disk_env(
        mode: &str,
        images: &Path,
        tap: &str,
        num_queues: u16,
        ready: &str,
        env: &[(&str, &str)],
    ) -> GuestVm {
        make_tap_queues(tap, num_queues > 2);
        let disk = images.join("disk.qcow2");
        make_qcow2(&disk);
        let disk_spec = format!("path={},format=qcow2", disk.display());
        let net = format!("tap={tap},mac={GUEST_MAC},num_queues={num_queues},id=net0");
        let guest = build_guest();
        let cmdline = guest_cmdline(mode);
        let mut vm = GuestVm::spawn_with_env(
            &[
                "--kernel".as_ref(),
                guest.as_os_str(),
                "--memory".as_ref(),
                "32M".as_ref(),
                "--cmdline".as_ref(),
                cmdline.as_ref(),
                "--disk".as_ref(),
                disk_spec.as_ref(),
                "--net".as_ref(),
                net.as_ref(),
            ],
            env,
        );
        vm.wait_api();
        vm.wait_line(ready, Duration::from_secs(60));
        vm
    }

    /// A VMM serving its API socket, with `args`.
    pub fn spawn(args: &[&std::ffi::OsStr]) -> GuestVm {
        GuestVm::spawn_with_env(args, &[])
    }

    /// [`GuestVm::spawn`] with `env` set for the VMM.
    pub fn spawn_with_env(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> GuestVm {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = dir.path().join("api.sock");
        let mut child = Command::new(vmm_bin())
            .args(args)
            .envs(env.iter().copied())
            .arg("--api-socket")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vmm");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end().to_string()).is_err() {
                    break;
                }
            }
        });
        GuestVm {
            child,
            lines,
            seen: String::new(),
            api,
            _dir: dir,
        }
    }

    /// Waits until the API answers.
    pub fn wait_api(&mut self) {
        let client = vmapi::Client::new(&self.api);
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.ping().is_err() {
            assert!(Instant::now() < deadline, "the API never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a serial line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no '{prefix}' line within {timeout:?}; serial:\n{}",
                    self.seen
                ),
            }
        }
    }

    pub fn counters(&self, id: &str) -> std::collections::BTreeMap<String, u64> {
        let client = vmapi::Client::new(&self.api);
        let mut all = client.counters().expect("vm.counters");
        all.remove(id)
            .unwrap_or_else(|| panic!("no counters for {id}"))
    }

    /// Ends the guest (UDP "reset" to port 9), checks its tally line, and
    /// shuts the VMM down; returns its stderr.
    pub fn finish(self) -> (String, String) {
        self.finish_with("guest: net done")
    }

    /// [`GuestVm::finish`] for a guest whose tally line starts with
    /// `done_prefix`.
    pub fn finish_with(mut self, done_prefix: &str) -> (String, String) {
        let socket = UdpSocket::bind((HOST_IP, 0)).expect("bind");
        socket.send_to(b"reset", (GUEST_IP, 9)).expect("send reset");
        let done = self.wait_line(done_prefix, Duration::from_secs(30));
        let _ = vmapi::Client::new(&self.api).vmm_shutdown();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vmm did not exit after vmm.shutdown");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        (done, stderr)
    }

    /// Shuts the VMM down (vmm.shutdown, the guest left as it is), waits
    /// for it to exit and returns its stderr.
    pub fn shut_down(&mut self) -> String {
        let _ = vmapi::Client::new(&self.api).vmm_shutdown();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        stderr
    }
}

/// Asserts that `stderr` (a VMM's) logged an in-place revert and no
/// rebuild: the VM kept its KVM VM, devices and taps.
pub fn assert_reverted_in_place(stderr: &str) {
    assert!(
        stderr.contains("vmm: revert in place:") && !stderr.contains("rebuilding the VM"),
        "the revert was not made in place:\n{stderr}"
    );
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest's command line for `mode` at [`GUEST_IP`].
pub fn guest_cmdline(mode: &str) -> String {
    format!("console=ttyS0 guest.mode={mode} guest.ip={GUEST_IP}")
}

/// Pings the guest `count` times, 0.2 s apart.
pub fn ping(count: u32) -> std::process::Output {
    Command::new("ping")
        .args(["-c", &count.to_string(), "-i", "0.2", "-W", "5", GUEST_IP])
        .output()
        .expect("run ping")
}

/// A 1 MiB qcow2 image at `path` (an in-image snapshot needs a writable
/// qcow2 first disk; the net guest leaves it alone).
pub fn make_qcow2(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("image file");
    let storage: std::sync::Arc<dyn qcow::Storage> =
        std::sync::Arc::new(qcow::FileStorage::new(file));
    qcow::create::create(
        storage,
        None,
        None,
        &qcow::create::CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .expect("create the image")
    .close()
    .expect("close the image");
}

/// Runs `body` on a thread moved into the network namespace of process
/// `pid` (a VMM started in a namespace of its own).
pub fn in_netns_of<T: Send + 'static>(pid: u32, body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the VMM's netns");
        // SAFETY: setns takes an open namespace fd and moves only the
        // calling thread.
        let ret = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Migrates `source`'s guest to `dest` over a unix socket in `dest`'s run
/// folder: `receive` makes `dest`'s vm.receive-migration call (given its
/// client and the URL) on a thread of its own, while the source's
/// vm.send-migration is retried until that listener is up; panics if
/// either side fails.
pub fn migrate_over_unix(
    source: &GuestVm,
    dest: &GuestVm,
    receive: impl FnOnce(&vmapi::Client, &str) -> vmapi::Result<String> + Send + 'static,
) {
    let url = format!("unix:{}", dest._dir.path().join("migrate.sock").display());
    let receiver = {
        let client = vmapi::Client::new(&dest.api).with_io_timeout(Duration::from_secs(120));
        let url = url.clone();
        std::thread::spawn(move || receive(&client, &url))
    };
    let sender = vmapi::Client::new(&source.api).with_io_timeout(Duration::from_secs(120));
    let started = std::time::Instant::now();
    loop {
        match sender.send_migration(&vmapi::VmSendMigrationData::new(&url)) {
            Ok(()) => break,
            Err(e)
                if e.to_string().contains("connecting")
                    && started.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("send-migration: {e}"),
        }
    }
    receiver
        .join()
        .expect("receiver thread")
        .expect("receive-migration");
}

/// vm.receive-migration with the console on the VMM's terminal, as the
/// tests' guests print to it.
pub fn receive_on_tty(client: &vmapi::Client, url: &str) -> vmapi::Result<String> {
    let tty = vmapi::ConsoleConfig::of_mode(vmapi::ConsoleMode::Tty);
    client.receive_migration(url, Some(tty))
}
