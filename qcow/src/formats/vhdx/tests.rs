//! Unit tests of the VHDX reader on images built here (3 MiB each: the
//! format puts its regions on 1 MiB boundaries) and hostile variants.

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::structures::{crc32c, BAT_GUID, METADATA_GUID};
use super::*;
use crate::storage::MemStorage;

const MB: usize = 1 << 20;

fn put_guid(b: &mut [u8], text: &str) {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    b[0..4].copy_from_slice(&[bytes[3], bytes[2], bytes[1], bytes[0]]);
    b[4..6].copy_from_slice(&[bytes[5], bytes[4]]);
    b[6..8].copy_from_slice(&[bytes[7], bytes[6]]);
    b[8..16].copy_from_slice(&bytes[8..16]);
}

fn seal(b: &mut [u8]) {
    b[4..8].fill(0);
    let sum = crc32c(b);
    LittleEndian::write_u32(&mut b[4..8], sum);
}

/// A dynamic VHDX of 4 MiB in 1 MiB blocks: BAT at 1 MiB, metadata at
/// 2 MiB, block 1 present at 3 MiB (filled with 0xab), block 2 zero.
fn image() -> Vec<u8> {
    let mut b = vec![0u8; 4 * MB];
    b[0..8].copy_from_slice(b"vhdxfile");
    for (i, off) in [64 << 10, 128 << 10].into_iter().enumerate() {
        let h = &mut b[off..off + 4096];
        h[0..4].copy_from_slice(b"head");
        LittleEndian::write_u64(&mut h[8..16], i as u64);
        LittleEndian::write_u16(&mut h[66..68], 1);
        LittleEndian::write_u32(&mut h[68..72], MB as u32);
        LittleEndian::write_u64(&mut h[72..80], MB as u64 * 3);
        seal(h);
    }
    for off in [192 << 10, 256 << 10] {
        let r = &mut b[off..off + (64 << 10)];
        r[0..4].copy_from_slice(b"regi");
        LittleEndian::write_u32(&mut r[8..12], 2);
        r[16..32].copy_from_slice(&BAT_GUID);
        LittleEndian::write_u64(&mut r[32..40], MB as u64);
        LittleEndian::write_u32(&mut r[40..44], MB as u32);
        LittleEndian::write_u32(&mut r[44..48], 1);
        r[48..64].copy_from_slice(&METADATA_GUID);
        LittleEndian::write_u64(&mut r[64..72], 2 * MB as u64);
        LittleEndian::write_u32(&mut r[72..76], MB as u32);
        LittleEndian::write_u32(&mut r[76..80], 1);
        seal(r);
    }
    let m = &mut b[2 * MB..3 * MB];
    m[0..8].copy_from_slice(b"metadata");
    LittleEndian::write_u16(&mut m[10..12], 3);
    let items = [
        ("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", 8),
        ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", 8),
        ("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", 4),
    ];
    for (i, (id, len)) in items.iter().enumerate() {
        let e = &mut m[32 + i * 32..64 + i * 32];
        put_guid(e, id);
        LittleEndian::write_u32(&mut e[16..20], (64 << 10) + i as u32 * 8);
        LittleEndian::write_u32(&mut e[20..24], *len);
        LittleEndian::write_u32(&mut e[24..28], 4);
    }
    LittleEndian::write_u32(&mut m[64 << 10..], MB as u32);
    LittleEndian::write_u64(&mut m[(64 << 10) + 8..], 4 * MB as u64);
    LittleEndian::write_u32(&mut m[(64 << 10) + 16..], 512);
    LittleEndian::write_u64(&mut b[MB + 8..], (3 * MB as u64) | FULLY_PRESENT);
    LittleEndian::write_u64(&mut b[MB + 16..], ZERO);
    b[3 * MB..].fill(0xab);
    b
}

fn open(bytes: Vec<u8>) -> Result<Vhdx> {
    Vhdx::open(Arc::new(MemStorage::from_bytes(bytes)), false)
}

#[test]
fn reads_present_zero_and_absent_blocks() {
    let v = open(image()).unwrap();
    assert_eq!(v.virtual_size(), 4 << 20);
    let mut buf = vec![1u8; 4 << 20];
    v.read_at(&mut buf, 0).unwrap();
    assert!(buf[..MB].iter().all(|&x| x == 0));
    assert!(buf[MB..2 * MB].iter().all(|&x| x == 0xab));
    assert!(buf[2 * MB..].iter().all(|&x| x == 0));
    let e = v.extents(0, 4 << 20).unwrap();
    assert!(matches!(e[1].kind, ExtentKind::Data { host_offset, .. } if host_offset == 3 << 20));
}

