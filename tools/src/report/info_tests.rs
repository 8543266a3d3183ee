//! Golden tests for `report::info`: every expected text below was printed
//! by qemu-img 10.0.2 (`qemu-img info [--output=json] [--backing-chain]`)
//! on images made with qemu-img and qemu-io; the machine's time zone was
//! UTC, so snapshot dates are rendered with `format_utc`.

#[path = "info_golden.rs"]
mod golden;

use super::*;
use crate::report::localtime::format_utc;
use golden::*;

/// A qcow2 node over its file node, as qemu-img shows a plain image.
fn qcow2_image(
    name: &str,
    virtual_size: u64,
    actual_size: u64,
    file_length: u64,
    specific: Qcow2Info,
) -> ImageInfo {
    ImageInfo {
        filename: name.to_owned(),
        format: "qcow2".to_owned(),
        dirty_flag: Some(false),
        actual_size: Some(actual_size),
        virtual_size,
        cluster_size: Some(65536),
        format_specific: Some(FormatSpecific::Qcow2(specific)),
        children: vec![ChildInfo {
            name: "file".to_owned(),
            info: ImageInfo::file_node(name, file_length, Some(actual_size)),
        }],
        ..ImageInfo::default()
    }
}

fn v3() -> Qcow2Info {
    Qcow2Info::new(Compat::V1_1, 16, CompressionType::Zlib)
}

fn base() -> ImageInfo {
    qcow2_image("base.qcow2", 1 << 30, 1314816, 1376256, v3())
}

fn top(name: &str, full_backing: &str) -> ImageInfo {
    ImageInfo {
        backing_filename: Some("base.qcow2".to_owned()),
        full_backing_filename: Some(full_backing.to_owned()),
        backing_filename_format: Some("qcow2".to_owned()),
        ..qcow2_image(name, 1 << 30, 331776, 393216, v3())
    }
}

fn human(info: &ImageInfo) -> String {
    info.render_human_with(&format_utc)
}

#[test]
fn plain_qcow2() {
    assert_eq!(human(&base()), BASE_HUMAN);
    assert_eq!(base().render_json(), BASE_JSON);
}

#[test]
fn backing_file_with_other_actual_path() {
    assert_eq!(human(&top("q/top.qcow2", "q/base.qcow2")), TOP_REL_HUMAN);
}

#[test]
fn backing_chain() {
    let chain = [top("top.qcow2", "base.qcow2"), base()];
    assert_eq!(render_chain_human_with(&chain, &format_utc), CHAIN_HUMAN);
    assert_eq!(render_chain_json(&chain), CHAIN_JSON);
}

#[test]
fn raw_image() {
    let raw = ImageInfo {
        filename: "r.img".to_owned(),
        format: "raw".to_owned(),
        dirty_flag: Some(false),
        actual_size: Some(4096),
        virtual_size: 1000448,
        children: vec![ChildInfo {
            name: "file".to_owned(),
            info: ImageInfo::file_node("r.img", 1000448, Some(4096)),
        }],
        ..ImageInfo::default()
    };
    assert_eq!(human(&raw), RAW_HUMAN);
    assert_eq!(raw.render_json(), RAW_JSON);
}

#[test]
fn snapshots() {
    let snapshot = |id: &str, name: &str, date_nsec| SnapshotInfo {
        id: id.to_owned(),
        name: name.to_owned(),
        vm_state_size: 0,
        date_sec: 1795412956,
        date_nsec,
        vm_clock_sec: 0,
        vm_clock_nsec: 0,
        icount: Some(0),
    };
    let info = ImageInfo {
        snapshots: Some(vec![
            snapshot("1", "s1", 846135000),
            snapshot("2", "second snapshot with long name", 869508000),
        ]),
        ..qcow2_image("snap.qcow2", 1 << 30, 1339392, 1704448, v3())
    };
    assert_eq!(human(&info), SNAP_HUMAN);
    assert_eq!(info.render_json(), SNAP_JSON);
}

#[test]
fn snapshot_rows() {
    let snapshot = SnapshotInfo {
        id: "10".to_owned(),
        name: "x".to_owned(),
        vm_state_size: 1536,
        date_sec: 0,
        vm_clock_sec: 3723,
        vm_clock_nsec: 456_000_000,
        icount: None,
        ..SnapshotInfo::default()
    };
    assert_eq!(
        snapshot.table_row(&format_utc),
        "10      x                 1.5 KiB 1970-01-01 00:00:00  0001:02:03.456         --"
    );
    assert_eq!(
        snapshot_table_header(),
        "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"
    );
}

#[test]
fn external_data_file() {
    let info = qcow2_image(
        "ext.qcow2",
        64 << 20,
        266240,
        327680,
        Qcow2Info {
            data_file: Some("data.raw".to_owned()),
            data_file_raw: Some(true),
            ..v3()
        },
    );
    assert_eq!(human(&info), EXT_HUMAN);
    assert_eq!(info.render_json(), EXT_JSON);
}

#[test]
fn compat_0_10() {
    let info = qcow2_image(
        "old.qcow2",
        64 << 20,
        200704,
        197120,
        Qcow2Info::new(Compat::V0_10, 16, CompressionType::Zlib),
    );
    assert_eq!(human(&info), OLD_HUMAN);
}

#[test]
fn dirty_image() {
    let info = ImageInfo {
        dirty_flag: Some(true),
        ..qcow2_image(
            "dirty.qcow2",
            64 << 20,
            200704,
            197120,
            Qcow2Info {
                lazy_refcounts: Some(true),
                ..v3()
            },
        )
    };
    assert_eq!(human(&info), DIRTY_HUMAN);
}

#[test]
fn bitmaps() {
    let info = qcow2_image(
        "bm.qcow2",
        1 << 30,
        229376,
        590336,
        Qcow2Info {
            bitmaps: Some(vec![
                BitmapInfo {
                    name: "b0".to_owned(),
                    granularity: 65536,
                    flags: vec!["auto".to_owned()],
                },
                BitmapInfo {
                    name: "bitmap1".to_owned(),
                    granularity: 131072,
                    flags: vec![],
                },
            ]),
            ..v3()
        },
    );
    assert_eq!(human(&info), BM_HUMAN);
    assert_eq!(info.render_json(), BM_JSON);
}

#[test]
fn unusual_fields() {
    let info = ImageInfo {
        filename: "x".to_owned(),
        format: "qcow2".to_owned(),
        virtual_size: 512,
        actual_size: None,
        encrypted: Some(true),
        backing_filename: Some("b".to_owned()),
        children: vec![ChildInfo {
            name: "file".to_owned(),
            info: ImageInfo::file_node("x", 512, None),
        }],
        ..ImageInfo::default()
    };
    assert_eq!(
        human(&info),
        "image: x\nfile format: qcow2\nvirtual size: 512 B (512 bytes)\n\
         disk size: unavailable\nencrypted: yes\n\
         backing file: b (cannot determine actual path)\n\
         Child node '/file':\n    filename: x\n    protocol type: file\n\
         \x20   file length: 512 B (512 bytes)\n    disk size: unavailable\n"
    );
}
