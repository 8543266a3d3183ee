//! `img convert` skips the holes of a source's other files unread, as it
//! skips the image file's: a 256 GiB qcow2 whose every cluster is
//! allocated (preallocation=metadata) in an empty raw data file converts
//! in about a second, where reading its 256 GiB of holes takes minutes
//! (qemu-img's convert reads them all and outlives a 100 s limit on this
//! machine, and so did ours before the holes of other files were
//! skipped). The target holds no data, as the source reads all zeros.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{img_bin, ok, qemu_img, require_qemu};

/// Past this, the convert must have read the holes.
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn holes_of_a_qcow2_data_file_are_not_read() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let (image, data, target) = (
        dir.path().join("s.qcow2"),
        dir.path().join("d.raw"),
        dir.path().join("o.qcow2"),
    );
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={},data_file_raw=on,preallocation=metadata,cluster_size=2M",
            data.display()
        ))
        .arg(&image)
        .arg("256G"));
    let mut child = Command::new(img_bin())
        .args(["convert", "-f", "qcow2", "-O", "qcow2"])
        .arg(&image)
        .arg(&target)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("convert still runs after {LIMIT:?}: it reads the data file's holes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "convert failed: {status}");
    let map: serde_json::Value =
        serde_json::from_str(&ok(qemu_img(&["map", "--output=json"]).arg(&target))).unwrap();
    let extents = map.as_array().unwrap();
    assert!(
        extents
            .iter()
            .all(|e| e["data"] == false && e["zero"] == true),
        "the target holds data: {map}"
    );
    assert_eq!(
        extents
            .iter()
            .map(|e| e["length"].as_u64().unwrap())
            .sum::<u64>(),
        256 << 30
    );
}
