//! The control API against a real `vmm --api-socket` and the test guest
//! (idle and io modes, 32 MiB): every endpoint with Cloud Hypervisor's
//! status codes (404 before a VM exists, 405 in a wrong state, 400 for
//! bad HTTP or JSON), counters exact after the guest's known I/O, pause
//! that really stops the guest and resume that continues it, in-process
//! reboot, the power button ending the VMM with exit 0 and its sockets
//! removed, and peers of another uid refused.

mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::guest::build_guest;
use support::vmm_api::{guest_config, have_kvm, ApiVmm};
use vmapi::{Method, VmState};

/// Skips (returns) without /dev/kvm, unless REQUIRE_KVM is set.
macro_rules! require_kvm {
    () => {
        if !have_kvm() {
            assert!(
                std::env::var_os("REQUIRE_KVM").is_none(),
                "REQUIRE_KVM is set but /dev/kvm is missing"
            );
            eprintln!("no /dev/kvm: skipping");
            return;
        }
    };
}

/// Sends raw bytes and returns the raw answer (until the server closes).
fn raw(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[test]
fn without_a_vm_the_api_answers_as_cloud_hypervisor() {
    let mut vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let mode = std::fs::metadata(&vmm.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let ping = client.ping().unwrap();
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ping.pid, Some(i64::from(vmm.child.id())));
    // 404 before a VM exists.
    for call in [
        client.info().map(|_| ()),
        client.counters().map(|_| ()),
        client.boot(false),
        client.pause(),
        client.resume(),
        client.shutdown(),
        client.reboot(),
        client.power_button(),
    ] {
        assert_eq!(call.unwrap_err().status(), Some(404));
    }
    client.delete().unwrap();
    // 400 for bad HTTP and bad JSON, 404 for an unknown path; one line each.
    let cases: [(&[u8], &str); 7] = [
        (b"garbage\r\n\r\n", "400"),
        (b"GET /api/v1/vmm.ping HTTP/9.9\r\n\r\n", "400"),
        (
            b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n",
            "400",
        ),
        (
            b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"pay",
            "400",
        ),
        (
            b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "400",
        ),
        (b"GET /api/v1/vm.coredump HTTP/1.1\r\n\r\n", "404"),
        (b"GET /api/v1/vm.pause HTTP/1.1\r\n\r\n", "400"),
    ];
    for (bytes, status) in cases {
        let answer = raw(&vmm.socket, bytes);
        assert!(
            status_line(&answer).contains(status),
            "{}: {answer}",
            String::from_utf8_lossy(bytes)
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let messages: Vec<String> = serde_json::from_str(body).expect("CH's error body");
        assert!(
            !messages.is_empty() && !messages[0].contains('\n'),
            "{messages:?}"
        );
    }
    // A head past the limit, and a client that stops mid-request.
    let mut long = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 20 << 10));
    assert!(status_line(&raw(&vmm.socket, &long)).contains("400"));
    assert!(status_line(&raw(&vmm.socket, b"GET /api/v1/vmm.pi")).contains("400"));
    // A config that cannot work: 400 naming the field.
    let config = vmapi::VmConfig {
        payload: vmapi::PayloadConfig {
            kernel: Some(vmm.path("no-such-kernel")),
            ..Default::default()
        },
        ..serde_json::from_str(r#"{"payload": {}}"#).unwrap()
    };
    let err = client.create(&config).unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("payload.kernel"), "{err}");
    client.ping().unwrap();
    // The API thread runs under its own seccomp filter.
    let api_thread = std::fs::read_dir(format!("/proc/{}/task", vmm.child.id()))
        .unwrap()
        .map(|task| task.unwrap().path())
        .find(|task| std::fs::read_to_string(task.join("comm")).unwrap_or_default() == "api\n")
        .expect("an api thread");
    let status = std::fs::read_to_string(api_thread.join("status")).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0));
    assert!(!vmm.socket.exists());
}

