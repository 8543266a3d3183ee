//! `img convert` of a qcow2 whose data clusters lie partly in holes of
//! its file (punched after the writes: 4 KiB, 64 KiB and 16 KiB), where
//! QEMU 10 does not find the image preallocated with metadata and so never
//! asks the file about its holes: it reads them as data and finds zeros
//! only in whole `-S` blocks of the target. `img` asks the file (reading
//! a large hole costs minutes, see convert_skips_file_holes), but must
//! leave the same target: with `-S` blocks larger than a hole, the hole's
//! partial blocks are written as data. Held against qemu-img for raw and
//! qcow2 targets at five `-S` sizes, the holes in the image's own file
//! and in an external data file: the targets' maps (host offsets aside)
//! and contents must agree.

use std::path::Path;

use integration_tests::{img, map_ranges, ok, qemu_img, qemu_io, require_qemu, run};

/// Host offset of the image's first data cluster (after the header, the
/// refcount table and block and the L1 and L2 tables of a 64 MiB image).
fn first_data_host_offset(image: &Path) -> u64 {
    let out = ok(qemu_img(&["map", "--output=json"]).arg(image));
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    map[0]["offset"].as_u64().unwrap()
}

/// Punches holes into `file` at these offsets past `host`.
fn punch(file: &Path, host: u64) {
    for (at, len) in [(65536 + 8192, 4096), (262_144, 65536), (1_052_672, 16384)] {
        ok(std::process::Command::new("fallocate")
            .args(["-p", "-o", &(host + at).to_string(), "-l", &len.to_string()])
            .arg(file));
    }
}

fn make_sources(d: &Path) {
    let own = d.join("own.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&own)
        .arg("64M"));
    qemu_io("qcow2", &own, &["write -P 0x33 0 32M"]);
    punch(&own, first_data_host_offset(&own));
    let with_data_file = d.join("df.qcow2");
    let data_file = d.join("df.raw");
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file={}", data_file.display()))
        .arg(&with_data_file)
        .arg("64M"));
    qemu_io("qcow2", &with_data_file, &["write -P 0x44 0 32M"]);
    punch(&data_file, 0);
}

#[test]
fn convert_of_holes_qemu_does_not_ask_about_vs_qemu() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_sources(d);
    // Neither is found preallocated: qemu-img map shows the holes as data.
    for source in ["own.qcow2", "df.qcow2"] {
        let ranges = map_ranges(&d.join(source));
        assert!(
            ranges.iter().all(|r| !r.2.contains("zero true data true")),
            "{source}: {ranges:?}"
        );
    }
    let mut failures = Vec::new();
    for source in ["own.qcow2", "df.qcow2"] {
        for sparse in [None, Some("512"), Some("8k"), Some("64k"), Some("0")] {
            for format in ["raw", "qcow2"] {
                let (o, t) = (d.join(format!("o.{format}")), d.join(format!("t.{format}")));
                let mut args = vec!["convert", "-O", format];
                if let Some(s) = sparse {
                    args.extend(["-S", s]);
                }
                args.push(source);
                ok(img(&args).arg(&o).current_dir(d));
                ok(qemu_img(&args).arg(&t).current_dir(d));
                let label = args.join(" ");
                let (om, tm) = (map_ranges(&o), map_ranges(&t));
                if om != tm {
                    failures.push(format!("{label}: maps\nours:   {om:?}\ntheirs: {tm:?}"));
                }
                let same = run(qemu_img(&["compare"]).arg(&o).arg(&t));
                if same.status.code() != Some(0) {
                    failures.push(format!(
                        "{label}: contents differ: {}",
                        String::from_utf8_lossy(&same.stdout).trim()
                    ));
                }
                std::fs::remove_file(&o).unwrap();
                std::fs::remove_file(&t).unwrap();
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