#[test]
fn hostile_images_are_refused() {
    let patched = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = image();
        f(&mut b);
        open(b)
    };
    // A block past the end of the file.
    assert!(patched(&|b| LittleEndian::write_u64(
        &mut b[MB + 8..],
        (64 * MB as u64) | FULLY_PRESENT
    ))
    .is_err());
    // Both headers broken; a log at an offset that is not on a MiB.
    assert!(patched(&|b| {
        b[64 << 10] ^= 1;
        b[128 << 10] ^= 1;
    })
    .is_err());
    assert!(patched(&|b| {
        let h = &mut b[128 << 10..(128 << 10) + 4096];
        h[48] = 1;
        LittleEndian::write_u64(&mut h[72..80], 3 * MB as u64 + 4096);
        seal(h);
    })
    .is_err());
    // A log GUID whose log holds no valid entry opens, as in QEMU.
    assert!(patched(&|b| {
        let h = &mut b[128 << 10..(128 << 10) + 4096];
        h[48] = 1;
        seal(h);
    })
    .is_ok());
    // Absurd block size, sector size and disk size.
    assert!(patched(&|b| LittleEndian::write_u32(&mut b[2 * MB + (64 << 10)..], 3 << 20)).is_err());
    assert!(
        patched(&|b| LittleEndian::write_u32(&mut b[2 * MB + (64 << 10) + 16..], 1024)).is_err()
    );
    assert!(
        patched(&|b| LittleEndian::write_u64(&mut b[2 * MB + (64 << 10) + 8..], 1 << 60)).is_err()
    );
    // A BAT region too small for the disk, and regions that overlap.
    assert!(patched(&|b| {
        for off in [192 << 10, 256 << 10] {
            LittleEndian::write_u64(&mut b[off + 64..], MB as u64);
            seal(&mut b[off..off + (64 << 10)]);
        }
    })
    .is_err());
    // A partially present block fails the read only.
    let v = patched(&|b| LittleEndian::write_u64(&mut b[MB + 8..], (3 * MB as u64) | 7)).unwrap();
    let mut buf = [0u8; 512];
    assert!(v.read_at(&mut buf, MB as u64).is_err());
}

/// A new dynamic image of `size` bytes in memory (default options: 8 MiB
/// blocks, a 1 MiB log at 1 MiB).
fn created(size: u64, opts: &create::CreateOptions) -> Arc<MemStorage> {
    let storage = Arc::new(MemStorage::from_bytes(Vec::new()));
    create::create(&*storage, size, opts, "test").unwrap();
    storage
}

#[test]
fn created_images_take_writes_in_every_subformat() {
    for subformat in [create::Subformat::Dynamic, create::Subformat::Fixed] {
        for block_state_zero in [false, true] {
            let opts = create::CreateOptions {
                subformat,
                block_state_zero,
                block_size: 1 << 20,
                ..Default::default()
            };
            let storage = created(5 << 20, &opts);
            let v = Vhdx::open(storage.clone(), true).unwrap();
            assert_eq!(v.is_fixed(), subformat == create::Subformat::Fixed);
            let data: Vec<u8> = (0..3 * MB).map(|i| (i % 251) as u8).collect();
            v.write_at(&data, (MB - 512) as u64).unwrap();
            v.flush().unwrap();
            drop(v);
            let v = Vhdx::open(storage, false).unwrap();
            let mut back = vec![1u8; 5 * MB];
            v.read_at(&mut back, 0).unwrap();
            assert!(back[..MB - 512].iter().all(|&b| b == 0));
            assert_eq!(&back[MB - 512..4 * MB - 512], &data[..]);
            assert!(back[4 * MB - 512..].iter().all(|&b| b == 0));
        }
    }
}

