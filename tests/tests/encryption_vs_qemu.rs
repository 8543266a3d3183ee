//! Encrypted images against QEMU, both ways: qcow2 with LUKS (and the
//! legacy AES method) and the luks format made by `img create` open in
//! qemu-io with the same secret and hold what it writes; images qemu-img
//! makes and qemu-io fills read back through our library, and what our
//! library writes reads back in qemu-io. A wrong secret gets qemu-img's
//! message.

use integration_tests::encrypted::{
    luks_qcow2_opts as qcow2_opts, open_luks_qcow2 as open_ours, qemu_io_with_secret as qemu_io,
    read_image as read_ours, SECRET,
};
use integration_tests::{img, ok, qemu_img, require_qemu, run};

#[test]
fn luks_qcow2_made_by_img_opens_in_qemu_io_and_back() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("l.qcow2");
    let p = path.to_str().unwrap();
    ok(&mut img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        p,
        "8M",
    ]));
    // qemu-io writes (unaligned, across clusters), then reads its writes.
    let opts = qcow2_opts(&path);
    qemu_io(
        &opts,
        &["write -P 0x5a 1000 70000", "read -P 0x5a 1000 70000"],
    );
    // Our library decrypts what QEMU encrypted.
    let image = open_ours(&path, true);
    assert!(read_ours(&image, 1000, 70000).iter().all(|&b| b == 0x5a));
    assert!(read_ours(&image, 0, 1000).iter().all(|&b| b == 0));
    // What we encrypt (partial sectors, a new cluster, a COW) QEMU reads.
    image.write_at(&[0xa5; 3000], 69_500).unwrap();
    image.write_at(&[0x3c; 512], 4 << 20).unwrap();
    image.flush().unwrap();
    drop(image);
    qemu_io(
        &opts,
        &[
            "read -P 0x5a 1000 68500",
            "read -P 0xa5 69500 3000",
            "read -P 0 72500 512",
            "read -P 0x3c 4M 512",
            "read -P 0 4194816 512",
        ],
    );
    let out = ok(&mut img(&[
        "check",
        "--object",
        SECRET,
        "--image-opts",
        &opts,
    ]));
    assert!(out.contains("No errors were found on the image."), "{out}");
}

#[test]
fn qcow2_images_qemu_img_encrypts_read_back_through_our_library() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for format in ["luks", "aes"] {
        let path = dir.path().join(format!("{format}.qcow2"));
        let p = path.to_str().unwrap();
        let o = match format {
            "luks" => "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            _ => "encrypt.format=aes,encrypt.key-secret=sec0",
        };
        ok(&mut qemu_img(&[
            "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", o, p, "4M",
        ]));
        qemu_io(&qcow2_opts(&path), &["write -P 0x77 65024 1536"]);
        let image = open_ours(&path, false);
        assert!(
            read_ours(&image, 65024, 1536).iter().all(|&b| b == 0x77),
            "{format}"
        );
        assert!(
            read_ours(&image, 66560, 512).iter().all(|&b| b == 0),
            "{format}"
        );
    }
}

#[test]
fn luks_format_made_by_img_opens_in_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("v.luks");
    let p = path.to_str().unwrap();
    ok(&mut img(&[
        "create",
        "-q",
        "-f",
        "luks",
        "--object",
        SECRET,
        "-o",
        "key-secret=sec0,iter-time=10",
        p,
        "1M",
    ]));
    let opts = format!("driver=luks,file.filename={p},key-secret=sec0");
    qemu_io(&opts, &["write -P 0x11 0 64k", "read -P 0x11 0 64k"]);
    let info = ok(&mut qemu_img(&[
        "info",
        "--object",
        SECRET,
        "--image-opts",
        &opts,
    ]));
    assert!(
        info.contains("virtual size: 1 MiB (1048576 bytes)"),
        "{info}"
    );
    assert!(info.contains("cipher alg: aes-256"), "{info}");
}

#[test]
fn a_wrong_secret_gets_qemu_imgs_message() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("w.qcow2");
    let p = path.to_str().unwrap();
    ok(&mut img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        p,
        "1M",
    ]));
    let wrong = "secret,id=sec0,data=platypus";
    let opts = qcow2_opts(&path);
    let ours = run(&mut img(&[
        "check",
        "--object",
        wrong,
        "--image-opts",
        &opts,
    ]));
    let theirs = run(&mut qemu_img(&[
        "check",
        "--object",
        wrong,
        "--image-opts",
        &opts,
    ]));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr).replacen("img:", "qemu-img:", 1),
        String::from_utf8_lossy(&theirs.stderr)
    );
    // Without any secret, as qemu-img says too.
    let ours = run(&mut img(&["map", p]));
    let theirs = run(&mut qemu_img(&["map", p]));
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr).replacen("img:", "qemu-img:", 1),
        String::from_utf8_lossy(&theirs.stderr)
    );
}
