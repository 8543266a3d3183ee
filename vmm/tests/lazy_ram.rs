//! Lazy guest RAM (`vmm/src/lazy_ram`) where it can go wrong, against a
//! real `vmm --api-socket` and the counting test guest on a qcow2 disk:
//!
//! - a RAM record whose payload was changed after the snapshot is found
//!   when a fault first needs it (the background filling paced so that
//!   the fault comes first): the VMM stops with exit status 1 and one
//!   line naming the record. Both carriers: CH's `memory-ranges`
//!   (vm.restore `file://DIR`, the guest's own fault), after which the
//!   snapshot's files and the disk image are byte for byte as they were
//!   (`qemu-img check` clean); and the image's VM-state area (vm.restore
//!   `qcow2:NAME` in a new VMM, a revert that builds the VM; the VMM's
//!   own write of the new generation ID faults first), after which the
//!   snapshot's state is as it was and `qemu-img check` finds no
//!   corruption (the disk was reverted before the fault: the leaks of a
//!   kill at that moment at most);
//! - a VMM killed (SIGKILL) while its loader is still filling leaves the
//!   image with no corruption and every snapshot revertible: a new VMM
//!   reverts (by a rebuild, lazily) to each, and the guest counts on
//!   from that snapshot's count.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The pace that keeps the loader's background filling from reaching a
/// record before the test's fault does (the VMM's bound, 1 s per segment).
const SLOW: (&str, &str) = ("VMM_LAZY_RAM_PACE_MS", "1000");

/// Bytes of a record's header (`state/record.rs`).
const HEADER: usize = 20;
/// Bytes of the VM-state area's header (`state/image.rs`).
const AREA_HEADER: usize = 32;
/// The RAM record kind.
const KIND_RAM: u16 = 0x50;
/// Where the guest's page tables start (`layout::PML4_START`): the first
/// thing a resumed vCPU reads.
const PAGE_TABLES: u64 = 0x9000;
/// Where the VM generation ID lives (`layout::VMGENID_START`): the first
/// page a restore writes.
const VMGENID: u64 = 0xf_f000;

/// A RAM record in a stream: its position, guest address and bytes.
#[derive(Debug, Clone, Copy)]
struct RamRecord {
    pos: usize,
    address: u64,
    len: u64,
}

/// The RAM records of the record stream in `bytes` from `start` (the
/// configuration record, RAM records, the end record), their positions
/// counted from the start of `bytes`.
fn ram_records(bytes: &[u8], start: usize) -> Vec<RamRecord> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos + HEADER <= bytes.len() {
        assert_eq!(&bytes[pos..pos + 4], b"VMSR", "no record at byte {pos}");
        let kind = u16::from_le_bytes(bytes[pos + 6..pos + 8].try_into().unwrap());
        let length = u32::from_le_bytes(bytes[pos + 12..pos + 16].try_into().unwrap()) as usize;
        if kind == KIND_RAM {
            let at = pos + HEADER;
            out.push(RamRecord {
                pos,
                address: u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()),
                len: length as u64 - 8,
            });
        }
        pos += HEADER + length;
    }
    assert_eq!(pos, bytes.len(), "the stream does not end on a record");
    out
}

/// The record holding guest address `address`.
fn holding(records: &[RamRecord], address: u64) -> RamRecord {
    *records
        .iter()
        .find(|r| r.address <= address && address < r.address + r.len)
        .unwrap_or_else(|| panic!("no RAM record holds {address:#x}: {records:?}"))
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

/// The whole VM-state area of snapshot `name` of the image at `path`.
fn vm_state_area(path: &Path, name: &str) -> Vec<u8> {
    let storage = qcow::fs::open_storage(path, false).unwrap();
    let image =
        qcow::image::Qcow2::open(storage, false, &qcow::fs::FileOpener::for_image(path)).unwrap();
    let size = image.find_snapshot_entry(name).unwrap().vm_state_size;
    let mut area = vec![0u8; size as usize];
    image.read_vm_state(name, 0, &mut area).unwrap();
    area
}

/// Where the RAM stream starts in a VM-state area.
fn area_ram_start(area: &[u8]) -> usize {
    AREA_HEADER + u64::from_le_bytes(area[16..24].try_into().unwrap()) as usize
}

/// `qemu-img check` of `path`: `None` without qemu-img; else its exit
/// code and output (0: clean, 3: leaked clusters only).
fn qemu_img_check(path: &Path) -> Option<(i32, String)> {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(path)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.code().unwrap_or(-1), text))
}

fn assert_clean(path: &Path, when: &str) {
    if let Some((code, text)) = qemu_img_check(path) {
        assert_eq!(code, 0, "qemu-img check {when}: {text}");
    }
}

