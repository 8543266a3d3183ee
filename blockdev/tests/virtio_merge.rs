//! Sequential reads and writes the guest makes available together are
//! merged into one backend request (as QEMU's virtio-blk merges), with
//! each chain still answered on its own: its data, its status, and an
//! error only for the chains whose own range fails.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use virtio_support::*;
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: usize = 1 << 20;

/// One 4 KiB read or write chain, published but not kicked: (head, data,
/// status).
fn stage(
    rig: &mut Rig,
    request_type: u32,
    sector: u64,
    data: &[u8],
) -> (u16, GuestAddress, GuestAddress) {
    let header = rig.header(request_type, sector);
    let (buf, device_writes) = if request_type == REQ_IN {
        (rig.alloc(data.len() as u64), true)
    } else {
        (rig.buffer(data), false)
    };
    let status = rig.status_byte();
    let segments = [
        readable(header, 16),
        if device_writes {
            writable(buf, data.len() as u32)
        } else {
            readable(buf, data.len() as u32)
        },
        writable(status, 1),
    ];
    let head = rig.drivers[0]
        .add_chain(&*rig.mem, &segments)
        .expect("chain");
    (head, buf, status)
}

#[test]
fn a_batch_of_sequential_reads_is_one_backend_read() {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let contents = pattern(DISK_SIZE, 7);
    disk.fill(0, &contents);
    let mut rig = Rig::new(Arc::new(disk.clone()));
    let chains: Vec<_> = (0..8)
        .map(|i| stage(&mut rig, REQ_IN, 16 + 8 * i, &[0; 4096]))
        .collect();
    rig.kick(0);
    assert_eq!(disk.transfer_count(), 1, "eight sequential reads merge");
    assert_eq!(rig.used(0).len(), 8);
    for (i, (_, data, status)) in chains.iter().enumerate() {
        assert_eq!(rig.byte(*status), STATUS_OK);
        let at = (16 + 8 * i) * 512;
        assert_eq!(rig.read(*data, 4096), contents[at..at + 4096], "chain {i}");
    }
    // Out of order: nothing merges.
    let before = disk.transfer_count();
    for sector in [64u64, 48, 80, 56] {
        stage(&mut rig, REQ_IN, sector, &[0; 4096]);
    }
    rig.kick(0);
    assert_eq!(disk.transfer_count() - before, 4);
}

#[test]
fn sequential_writes_merge_but_never_across_a_flush_or_a_read() {
    let disk = MemDisk::new(DISK_SIZE, MemDiskOptions::default());
    let mut rig = Rig::new(Arc::new(disk.clone()));
    let mut expected = vec![0u8; DISK_SIZE];
    let mut statuses = Vec::new();
    for i in 0..4u64 {
        let data = pattern(4096, i);
        expected[(i * 4096) as usize..][..4096].copy_from_slice(&data);
        statuses.push(stage(&mut rig, REQ_OUT, i * 8, &data).2);
    }
    let header = rig.header(REQ_FLUSH, 0);
    let flush_status = rig.status_byte();
    rig.drivers[0]
        .add_chain(
            &*rig.mem,
            &[readable(header, 16), writable(flush_status, 1)],
        )
        .expect("flush");
    for i in 4..6u64 {
        let data = pattern(4096, i);
        expected[(i * 4096) as usize..][..4096].copy_from_slice(&data);
        statuses.push(stage(&mut rig, REQ_OUT, i * 8, &data).2);
    }
    let (_, read_back, read_status) = stage(&mut rig, REQ_IN, 0, &[0; 4096]);
    let data = pattern(4096, 6);
    expected[6 * 4096..][..4096].copy_from_slice(&data);
    statuses.push(stage(&mut rig, REQ_OUT, 6 * 8, &data).2);
    rig.kick(0);
    // Writes 0-3, the flush, writes 4-5, the read, write 6.
    assert_eq!(disk.transfer_count(), 4);
    assert_eq!(disk.flush_count(), 1);
    assert_eq!(rig.byte(flush_status), STATUS_OK);
    for status in statuses {
        assert_eq!(rig.byte(status), STATUS_OK);
    }
    assert_eq!(rig.byte(read_status), STATUS_OK);
    assert_eq!(rig.read(read_back, 4096), expected[..4096]);
    assert_eq!(disk.contents(), expected);
}

#[test]
fn a_failing_range_fails_only_its_own_chains() {
    // Sectors 20-21 fail.
    let disk = MemDisk::new(
        DISK_SIZE,
        MemDiskOptions {
            fail_range: Some(20 * 512..22 * 512),
            ..Default::default()
        },
    );
    let contents = pattern(DISK_SIZE, 3);
    disk.fill(0, &contents);
    let mut rig = Rig::new(Arc::new(disk.clone()));
    // 4 KiB reads at sectors 0, 8, 16 (covers 20-21), 24, 32.
    let reads: Vec<_> = (0..5)
        .map(|i| stage(&mut rig, REQ_IN, 8 * i, &[0; 4096]))
        .collect();
    rig.kick(0);
    assert_eq!(rig.used(0).len(), 5);
    for (i, (_, data, status)) in reads.iter().enumerate() {
        if i == 2 {
            assert_eq!(
                rig.byte(*status),
                STATUS_IOERR,
                "the chain over the bad range"
            );
        } else {
            assert_eq!(rig.byte(*status), STATUS_OK, "read {i}");
            assert_eq!(rig.read(*data, 4096), contents[i * 4096..][..4096]);
        }
    }
    // The same for writes; the good ones land, the bad one does not.
    let writes: Vec<_> = (0..5)
        .map(|i| stage(&mut rig, REQ_OUT, 8 * i, &pattern(4096, 100 + i)).2)
        .collect();
    rig.kick(0);
    let after = disk.contents();
    for (i, status) in writes.iter().enumerate() {
        let landed = after[i * 4096..][..4096] == pattern(4096, 100 + i as u64)[..];
        if i == 2 {
            assert_eq!(rig.byte(*status), STATUS_IOERR);
            assert!(!landed);
        } else {
            assert_eq!(rig.byte(*status), STATUS_OK, "write {i}");
            assert!(landed, "write {i}");
        }
    }
    // Nothing in guest memory was touched past the rings and the buffers.
    let probe: u8 = rig
        .mem
        .read_obj(GuestAddress(HOLE_START - 1))
        .expect("probe");
    assert_eq!(probe, GUARD);
}
