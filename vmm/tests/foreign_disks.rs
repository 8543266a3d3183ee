//! The VMM serves disks of the formats brought over from other
//! hypervisors (vmdk and vhdx here): the test guest, in `guest.mode=io`,
//! writes, reads and flushes a disk qemu-img made, with the format
//! probed; once the VMM has shut down, `qemu-img check` finds the image
//! clean and qemu-img's own conversion to raw holds exactly the guest's
//! writes (and our library reads the same bytes). Disks given with their
//! CH `image_type` are served as that format, and a qed overlay over a
//! vmdk base is served with its backing chain.

mod support;

use std::path::Path;
use std::process::Command;

use support::guest::build_guest;
use support::vmm_api::{guest_config, have_kvm, ApiVmm};

/// The guest's requests: 4 KiB each, write `i` fills slot `i` with byte
/// `i` (see vmm/guest/src/idle.rs).
const WRITES: u64 = 24;
const READS: u64 = 24;
const FLUSHES: u64 = 2;
/// The disk's size.
const DISK_BYTES: u64 = 4 << 20;

/// Skips (returns) without /dev/kvm or qemu-img, unless REQUIRE_KVM is set.
macro_rules! require_kvm_and_qemu {
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

fn qemu_img(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run qemu-img");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img {args:?}: {text}");
    text
}

/// Where the base of a chained disk holds data of its own, and its byte:
/// from inside the guest's writes (slots 20 to 23 overwrite it) to well
/// past them, so that the overlay's first write to a cluster must copy
/// the rest of it up from the base.
const BASE_DATA: (u64, u64, u8) = (80 << 10, 1 << 20, 0xab);

/// What the disk must hold after the guest ran: slot `i` of the first
/// `WRITES` filled with byte `i`, zeros after (or the base's data, for a
/// chained disk).
fn expected(chained: bool) -> Vec<u8> {
    let mut data = vec![0u8; DISK_BYTES as usize];
    if chained {
        let (at, len, byte) = BASE_DATA;
        data[at as usize..(at + len) as usize].fill(byte);
    }
    for (i, slot) in data.chunks_mut(4096).take(WRITES as usize).enumerate() {
        slot.fill(i as u8);
    }
    data
}

/// Boots the io guest on `image` (made by qemu-img with `create_args`,
/// its format `image_type` or probed), shuts the VMM down, then holds the
/// image against qemu-img. A `chained` disk's `create_args` name
/// `base.vmdk`, which is made first with data of its own.
fn guest_writes_through(
    format: &str,
    create_args: &[&str],
    image_type: Option<vmapi::ImageType>,
    chained: bool,
) {
    let guest = build_guest();
    let mut vmm = ApiVmm::start(&[]);
    let dir = vmm.dir.path().to_path_buf();
    let name = format!("disk.{format}");
    let size = DISK_BYTES.to_string();
    if chained {
        qemu_img(&dir, &["create", "-q", "-f", "vmdk", "base.vmdk", &size]);
        let (at, len, byte) = BASE_DATA;
        let out = Command::new("qemu-io")
            .args([
                "-f",
                "vmdk",
                "-c",
                &format!("write -P {byte} {at} {len}"),
                "base.vmdk",
            ])
            .current_dir(&dir)
            .output()
            .expect("run qemu-io");
        assert!(out.status.success(), "qemu-io: {out:?}");
    }
    let mut args = vec!["create", "-q", "-f", format];
    args.extend_from_slice(create_args);
    args.extend([name.as_str(), size.as_str()]);
    qemu_img(&dir, &args);
    let cid_line = |dir: &Path| {
        qemu_img(dir, &["info", "-f", format, &name])
            .lines()
            .find(|l| l.trim_start().starts_with("cid:"))
            .map(str::to_string)
    };
    let cid_before = cid_line(&dir);

    let client = vmm.client();
    let disk = vmapi::DiskConfig {
        path: dir.join(&name),
        readonly: false,
        direct: false,
        id: Some("vda".into()),
        // None: probed, as a path without format= is.
        image_type,
    };
    let cmdline =
        format!("guest.mode=io guest.reads={READS} guest.writes={WRITES} guest.flushes={FLUSHES}");
    client
        .create(&guest_config(&guest, &cmdline, &dir, vec![disk]))
        .unwrap();
    client.boot(false).unwrap();
    vmm.wait_console("guest: io done", 1);
    client.shutdown().unwrap();
    client.vmm_shutdown().unwrap();
    assert_eq!(vmm.wait_exit(), Some(0), "{}", vmm.log());

    // The VMM's first write put a new CID into a vmdk's descriptor, as
    // QEMU's does.
    if format == "vmdk" {
        assert!(cid_before.is_some());
        assert_ne!(cid_line(&dir), cid_before, "the VMM's writes kept the CID");
    }
    let check = qemu_img(&dir, &["check", "-f", format, &name]);
    assert!(
        check.contains("No errors were found"),
        "{format} {create_args:?}: {check}"
    );
    qemu_img(
        &dir,
        &["convert", "-f", format, "-O", "raw", &name, "out.raw"],
    );
    let converted = std::fs::read(dir.join("out.raw")).unwrap();
    let want = expected(chained);
    assert!(
        converted == want,
        "{format} {create_args:?}: qemu-img reads other bytes than the guest wrote"
    );
    let ours = qcow::fs::open_image(&dir.join(&name), None, false).unwrap();
    let mut read = vec![0u8; DISK_BYTES as usize];
    qcow::device::BlockRead::read_at(&ours, &mut read, 0).unwrap();
    assert!(
        read == want,
        "{format} {create_args:?}: our reading differs"
    );
}

#[test]
fn the_guest_writes_a_monolithic_sparse_vmdk() {
    require_kvm_and_qemu!();
    guest_writes_through("vmdk", &[], None, false);
}

#[test]
fn the_guest_writes_a_vmdk_of_two_gb_flat_extents() {
    require_kvm_and_qemu!();
    guest_writes_through(
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentFlat"],
        Some(vmapi::ImageType::FlatVmdk),
        false,
    );
}

#[test]
fn the_guest_writes_a_dynamic_vhdx() {
    require_kvm_and_qemu!();
    guest_writes_through("vhdx", &["-o", "block_size=1M"], None, false);
}

#[test]
fn the_guest_writes_a_fixed_vhdx() {
    require_kvm_and_qemu!();
    guest_writes_through(
        "vhdx",
        &["-o", "subformat=fixed,block_state_zero=off"],
        Some(vmapi::ImageType::Vhdx),
        false,
    );
}

#[test]
fn the_guest_writes_a_qed_overlay_over_a_vmdk_base() {
    require_kvm_and_qemu!();
    guest_writes_through("qed", &["-b", "base.vmdk", "-F", "vmdk"], None, true);
}
