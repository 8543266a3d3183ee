//! Live migration between two `vmm --api-socket` processes on this host,
//! with the test guest counting (`guest.mode=count`): over `unix:` and
//! over `tcp:` on loopback, the guest continues at the destination from
//! where the source stopped, with no gap or repeat in its serial log, no
//! flushed disk write lost and the qcow2 image clean; the source ends.
//! A destination killed mid-stream (by a proxy between the two, at a
//! fixed byte of the stream), a connection cut by the peer, and a
//! malformed stream leave the source running with its disk locked and
//! the destination with no VM, each with one line saying what happened;
//! a destination cut off after it prepared its VM (KVM, the vCPU and
//! device threads started ahead) ends those threads and takes the next
//! migration.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::count::{self, assert_consecutive, counts};
use support::guest::build_guest;
use support::vmm_api::{guest_config, have_kvm, ApiVmm};
use vmapi::VmState;

/// Skips (returns) without /dev/kvm or qemu-img, unless REQUIRE_KVM is set.
macro_rules! require_kvm {
    () => {
        if !have_kvm() || Command::new("qemu-img").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("REQUIRE_KVM").is_none(),
                "REQUIRE_KVM is set but /dev/kvm or qemu-img is missing"
            );
            eprintln!("no /dev/kvm or qemu-img: skipping");
            return;
        }
    };
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn wait_count(vmm: &ApiVmm, log: &Path, at_least: u64) -> String {
    count::wait_count(log, 0, at_least, || format!("vmm: {}", vmm.log()))
}

/// A source VMM running the counting guest of `memory_mib` on a qcow2 in
/// `shared` (the folder both hosts see); it has printed count 5.
fn counting_source(shared: &Path, memory_mib: u64) -> (ApiVmm, PathBuf) {
    let disk = shared.join("count.qcow2");
    let out = qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
    assert!(out.status.success(), "{out:?}");
    let source = ApiVmm::start(&[]);
    let mut config = guest_config(
        &build_guest(),
        "guest.mode=count guest.every=20000",
        source.dir.path(),
        vec![vmapi::DiskConfig {
            path: disk.clone(),
            readonly: false,
            direct: false,
            id: Some("count".into()),
            image_type: Some(vmapi::ImageType::Qcow2),
        }],
    );
    config.memory.size = memory_mib << 20;
    let client = source.client();
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    wait_count(&source, &source.path("console.log"), 5);
    (source, disk)
}

fn serial_here(vmm: &ApiVmm) -> vmapi::ConsoleConfig {
    vmapi::ConsoleConfig {
        file: Some(vmm.path("console.log")),
        socket: Some(vmm.path("console.sock")),
        mode: vmapi::ConsoleMode::Socket,
    }
}

/// Starts vm.receive-migration on `dest` in a thread.
fn receive_in_thread(
    dest: &ApiVmm,
    url: &str,
) -> std::thread::JoinHandle<Result<String, vmapi::Error>> {
    let client = dest.client().with_io_timeout(Duration::from_secs(120));
    let url = url.to_string();
    let serial = serial_here(dest);
    std::thread::spawn(move || client.receive_migration(&url, Some(serial)))
}

