//! Random reads, writes, write-zeroes, discards and flushes at depths 1 to
//! 32 on disks of the formats of other hypervisors, made by qemu-img
//! (vmdk sparse and flat, vhdx, vpc, vdi, qed), checked read by read
//! against an in-memory model. Their reads of allocated data go through
//! io_uring and everything else through the format, so requests in flight
//! mix both paths. Afterwards `qemu-img check` is clean where qemu-img
//! checks the format, and `qemu-img compare` finds the image equal to
//! the model.

mod backend_support;

use std::path::Path;

use backend_support::*;
use blockdev::backend::{open, OpenOptions};
use qcow::fs::Format;

/// Over 2 MiB so that vhdx, vdi and qed blocks are several.
const SIZE: u64 = 6 << 20;

fn run(path: &Path, format: Format, model: &mut [u8], w: &Workload) {
    let disk = open(
        path,
        &OpenOptions {
            format: Some(format),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(disk.size(), model.len() as u64);
    {
        let mut q = disk.open_queue(w.depth).unwrap();
        random_workload(&mut *q, model, w);
    }
    disk.close().unwrap();
}

/// qemu-img makes the image (with `opts`) and qemu-io writes a pattern
/// into its first MiB; two sessions of random requests follow, each held
/// against qemu-img's view of the image afterwards.
fn case(format: Format, opts: &str, checked: bool, depth: u32, seed: u64) {
    let dir = test_dir();
    let name = format.name();
    let path = dir.path().join(format!("d.{name}"));
    let p = path.to_str().unwrap();
    let size = SIZE.to_string();
    let mut args = vec!["create", "-q", "-f", name];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p, size.as_str()]);
    qemu_img(&args);
    run_tool_io(name, p, "write -P 0x5a 0 1M");
    let mut model = vec![0u8; SIZE as usize];
    model[..1 << 20].fill(0x5a);
    let w = Workload {
        depth,
        ops: 600,
        seed,
        granule: 512,
        max_granules: 256,
        discard: DiscardModel::Keep,
    };
    let cid = vmdk_cid(&path);
    run(&path, format, &mut model, &w);
    // Each open that wrote put a new CID into a vmdk's descriptor, as
    // QEMU's does.
    let written = vmdk_cid(&path);
    assert!(cid.is_none() || written != cid, "{name}: the CID stayed");
    if checked {
        assert_clean(&path);
    }
    assert_same_as_format(&path, Some(name), &model, dir.path());
    let w2 = Workload {
        seed: seed + 1,
        ops: 300,
        ..w
    };
    run(&path, format, &mut model, &w2);
    assert!(
        cid.is_none() || vmdk_cid(&path) != written,
        "{name}: the CID stayed"
    );
    assert_same_as_format(&path, Some(name), &model, dir.path());
}

/// A vmdk's `cid` as `qemu-img info` shows it (`None` for other formats).
fn vmdk_cid(image: &Path) -> Option<String> {
    let out = std::process::Command::new("qemu-img")
        .arg("info")
        .arg(image)
        .output()
        .expect("qemu-img runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("cid:"))
        .map(str::to_string)
}

/// `qemu-io -f FORMAT -c COMMAND IMAGE`.
fn run_tool_io(format: &str, image: &str, command: &str) {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", format, "-c", command, image])
        .output()
        .expect("qemu-io runs");
    assert!(out.status.success(), "qemu-io: {out:?}");
}

#[test]
fn vmdk_sparse_and_flat() {
    case(Format::Vmdk, "", true, 8, 101);
    case(Format::Vmdk, "subformat=twoGbMaxExtentFlat", true, 32, 102);
}

#[test]
fn vhdx_dynamic() {
    case(Format::Vhdx, "block_size=1M", true, 16, 103);
}

#[test]
fn vpc_dynamic_and_vdi() {
    case(Format::Vpc, "force_size=on", false, 4, 104);
    case(Format::Vdi, "", true, 16, 105);
}

/// A fixed VHD is read through the ring as one range of its file, its
/// holes included (no hole lookup on the I/O path).
#[test]
fn vpc_fixed() {
    case(Format::Vpc, "subformat=fixed,force_size=on", false, 8, 107);
}

#[test]
fn qed_depth_1() {
    case(Format::Qed, "cluster_size=64k", true, 1, 106);
}