/// `qemu-img check` finds no corruption: leaked clusters at most.
fn assert_no_corruption(path: &Path, when: &str) {
    if let Some((code, text)) = qemu_img_check(path) {
        assert!(code == 0 || code == 3, "qemu-img check {when}: {text}");
        assert!(!text.contains("ERROR"), "qemu-img check {when}: {text}");
    }
}

fn disk(path: &Path) -> vmapi::DiskConfig {
    vmapi::DiskConfig {
        path: path.to_path_buf(),
        readonly: false,
        direct: false,
        id: Some("count".into()),
        image_type: Some(vmapi::ImageType::Qcow2),
    }
}

/// The counting guest's configuration for `vmm`, on the disk at `path`.
fn count_config(guest: &Path, vmm: &ApiVmm, path: &Path) -> vmapi::VmConfig {
    guest_config(
        guest,
        "guest.mode=count guest.every=20000",
        vmm.dir.path(),
        vec![disk(path)],
    )
}

fn wait_count(vmm: &ApiVmm, from: usize, at_least: u64) -> String {
    count::wait_count(&vmm.path("console.log"), from, at_least, || {
        format!("vmm: {}", vmm.log())
    })
}

/// The count the (paused) guest of `vmm` is at: the last it printed, a
/// line the pause cut included (the guest goes on from one past it).
fn count_at_pause(vmm: &ApiVmm) -> u64 {
    let log = vmm.console_log();
    assert!(!counts(&log).is_empty(), "no count yet: {log:?}");
    next_count(&log) - 1
}

/// The one line of `log` that says the RAM could not be loaded.
fn the_stop_line(log: &str) -> &str {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot be loaded"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    lines[0]
}

/// Flips one byte of `record`'s payload in `bytes`, whose stream starts
/// at `base`; returns the byte's index in `bytes`.
fn flip_payload_byte(bytes: &mut [u8], base: usize, record: RamRecord) -> usize {
    let at = base + record.pos + HEADER + 8 + 100;
    bytes[at] ^= 0x40;
    at
}

#[test]
fn a_ram_record_corrupted_after_the_snapshot_stops_the_vm_at_its_fault() {
    require_kvm!();
    let guest = build_guest();
    let root = tempfile::tempdir().unwrap();
    let image = root.path().join("count.qcow2");
    make_qcow2(&image, 1 << 20);
    let snap = root.path().join("snap");
    let url = format!("file://{}", snap.display());

    // One paused instant, kept twice: in CH's files and in the image.
    let source = ApiVmm::start(&[]);
    let client = source.client();
    client
        .create(&count_config(&guest, &source, &image))
        .unwrap();
    client.boot(false).unwrap();
    wait_count(&source, 0, 5);
    client.pause().unwrap();
    client.snapshot(&url).unwrap();
    client.snapshot("qcow2:s1").unwrap();
    client.vmm_shutdown().unwrap();
    let mut source = source;
    assert_eq!(source.wait_exit(), Some(0), "{}", source.log());

    // memory-ranges: the record the resumed guest reads first (its page
    // tables) gets one payload byte flipped.
    let memory = snap.join("memory-ranges");
    let mut bytes = std::fs::read(&memory).unwrap();
    let records = ram_records(&bytes, 0);
    let first_read = holding(&records, PAGE_TABLES);
    flip_payload_byte(&mut bytes, 0, first_read);
    std::fs::write(&memory, &bytes).unwrap();
    let image_before = std::fs::read(&image).unwrap();

    let target = ApiVmm::start_with_env(&[], &[SLOW]);
    let client = target.client();
    client.restore(&url).unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    // The guest's first instruction faults on its page tables.
    let _ = client.resume();
    let mut target = target;
    assert_eq!(target.wait_exit(), Some(1), "{}", target.log());
    let log = target.log();
    let line = the_stop_line(&log);
    eprintln!("{line}");
    assert!(
        line.contains(&format!(
            "checksum mismatch in the RAM record at byte {}, which holds guest RAM {:#x}-{:#x}",
            first_read.pos,
            first_read.address,
            first_read.address + first_read.len - 1
        )) && line.contains("found on a fault at ")
            && line.contains(&snap.display().to_string()),
        "{line}"
    );
    assert!(!log.contains("vmm: lazy RAM of snapshot"), "{log}");
    // Nothing written: neither the snapshot's files nor the disk.
    assert_eq!(std::fs::read(&memory).unwrap(), bytes);
    assert!(std::fs::read(&image).unwrap() == image_before);
    assert_clean(&image, "after the restore from files stopped");

    // The image's VM-state area: the record holding the generation ID,
    // which a revert writes before anything else runs.
    let area = vm_state_area(&image, "s1");
    let ram_start = area_ram_start(&area);
    let records = ram_records(&area, ram_start);
    let written_first = holding(&records, VMGENID);
    // Found in the image file by the record's header and first bytes
    // (the area is stored uncompressed, the record in one cluster run).
    let needle = &area[written_first.pos..][..HEADER + 8 + 128];
    let mut file = std::fs::read(&image).unwrap();
    let found: Vec<usize> = file
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == &needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "the record's header in the image file");
    file[found[0] + HEADER + 8 + 100] ^= 0x40;
    std::fs::write(&image, &file).unwrap();
    let area_before = vm_state_area(&image, "s1");
    assert_ne!(area_before, area, "the flipped byte is in the area");
    assert_clean(&image, "after the flip (data only)");

    let target = ApiVmm::start_with_env(&[], &[SLOW]);
    let client = target.client();
    client
        .create(&count_config(&guest, &target, &image))
        .unwrap();
    // The VMM stops inside the revert: the answer may not come.
    let _ = client.restore("qcow2:s1");
    let mut target = target;
    assert_eq!(target.wait_exit(), Some(1), "{}", target.log());
    let log = target.log();
    let line = the_stop_line(&log);
    eprintln!("{line}");
    assert!(
        line.contains("snapshot 's1'")
            && line.contains(&format!(
                "checksum mismatch in the RAM record at byte {}, which holds guest RAM {:#x}-",
                written_first.pos, written_first.address
            ))
            && line.contains(&format!("found on a fault at {VMGENID:#x}")),
        "{line}"
    );
    // The snapshot is as it was. The revert had reverted the disk before
    // the fault: the old tree's frees, still in the cache, are lost as
    // at a kill (leaked clusters, no corruption).
    assert!(vm_state_area(&image, "s1") == area_before);
    assert_no_corruption(&image, "after the revert stopped");
}

