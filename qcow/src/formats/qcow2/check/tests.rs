//! Unit tests of the checker on small images built in memory (the
//! comparison with qemu-img lives in `tests/check_vs_qemu.rs`).

use byteorder::{BigEndian, ByteOrder};
use proptest::prelude::*;

use super::{check, CheckReport, Repair};
use crate::entries::{FLAG_COPIED, FLAG_ZERO};
use crate::error::{Error, Result};
use crate::header::{CompressionType, Header, V3_HEADER_LEN};
use crate::refcount::{block_get, block_set};
use crate::snapshot_table::{Snapshot, SnapshotTable};
use crate::storage::{MemStorage, Storage};

const CB: u32 = 9;
const CS: u64 = 1 << CB;
/// Clusters: 0 header, 1 refcount table, 2 refcount block, 3 L1, 4 L2,
/// 5.. data.
const DATA: u64 = 5;

/// Memory storage that refuses to grow past a limit and may claim a
/// larger length than it holds (reads past the data are zeros).
struct TestStorage {
    inner: MemStorage,
    limit: u64,
    fake_len: Option<u64>,
}

impl Storage for TestStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.limit {
            return Err(Error::NoSpace("test storage limit"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn len(&self) -> Result<u64> {
        Ok(self.fake_len.unwrap_or(self.inner.len()?))
    }
    fn set_len(&self, len: u64) -> Result<()> {
        if len > self.limit {
            return Err(Error::NoSpace("test storage limit"));
        }
        self.inner.set_len(len)
    }
}

fn header(version: u32) -> Header {
    Header {
        version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: CB,
        size: 64 * CS,
        crypt_method: 0,
        l1_size: 1,
        l1_table_offset: 3 * CS,
        refcount_table_offset: CS,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: if version == 3 { V3_HEADER_LEN } else { 72 },
        compression_type: CompressionType::Zlib,
        extra_fields: if version == 3 { vec![0; 7] } else { Vec::new() },
    }
}

/// A clean image with `data` clusters mapped at guest clusters 0.. .
fn image(data: u64) -> TestStorage {
    image_with(CB, data)
}

/// The same with clusters of `1 << cb` bytes.
fn image_with(cb: u32, data: u64) -> TestStorage {
    let cs = 1u64 << cb;
    let s = MemStorage::new();
    let mut buf = vec![0u8; cs as usize];
    let mut h = header(3);
    h.cluster_bits = cb;
    h.size = 64 * cs;
    h.l1_table_offset = 3 * cs;
    h.refcount_table_offset = cs;
    h.write(&mut buf);
    s.write_at(&buf, 0).unwrap();
    let mut rt = vec![0u8; cs as usize];
    BigEndian::write_u64(&mut rt[0..8], 2 * cs);
    s.write_at(&rt, cs).unwrap();
    let mut rb = vec![0u8; cs as usize];
    for c in 0..DATA + data {
        block_set(&mut rb, c, 4, 1);
    }
    s.write_at(&rb, 2 * cs).unwrap();
    let mut l1 = [0u8; 8];
    BigEndian::write_u64(&mut l1, (4 * cs) | FLAG_COPIED);
    s.write_at(&l1, 3 * cs).unwrap();
    let mut l2 = vec![0u8; cs as usize];
    for i in 0..data {
        BigEndian::write_u64(&mut l2[i as usize * 8..], ((DATA + i) * cs) | FLAG_COPIED);
    }
    s.write_at(&l2, 4 * cs).unwrap();
    for i in 0..data {
        s.write_at(&vec![0x40 + i as u8; cs as usize], (DATA + i) * cs)
            .unwrap();
    }
    TestStorage {
        inner: s,
        limit: 16 << 20,
        fake_len: None,
    }
}

fn get_u64(s: &dyn Storage, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    s.read_at(&mut b, offset).unwrap();
    BigEndian::read_u64(&b)
}

fn set_u64(s: &dyn Storage, offset: u64, v: u64) {
    let mut b = [0u8; 8];
    BigEndian::write_u64(&mut b, v);
    s.write_at(&b, offset).unwrap();
}

fn refcount(s: &dyn Storage, cluster: u64) -> u64 {
    let mut rb = vec![0u8; CS as usize];
    s.read_at(&mut rb, get_u64(s, get_u64(s, 48))).unwrap();
    block_get(&rb, cluster, 4)
}

fn set_refcount(s: &dyn Storage, cluster: u64, v: u64) {
    let at = get_u64(s, CS);
    let mut rb = vec![0u8; CS as usize];
    s.read_at(&mut rb, at).unwrap();
    block_set(&mut rb, cluster, 4, v);
    s.write_at(&rb, at).unwrap();
}

fn clean(r: &CheckReport) -> bool {
    r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 && r.aborted.is_none()
}

/// Repairs, then checks again; returns (repair report, second report).
fn repair(s: &dyn Storage, how: Repair) -> (CheckReport, CheckReport) {
    let first = check(s, None, how).unwrap();
    let second = check(s, None, Repair::None).unwrap();
    (first, second)
}

#[test]
fn clean_image_and_statistics() {
    let s = image(3);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(clean(&r), "{r:?}");
    assert_eq!(r.allocated_clusters, 3);
    assert_eq!(r.fragmented_clusters, 0);
    assert_eq!(r.total_clusters, 64);
    assert_eq!(r.image_end_offset, (DATA + 3) * CS);
    assert!(r.messages.is_empty());
    // Fragmentation: map guest cluster 3 before guest cluster 2's host.
    set_u64(&s, 4 * CS + 8, ((DATA + 2) * CS) | FLAG_COPIED);
    set_u64(&s, 4 * CS + 16, ((DATA + 1) * CS) | FLAG_COPIED);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.fragmented_clusters, 2);
}

#[test]
fn leak_is_reported_and_repaired() {
    let s = image(2);
    s.set_len((DATA + 4) * CS).unwrap();
    set_refcount(&s, DATA + 3, 1);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    assert_eq!(r.messages, ["Leaked cluster 8 refcount=1 reference=0"]);
    assert_eq!(r.image_end_offset, (DATA + 4) * CS);
    let (first, second) = repair(&s, Repair::Leaks);
    assert_eq!(first.leaks_fixed, 1);
    assert!(clean(&second), "{second:?}");
    assert_eq!(second.image_end_offset, (DATA + 2) * CS);
}

#[test]
fn missing_refcount_needs_a_rebuild() {
    let s = image(3);
    set_refcount(&s, DATA + 1, 0);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.corruptions, 2, "{r:?}");
    assert!(r
        .messages
        .contains(&"ERROR cluster 6 refcount=0 reference=1".to_string()));
    assert!(r
        .messages
        .iter()
        .any(|m| m.starts_with("ERROR OFLAG_COPIED data cluster")));
    // Leaks only: QEMU refuses.
    let r = check(&s, None, Repair::Leaks).unwrap();
    assert_eq!(r.aborted.as_deref(), Some("Input/output error"));
    assert!(r
        .messages
        .contains(&"ERROR need to rebuild refcount structures".to_string()));
    // All: a new refcount structure.
    let old_table = get_u64(&s, 48);
    let (first, second) = repair(&s, Repair::All);
    assert!(first
        .messages
        .contains(&"Rebuilding refcount structure".to_string()));
    assert!(first.corruptions_fixed >= 1, "{first:?}");
    assert!(clean(&second), "{second:?}");
    assert_ne!(get_u64(&s, 48), old_table);
    // Guest data and mappings untouched.
    for i in 0..3 {
        assert_eq!(get_u64(&s, 4 * CS + i * 8), ((DATA + i) * CS) | FLAG_COPIED);
        let mut b = [0u8; 1];
        s.read_at(&mut b, (DATA + i) * CS).unwrap();
        assert_eq!(b[0], 0x40 + i as u8);
        assert_eq!(refcount(&s, DATA + i), 1);
    }
}