#[test]
fn version_is_vmm_vxyz() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("vmm v{}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn lifecycle_pause_reboot_and_power_button() {
    require_kvm!();
    let guest = build_guest();
    let mut vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let config = guest_config(&guest, "guest.mode=idle", vmm.dir.path(), Vec::new());
    client.create(&config).unwrap();
    assert_eq!(client.create(&config).unwrap_err().status(), Some(405));
    let info = client.info().unwrap();
    assert_eq!(info.state, VmState::Created);
    assert_eq!(info.memory_actual_size, Some(32 << 20));
    assert_eq!(info.config.payload, config.payload);
    for call in [
        client.pause(),
        client.resume(),
        client.shutdown(),
        client.power_button(),
    ] {
        assert_eq!(call.unwrap_err().status(), Some(405));
    }
    client.boot(false).unwrap();
    assert_eq!(client.boot(false).unwrap_err().status(), Some(405));
    assert_eq!(client.info().unwrap().state, VmState::Running);
    vmm.wait_console("guest: idle", 1);
    assert!(vmm.path("console.sock").exists());
    // A console client sees what the guest prints from now on.
    let mut console = UnixStream::connect(vmm.path("console.sock")).unwrap();
    console
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // One client at a time: a second one is closed at once.
    let mut second = UnixStream::connect(vmm.path("console.sock")).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(second.read(&mut [0u8; 16]).unwrap(), 0);

    client.pause().unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    assert_eq!(client.pause().unwrap_err().status(), Some(405));
    assert_eq!(client.power_button().unwrap_err().status(), Some(405));
    client.resume().unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Running);
    assert_eq!(client.resume().unwrap_err().status(), Some(405));
    // Malformed input while the guest runs stops nothing.
    for bytes in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"PUT /api/v1/vm.boot HTTP/1.1\r\nContent-Length: 3\r\n\r\n{{{",
    ] {
        assert!(status_line(&raw(&vmm.socket, bytes)).contains("400"));
    }
    assert_eq!(client.info().unwrap().state, VmState::Running);

    // Reboot in place: the guest starts again in the same process.
    client.reboot().unwrap();
    vmm.wait_console("guest: idle", 2);
    assert_eq!(client.info().unwrap().state, VmState::Running);
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("guest: idle") {
        let n = console
            .read(&mut buffer)
            .expect("console output after reboot");
        assert!(n > 0, "console closed");
        seen.extend_from_slice(&buffer[..n]);
    }

    // The power button: the guest powers off, vmm exits 0, sockets gone.
    client.power_button().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0), "{}", vmm.log());
    assert!(
        vmm.console_log().contains("power button"),
        "{}",
        vmm.console_log()
    );
    assert!(!vmm.socket.exists() && !vmm.path("console.sock").exists());
}

fn raw_disk(vmm: &ApiVmm, id: &str) -> vmapi::DiskConfig {
    let path = vmm.path(&format!("{id}.raw"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    vmapi::DiskConfig {
        path,
        readonly: false,
        direct: false,
        id: Some(id.to_string()),
        image_type: Some(vmapi::ImageType::Raw),
    }
}

fn disk_counters(client: &vmapi::Client, id: &str) -> vmapi::DiskCounters {
    vmapi::DiskCounters::from_map(&client.counters().unwrap()[id])
}

#[test]
fn counters_are_exact_and_the_vm_boots_again_after_shutdown() {
    require_kvm!();
    let guest = build_guest();
    let mut vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let disk = raw_disk(&vmm, "vda");
    let cmdline = "guest.mode=io guest.reads=7 guest.writes=5 guest.flushes=3";
    client
        .create(&guest_config(&guest, cmdline, vmm.dir.path(), vec![disk]))
        .unwrap();
    assert_eq!(
        disk_counters(&client, "vda"),
        vmapi::DiskCounters::default()
    );
    client.boot(false).unwrap();
    vmm.wait_console("guest: io done", 1);
    let c = disk_counters(&client, "vda");
    assert_eq!((c.read_ops, c.read_bytes), (7, 7 * 4096), "{c:?}");
    assert_eq!((c.write_ops, c.write_bytes), (5, 5 * 4096), "{c:?}");
    assert_eq!(c.flush_ops, 3, "{c:?}");
    assert!(c.read_latency_min <= c.read_latency_avg && c.read_latency_avg <= c.read_latency_max);
    assert!(c.read_time_ns > 0 && c.write_time_ns > 0 && c.flush_time_ns > 0);
    let names: Vec<String> = client.counters().unwrap()["vda"].keys().cloned().collect();
    for name in vmapi::DISK_COUNTER_NAMES {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }

    client.shutdown().unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Shutdown);
    assert_eq!(client.shutdown().unwrap_err().status(), Some(405));
    client.boot(false).unwrap();
    vmm.wait_console("guest: io done", 2);
    client.delete().unwrap();
    assert_eq!(client.info().unwrap_err().status(), Some(404));
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0));
    assert!(!vmm.socket.exists() && !vmm.path("console.sock").exists());
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    require_kvm!();
    let guest = build_guest();
    let vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let disk = raw_disk(&vmm, "vda");
    let cmdline = "guest.mode=io guest.reads=1000000";
    client
        .create(&guest_config(&guest, cmdline, vmm.dir.path(), vec![disk]))
        .unwrap();
    client.boot(false).unwrap();
    let progress = || disk_counters(&client, "vda").read_ops;
    let start = Instant::now();
    while progress() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reads: {}",
            vmm.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    client.pause().unwrap();
    let paused_at = progress();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(progress(), paused_at, "the guest ran while paused");
    client.resume().unwrap();
    let start = Instant::now();
    while progress() <= paused_at {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no progress after resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Booted paused: built, never run until resumed.
    client.shutdown().unwrap();
    client.boot(true).unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(progress(), 0, "a VM booted paused ran");
    client.resume().unwrap();
    let start = Instant::now();
    while progress() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no progress after resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    client.shutdown().unwrap();
}