#[test]
fn a_vmm_killed_while_its_ram_fills_leaves_every_snapshot_revertible() {
    require_kvm!();
    let guest = build_guest();
    let root = tempfile::tempdir().unwrap();
    let image: PathBuf = root.path().join("count.qcow2");
    make_qcow2(&image, 1 << 20);

    // Two snapshots of a counting guest, then a revert to the first,
    // whose RAM is filled slowly, and a kill while it fills.
    let mut first = ApiVmm::start_with_env(&[], &[SLOW]);
    let client = first.client();
    client
        .create(&count_config(&guest, &first, &image))
        .unwrap();
    client.boot(false).unwrap();
    wait_count(&first, 0, 5);
    client.pause().unwrap();
    let at_s1 = count_at_pause(&first);
    client.snapshot("qcow2:s1").unwrap();
    client.resume().unwrap();
    wait_count(&first, 0, at_s1 + 5);
    client.pause().unwrap();
    let at_s2 = count_at_pause(&first);
    client.snapshot("qcow2:s2").unwrap();
    client.resume().unwrap();
    wait_count(&first, 0, at_s2 + 3);
    client.pause().unwrap();
    let before_revert = first.console_log().len();
    client.restore("qcow2:s1").unwrap();
    client.resume().unwrap();
    let after = wait_count(&first, before_revert, at_s1 + 3);
    assert_eq!(counts(&after).first(), Some(&(at_s1 + 1)), "{after:?}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let log = first.log();
    assert!(log.contains("vmm: resuming with "), "{log}");
    assert!(
        !log.contains("vmm: lazy RAM of snapshot 's1'"),
        "the loader ended before the kill: {log}"
    );
    // Leaked clusters are all a kill may leave (the old tree's frees
    // wait in the cache for the next flush), no corruption.
    assert_no_corruption(&image, "after the kill");

    // A new VMM reverts to each snapshot and counts on from it.
    let second = ApiVmm::start(&[]);
    let client = second.client();
    client
        .create(&count_config(&guest, &second, &image))
        .unwrap();
    client.restore("qcow2:s2").unwrap();
    assert_eq!(client.info().unwrap().state, VmState::Paused);
    client.resume().unwrap();
    let from_s2 = counts(&wait_count(&second, 0, at_s2 + 3));
    assert_eq!(from_s2.first(), Some(&(at_s2 + 1)), "{from_s2:?}");
    assert_consecutive(&from_s2, "after the revert to s2");
    client.pause().unwrap();
    let before_revert = second.console_log().len();
    client.restore("qcow2:s1").unwrap();
    client.resume().unwrap();
    let from_s1 = counts(&wait_count(&second, before_revert, at_s1 + 3));
    assert_eq!(from_s1.first(), Some(&(at_s1 + 1)), "{from_s1:?}");
    assert_consecutive(&from_s1, "after the revert to s1");
    client.pause().unwrap();
    client.vmm_shutdown().unwrap();
    let mut second = second;
    assert_eq!(second.wait_exit(), Some(0), "{}", second.log());
    let log = second.log();
    // The rebuilding revert loaded its RAM lazily too.
    assert!(log.contains("vmm: lazy RAM of snapshot 's2': "), "{log}");
    assert!(log.contains("vmm: revert in place: "), "{log}");
    assert_no_corruption(&image, "after the reverts");
}