#[test]
fn copied_flags_are_repaired() {
    let s = image(2);
    set_u64(&s, 4 * CS, DATA * CS);
    set_u64(&s, 3 * CS, 4 * CS);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.corruptions, 2);
    assert_eq!(
        r.messages,
        [
            "ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=800 refcount=1",
            "ERROR OFLAG_COPIED data cluster: l2_entry=a00 refcount=1",
        ]
    );
    let (first, second) = repair(&s, Repair::Leaks);
    assert_eq!(first.corruptions_fixed, 2);
    assert!(first.messages[0].starts_with("Repairing OFLAG_COPIED"));
    assert!(clean(&second), "{second:?}");
    assert_eq!(get_u64(&s, 4 * CS), (DATA * CS) | FLAG_COPIED);
}

#[test]
fn bad_l2_entries() {
    // Past the end of the file.
    let s = image(2);
    set_u64(&s, 4 * CS + 8, (100 * CS) | FLAG_COPIED);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(r.messages.contains(
        &"ERROR: counting reference for region exceeding the end of the file by one cluster \
          or more: offset 0xc800 size 0x200"
            .to_string()
    ));
    // Reserved bits.
    let s = image(2);
    set_u64(&s, 4 * CS, (DATA * CS) | FLAG_COPIED | 0x10);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(
        r.messages,
        ["ERROR found l2 entry with reserved bits set: 8000000000000a10"]
    );

    // Misalignment needs clusters larger than 512 bytes.
    let cs = 4096;
    // Unaligned data cluster: reported, not fixable.
    let s = image_with(12, 2);
    set_u64(&s, 4 * cs, (DATA * cs + 0x200) | FLAG_COPIED);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(
        r.messages.contains(
            &"ERROR offset=5200: Data cluster is not properly aligned; L2 entry corrupted."
                .to_string()
        ),
        "{r:?}"
    );
    // Unaligned preallocated zero cluster: becomes a plain zero cluster.
    let s = image_with(12, 2);
    set_u64(&s, 4 * cs, (DATA * cs + 0x200) | FLAG_ZERO | FLAG_COPIED);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(
        r.messages.contains(
            &"ERROR offset=5200: Preallocated cluster is not properly aligned; L2 entry corrupted."
                .to_string()
        ),
        "{r:?}"
    );
    let (first, second) = repair(&s, Repair::All);
    assert!(
        first.messages[0].starts_with("Repairing offset=5200"),
        "{first:?}"
    );
    assert_eq!(get_u64(&s, 4 * cs), FLAG_ZERO);
    // The cluster it pointed to is now a leak, repaired in the same run.
    assert!(clean(&second), "{second:?}");
}

