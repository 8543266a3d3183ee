//! vm.snapshot and vm.restore against a real `vmm --api-socket` and the
//! test guest in idle mode (32 MiB): the source keeps running after its
//! snapshot; a new vmm process restores the snapshot paused, resumes it,
//! and the restored guest answers the power button (its irqchip routing,
//! LAPIC, GED and serial state came through); a flipped byte in any
//! state file, or a config.json for another memory size, is refused with
//! 500 and one line, leaving the VMM with no VM.

mod support;

use support::count::{self, assert_consecutive, counts};
use support::guest::build_guest;
use support::vmm_api::{guest_config, have_kvm, ApiVmm};
use vmapi::VmState;

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

fn one_line_500(err: vmapi::Error) -> String {
    assert_eq!(err.status(), Some(500), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    text
}

#[test]
fn snapshot_restore_resume_and_refusals() {
    require_kvm!();
    let guest = build_guest();
    let snap_root = tempfile::tempdir().unwrap();
    let snap = snap_root.path().join("snap");
    let url = format!("file://{}", snap.display());

    let mut source = ApiVmm::start(&[]);
    let client = source.client();
    let config = guest_config(&guest, "guest.mode=idle", source.dir.path(), Vec::new());
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    source.wait_console("guest: idle", 1);
    // Only a paused VM is snapshotted.
    assert_eq!(client.snapshot(&url).unwrap_err().status(), Some(405));
    client.pause().unwrap();
    client.snapshot(&url).unwrap();
    // A second snapshot into the same folder replaces the first whole
    // (written beside it, then renamed), leaving no temporary folder.
    client.snapshot(&url).unwrap();
    for file in ["config.json", "state.json", "memory-ranges"] {
        assert!(snap.join(file).exists(), "{file}");
    }
    let entries: Vec<_> = std::fs::read_dir(snap_root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["snap"], "left beside the snapshot: {entries:?}");
    // A folder holding other files is not replaced.
    let foreign = snap_root.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let text = one_line_500(
        client
            .snapshot(&format!("file://{}", foreign.display()))
            .unwrap_err(),
    );
    assert!(text.contains("notes.txt"), "{text}");
    assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
    std::fs::remove_dir_all(&foreign).unwrap();
    // Zero pages are skipped: far less than 32 MiB.
    let ram = std::fs::metadata(snap.join("memory-ranges")).unwrap().len();
    assert!(ram < 8 << 20, "{ram} bytes of RAM saved");
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    // The source runs on after its snapshot.
    client.resume().unwrap();
    client.power_button().unwrap();
    assert_eq!(source.wait_exit(), Some(0), "{}", source.log());
    std::fs::remove_file(source.path("console.log")).unwrap();

    // Tampered copies are refused, the VMM left with no VM: a byte of
    // memory-ranges' configuration record (checked whole before anything
    // is built; a RAM record's payload is only read when its pages are
    // filled, tests/lazy_ram.rs) and of state.json.
    let target = ApiVmm::start(&[]);
    let client = target.client();
    for (file, at) in [("memory-ranges", 21usize), ("state.json", 400)] {
        let bad = snap_root.path().join(format!("bad-{file}"));
        std::fs::create_dir_all(&bad).unwrap();
        for f in ["config.json", "state.json", "memory-ranges"] {
            std::fs::copy(snap.join(f), bad.join(f)).unwrap();
        }
        let mut bytes = std::fs::read(bad.join(file)).unwrap();
        bytes[at] = if file == "state.json" {
            if bytes[at] == b'0' {
                b'1'
            } else {
                b'0'
            }
        } else {
            bytes[at] ^ 0x01
        };
        std::fs::write(bad.join(file), bytes).unwrap();
        let text = one_line_500(
            client
                .restore(&format!("file://{}", bad.display()))
                .unwrap_err(),
        );
        assert!(text.contains("checksum"), "{file}: {text}");
        assert_eq!(client.info().unwrap_err().status(), Some(404));
    }
    // A state for another memory size.
    let other = snap_root.path().join("other-size");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["state.json", "memory-ranges"] {
        std::fs::copy(snap.join(f), other.join(f)).unwrap();
    }
    let mut bigger: vmapi::VmConfig =
        serde_json::from_slice(&std::fs::read(snap.join("config.json")).unwrap()).unwrap();
    bigger.memory.size = 64 << 20;
    std::fs::write(
        other.join("config.json"),
        serde_json::to_vec(&bigger).unwrap(),
    )
    .unwrap();
    let text = one_line_500(
        client
            .restore(&format!("file://{}", other.display()))
            .unwrap_err(),
    );
    assert!(text.contains("32 MiB") && text.contains("64 MiB"), "{text}");
    // Not a file:// URL.
    assert_eq!(
        client.restore("http://x/y").unwrap_err().status(),
        Some(400)
    );

    // The good snapshot: restored paused, then it runs on.
    let mut target = target;
    client.restore(&url).unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    assert_eq!(client.restore(&url).unwrap_err().status(), Some(405));
    client.resume().unwrap();
    // The restore's new VM generation ID was notified through the GED's
    // interrupt (seen before any power button could latch the event).
    let console = source.path("console.log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("guest: vmgenid changed")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no GED generation event in the restored guest: {}",
            target.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    client.power_button().unwrap();
    assert_eq!(target.wait_exit(), Some(0), "{}", target.log());
    let log = std::fs::read_to_string(source.path("console.log")).unwrap_or_default();
    assert!(
        log.contains("power button: powering off") && !log.contains("guest: idle"),
        "the restored guest's serial: {log:?}\nvmm: {}",
        target.log()
    );
}

fn wait_count(vmm: &ApiVmm, log: &std::path::Path, at_least: u64) -> String {
    count::wait_count(log, 0, at_least, || format!("vmm: {}", vmm.log()))
}

#[test]
fn a_counting_guest_continues_from_its_snapshot_in_a_new_process() {
    require_kvm!();
    let guest = build_guest();
    let snap_root = tempfile::tempdir().unwrap();
    let snap = snap_root.path().join("snap");
    let url = format!("file://{}", snap.display());

    let source = ApiVmm::start(&[]);
    let client = source.client();
    let disk_path = source.path("count.raw");
    std::fs::File::create(&disk_path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = vmapi::DiskConfig {
        path: disk_path.clone(),
        readonly: false,
        direct: false,
        id: Some("count".into()),
        image_type: Some(vmapi::ImageType::Raw),
    };
    let mut config = guest_config(
        &guest,
        "guest.mode=count guest.every=20000",
        source.dir.path(),
        vec![disk],
    );
    // A second vCPU, waiting for its SIPI, is saved and restored too.
    config.cpus = vmapi::CpusConfig {
        boot_vcpus: 2,
        max_vcpus: 2,
    };
    client.create(&config).unwrap();
    client.boot(false).unwrap();
    let log_path = source.path("console.log");
    wait_count(&source, &log_path, 5);
    client.pause().unwrap();
    let at_pause = std::fs::read_to_string(&log_path).unwrap();
    let last_before = *counts(&at_pause).last().unwrap();
    client.snapshot(&url).unwrap();
    // The disk as it was at the snapshot (CH's snapshots leave disks
    // alone too): its copy goes back before the restore.
    std::fs::copy(&disk_path, snap_root.path().join("count.raw")).unwrap();

    // The source runs on from where it was, then stops.
    client.resume().unwrap();
    let source_log = wait_count(&source, &log_path, last_before + 5);
    assert_consecutive(&counts(&source_log), "the source");
    client.vmm_shutdown().unwrap();
    let mut source = source;
    assert_eq!(source.wait_exit(), Some(0), "{}", source.log());
    std::fs::remove_file(&log_path).unwrap();
    std::fs::copy(snap_root.path().join("count.raw"), &disk_path).unwrap();

    // A new process restores it, paused; nothing runs until vm.resume.
    // Its RAM is filled lazily, the background filling paced (one
    // segment per 100 ms) so that the guest runs before it is whole.
    let target = ApiVmm::start_with_env(&[], &[("VMM_LAZY_RAM_PACE_MS", "100")]);
    let client = target.client();
    client.restore(&url).unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(counts(&std::fs::read_to_string(&log_path).unwrap_or_default()).is_empty());
    client.resume().unwrap();
    let restored = wait_count(&target, &log_path, last_before + 10);
    let restored_counts = counts(&restored);
    assert!(
        !restored.contains("guest: start"),
        "the restored guest started over: {restored:?}"
    );
    // The serial before the pause and after the restore is one sequence.
    let joined = format!("{at_pause}{restored}");
    let all = counts(&joined);
    assert_consecutive(&all, "snapshot then restore");
    assert!(all.contains(&(last_before + 1)), "{all:?}");
    // The restored guest has a new VM generation ID (printed before its
    // first count), the source one for its whole run.
    let ids = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.strip_prefix("guest: vmgenid "))
            .map(|id| id.trim().to_string())
            .collect()
    };
    let (before_ids, restored_ids) = (ids(&source_log), ids(&restored));
    assert_eq!(before_ids.len(), 1, "{source_log:?}");
    assert_eq!(restored_ids.len(), 1, "{restored:?}");
    assert_ne!(before_ids, restored_ids, "a restore kept the generation ID");
    client.pause().unwrap();
    // Every count printed and flushed (all but the last printed) is on
    // the disk, in its sector.
    let bytes = std::fs::read(&disk_path).unwrap();
    let last = *restored_counts.last().unwrap();
    for k in all.iter().copied().filter(|&k| k < last) {
        let sector = (k % 2048) as usize * 512;
        let on_disk = u64::from_le_bytes(bytes[sector..sector + 8].try_into().unwrap());
        assert_eq!(on_disk, k, "sector {} holds {on_disk}, not {k}", k % 2048);
    }
    client.vmm_shutdown().unwrap();
    let mut target = target;
    assert_eq!(target.wait_exit(), Some(0), "{}", target.log());
    let log = target.log();
    assert!(log.contains("vmm: resuming with "), "{log}");
    assert!(
        log.contains(&format!("vmm: lazy RAM of snapshot '{}': ", snap.display())),
        "{log}"
    );
}
