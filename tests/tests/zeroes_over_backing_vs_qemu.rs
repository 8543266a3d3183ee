//! Zeroing part of a qcow2 cluster in an overlay, held against qemu-io's
//! `write -z` (with and without `-u`) on a copy of the same image: QEMU
//! 10's qcow2_co_pwrite_zeroes makes the whole cluster a zero cluster when
//! the rest of it reads as zero through the whole backing chain (a hole or
//! zero cluster of a backing layer, past a shorter backing file's end, no
//! layer at all) and the overlay's cluster is unallocated or a zero
//! cluster; otherwise it writes the zeros (a copy-up from the backing
//! file). Both files must be equal byte for byte afterwards, and
//! `qemu-img map --output=json` of both equal.

use std::path::Path;
use std::process::Command;

use integration_tests::{ok, qemu_img, qemu_io, require_qemu, run};

const K: u64 = 1024;
const CLUSTER: u64 = 64 * K;
/// The overlay's size: 4 MiB and half a cluster, so that its last
/// cluster is partial.
const OVERLAY_SIZE: u64 = 4 * 1024 * K + 32 * K;

/// How the backing file is made.
#[derive(Clone, Copy, Debug)]
enum Backing {
    /// `qemu-img create -f raw` (sparse but its first 4 KiB, which
    /// qemu-img allocates) with data written into cluster 3.
    Raw,
    /// An empty qcow2 of 2 MiB, shorter than the overlay, with data in
    /// the second half of cluster 2, a zero cluster at 4 and data
    /// cluster 5 (zeros written as data).
    Qcow2Short,
}

fn make_backing(dir: &Path, kind: Backing) -> &'static str {
    match kind {
        Backing::Raw => {
            let path = dir.join("base.raw");
            ok(qemu_img(&["create", "-q", "-f", "raw"])
                .arg(&path)
                .arg(OVERLAY_SIZE.to_string()));
            qemu_io("raw", &path, &["write -P 0x5a 196608 65536"]);
            "raw"
        }
        Backing::Qcow2Short => {
            let path = dir.join("base.qcow2");
            ok(qemu_img(&["create", "-q", "-f", "qcow2"])
                .arg(&path)
                .arg("2M"));
            qemu_io(
                "qcow2",
                &path,
                &[
                    "write -P 0x5a 163840 32768",
                    "write -z 262144 65536",
                    "write -P 0 327680 65536",
                ],
            );
            "qcow2"
        }
    }
}

/// The overlay over the backing file, with cluster 6 holding data and
/// cluster 7 a preallocated zero cluster (data zeroed without unmap).
fn make_overlay(dir: &Path, name: &str, backing_format: &str) {
    let backing = if backing_format == "raw" {
        "base.raw"
    } else {
        "base.qcow2"
    };
    let path = dir.join(name);
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
            .arg(backing)
            .arg(&path)
            .arg(OVERLAY_SIZE.to_string()),
    );
    qemu_io(
        "qcow2",
        &path,
        &[
            "write -P 0x33 393216 65536",
            "write -P 0x44 458752 65536",
            "write -z 458752 65536",
        ],
    );
}

fn qemu_io_zero(path: &Path, offset: u64, len: u64, unmap: bool) {
    let command = format!("write -z {}{offset} {len}", if unmap { "-u " } else { "" });
    let out = run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &command])
        .arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {command}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ours_zero(path: &Path, offset: u64, len: u64, unmap: bool) {
    let image = integration_tests::open_qcow2_rw(path);
    image.write_zeroes(offset, len, unmap).unwrap();
    image.flush().unwrap();
}

fn ours_write(path: &Path, offset: u64) {
    let image = integration_tests::open_qcow2_rw(path);
    image.write_at(&[0x77; 512], offset).unwrap();
    image.flush().unwrap();
}

fn map_of(path: &Path) -> String {
    ok(qemu_img(&["map", "--output=json", "-f", "qcow2"]).arg(path))
}

