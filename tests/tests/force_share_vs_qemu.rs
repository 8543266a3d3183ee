//! `-U` (`--force-share`) is a property of each open, as in qemu-img: the
//! images a command reads with it share everything, while an image the
//! same command opens otherwise locks as ever. Held against qemu-img
//! while qemu-io holds one file of a chain open for writing:
//! - `rebase -U` shares only its new backing file: the image's old backing
//!   chain still conflicts with a writer, and a new backing file held by
//!   one is refused without `-U`;
//! - `convert -U` shares its sources, not the target's backing file (`-B`);
//! - `-U` on an image opened for writing (`snapshot -c`, `check -r`) is
//!   refused with QEMU's words.

use std::path::Path;

use integration_tests::holders::{hold_for_writing, outcome};
use integration_tests::{img, ok, qemu_img, require_qemu};

/// old.qcow2 <- t.qcow2, and new.qcow2, all 16 MiB, in `dir`.
fn make_files(dir: &Path) {
    for f in ["old.qcow2", "new.qcow2"] {
        ok(qemu_img(&["create", "-q", "-f", "qcow2", f, "16M"]).current_dir(dir));
    }
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "old.qcow2",
        "-F",
        "qcow2",
        "t.qcow2",
    ])
    .current_dir(dir));
}

/// Runs `args` with qemu-img and then with img, each on the files as
/// they were (t.qcow2 restored, outputs removed), and holds their exit
/// codes and lines equal; returns qemu-img's exit code.
fn same_outcome(dir: &Path, args: &[&str]) -> Option<i32> {
    let pristine = std::fs::read(dir.join("t.qcow2")).unwrap();
    let reset = || {
        std::fs::write(dir.join("t.qcow2"), &pristine).unwrap();
        for f in ["out.qcow2", "out2.qcow2"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    };
    reset();
    let theirs = outcome(qemu_img(args), dir);
    reset();
    let ours = outcome(img(args), dir);
    reset();
    assert_eq!(ours, theirs, "img {args:?} differs from qemu-img");
    theirs.0
}

#[test]
fn force_share_is_per_open_as_in_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    make_files(d);
    let rebase_u: &[&str] = &["rebase", "-U", "-b", "new.qcow2", "-F", "qcow2", "t.qcow2"];
    let rebase: &[&str] = &["rebase", "-b", "new.qcow2", "-F", "qcow2", "t.qcow2"];
    {
        let _holder = hold_for_writing(d, "old.qcow2");
        // The image's own backing chain is not shared by rebase's -U.
        assert_eq!(same_outcome(d, rebase_u), Some(1));
        // Nor is the target's backing file by convert's.
        let convert_b: &[&str] = &[
            "convert",
            "-U",
            "-O",
            "qcow2",
            "-B",
            "old.qcow2",
            "-F",
            "qcow2",
            "new.qcow2",
            "out2.qcow2",
        ];
        assert_eq!(same_outcome(d, convert_b), Some(1));
        // What the commands read with -U is shared, backing files too.
        for args in [
            &["info", "-U", "t.qcow2"][..],
            &["map", "-U", "t.qcow2"],
            &["compare", "-U", "t.qcow2", "old.qcow2"],
            &["convert", "-U", "-O", "qcow2", "t.qcow2", "out.qcow2"],
            &["measure", "-U", "-O", "qcow2", "t.qcow2"],
            &["check", "-U", "t.qcow2"],
        ] {
            assert_eq!(same_outcome(d, args), Some(0), "{args:?}");
        }
        // Without -U they are refused.
        assert_eq!(same_outcome(d, &["map", "t.qcow2"]), Some(1));
    }
    {
        let _holder = hold_for_writing(d, "new.qcow2");
        // rebase's -U is for its new backing file.
        assert_eq!(same_outcome(d, rebase_u), Some(0));
        assert_eq!(same_outcome(d, rebase), Some(1));
    }
    // -U on an image opened for writing is refused.
    for args in [
        &["snapshot", "-U", "-c", "s1", "t.qcow2"][..],
        &["check", "-U", "-r", "all", "t.qcow2"],
        &["bench", "-U", "-w", "-c", "1", "t.qcow2"],
    ] {
        assert_eq!(same_outcome(d, args), Some(1), "{args:?}");
    }
}