#[test]
fn peers_of_another_uid_get_nothing() {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a client as another uid; skipping");
        return;
    }
    let vmm = ApiVmm::start(&[]);
    // Open the folder and the socket to everyone, so that only the
    // SO_PEERCRED check stands in the way.
    std::fs::set_permissions(vmm.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&vmm.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = vmm.socket.clone();
    let nobody = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peer_probe", "--nocapture", "--include-ignored"])
        .env("API_PROBE_SOCKET", &socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&nobody.stdout).into_owned();
    assert!(
        nobody.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    assert!(text.contains("probe answer: ''"), "{text}");
    // We still get answers.
    vmm.client().ping().unwrap();
}

/// Run as another uid by `peers_of_another_uid_get_nothing`: prints what
/// the API answered to a ping.
#[test]
#[ignore = "run by peers_of_another_uid_get_nothing as another uid"]
fn peer_probe() {
    let Some(socket) = std::env::var_os("API_PROBE_SOCKET") else {
        return;
    };
    let answer = raw(
        std::path::Path::new(&socket),
        b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n",
    );
    println!("probe answer: '{answer}'");
}

use std::os::unix::process::CommandExt;

#[test]
fn the_vmapi_client_speaks_what_the_server_parses() {
    // GET with a body-less request, as vmapi writes it, through the real server.
    let vmm = ApiVmm::start(&[]);
    let response = vmm
        .client()
        .request(Method::Get, "/api/v1/vmm.ping", None)
        .unwrap();
    assert_eq!(response.status, 200);
}

#[test]
fn a_command_line_vm_serves_the_api_too() {
    require_kvm!();
    let guest = build_guest();
    let guest_arg = guest.display().to_string();
    let mut vmm = ApiVmm::start(&[
        "--kernel",
        &guest_arg,
        "--cmdline",
        "guest.mode=idle",
        "--memory",
        "32M",
    ]);
    let client = vmm.client();
    // The serial is the terminal (here vmm.log).
    let start = Instant::now();
    while !vmm.log().contains("guest: idle") {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", vmm.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let info = client.info().unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!(info.config.payload.kernel.as_deref(), Some(guest.as_path()));
    assert_eq!(info.config.memory.size, 32 << 20);
    client.power_button().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0), "{}", vmm.log());
    assert!(!vmm.socket.exists());
}

#[test]
fn a_guest_reset_reboots_in_place() {
    require_kvm!();
    let guest = build_guest();
    let mut vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    // hello mode prints and resets through the i8042 at once.
    let config = guest_config(&guest, "guest.mode=hello", vmm.dir.path(), Vec::new());
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    vmm.wait_console("guest: hello", 3);
    assert_eq!(client.info().unwrap().state, VmState::Running);
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0));
}