#[test]
fn refcount_structure_problems() {
    // A refcount block beyond the end of the file, with a huge offset.
    let s = image(2);
    set_u64(&s, CS + 8, 1 << 60);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(r
        .messages
        .contains(&"ERROR refcount block 1 is outside image".to_string()));
    let r = check(&s, None, Repair::All).unwrap();
    assert!(
        r.messages
            .contains(&"ERROR could not resize image: File too large".to_string()),
        "{r:?}"
    );
    assert!(
        r.messages
            .contains(&"Rebuilding refcount structure".to_string()),
        "{r:?}"
    );
    let second = check(&s, None, Repair::None).unwrap();
    assert!(clean(&second), "{second:?}");
    // Reserved bits and misalignment.
    let s = image(2);
    set_u64(&s, CS, (2 * CS) | 1);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(r.messages[0].contains("reserved bits set"), "{r:?}");
    // With 512-byte clusters nothing else can be misaligned; a refcount
    // table with no block at all means every cluster is unaccounted for.
    let s = image(2);
    set_u64(&s, CS, 0);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.corruptions, 7 + 2, "{r:?}");
    let (first, second) = repair(&s, Repair::All);
    assert!(first.corruptions_fixed > 0);
    assert!(clean(&second), "{second:?}");
}

#[test]
fn refcount_overflow() {
    // Two L2 entries share a cluster; with 1-bit refcounts that overflows.
    let s = image(2);
    let mut buf = vec![0u8; CS as usize];
    let mut h = header(3);
    h.refcount_order = 0;
    h.write(&mut buf);
    s.write_at(&buf[..V3_HEADER_LEN as usize], 0).unwrap();
    let mut rb = vec![0u8; CS as usize];
    for c in 0..DATA + 2 {
        block_set(&mut rb, c, 0, 1);
    }
    s.write_at(&rb, 2 * CS).unwrap();
    set_u64(&s, 4 * CS + 16, DATA * CS);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(
        r.messages
            .contains(&"ERROR: overflow cluster offset=0xa00".to_string()),
        "{r:?}"
    );
    assert_eq!(r.corruptions, 2, "{r:?}");
}

