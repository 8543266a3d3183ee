//! `img convert -W -m 16`, the way bench/formats.sh and most scripts call
//! it: several workers write out of order (each under the engine's write
//! lock, not in the target's order). Every output format must hold the
//! source's data, as `qemu-img compare` reads it, and a qcow2 output must
//! be clean for `qemu-img check`.

use integration_tests::{assert_qemu_clean, img, make_raw, ok, qemu_img, require_qemu};

#[test]
fn out_of_order_converts_hold_the_source_in_every_format() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    // 40 MiB: 40 chunks of the engine's 1 MiB, so that three workers
    // overlap, of data, zeros, text and holes in 64 KiB runs.
    make_raw(&raw, 40 << 20, 0x5eed);
    let src = dir.path().join("src.qcow2");
    ok(qemu_img(&["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&src));
    for (fmt, opts) in [
        ("qcow2", ""),
        ("raw", ""),
        ("vhdx", ""),
        ("vpc", ""),
        ("vdi", ""),
        ("vmdk", ""),
        ("qed", ""),
        ("qcow2", "cluster_size=4096"),
    ] {
        let out = dir.path().join(format!("out.{fmt}"));
        let _ = std::fs::remove_file(&out);
        let mut cmd = img(&["convert", "-W", "-m", "16", "-f", "qcow2", "-O", fmt]);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        ok(cmd.arg(&src).arg(&out));
        ok(qemu_img(&["compare", "-f", "qcow2", "-F", fmt])
            .arg(&src)
            .arg(&out));
        if fmt == "qcow2" {
            assert_qemu_clean(&out);
        }
    }
}
