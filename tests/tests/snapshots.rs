//! `img snapshot` against qemu-img: snapshots made by one are listed,
//! applied, read and deleted by the other, and qemu-img check stays clean.

use integration_tests::{assert_qemu_clean, img, ok, qemu_img, qemu_io, read, require_qemu, run};

#[test]
fn snapshots_cross_both_ways() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("s.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"]).arg(&p).arg("8M"));
    qemu_io("qcow2", &p, &["write -P 1 0 2M"]);
    // Ours first, then qemu's.
    ok(img(&["snapshot", "-c", "ours"]).arg(&p));
    assert_qemu_clean(&p);
    qemu_io("qcow2", &p, &["write -P 2 1M 2M"]);
    ok(qemu_img(&["snapshot", "-c", "theirs"]).arg(&p));
    qemu_io("qcow2", &p, &["write -P 3 0 4M"]);
    let list_ours = ok(img(&["snapshot", "-l"]).arg(&p));
    let list_theirs = ok(qemu_img(&["snapshot", "-l"]).arg(&p));
    assert_eq!(list_ours, list_theirs);
    let info_ours = ok(img(&["info", "--output=json"]).arg(&p));
    let info_theirs = ok(qemu_img(&["info", "--output=json"]).arg(&p));
    assert_eq!(info_ours, info_theirs);
    // Contents of each snapshot as qemu-img reads them.
    let snap = |name: &str| {
        let out = d.join(format!("{name}.raw"));
        ok(qemu_img(&["convert", "-O", "raw", "-l"])
            .arg(format!("snapshot.name={name}"))
            .arg(&p)
            .arg(&out));
        read(&out)
    };
    let ours = snap("ours");
    let theirs = snap("theirs");
    // img convert -l / -s reads the same snapshot contents.
    for (args, want) in [
        (vec!["-l", "snapshot.name=ours"], &ours),
        (vec!["-l", "theirs"], &theirs),
        (vec!["-s", "1"], &ours),
        (vec!["-l", "snapshot.id=2"], &theirs),
    ] {
        let out = d.join("via-img.raw");
        let _ = std::fs::remove_file(&out);
        ok(img(&["convert", "-O", "raw"]).args(&args).arg(&p).arg(&out));
        assert!(
            &read(&out) == want,
            "img convert {args:?} differs from qemu-img"
        );
    }
    assert!(ours[..2 << 20].iter().all(|&b| b == 1));
    assert!(theirs[1 << 20..3 << 20].iter().all(|&b| b == 2));
    let now = || {
        let out = d.join("now.raw");
        ok(qemu_img(&["convert", "-O", "raw"]).arg(&p).arg(&out));
        read(&out)
    };
    // We apply qemu's snapshot, qemu applies ours.
    ok(img(&["snapshot", "-a", "theirs"]).arg(&p));
    assert_qemu_clean(&p);
    assert!(now() == theirs);
    ok(qemu_img(&["snapshot", "-a", "ours"]).arg(&p));
    assert!(now() == ours);
    ok(img(&["snapshot", "-a", "2"]).arg(&p));
    assert!(now() == theirs);
    // Bad names: one line, exit 1, image unchanged.
    let before = read(&p);
    for args in [["-c", "ours"], ["-a", "missing"], ["-d", "missing"]] {
        let out = run(img(&["snapshot", args[0], args[1]]).arg(&p));
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
        assert!(read(&p) == before, "{args:?} changed the image");
    }
    // Deletes from both sides.
    ok(img(&["snapshot", "-d", "theirs"]).arg(&p));
    assert_qemu_clean(&p);
    ok(qemu_img(&["snapshot", "-d", "ours"]).arg(&p));
    ok(img(&["check"]).arg(&p));
    assert_qemu_clean(&p);
    assert!(now() == theirs);
    assert_eq!(ok(img(&["snapshot", "-l"]).arg(&p)), "");
}