#[test]
fn snapshots_are_counted() {
    let s = image(2);
    // Snapshot L1 at cluster 7 sharing the L2 table; snapshot table at 8.
    let mut l1 = [0u8; 8];
    BigEndian::write_u64(&mut l1, 4 * CS);
    s.write_at(&l1, 7 * CS).unwrap();
    let snap = Snapshot {
        l1_table_offset: 7 * CS,
        l1_size: 1,
        id: "1".into(),
        name: "s1".into(),
        date_sec: 0,
        date_nsec: 0,
        vm_clock_nsec: 0,
        vm_state_size: 0,
        extra_data_size: 24,
        disk_size: Some(64 * CS),
        icount: None,
        unknown_extra_data: Vec::new(),
    };
    let table = SnapshotTable::write(std::slice::from_ref(&snap));
    s.write_at(&table, 8 * CS).unwrap();
    s.set_len(9 * CS).unwrap();
    let mut hdr = [0u8; 12];
    BigEndian::write_u32(&mut hdr[0..4], 1);
    BigEndian::write_u64(&mut hdr[4..12], 8 * CS);
    s.write_at(&hdr, 60).unwrap();
    // The L2 table is shared, so are the data clusters (one reference per
    // L1 table reaching them): nothing is COPIED.
    set_refcount(&s, 4, 2);
    set_refcount(&s, DATA, 2);
    set_refcount(&s, DATA + 1, 2);
    set_refcount(&s, 7, 1);
    set_refcount(&s, 8, 1);
    set_u64(&s, 3 * CS, 4 * CS);
    set_u64(&s, 4 * CS, DATA * CS);
    set_u64(&s, 4 * CS + 8, (DATA + 1) * CS);
    let r = check(&s, None, Repair::None).unwrap();
    assert!(clean(&r), "{r:?}");

    // An incomplete entry in a version 3 image is repaired by rewriting
    // the table.
    let mut short = snap.clone();
    short.unknown_extra_data = Vec::new();
    let mut bytes = SnapshotTable::write(&[short]);
    BigEndian::write_u32(&mut bytes[36..40], 8);
    let strings = bytes[64..].to_vec();
    bytes.truncate(48);
    bytes.extend_from_slice(&strings);
    s.write_at(&vec![0u8; CS as usize], 8 * CS).unwrap();
    s.write_at(&bytes, 8 * CS).unwrap();
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.messages, ["ERROR snapshot table entry 0 is incomplete"]);
    let (first, second) = repair(&s, Repair::All);
    assert_eq!(first.corruptions_fixed, 1, "{first:?}");
    assert!(clean(&second), "{second:?}");
    let offset = get_u64(&s, 64);
    let back = SnapshotTable::parse(&s, offset, 1, CS).unwrap();
    assert_eq!(back[0].extra_data_size, 24);
    assert_eq!(back[0].name, "s1");
    assert_eq!(back[0].disk_size, Some(64 * CS));
}

#[test]
fn memory_bound() {
    // 2^31 clusters: QEMU's own limit.
    let mut s = image(1);
    s.fake_len = Some(1u64 << 40);
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.aborted.as_deref(), Some("File too large"));
    // 2^30 clusters of 16-bit refcounts: 2 GiB, over our bound.
    s.fake_len = Some(1u64 << 39);
    let e = check(&s, None, Repair::None).unwrap_err().to_string();
    assert!(
        e.contains("1073741824 clusters") && e.contains("2147483648 bytes"),
        "{e}"
    );
}

#[test]
fn hostile_headers_are_errors() {
    let s = image(1);
    s.write_at(&[0u8; 4], 0).unwrap();
    assert!(check(&s, None, Repair::None).is_err());
    let s = image(1);
    s.set_len(40).unwrap();
    assert!(check(&s, None, Repair::None).is_err());
    // A snapshot count past QEMU's limit fails the check (QEMU's wording).
    let s = image(1);
    s.write_at(&70000u32.to_be_bytes(), 60).unwrap();
    let r = check(&s, None, Repair::None).unwrap();
    assert_eq!(r.aborted.as_deref(), Some("File too large"));
    assert_eq!(r.messages[0], "ERROR snapshot table too large");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Any damage to the metadata: no panic and bounded growth, whatever
    /// the repair mode.
    #[test]
    fn damaged_metadata_never_panics(
        big_clusters in any::<bool>(),
        bytes in proptest::collection::vec((0u64..(DATA + 3) * 4096, any::<u8>()), 0..8),
        words in proptest::collection::vec((0u64..(DATA + 3) * 512, any::<u64>(), 0u32..4), 0..6),
    ) {
        let cb = if big_clusters { 12 } else { 9 };
        let cs = 1u64 << cb;
        let s = image_with(cb, 3);
        for (offset, byte) in bytes {
            let offset = offset % ((DATA + 3) * cs);
            // Keep the magic, version and cluster size: they only make the
            // header parse fail.
            if offset >= 24 {
                s.write_at(&[byte], offset).unwrap();
            }
        }
        for (slot, value, kind) in words {
            // Plausible-looking entries: offsets near the file, flags.
            let value = match kind {
                0 => value,
                1 => value & 0x00ff_ffff_ffff_fe00 & ((1 << 20) - 1),
                2 => (value & 0x00ff_ffff_ffff_ffff & ((1 << 16) - 1)) | (value & (3 << 62)),
                _ => value & 0xf,
            };
            let offset = (slot * 8) % ((DATA + 3) * cs);
            if offset >= 24 {
                set_u64(&s, offset, value);
            }
        }
        let _ = check(&s, None, Repair::None);
        let _ = check(&s, None, Repair::Leaks);
        let _ = check(&s, None, Repair::All);
        let _ = check(&s, None, Repair::None);
        prop_assert!(s.inner.len().unwrap() <= s.limit);
    }
}
