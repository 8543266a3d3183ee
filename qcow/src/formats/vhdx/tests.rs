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
    assert!(Vhdx::open(Arc::new(MemStorage::from_bytes(image())), true).is_err());
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
    // Both headers broken; a header naming a log to replay.
    assert!(patched(&|b| {
        b[64 << 10] ^= 1;
        b[128 << 10] ^= 1;
    })
    .is_err());
    assert!(patched(&|b| {
        let h = &mut b[128 << 10..(128 << 10) + 4096];
        h[48] = 1;
        seal(h);
    })
    .is_err());
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
