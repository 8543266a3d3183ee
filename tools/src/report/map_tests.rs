//! Golden tests for `report::map`: expected texts were printed by
//! qemu-img 10.0.2 `map`; the input pieces are what a per-cluster block
//! status walk of the same images yields, so merging is exercised too.

use super::*;

const CLUSTER: u64 = 65536;

fn data(start: u64, length: u64, offset: u64, depth: u64, file: &str) -> MapEntry {
    MapEntry {
        start,
        length,
        depth,
        present: true,
        zero: false,
        data: true,
        compressed: false,
        offset: Some(offset),
        filename: Some(file.to_owned()),
    }
}

fn unallocated(start: u64, length: u64, depth: u64) -> MapEntry {
    MapEntry {
        start,
        length,
        depth,
        zero: true,
        ..MapEntry::default()
    }
}

fn zero_cluster(start: u64, length: u64) -> MapEntry {
    MapEntry {
        start,
        length,
        present: true,
        zero: true,
        ..MapEntry::default()
    }
}

/// Pieces of `mix.qcow2` (1 MiB): data at 0, a zero cluster at 64k, data
/// at 128k, nothing at 192k, two data clusters at 256k, nothing after.
fn mix_pieces() -> Vec<MapEntry> {
    let mut pieces = vec![
        data(0, CLUSTER, 0x50000, 0, "mix.qcow2"),
        zero_cluster(CLUSTER, CLUSTER),
        data(2 * CLUSTER, CLUSTER, 0x80000, 0, "mix.qcow2"),
        unallocated(3 * CLUSTER, CLUSTER, 0),
        data(4 * CLUSTER, CLUSTER, 0x60000, 0, "mix.qcow2"),
        data(5 * CLUSTER, CLUSTER, 0x70000, 0, "mix.qcow2"),
    ];
    for cluster in 6..16 {
        pieces.push(unallocated(cluster * CLUSTER, CLUSTER, 0));
    }
    pieces
}

fn render(pieces: Vec<MapEntry>, format: OutputFormat, start: u64) -> String {
    let (text, result) = render_map(pieces, format, start);
    result.unwrap();
    text
}

#[test]
fn mixed_image() {
    assert_eq!(
        render(mix_pieces(), OutputFormat::Human, 0),
        "Offset          Length          Mapped to       File\n\
         0               0x10000         0x50000         mix.qcow2\n\
         0x20000         0x10000         0x80000         mix.qcow2\n\
         0x40000         0x20000         0x60000         mix.qcow2\n"
    );
    assert_eq!(
        render(mix_pieces(), OutputFormat::Json, 0),
        r#"[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 327680},
{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false, "compressed": false},
{ "start": 131072, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 524288},
{ "start": 196608, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false},
{ "start": 262144, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 393216},
{ "start": 393216, "length": 655360, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false}]
"#
    );
}

/// `--start-offset 100k --max-length 200k` on `mix.qcow2`.
#[test]
fn sub_range() {
    let pieces = || {
        vec![
            zero_cluster(102400, 28672),
            data(131072, CLUSTER, 0x80000, 0, "mix.qcow2"),
            unallocated(196608, CLUSTER, 0),
            data(262144, 45056, 0x60000, 0, "mix.qcow2"),
        ]
    };
    assert_eq!(
        render(pieces(), OutputFormat::Human, 102400),
        "Offset          Length          Mapped to       File\n\
         0x20000         0x10000         0x80000         mix.qcow2\n\
         0x40000         0xb000          0x60000         mix.qcow2\n"
    );
    assert_eq!(
        render(pieces(), OutputFormat::Json, 102400),
        r#"[{ "start": 102400, "length": 28672, "depth": 0, "present": true, "zero": true, "data": false, "compressed": false},
{ "start": 131072, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 524288},
{ "start": 196608, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false},
{ "start": 262144, "length": 45056, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 393216}]
"#
    );
}

