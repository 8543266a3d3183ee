//! The body of the `snapshot_table` fuzz target, shared with the stable test
//! that replays the inputs the fuzzer found
//! (qcow/tests/fuzz_regressions.rs).
//!
//! An input is a 6-byte prefix and a payload:
//! - byte 0: bits 0-1 pick the template image (512-byte, 4 KiB, 64 KiB
//!   clusters, or 16 KiB with extended L2 entries), bit 2 makes it
//!   compat=0.10, bits 4-5 pick the refcount width (16, 2, 64, 8), bit 3
//!   says what the payload is (clear: the snapshot table's bytes; set:
//!   patches of 3 bytes, a big-endian u16 position and a value, applied to
//!   the template's own valid table), bit 6 takes `nb_snapshots` verbatim
//!   from bytes 1-4 (otherwise the template's count, or bytes 1-4 modulo 16
//!   for a raw table);
//! - byte 5: bits 0-6 move the table that many 8-byte steps past the
//!   cluster boundary where it would start (misaligned: must be refused),
//!   bit 7 ends the file right after the table instead of at a cluster
//!   boundary.
//!
//! The table goes at the end of a copy of the template, the header points
//! at it, and then: the parser alone (strict and both check-mode readers,
//! and a write/parse round trip of whatever parses), then the whole image
//! (open read-only, list, view and read every snapshot, open writable,
//! create, apply and delete snapshots, check with repair). Nothing may
//! panic, hang or allocate without bound.

use std::sync::{Arc, OnceLock};

use qcow::check::{check, Repair};
use qcow::create::{create, CreateOptions};
use qcow::image::{NoFiles, Qcow2};
use qcow::snapshot_table::{Snapshot, SnapshotTable};
use qcow::{MemStorage, Storage};

/// Longest the in-memory image may grow.
const STORAGE_LIMIT: u64 = 64 << 20;
/// Virtual size of the templates, in clusters.
const TEMPLATE_CLUSTERS: u64 = 16;
/// Guest bytes read from each snapshot.
const READ_LIMIT: u64 = 1 << 20;
/// Snapshots looked at one by one.
const MAX_VISITED: usize = 4;

/// A template image and where its snapshot table is.
struct Template {
    bytes: Vec<u8>,
    cluster_size: u64,
    table: Vec<u8>,
    nb_snapshots: u32,
}

/// The template's options for selector `sel` (bits 0-2 and 4-5 of byte 0).
fn template_options(sel: u8) -> CreateOptions {
    let (cluster_size, extended_l2) = match sel & 3 {
        0 => (512, false),
        1 => (4096, false),
        2 => (65536, false),
        _ => (16384, true),
    };
    let version = if sel & 4 != 0 && !extended_l2 { 2 } else { 3 };
    let refcount_bits = if version == 2 {
        16
    } else {
        [16, 2, 64, 8][usize::from((sel >> 4) & 3)]
    };
    CreateOptions {
        size: TEMPLATE_CLUSTERS * cluster_size,
        version,
        cluster_size,
        refcount_bits,
        extended_l2,
        ..CreateOptions::default()
    }
}

/// Builds a template: some data, a snapshot, more data, a second snapshot,
/// more data, all written by this crate.
fn build_template(sel: u8) -> Template {
    let storage = Arc::new(MemStorage::new());
    let opts = template_options(sel);
    let image = create(storage.clone(), None, None, &opts).expect("template options are valid");
    let cs = opts.cluster_size;
    let write = |byte: u8, offset: u64| {
        image
            .write_at(&vec![byte; (cs + 100) as usize], offset)
            .expect("template write fits in memory");
    };
    write(1, 0);
    write(2, 5 * cs);
    image
        .create_snapshot("one")
        .expect("first template snapshot");
    write(3, cs);
    write(4, (TEMPLATE_CLUSTERS - 2) * cs);
    image
        .create_snapshot("two")
        .expect("second template snapshot");
    write(5, 3 * cs + 7);
    image.flush().expect("template flush");
    let hc = image.header_cluster();
    let snapshots = image.snapshots().expect("template snapshots");
    drop(image);
    let bytes = storage.to_bytes();
    let offset = hc.header.snapshots_offset as usize;
    let len = SnapshotTable::written_size(&snapshots) as usize;
    Template {
        table: bytes[offset..offset + len].to_vec(),
        bytes,
        cluster_size: cs,
        nb_snapshots: hc.header.nb_snapshots,
    }
}

fn template(sel: u8) -> &'static Template {
    static TEMPLATES: OnceLock<Vec<OnceLock<Template>>> = OnceLock::new();
    let all = TEMPLATES.get_or_init(|| (0..64).map(|_| OnceLock::new()).collect());
    all[usize::from(sel & 0x37)].get_or_init(|| build_template(sel & 0x37))
}

/// The image the input describes.
struct Case {
    /// The template's valid table, unchanged and in its place.
    pristine: bool,
    bytes: Vec<u8>,
    table_offset: u64,
    nb_snapshots: u32,
    cluster_size: u64,
}