/// Puts a log entry (sequence 1) writing `sector` at `file_offset` into
/// the log at 1 MiB and names the log in both headers.
fn put_log_entry(storage: &MemStorage, file_offset: u64, sector: &[u8; 4096], entry_length: u32) {
    let log_guid = [7u8; 16];
    let mut entry = vec![0u8; 8192];
    entry[0..4].copy_from_slice(b"loge");
    LittleEndian::write_u32(&mut entry[8..12], entry_length);
    LittleEndian::write_u64(&mut entry[16..24], 1);
    LittleEndian::write_u32(&mut entry[24..28], 1);
    entry[32..48].copy_from_slice(&log_guid);
    let len = storage.len().unwrap();
    LittleEndian::write_u64(&mut entry[48..56], len);
    LittleEndian::write_u64(&mut entry[56..64], len);
    let d = &mut entry[64..96];
    d[0..4].copy_from_slice(b"desc");
    d[4..8].copy_from_slice(&sector[4092..4096]);
    d[8..16].copy_from_slice(&sector[0..8]);
    LittleEndian::write_u64(&mut d[16..24], file_offset);
    LittleEndian::write_u64(&mut d[24..32], 1);
    let data = &mut entry[4096..];
    data[0..4].copy_from_slice(b"data");
    data[8..4092].copy_from_slice(&sector[8..4092]);
    LittleEndian::write_u32(&mut data[4092..4096], 1);
    seal(&mut entry);
    storage.write_at(&entry, MB as u64).unwrap();
    let mut header = structures::read_current_header(storage).unwrap();
    let update = structures::HeaderUpdate {
        log_guid: Some(log_guid),
        ..Default::default()
    };
    structures::update_headers(storage, &mut header, &update).unwrap();
}

#[test]
fn a_dirty_log_is_replayed_for_writing_and_refused_read_only() {
    let storage = created(16 << 20, &create::CreateOptions::default());
    let v = Vhdx::open(storage.clone(), true).unwrap();
    v.write_at(&[0x11; 4096], 8192).unwrap();
    let host = v.entry(0) >> 20 << 20;
    drop(v);
    put_log_entry(&storage, host + 8192, &[0xcd; 4096], 8192);
    let refused = Vhdx::open(storage.clone(), false).err().unwrap();
    assert!(
        refused
            .to_string()
            .contains("log that needs to be replayed"),
        "{refused}"
    );
    let v = Vhdx::open(storage.clone(), true).unwrap();
    assert!(v.log_replayed());
    drop(v);
    // The log is empty now: read-only opens, and holds the log's data.
    let v = Vhdx::open(storage, false).unwrap();
    let mut back = vec![0u8; 8192];
    v.read_at(&mut back, 4096).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert!(back[4096..].iter().all(|&b| b == 0xcd));
}

#[test]
fn a_log_that_never_ends_is_refused_in_bounded_time() {
    let storage = created(16 << 20, &create::CreateOptions::default());
    // An entry as long as the whole log, with a checksum that fails: the
    // search comes back to where it started.
    put_log_entry(&storage, 4 * MB as u64, &[1; 4096], MB as u32);
    let start = std::time::Instant::now();
    let err = Vhdx::open(storage.clone(), true).err().unwrap();
    assert!(err.to_string().contains("never end"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    // A log write outside the file is refused before anything is written.
    let storage = created(16 << 20, &create::CreateOptions::default());
    put_log_entry(&storage, 1 << 40, &[1; 4096], 8192);
    let before = storage.len().unwrap();
    assert!(Vhdx::open(storage.clone(), true).is_err());
    assert_eq!(storage.len().unwrap(), before);
}

#[test]
fn threads_writing_parts_of_one_block_at_once_allocate_it_once() {
    // What convert relies on when it cuts 16 MiB blocks into 1 MiB chunks.
    let storage = created(16 << 20, &create::CreateOptions::default());
    let v = Vhdx::open(storage.clone(), true).unwrap();
    assert!(v.concurrent_partial_unit_writes());
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..8u8)
            .map(|part| {
                let v = &v;
                s.spawn(move || v.write_at(&[part + 1; 4096], u64::from(part) * MB as u64))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
    });
    drop(v);
    let v = Vhdx::open(storage, false).unwrap();
    let e = v.extents(0, 8 << 20).unwrap();
    assert_eq!(e.len(), 1, "one block, allocated once: {e:?}");
    let mut back = vec![0u8; 8 * MB];
    v.read_at(&mut back, 0).unwrap();
    for part in 0..8 {
        let at = part * MB;
        assert!(back[at..at + 4096].iter().all(|&b| b == part as u8 + 1));
        assert!(back[at + 4096..at + MB].iter().all(|&b| b == 0));
    }
}