/// `top.qcow2` over `base.qcow2`: 1 MiB in the base (depth 1), 64k in
/// the top at the same host offset, the rest unallocated in both.
#[test]
fn backing_chain() {
    let pieces = || {
        let mut pieces: Vec<MapEntry> = (0..16)
            .map(|i| data(i * CLUSTER, CLUSTER, 0x50000 + i * CLUSTER, 1, "base.qcow2"))
            .collect();
        pieces.push(data(16 * CLUSTER, CLUSTER, 0x50000, 0, "top.qcow2"));
        pieces.push(unallocated(17 * CLUSTER, (1 << 30) - 17 * CLUSTER, 1));
        pieces
    };
    assert_eq!(
        render(pieces(), OutputFormat::Human, 0),
        "Offset          Length          Mapped to       File\n\
         0               0x100000        0x50000         base.qcow2\n\
         0x100000        0x10000         0x50000         top.qcow2\n"
    );
    assert_eq!(
        render(pieces(), OutputFormat::Json, 0),
        r#"[{ "start": 0, "length": 1048576, "depth": 1, "present": true, "zero": false, "data": true, "compressed": false, "offset": 327680},
{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 327680},
{ "start": 1114112, "length": 1072627712, "depth": 1, "present": false, "zero": true, "data": false, "compressed": false}]
"#
    );
}

/// A raw file with 4k of data then a hole, as the file-posix driver
/// reports it.
#[test]
fn raw_file() {
    let pieces = || {
        vec![
            data(0, 4096, 0, 0, "r.img"),
            MapEntry {
                start: 4096,
                length: 996352,
                present: true,
                zero: true,
                offset: Some(4096),
                filename: Some("r.img".to_owned()),
                ..MapEntry::default()
            },
        ]
    };
    assert_eq!(
        render(pieces(), OutputFormat::Human, 0),
        "Offset          Length          Mapped to       File\n\
         0               0x1000          0               r.img\n"
    );
    assert_eq!(
        render(pieces(), OutputFormat::Json, 0),
        r#"[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 0},
{ "start": 4096, "length": 996352, "depth": 0, "present": true, "zero": true, "data": false, "compressed": false, "offset": 4096}]
"#
    );
}

/// A compressed image: JSON shows the extent without offset; human mode
/// prints the header, then fails.
#[test]
fn compressed_clusters() {
    let pieces = || {
        let mut pieces: Vec<MapEntry> = (0..16)
            .map(|i| MapEntry {
                compressed: true,
                offset: None,
                ..data(i * CLUSTER, CLUSTER, 0, 0, "comp.qcow2")
            })
            .collect();
        pieces.push(unallocated(16 * CLUSTER, (1 << 30) - 16 * CLUSTER, 0));
        pieces
    };
    let (text, result) = render_map(pieces(), OutputFormat::Human, 0);
    assert_eq!(text, HUMAN_HEADER);
    assert_eq!(
        result.unwrap_err().to_string(),
        "File contains external, encrypted or compressed clusters."
    );
    assert_eq!(
        render(pieces(), OutputFormat::Json, 0),
        r#"[{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "compressed": true},
{ "start": 1048576, "length": 1072693248, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false}]
"#
    );
}

/// Nothing in range (`--start-offset 4G` on a 1 GiB image, or
/// `--max-length 0`).
#[test]
fn empty_range() {
    assert_eq!(
        render(vec![], OutputFormat::Json, 4 << 30),
        "[{ \"start\": 4294967296, \"length\": 0, \"depth\": 0, \"present\": false, \
         \"zero\": false, \"data\": false, \"compressed\": false}]\n"
    );
    assert_eq!(render(vec![], OutputFormat::Human, 4 << 30), HUMAN_HEADER);
}

#[test]
fn merge_rules() {
    let a = data(0, CLUSTER, 0x10000, 0, "a");
    assert!(a.mergeable(&data(CLUSTER, CLUSTER, 0x20000, 0, "a")));
    assert!(!a.mergeable(&data(CLUSTER, CLUSTER, 0x30000, 0, "a")));
    assert!(!a.mergeable(&data(CLUSTER, CLUSTER, 0x20000, 1, "a")));
    assert!(!a.mergeable(&data(CLUSTER, CLUSTER, 0x20000, 0, "b")));
    let empty = MapEntry::default();
    assert!(!empty.mergeable(&MapEntry::default()));
    assert!(unallocated(0, 1, 0).mergeable(&unallocated(1, 1, 0)));
}