fn build_case(data: &[u8]) -> Option<Case> {
    let (prefix, payload) = data.split_first_chunk::<6>()?;
    let t = template(prefix[0]);
    let patches = prefix[0] & 8 != 0;
    let count = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    let nb_snapshots = if prefix[0] & 0x40 != 0 {
        count
    } else if patches {
        t.nb_snapshots
    } else {
        count % 16
    };
    let table = if patches {
        let mut table = t.table.clone();
        for p in payload.chunks_exact(3) {
            let pos = usize::from(u16::from_be_bytes([p[0], p[1]]));
            if let Some(b) = table.get_mut(pos % t.table.len().max(1)) {
                *b = p[2];
            }
        }
        table
    } else {
        payload.to_vec()
    };
    let cs = t.cluster_size;
    let table_offset =
        (t.bytes.len() as u64).next_multiple_of(cs) + u64::from(prefix[5] & 0x7f) * 8;
    let mut bytes = t.bytes.clone();
    bytes.resize(table_offset as usize, 0);
    bytes.extend_from_slice(&table);
    if prefix[5] & 0x80 == 0 {
        bytes.resize(bytes.len().next_multiple_of(cs as usize), 0);
    }
    bytes[60..64].copy_from_slice(&nb_snapshots.to_be_bytes());
    bytes[64..72].copy_from_slice(&table_offset.to_be_bytes());
    let pristine = patches && payload.len() < 3 && prefix[0] & 0x40 == 0 && prefix[5] & 0x7f == 0;
    Some(Case {
        pristine,
        bytes,
        table_offset,
        nb_snapshots,
        cluster_size: cs,
    })
}

/// What survives a write and a parse: everything but the extra data
/// length (normalised on write) and a missing disk size (written as 0).
fn comparable(s: &Snapshot) -> Snapshot {
    Snapshot {
        extra_data_size: 0,
        disk_size: None,
        ..s.clone()
    }
}

/// The parser alone on the table of `case`.
fn parse_table(case: &Case, storage: &MemStorage) {
    let strict = SnapshotTable::parse(
        storage,
        case.table_offset,
        case.nb_snapshots,
        case.cluster_size,
    );
    let _ = SnapshotTable::read_for_check(storage, case.table_offset, case.nb_snapshots, false);
    let _ = SnapshotTable::read_for_check(storage, case.table_offset, case.nb_snapshots, true);
    if case.pristine {
        // The template's own table untouched: the harness itself is wrong
        // if this does not parse.
        assert!(strict.is_ok(), "pristine template table: {strict:?}");
    }
    let Ok(snapshots) = strict else {
        return;
    };
    // Whatever the reader accepts must survive a round trip.
    let written = SnapshotTable::write(&snapshots);
    assert_eq!(
        written.len() as u64,
        SnapshotTable::written_size(&snapshots)
    );
    let copy = MemStorage::from_bytes(case.bytes[..case.table_offset as usize].to_vec());
    copy.write_at(&written, case.table_offset)
        .expect("table fits in memory");
    let again = SnapshotTable::parse(
        &copy,
        case.table_offset,
        case.nb_snapshots,
        case.cluster_size,
    )
    .expect("a table written from parsed snapshots parses again");
    assert_eq!(again.len(), snapshots.len());
    for (a, b) in snapshots.iter().zip(&again) {
        if a.id.len() < 20_000 && a.name.len() < 20_000 {
            assert_eq!(comparable(a), comparable(b));
        }
        if a.disk_size.is_some() {
            assert_eq!(a.disk_size, b.disk_size);
        }
    }
}

/// Reads up to [`READ_LIMIT`] guest bytes.
fn read_all(image: &Qcow2) {
    let size = image.size().min(READ_LIMIT);
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        if image.read_at(&mut buf[..n], pos).is_err() {
            return;
        }
        pos += n as u64;
    }
}

/// The whole image: list, view, create, apply, delete, check.
fn exercise_image(bytes: Vec<u8>) {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::with_limit(bytes, STORAGE_LIMIT));
    let Ok(image) = Qcow2::open(storage.clone(), false, &NoFiles) else {
        let _ = check(&*storage, None, Repair::None);
        return;
    };
    let ids: Vec<String> = match image.snapshots() {
        Ok(s) => s.into_iter().take(MAX_VISITED).map(|s| s.id).collect(),
        Err(_) => Vec::new(),
    };
    drop(image);
    for id in &ids {
        if let Ok(view) = Qcow2::open(storage.clone(), false, &NoFiles) {
            if view.view_snapshot(id).is_ok() {
                read_all(&view);
            }
        }
    }
    if let Ok(image) = Qcow2::open(storage.clone(), true, &NoFiles) {
        let cs = image.cluster_size();
        let _ = image.create_snapshot("fuzz");
        let _ = image.write_at(&vec![0x5a; cs as usize + 3], cs / 2);
        if let Some(first) = ids.first() {
            let _ = image.apply_snapshot(first);
            let _ = image.write_at(&[0xc3; 700], 2 * cs + 9);
        }
        if let Some(last) = ids.last() {
            let _ = image.delete_snapshot(last);
        }
        let _ = image.delete_snapshot("fuzz");
        let _ = image.flush();
        read_all(&image);
    }
    let _ = check(&*storage, None, Repair::All);
    let _ = check(&*storage, None, Repair::None);
}

/// Runs one input (see the module documentation for its layout).
pub fn snapshot_table_body(data: &[u8]) {
    let Some(case) = build_case(data) else {
        return;
    };
    let storage = MemStorage::from_bytes(case.bytes.clone());
    parse_table(&case, &storage);
    drop(storage);
    exercise_image(case.bytes);
}