/// vm.send-migration, retried while the destination is not listening yet.
fn send(source: &ApiVmm, url: &str) -> Result<(), vmapi::Error> {
    let client = source.client().with_io_timeout(Duration::from_secs(120));
    let start = Instant::now();
    loop {
        let result = client.send_migration(&vmapi::VmSendMigrationData::new(url));
        match &result {
            Err(e)
                if e.to_string().contains("connecting")
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return result,
        }
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn migrate_and_check(url_of: impl Fn(&ApiVmm) -> String) {
    let shared = tempfile::tempdir().unwrap();
    let (mut source, disk) = counting_source(shared.path(), 64);
    let mut dest = ApiVmm::start(&[]);
    let url = url_of(&dest);
    let receiving = receive_in_thread(&dest, &url);
    send(&source, &url)
        .unwrap_or_else(|e| panic!("{e}\nsource: {}\ndest: {}", source.log(), dest.log()));
    assert_eq!(source.wait_exit(), Some(0), "{}", source.log());
    assert!(
        source.log().contains("vmm: migrated to"),
        "{}",
        source.log()
    );
    // The downtime is measured to the guest's resume at the destination
    // (its Resumed heard), and the phase log names every phase.
    let phases = source
        .log()
        .lines()
        .find(|l| l.contains("the migration's downtime:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no phase log: {}", source.log()));
    assert!(
        phases.contains("ms from the pause to the guest resumed there, "),
        "{phases}"
    );
    for phase in [
        "pause ",
        "last pass ",
        "flush ",
        "switch ",
        "destination ",
        "resumed ",
        "; before the pause: flush ",
    ] {
        assert!(phases.contains(phase), "no {phase:?} in {phases}");
    }
    receiving
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\ndest: {}", dest.log()));
    let client = dest.client();
    assert_eq!(client.info().unwrap().state, VmState::Running);
    let before = source.console_log();
    let last_before = *counts(&before).last().expect("the source counted");
    let after = wait_count(&dest, &dest.path("console.log"), last_before + 10);
    assert!(
        !after.contains("guest: start"),
        "the guest started over: {after:?}"
    );
    // The same VM goes on: its generation ID, printed once on the source,
    // is not new on the destination.
    assert_eq!(before.matches("guest: vmgenid ").count(), 1, "{before}");
    assert!(
        !after.contains("guest: vmgenid"),
        "a migration changed the VM generation ID: {after:?}"
    );
    let all = counts(&format!("{before}{after}"));
    assert_consecutive(&all, "source then destination");
    assert!(all.contains(&(last_before + 1)), "{all:?}");
    // Every count flushed (all but the last printed) is in its sector.
    client.pause().unwrap();
    let printed = counts(&dest.console_log());
    client.vmm_shutdown().unwrap();
    assert_eq!(dest.wait_exit(), Some(0), "{}", dest.log());
    let check = qemu_img(&["check", disk.to_str().unwrap()]);
    assert!(check.status.success(), "qemu-img check: {check:?}");
    let raw = shared.path().join("count.raw");
    let out = qemu_img(&[
        "convert",
        "-O",
        "raw",
        disk.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&raw).unwrap();
    let last = *printed.last().unwrap();
    for k in all.iter().copied().filter(|&k| k < last) {
        let sector = (k % 2048) as usize * 512;
        let on_disk = u64::from_le_bytes(bytes[sector..sector + 8].try_into().unwrap());
        assert_eq!(on_disk, k, "sector {} holds {on_disk}, not {k}", k % 2048);
    }
}

#[test]
fn a_counting_guest_migrates_over_a_unix_socket() {
    require_kvm!();
    migrate_and_check(|dest| format!("unix:{}", dest.path("migrate.sock").display()));
}

#[test]
fn a_counting_guest_migrates_over_tcp_on_loopback() {
    require_kvm!();
    let port = free_tcp_port();
    migrate_and_check(|_| format!("tcp:127.0.0.1:{port}"));
}

/// The source still runs its guest, counting on, and holds its disk's
/// lock (qemu-img cannot open the image without -U).
fn assert_source_runs_on(source: &ApiVmm, disk: &Path) {
    let client = source.client();
    assert_eq!(
        client.info().unwrap().state,
        VmState::Running,
        "{}",
        source.log()
    );
    let log = source.path("console.log");
    let now = *counts(&std::fs::read_to_string(&log).unwrap())
        .last()
        .unwrap();
    let text = wait_count(source, &log, now + 3);
    assert_consecutive(&counts(&text), "the source after the failed migration");
    let info = qemu_img(&["info", disk.to_str().unwrap()]);
    assert!(
        !info.status.success(),
        "the image is not locked: {}",
        String::from_utf8_lossy(&info.stdout)
    );
}

fn one_line_500(err: vmapi::Error) -> String {
    assert_eq!(err.status(), Some(500), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    text
}

/// What the proxy of [`killing_proxy`] saw.
#[derive(Debug)]
enum ProxyOutcome {
    /// It killed the destination after forwarding `forwarded` bytes of
    /// the source's stream (the kill point).
    Killed { forwarded: usize },
    /// The source's stream ended after `forwarded` bytes, before the kill
    /// point: the stream is shorter than the test assumes.
    EndedEarly { forwarded: usize },
}

/// Accepts the source on `listener`, connects to the destination's
/// `dest_sock` and forwards both ways; once `kill_after` bytes of the
/// source's stream have reached the destination it holds the rest,
/// SIGKILLs `dest_pid`, and closes both connections. The source cannot
/// get past the kill point before the destination is dead, so the kill
/// lands mid-stream whatever the load.
fn killing_proxy(
    listener: std::os::unix::net::UnixListener,
    dest_sock: &Path,
    dest_pid: Option<i32>,
    kill_after: usize,
) -> ProxyOutcome {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut from_source = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the source never connected to the proxy"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("proxy accept: {e}"),
        }
    };
    from_source.set_nonblocking(false).unwrap();
    let mut to_dest = std::os::unix::net::UnixStream::connect(dest_sock).unwrap();
    // The destination's answers (Ack, the final status) go back as they come.
    let mut back_from = to_dest.try_clone().unwrap();
    let mut back_to = from_source.try_clone().unwrap();
    let answers = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
    });
    let mut forwarded = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    let outcome = loop {
        let want = buf.len().min(kill_after - forwarded);
        let n = match from_source.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break ProxyOutcome::EndedEarly { forwarded },
            Ok(n) => n,
        };
        if to_dest.write_all(&buf[..n]).is_err() {
            break ProxyOutcome::EndedEarly { forwarded };
        }
        forwarded += n;
        if forwarded == kill_after {
            if let Some(pid) = dest_pid {
                // SAFETY: kill(2) takes no pointers; the pid is the test's
                // own child, not yet waited for, so it names no other
                // process.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            }
            break ProxyOutcome::Killed { forwarded };
        }
    };
    let _ = from_source.shutdown(std::net::Shutdown::Both);
    let _ = to_dest.shutdown(std::net::Shutdown::Both);
    answers.join().unwrap();
    outcome
}