#[test]
fn a_socket_left_by_a_killed_vmm_is_taken_over() {
    let mut first = ApiVmm::start(&[]);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(first.socket.exists(), "kill -9 leaves the socket");
    assert!(first.client().ping().is_err());
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--api-socket")
        .arg(&first.socket)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let ping = loop {
        if let Ok(ping) = first.client().ping() {
            break ping;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new vmm does not answer"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(ping.pid, Some(i64::from(second.id())));
    // A third one on the live socket is refused with one line.
    let third = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--api-socket")
        .arg(&first.socket)
        .output()
        .unwrap();
    assert_eq!(third.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(
        stderr.contains("another process is serving it") && stderr.lines().count() == 1,
        "{stderr}"
    );
    first.client().vmm_shutdown().unwrap();
    assert!(second.wait().unwrap().success());
}

#[test]
fn a_boot_that_fails_says_why_and_leaves_the_vm_created() {
    let vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    // Any file will do as the kernel: the missing disk stops the boot first.
    let kernel = vmm.path("kernel");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let missing = vmapi::DiskConfig {
        path: vmm.path("missing.qcow2"),
        readonly: false,
        direct: false,
        id: Some("vda".into()),
        image_type: None,
    };
    client
        .create(&guest_config(&kernel, "", vmm.dir.path(), vec![missing]))
        .unwrap();
    let err = client.boot(false).unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("missing.qcow2"), "{err}");
    assert_eq!(client.info().unwrap().state, VmState::Created);
    client.ping().unwrap();
}

#[test]
fn serial_in_file_mode_goes_to_the_file() {
    require_kvm!();
    let guest = build_guest();
    let mut vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let mut config = guest_config(&guest, "guest.mode=idle", vmm.dir.path(), Vec::new());
    let file = vmm.path("serial.txt");
    config.serial = Some(vmapi::ConsoleConfig {
        file: Some(file.clone()),
        socket: None,
        mode: vmapi::ConsoleMode::File,
    });
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("guest: idle")
    {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", vmm.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!vmm.path("console.sock").exists());
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0));
}

/// The descriptors the VMM holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the VMM's fd folder")
        .count()
}

/// The descriptors the VMM holds when idle: the fewest of a few looks, as
/// the API thread may still hold the connection of the last answer for a
/// moment after the client has read it.
fn idle_fds(pid: u32) -> usize {
    (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            open_fds(pid)
        })
        .min()
        .expect("twenty looks")
}

#[test]
fn descriptors_handed_with_a_refused_request_are_closed() {
    let vmm = ApiVmm::start(&[]);
    let client = vmm.client();
    let pid = vmm.child.id();
    client.ping().expect("vm.ping");
    let before = idle_fds(pid);
    let handed = std::fs::File::open("/dev/null").expect("/dev/null");
    let config = |memory: u64| -> vmapi::VmConfig {
        serde_json::from_value(serde_json::json!({
            "memory": {"size": memory},
            "payload": {"kernel": "/nonexistent"},
            "net": [{"fd": [-1], "id": "eth0"}],
        }))
        .expect("config")
    };
    // A configuration the VMM refuses (no RAM), a restore from nowhere
    // and an interface for a VM that does not exist: each answer is an
    // error, and the descriptor that came with it is not kept.
    let err = client
        .create_with_fds(&config(0), &[handed.as_fd()])
        .expect_err("zero RAM is refused");
    assert_eq!(err.status(), Some(400), "{err}");
    let entry = vmapi::RestoredNetConfig {
        id: "eth0".to_string(),
        num_fds: 1,
        fds: None,
    };
    let err = client
        .restore_with_fds("file:///nonexistent", vec![entry], &[handed.as_fd()])
        .expect_err("nothing to restore");
    assert!(err.status().is_some_and(|s| s >= 400), "{err}");
    let net: vmapi::NetConfig =
        serde_json::from_value(serde_json::json!({"fd": [-1], "id": "eth0"})).expect("net");
    let err = client
        .add_net_with_fds(&net, &[handed.as_fd()])
        .expect_err("no VM to add to");
    assert_eq!(err.status(), Some(404), "{err}");
    client.ping().expect("vm.ping after the refusals");
    let after = idle_fds(pid);
    assert!(
        after <= before,
        "{} descriptor(s) more than before the refused requests: {}",
        after - before,
        vmm.log()
    );
}
