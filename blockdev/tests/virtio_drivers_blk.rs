//! The `virtio-drivers` crate's block driver against our device model,
//! with no KVM: register accesses become device calls, DMA memory is guest
//! memory, and every buffer the driver shares goes through guest bounce
//! pages.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::defs::*;
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE as DRV_SECTOR};
use virtio_queue::QueueT;
use virtio_support::drivers_hal::{install_guest, pages_in_use, GuestHal, HarnessTransport};
use virtio_support::pattern;

const DISK_SIZE: usize = 4 << 20;

fn open(
    options: MemDiskOptions,
) -> (
    MemDisk,
    HarnessTransport,
    VirtIOBlk<GuestHal, HarnessTransport>,
) {
    install_guest();
    let disk = MemDisk::new(DISK_SIZE, options);
    let transport = HarnessTransport::new(Arc::new(disk.clone()), b"harness-disk-7");
    let blk = VirtIOBlk::<GuestHal, _>::new(transport.clone()).expect("driver init");
    (disk, transport, blk)
}

#[test]
fn negotiates_features_sets_up_the_queue_and_reports_capacity() {
    let (_disk, transport, blk) = open(MemDiskOptions::default());
    assert_eq!(blk.capacity(), (DISK_SIZE / 512) as u64);
    assert!(!blk.readonly());
    let inner = transport.inner.borrow();
    let driver_wants =
        F_BLK_RO | F_BLK_FLUSH | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | F_VERSION_1;
    assert_eq!(
        inner.device.driver_features(),
        inner.device.device_features() & driver_wants
    );
    assert_ne!(inner.device.driver_features() & F_RING_EVENT_IDX, 0);
    assert!(inner.device.driver_ok());
    assert!(inner.device.is_activated());
    assert_eq!(inner.handlers.len(), 1);
    assert_eq!(inner.handlers[0].queue().size(), 16);
    // The device offers what the issue lists.
    let offered = inner.device.device_features();
    for bit in [
        F_VERSION_1,
        F_RING_EVENT_IDX,
        F_RING_INDIRECT_DESC,
        F_BLK_SEG_MAX,
        F_BLK_BLK_SIZE,
        F_BLK_FLUSH,
        F_BLK_DISCARD,
        F_BLK_WRITE_ZEROES,
        F_BLK_MQ,
    ] {
        assert_ne!(offered & bit, 0, "feature {bit:#x} offered");
    }
    assert_eq!(offered & F_BLK_RO, 0);
}

#[test]
fn writes_reads_and_flushes() {
    let (disk, transport, mut blk) = open(MemDiskOptions::default());
    let data = pattern(8 * DRV_SECTOR, 1);
    blk.write_blocks(100, &data).expect("write");
    assert_eq!(&disk.contents()[100 * 512..108 * 512], &data[..]);
    let mut back = vec![0u8; 8 * DRV_SECTOR];
    blk.read_blocks(100, &mut back).expect("read");
    assert_eq!(back, data);
    // A read straddling written and never-written sectors.
    let mut wide = vec![0xeeu8; 16 * DRV_SECTOR];
    blk.read_blocks(96, &mut wide).expect("read");
    assert_eq!(&wide[..4 * 512], &[0u8; 4 * 512][..]);
    assert_eq!(&wide[4 * 512..12 * 512], &data[..]);
    let flushes = disk.flush_count();
    blk.flush().expect("flush");
    assert_eq!(disk.flush_count(), flushes + 1);
    // The last sector is reachable; one past it is refused with IOERR.
    let last = blk.capacity() as usize - 1;
    blk.write_blocks(last, &data[..512]).expect("last sector");
    assert!(blk.read_blocks(last + 1, &mut back[..512]).is_err());
    assert!(blk.write_blocks(last, &data[..1024]).is_err());
    assert!(transport.inner.borrow().kicks >= 6);
}

#[test]
fn read_only_disk_fails_writes_with_ioerr() {
    let (disk, transport, mut blk) = open(MemDiskOptions {
        read_only: true,
        ..Default::default()
    });
    disk.fill(0, &pattern(4096, 3));
    assert!(blk.readonly());
    assert_ne!(
        transport.inner.borrow().device.driver_features() & F_BLK_RO,
        0
    );
    let before = disk.contents();
    let err = blk.write_blocks(0, &[1u8; 512]).expect_err("read-only");
    assert_eq!(err, virtio_drivers::Error::IoError);
    assert_eq!(disk.contents(), before);
    let mut back = vec![0u8; 4096];
    blk.read_blocks(0, &mut back).expect("reads still work");
    assert_eq!(back, pattern(4096, 3));
}

#[test]
fn get_id_returns_the_serial() {
    let (_disk, _transport, mut blk) = open(MemDiskOptions::default());
    let mut id = [0u8; 20];
    let len = blk.device_id(&mut id).expect("get id");
    assert_eq!(&id[..len], b"harness-disk-7");
}

#[test]
fn many_requests_match_a_model_and_free_every_bounce_page() {
    let (disk, _transport, mut blk) = open(MemDiskOptions::default());
    let baseline = pages_in_use();
    let mut model = vec![0u8; DISK_SIZE];
    let sectors = (DISK_SIZE / 512) as u64;
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000u64 {
        let count = 1 + next() % 16;
        let sector = next() % (sectors - count);
        let (start, end) = ((sector * 512) as usize, ((sector + count) * 512) as usize);
        match next() % 5 {
            0 | 1 => {
                let data = pattern(end - start, i);
                blk.write_blocks(sector as usize, &data).expect("write");
                model[start..end].copy_from_slice(&data);
            }
            2 => blk.flush().expect("flush"),
            _ => {
                let mut back = vec![0u8; end - start];
                blk.read_blocks(sector as usize, &mut back).expect("read");
                assert_eq!(back, model[start..end], "request {i}");
            }
        }
    }
    assert_eq!(disk.contents(), model);
    assert_eq!(pages_in_use(), baseline, "bounce pages leaked");
}

#[test]
fn a_second_driver_init_resets_and_reactivates_the_device() {
    let (disk, transport, mut blk) = open(MemDiskOptions::default());
    blk.write_blocks(3, &[5u8; 512]).expect("write");
    drop(blk);
    // begin_init writes status 0 first: the device resets, its handlers go,
    // and the new driver sets everything up again.
    let mut blk = VirtIOBlk::<GuestHal, _>::new(transport.clone()).expect("second init");
    {
        let inner = transport.inner.borrow();
        assert!(inner.device.is_activated());
        assert_eq!(inner.handlers.len(), 1);
        assert_eq!(inner.handlers[0].queue().next_avail(), 0, "a fresh queue");
    }
    blk.write_blocks(7, &[9u8; 512]).expect("write after reset");
    let mut back = [0u8; 512];
    blk.read_blocks(3, &mut back).expect("read after reset");
    assert_eq!(back, [5u8; 512]);
    assert_eq!(&disk.contents()[7 * 512..8 * 512], &[9u8; 512][..]);
}
