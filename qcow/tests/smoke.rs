use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::{FileStorage, Storage};

#[test]
fn write_read_and_qemu_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let s: Arc<dyn Storage> = Arc::new(FileStorage::new(f));
    let img = create(
        s,
        None,
        None,
        &CreateOptions {
            size: 64 << 20,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    img.write_at(&data, 12345).unwrap();
    let mut back = vec![0u8; data.len()];
    img.read_at(&mut back, 12345).unwrap();
    assert_eq!(back, data);
    img.discard(0, 64 << 10).unwrap();
    img.write_zeroes(100_000, 50_000, true).unwrap();
    img.flush().unwrap();
    drop(img);
    let out = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let raw = dir.path().join("a.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&path)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&raw).unwrap();
    let mut model = vec![0u8; 64 << 20];
    model[12345..12345 + data.len()].copy_from_slice(&data);
    model[..64 << 10].fill(0);
    model[100_000..150_000].fill(0);
    assert!(bytes == model);
}
