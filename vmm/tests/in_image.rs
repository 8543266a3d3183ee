//! In-image snapshots through the API (`qcow2:NAME` in vm.snapshot's
//! destination_url and vm.restore's source_url, vm.snapshot-delete)
//! against a real `vmm --api-socket` and the counting test guest on a
//! qcow2 disk: a revert in the running VMM continues from the snapshot's
//! count without a gap or a repeat, every count flushed after the revert
//! is on the disk, qemu-img lists the snapshot with its VM state and finds
//! the image clean; refusals change nothing.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::count::{self, assert_consecutive, counts, next_count};
use support::guest::build_guest;
use support::vmm_api::{guest_config, have_kvm, ApiVmm};
use vmapi::VmState;

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

/// The console log from byte `from`, once it holds a count >= `at_least`.
fn wait_count(vmm: &ApiVmm, log: &Path, from: usize, at_least: u64) -> String {
    count::wait_count(log, from, at_least, || format!("vmm: {}", vmm.log()))
}

fn make_qcow2(path: &Path, size: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let storage: std::sync::Arc<dyn qcow::Storage> =
        std::sync::Arc::new(qcow::FileStorage::new(file));
    let image = qcow::create::create(
        storage,
        None,
        None,
        &qcow::create::CreateOptions {
            size,
            ..Default::default()
        },
    )
    .unwrap();
    image.close().unwrap();
}

fn qemu_img(args: &[&str], path: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn one_line_500(err: vmapi::Error) -> String {
    assert_eq!(err.status(), Some(500), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    text
}

#[test]
fn a_counting_guest_reverts_to_its_in_image_snapshot() {
    require_kvm!();
    let guest = build_guest();
    // RAM after the revert is filled lazily, and the background filling
    // paced (one segment per 20 ms), so the guest runs before its RAM is
    // read and its first touches are served on demand.
    let mut vmm = ApiVmm::start_with_env(&[], &[("VMM_LAZY_RAM_PACE_MS", "20")]);
    let client = vmm.client();
    let disk_path = vmm.path("count.qcow2");
    make_qcow2(&disk_path, 1 << 20);
    let disk = vmapi::DiskConfig {
        path: disk_path.clone(),
        readonly: false,
        direct: false,
        id: Some("count".into()),
        image_type: Some(vmapi::ImageType::Qcow2),
    };
    let mut config = guest_config(
        &guest,
        "guest.mode=count guest.every=20000",
        vmm.dir.path(),
        vec![disk],
    );
    config.cpus = vmapi::CpusConfig {
        boot_vcpus: 2,
        max_vcpus: 2,
    };
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    let log_path = vmm.path("console.log");
    wait_count(&vmm, &log_path, 0, 5);

    // A snapshot of the running VM (paused and resumed inside).
    client.snapshot("qcow2:running").unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Running);
    // A snapshot of a paused VM, whose last count we know.
    client.pause().unwrap();
    let at_pause = std::fs::read_to_string(&log_path).unwrap();
    let last_before = *counts(&at_pause).last().unwrap();
    let next = next_count(&at_pause);
    client.snapshot("qcow2:s1").unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    let text = one_line_500(client.snapshot("qcow2:s1").unwrap_err());
    assert!(text.contains("already has a snapshot named 's1'"), "{text}");
    assert_eq!(client.snapshot("qcow2:").unwrap_err().status(), Some(400));
    client.resume().unwrap();
    let later = wait_count(&vmm, &log_path, at_pause.len(), last_before + 10);
    assert_consecutive(&counts(&format!("{at_pause}{later}")), "before the revert");

    // Refused reverts change nothing: the guest keeps counting.
    let text = one_line_500(client.restore("qcow2:nope").unwrap_err());
    assert!(text.contains("nope"), "{text}");
    assert_eq!(client.info().unwrap().state, VmState::Running);

    // The revert: paused, then the count goes on from the snapshot's.
    client.pause().unwrap();
    let before_revert = std::fs::read_to_string(&log_path).unwrap().len();
    let started = Instant::now();
    client.restore("qcow2:s1").unwrap();
    let revert_time = started.elapsed();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    client.resume().unwrap();
    let after = wait_count(&vmm, &log_path, before_revert, last_before + 10);
    assert!(!after.contains("guest: start"), "started over: {after:?}");
    let resumed = counts(&after);
    assert_eq!(resumed.first(), Some(&next), "{after:?}");
    assert_consecutive(&resumed, "after the revert");
    eprintln!("revert of a 32 MiB guest: {revert_time:?}");

    // Every count flushed since the revert is in its sector.
    client.pause().unwrap();
    let last = *resumed.last().unwrap();
    client.snapshot("qcow2:after").unwrap();
    client.snapshot_delete("running").unwrap();
    let text = one_line_500(client.snapshot_delete("running").unwrap_err());
    assert!(text.contains("running"), "{text}");
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0), "{}", vmm.log());
    // The reverted VM's device loop registered each fd once (a second
    // registration once logged "epoll_ctl: File exists" at each resume).
    let log = vmm.log();
    assert!(!log.contains("epoll_ctl"), "{log}");
    // The revert kept the VM (its state set into the same KVM VM).
    assert!(log.contains("vmm: revert in place: "), "{log}");
    assert!(!log.contains("rebuilding the VM"), "{log}");
    // Lazily: the guest resumed before its RAM was whole, and pages it
    // touched first were filled on its faults.
    assert!(log.contains("vmm: resuming with "), "{log}");
    let loaded = log
        .lines()
        .find(|l| l.starts_with("vmm: lazy RAM of snapshot 's1': "))
        .unwrap_or_else(|| panic!("no lazy RAM line: {log}"));
    let on_fault: u64 = loaded
        .split_once(" faults served: ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{loaded}"));
    assert!(on_fault >= 1, "{loaded}");
    eprintln!("{loaded}");
    let raw = vmm.path("count.raw");
    if let Some(list) = qemu_img(&["snapshot", "-l"], &disk_path) {
        assert!(!list.contains("running"), "{list}");
        let s1 = list.lines().find(|l| l.contains(" s1 ")).expect(&list);
        assert!(!s1.contains(" 0 B "), "no VM state recorded: {s1}");
        qemu_img(&["check"], &disk_path);
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&disk_path)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(out.success());
        let bytes = std::fs::read(&raw).unwrap();
        for k in resumed.iter().copied().filter(|&k| k < last) {
            let sector = (k % 2048) as usize * 512;
            let on_disk = u64::from_le_bytes(bytes[sector..sector + 8].try_into().unwrap());
            assert_eq!(on_disk, k, "sector {} holds {on_disk}, not {k}", k % 2048);
        }
    }
}