#[test]
fn partial_cluster_zeroes_over_a_backing_file_match_qemu_io() {
    require_qemu!();
    // (offset, length) of each request: parts of one cluster, a request
    // across a cluster boundary, one that ends at the disk's end.
    let requests: [(u64, u64, &str); 13] = [
        (
            4 * K,
            4 * K,
            "cluster 0: the backing's first 4 KiB data or none",
        ),
        (CLUSTER + 8 * K, 16 * K, "cluster 1: the backing reads zero"),
        (2 * CLUSTER + 4 * K, 8 * K, "cluster 2: data in the backing"),
        (3 * CLUSTER + 60 * K, 8 * K, "clusters 3 and 4 across"),
        (
            4 * CLUSTER + 4 * K,
            4 * K,
            "cluster 4: a backing zero cluster",
        ),
        (
            5 * CLUSTER + 4 * K,
            4 * K,
            "cluster 5: zeros stored as data",
        ),
        (6 * CLUSTER + 4 * K, 4 * K, "cluster 6: data in the overlay"),
        (7 * CLUSTER + 4 * K, 4 * K, "cluster 7: a preallocated zero"),
        (40 * CLUSTER + 4 * K, 4 * K, "past a short backing's end"),
        (
            OVERLAY_SIZE - 16 * K,
            16 * K,
            "the partial last cluster, to the end",
        ),
        (
            31 * CLUSTER + 32 * K,
            64 * K,
            "across a short backing's end",
        ),
        (7 * CLUSTER, CLUSTER, "cluster 7 whole"),
        (
            CLUSTER + 32 * K,
            7 * CLUSTER,
            "a head, whole clusters 2 to 7, a tail",
        ),
    ];
    let mut failures = Vec::new();
    for backing in [Backing::Raw, Backing::Qcow2Short] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let format = make_backing(d, backing);
        for (offset, len, what) in requests {
            for unmap in [false, true] {
                make_overlay(d, "theirs.qcow2", format);
                make_overlay(d, "ours.qcow2", format);
                qemu_io_zero(&d.join("theirs.qcow2"), offset, len, unmap);
                ours_zero(&d.join("ours.qcow2"), offset, len, unmap);
                let label = format!("{backing:?} {what} ({offset}+{len}, unmap {unmap})");
                let theirs = std::fs::read(d.join("theirs.qcow2")).unwrap();
                let ours = std::fs::read(d.join("ours.qcow2")).unwrap();
                if theirs != ours {
                    failures.push(format!(
                        "{label}: files differ ({} vs {} bytes)",
                        ours.len(),
                        theirs.len()
                    ));
                }
                let (map_theirs, map_ours) = (
                    map_of(&d.join("theirs.qcow2")),
                    map_of(&d.join("ours.qcow2")),
                );
                if map_theirs != map_ours {
                    failures.push(format!(
                        "{label}: maps differ\nours:   {map_ours}\ntheirs: {map_theirs}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Zeroing clusters an internal snapshot shares (no COPIED flag), whole
/// and in part, with and without unmap, in an image without a backing
/// file, then a write into each: the same files and maps as qemu-io's.
#[test]
fn zeroing_clusters_a_snapshot_shares_matches_qemu_io() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One image copied for both sides: the snapshot's date is in it.
    let start = d.join("start.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2"])
        .arg(&start)
        .arg("1M"));
    qemu_io(
        "qcow2",
        &start,
        &["write -P 0x33 0 196608", "write -z 131072 65536"],
    );
    ok(qemu_img(&["snapshot", "-c", "s1"]).arg(&start));
    let make = |name: &str| {
        std::fs::copy(&start, d.join(name)).unwrap();
    };
    let mut failures = Vec::new();
    let requests = [
        (0, CLUSTER, "a shared data cluster whole"),
        (4 * K, 4 * K, "part of a shared data cluster"),
        (2 * CLUSTER, CLUSTER, "a preallocated zero cluster whole"),
        (2 * CLUSTER + 4 * K, 4 * K, "part of a preallocated zero"),
    ];
    for (offset, len, what) in requests {
        for unmap in [false, true] {
            make("theirs.qcow2");
            make("ours.qcow2");
            qemu_io_zero(&d.join("theirs.qcow2"), offset, len, unmap);
            ours_zero(&d.join("ours.qcow2"), offset, len, unmap);
            // Then data into the zeroed cluster: one the snapshot still
            // shares is copied, not written in place.
            qemu_io(
                "qcow2",
                &d.join("theirs.qcow2"),
                &[&format!("write -P 0x77 {offset} 512")],
            );
            ours_write(&d.join("ours.qcow2"), offset);
            let label = format!("{what} ({offset}+{len}, unmap {unmap})");
            if std::fs::read(d.join("theirs.qcow2")).unwrap()
                != std::fs::read(d.join("ours.qcow2")).unwrap()
            {
                failures.push(format!("{label}: files differ"));
            }
            let (map_theirs, map_ours) = (
                map_of(&d.join("theirs.qcow2")),
                map_of(&d.join("ours.qcow2")),
            );
            if map_theirs != map_ours {
                failures.push(format!(
                    "{label}: maps differ\nours:   {map_ours}\ntheirs: {map_theirs}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