#[test]
fn a_destination_killed_mid_stream_leaves_the_source_running() {
    require_kvm!();
    let shared = tempfile::tempdir().unwrap();
    let (source, disk) = counting_source(shared.path(), 64);
    let mut dest = ApiVmm::start(&[]);
    let dest_sock = dest.path("migrate.sock");
    let _receiving = receive_in_thread(&dest, &format!("unix:{}", dest_sock.display()));
    let start = Instant::now();
    while !dest_sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", dest.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    // The source talks to a proxy that kills the destination once 64 KiB
    // (the header, the config and part of the memory) has reached it: the
    // stream of this guest is about 150 KiB (zero pages do not travel).
    const KILL_AT: usize = 64 << 10;
    let proxy_sock = shared.path().join("proxy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&proxy_sock).unwrap();
    let proxy = {
        let pid = dest.child.id() as i32;
        std::thread::spawn(move || killing_proxy(listener, &dest_sock, Some(pid), KILL_AT))
    };
    let result = send(&source, &format!("unix:{}", proxy_sock.display()));
    match proxy.join().unwrap() {
        ProxyOutcome::Killed { forwarded } => assert_eq!(forwarded, KILL_AT),
        ProxyOutcome::EndedEarly { forwarded } => panic!(
            "the kill did not land mid-stream: the stream ended after {forwarded} bytes, \
             before the kill point at {KILL_AT}; the migration gave {result:?}\nsource: {}\ndest: {}",
            source.log(),
            dest.log()
        ),
    }
    let err = result.expect_err("the migration succeeded with its destination killed");
    let text = one_line_500(err);
    assert!(
        text.contains("migration connection") || text.contains("migration stream"),
        "{text}"
    );
    let _ = dest.wait_exit();
    assert_source_runs_on(&source, &disk);
    assert!(source.log().contains("vmm: migration"), "{}", source.log());
}

/// The names of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn a_destination_prepared_ahead_then_cut_off_ends_its_threads_and_takes_the_next() {
    require_kvm!();
    let shared = tempfile::tempdir().unwrap();
    let (source, disk) = counting_source(shared.path(), 64);
    let dest = ApiVmm::start(&[]);
    let dest_sock = dest.path("migrate.sock");
    let receiving = receive_in_thread(&dest, &format!("unix:{}", dest_sock.display()));
    let start = Instant::now();
    while !dest_sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", dest.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    // The destination accepts the configuration, makes its KVM VM and
    // starts its vCPU and device threads ahead (waiting for their work);
    // then the connection is cut before the switch.
    const CUT_AT: usize = 64 << 10;
    let proxy_sock = shared.path().join("proxy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&proxy_sock).unwrap();
    let proxy = std::thread::spawn(move || killing_proxy(listener, &dest_sock, None, CUT_AT));
    let result = send(&source, &format!("unix:{}", proxy_sock.display()));
    match proxy.join().unwrap() {
        ProxyOutcome::Killed { forwarded } => assert_eq!(forwarded, CUT_AT),
        ProxyOutcome::EndedEarly { forwarded } => panic!(
            "the cut did not land mid-stream ({forwarded} bytes): {result:?}\nsource: {}\ndest: {}",
            source.log(),
            dest.log()
        ),
    }
    let text = one_line_500(result.expect_err("the migration succeeded with its stream cut"));
    assert!(text.contains("migration"), "{text}");
    let refused = one_line_500(receiving.join().unwrap().unwrap_err());
    assert!(refused.contains("migration"), "{refused}");
    assert_source_runs_on(&source, &disk);
    // Nothing of the prepared VM is left: no VM, and the threads started
    // ahead ended.
    assert_eq!(dest.client().info().unwrap_err().status(), Some(404));
    let start = Instant::now();
    loop {
        let names = thread_names(dest.child.id());
        if !names
            .iter()
            .any(|n| n.starts_with("vcpu") || n == "devices")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "threads started ahead are left: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same destination takes the next migration, and the guest runs.
    let url = format!("unix:{}", dest.path("migrate.sock").display());
    let receiving = receive_in_thread(&dest, &url);
    send(&source, &url).unwrap();
    receiving.join().unwrap().unwrap();
    assert_eq!(dest.client().info().unwrap().state, VmState::Running);
    let mut dest = dest;
    dest.client().vmm_shutdown().unwrap();
    assert_eq!(dest.wait_exit(), Some(0));
}

/// Reads the source's header and Config frame, answers Ack, reads about
/// `keep` bytes more, then closes the connection.
fn cutting_destination(listener: std::os::unix::net::UnixListener, keep: usize) {
    let (mut conn, _) = listener.accept().unwrap();
    let mut head = [0u8; 12 + 9];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head[..8], b"VMMIGRAT");
    let len = u32::from_le_bytes(head[13..17].try_into().unwrap()) as usize;
    let mut config = vec![0u8; len];
    conn.read_exact(&mut config).unwrap();
    // Ack: tag 6, length 0, CRC-32 of the five head bytes.
    let ack_head = [6u8, 0, 0, 0, 0];
    let crc = crc32(&ack_head);
    conn.write_all(&ack_head).unwrap();
    conn.write_all(&crc.to_le_bytes()).unwrap();
    let mut sink = vec![0u8; keep];
    let _ = conn.read_exact(&mut sink);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_connection_cut_mid_stream_leaves_the_source_running() {
    require_kvm!();
    let shared = tempfile::tempdir().unwrap();
    let (source, disk) = counting_source(shared.path(), 64);
    let sock = shared.path().join("cut.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let peer = std::thread::spawn(move || cutting_destination(listener, 64 << 10));
    let err = send(&source, &format!("unix:{}", sock.display())).unwrap_err();
    peer.join().unwrap();
    let text = one_line_500(err);
    assert!(text.contains("migration connection"), "{text}");
    assert_source_runs_on(&source, &disk);
    // And it migrates for real afterwards.
    let mut dest = ApiVmm::start(&[]);
    let url = format!("unix:{}", dest.path("migrate.sock").display());
    let receiving = receive_in_thread(&dest, &url);
    send(&source, &url).unwrap();
    receiving.join().unwrap().unwrap();
    dest.client().vmm_shutdown().unwrap();
    assert_eq!(dest.wait_exit(), Some(0));
}

#[test]
fn a_malformed_stream_is_refused_and_leaves_nothing() {
    require_kvm!();
    let dest = ApiVmm::start(&[]);
    let sock = dest.path("migrate.sock");
    let url = format!("unix:{}", sock.display());
    let cases: [(&str, Vec<u8>); 4] = [
        ("no magic", b"QFI\xfb garbage garbage".to_vec()),
        ("version", b"VMMIGRAT\x09\0\0\0".to_vec()),
        ("huge frame", {
            let mut v = b"VMMIGRAT\x02\0\0\0".to_vec();
            v.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
            v
        }),
        ("bad config", {
            let mut v = b"VMMIGRAT\x02\0\0\0".to_vec();
            let payload = b"{\"memory\": 5}";
            let mut head = vec![1u8];
            head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let mut all = head.clone();
            all.extend_from_slice(payload);
            v.extend_from_slice(&head);
            v.extend_from_slice(&crc32(&all).to_le_bytes());
            v.extend_from_slice(payload);
            // An empty annotation.
            let annotation = [11u8, 0, 0, 0, 0];
            v.extend_from_slice(&annotation);
            v.extend_from_slice(&crc32(&annotation).to_le_bytes());
            // Shared storage.
            let plan = br#"{"mode":"shared","disks":[]}"#;
            let mut storage = vec![12u8];
            storage.extend_from_slice(&(plan.len() as u32).to_le_bytes());
            storage.extend_from_slice(plan);
            v.extend_from_slice(&storage[..5]);
            v.extend_from_slice(&crc32(&storage).to_le_bytes());
            v.extend_from_slice(plan);
            v
        }),
    ];
    for (what, bytes) in cases {
        let receiving = receive_in_thread(&dest, &url);
        let start = Instant::now();
        let mut conn = loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(c) => break c,
                Err(_) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "{}", dest.log());
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        let _ = conn.write_all(&bytes);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let text = one_line_500(receiving.join().unwrap().unwrap_err());
        let expected = if what == "bad config" {
            "configuration"
        } else {
            "migration"
        };
        assert!(text.contains(expected), "{what}: {text}");
        assert_eq!(
            dest.client().info().unwrap_err().status(),
            Some(404),
            "{what}"
        );
        assert!(!sock.exists(), "{what}: the listener stayed");
    }
}

/// A destination that takes the whole stream, says Ready, reads the
/// Commit, sends `committed` the time it did, and then never says
/// Resumed: it holds the connection open until `release`.
fn silent_after_commit(
    listener: std::os::unix::net::UnixListener,
    committed: std::sync::mpsc::Sender<Instant>,
    release: std::sync::mpsc::Receiver<()>,
) {
    use vmm::migration::stream::{self, Tag};
    let (mut conn, _) = listener.accept().unwrap();
    let mut input = std::io::BufReader::new(conn.try_clone().unwrap());
    stream::read_header(&mut input).unwrap();
    let mut offset = 12;
    let mut next = || stream::read_frame(&mut input, &mut offset).unwrap().tag;
    assert_eq!(
        [next(), next(), next()],
        [Tag::Config, Tag::Annotation, Tag::Storage]
    );
    stream::write_frame(&mut conn, Tag::Ack, &[]).unwrap();
    while next() != Tag::Switch {}
    stream::write_frame(&mut conn, Tag::Ready, &[]).unwrap();
    assert_eq!(next(), Tag::Commit);
    committed.send(Instant::now()).unwrap();
    let _ = release.recv_timeout(Duration::from_secs(30));
}

#[test]
fn a_committed_source_answers_at_once_and_ends_without_the_resumed() {
    require_kvm!();
    let shared = tempfile::tempdir().unwrap();
    let (mut source, _disk) = counting_source(shared.path(), 64);
    let sock = shared.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (committed_tx, committed) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || silent_after_commit(listener, committed_tx, released));
    send(&source, &format!("unix:{}", sock.display()))
        .unwrap_or_else(|e| panic!("{e}\nsource: {}", source.log()));
    let answered = Instant::now();
    let committed = committed.recv().unwrap();
    // The answer does not wait for a Resumed (the source waits for it,
    // at most 1 s, only after answering).
    assert!(
        answered.duration_since(committed) < Duration::from_millis(900),
        "answered {:?} after the Commit",
        answered.duration_since(committed)
    );
    // The connection stays open: the source ends on its bound, not on
    // the peer, and says it did not hear the Resumed.
    assert_eq!(source.wait_exit(), Some(0), "{}", source.log());
    let ended = committed.elapsed();
    assert!(
        ended < Duration::from_secs(5),
        "ended {ended:?} after the Commit"
    );
    assert!(
        source.log().contains("(not heard: to the Commit)"),
        "{}",
        source.log()
    );
    release.send(()).unwrap();
    peer.join().unwrap();
}
