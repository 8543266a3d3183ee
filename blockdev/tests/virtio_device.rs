//! The device as a transport sees it: feature pages, negotiation that
//! refuses what was not offered, status and reset, configuration space,
//! queue setup checked against guest memory at activation.

mod virtio_support;

use std::sync::Arc;

use blockdev::virtio::config::*;
use blockdev::virtio::defs::*;
use blockdev::virtio::driver::SplitQueueDriver;
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use blockdev::virtio::{DeviceOptions, QueueEvents, VirtioBlock};
use blockdev::Error;
use virtio_queue::QueueT;
use virtio_support::*;
use vm_memory::GuestAddress;

fn device(read_only: bool, num_queues: u16) -> VirtioBlock {
    let disk = MemDisk::new(
        (3 << 20) + 300, // not a whole number of sectors: capacity rounds down
        MemDiskOptions {
            read_only,
            ..Default::default()
        },
    );
    VirtioBlock::new(
        Arc::new(disk),
        DeviceOptions {
            num_queues,
            queue_size: 128,
            serial: b"0123456789abcdefghijKLMN".to_vec(),
        },
    )
    .expect("device")
}

fn events(n: u16) -> Vec<QueueEvents> {
    (0..n).map(|_| QueueEvents { notify: eventfd() }).collect()
}

fn negotiate(device: &mut VirtioBlock, features: u64) -> bool {
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    device.status() & STATUS_FEATURES_OK != 0
}

#[test]
fn identity_feature_pages_and_config_space() {
    let dev = device(false, 2);
    assert_eq!(dev.device_type(), 2);
    let features = dev.device_features();
    assert_eq!(
        u64::from(dev.device_features_page(0)),
        features & 0xffff_ffff
    );
    assert_eq!(u64::from(dev.device_features_page(1)), features >> 32);
    assert_eq!(dev.device_features_page(2), 0);
    assert_ne!(features & F_VERSION_1, 0);
    assert_eq!(features & F_BLK_RO, 0);
    assert_ne!(device(true, 1).device_features() & F_BLK_RO, 0);
    assert_eq!(dev.queue_max_size(), 128);
    assert_eq!(dev.num_queues(), 2);

    let read_u32 = |offset| {
        let mut b = [0u8; 4];
        dev.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    };
    let mut capacity = [0u8; 8];
    dev.read_config(OFFSET_CAPACITY as u64, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), (3 << 20) / 512);
    assert_eq!(read_u32(OFFSET_SIZE_MAX as u64), SIZE_MAX);
    assert_eq!(read_u32(OFFSET_SEG_MAX as u64), SEG_MAX);
    assert_eq!(read_u32(OFFSET_BLK_SIZE as u64), 512);
    assert_eq!(
        read_u32(OFFSET_MAX_DISCARD_SECTORS as u64),
        MAX_DISCARD_SECTORS
    );
    assert_eq!(read_u32(OFFSET_MAX_DISCARD_SEG as u64), MAX_DISCARD_SEG);
    assert_eq!(read_u32(OFFSET_DISCARD_SECTOR_ALIGNMENT as u64), 1);
    assert_eq!(
        read_u32(OFFSET_MAX_WRITE_ZEROES_SECTORS as u64),
        MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(
        read_u32(OFFSET_MAX_WRITE_ZEROES_SEG as u64),
        MAX_WRITE_ZEROES_SEG
    );
    let mut byte = [0u8];
    dev.read_config(OFFSET_WRITE_ZEROES_MAY_UNMAP as u64, &mut byte);
    assert_eq!(byte[0], 1);
    // Byte-wise reads agree with the whole layout; past the end is zero.
    let mut whole = [0u8; CONFIG_SPACE_SIZE + 8];
    dev.read_config(0, &mut whole);
    for (offset, expected) in whole.iter().enumerate() {
        let mut one = [0u8];
        dev.read_config(offset as u64, &mut one);
        assert_eq!(one[0], *expected);
    }
    assert_eq!(&whole[CONFIG_SPACE_SIZE..], &[0u8; 8]);
}

#[test]
fn features_not_offered_or_without_version_1_are_refused() {
    let mut dev = device(false, 1);
    let offered = dev.device_features();
    assert!(!negotiate(&mut dev, offered | (1 << 40)), "unknown bit");
    dev.reset();
    assert!(
        !negotiate(&mut dev, F_BLK_RO | F_VERSION_1),
        "RO on a writable disk"
    );
    dev.reset();
    assert!(!negotiate(&mut dev, F_BLK_FLUSH), "legacy driver");
    dev.reset();
    assert!(negotiate(&mut dev, F_VERSION_1 | F_BLK_FLUSH));
    assert_eq!(dev.driver_features(), F_VERSION_1 | F_BLK_FLUSH);
    // Features are frozen once FEATURES_OK is set.
    dev.set_driver_features_page(0, 0);
    assert_eq!(dev.driver_features(), F_VERSION_1 | F_BLK_FLUSH);
}

#[test]
fn activation_needs_driver_ok_and_rings_in_guest_memory() {
    let mem = guest_memory();
    let mut dev = device(false, 1);
    let err = dev
        .activate(mem.clone(), events(1))
        .expect_err("no DRIVER_OK");
    assert!(matches!(err, Error::DeviceState { .. }));
    let offered = dev.device_features();
    assert!(negotiate(&mut dev, offered));
    // Rings in the hole between regions.
    let q = dev.queue_mut(0).expect("queue");
    q.set_size(64);
    q.set_desc_table_address(Some(HOLE_START as u32), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    dev.set_status(dev.status() | STATUS_DRIVER_OK);
    let err = dev.activate(mem.clone(), events(1)).expect_err("bad rings");
    assert!(matches!(err, Error::InvalidQueue { index: 0, .. }));
    // Wrong number of event pairs.
    assert!(dev.activate(mem.clone(), events(2)).is_err());
    // Good rings.
    let driver = SplitQueueDriver::new(&*mem, GuestAddress(0), 64).expect("rings");
    driver.configure(dev.queue_mut(0).expect("queue"));
    let handlers = dev.activate(mem.clone(), events(1)).expect("activate");
    assert_eq!(handlers.len(), 1);
    assert!(dev.is_activated());
    assert!(dev.queue_mut(0).is_none(), "queues are the handlers' now");
    assert!(dev.activate(mem.clone(), events(1)).is_err(), "twice");
    // Reset: status 0, features and queues cleared, setup possible again.
    drop(handlers);
    dev.set_status(0);
    assert_eq!(dev.status(), 0);
    assert_eq!(dev.driver_features(), 0);
    assert!(!dev.is_activated());
    assert!(!dev.queue(0).expect("queue").ready());
    assert!(dev.queue_mut(0).is_some());
}

#[test]
fn only_ready_queues_get_handlers() {
    let mem = guest_memory();
    let mut dev = device(false, 3);
    let offered = dev.device_features();
    assert!(negotiate(&mut dev, offered));
    let driver = SplitQueueDriver::new(&*mem, GuestAddress(0x8000), 32).expect("rings");
    driver.configure(dev.queue_mut(1).expect("queue"));
    dev.set_status(dev.status() | STATUS_DRIVER_OK);
    let handlers = dev.activate(mem, events(3)).expect("activate");
    assert_eq!(handlers.len(), 1);
    assert_eq!(handlers[0].index(), 1);
}

#[test]
fn bad_options_are_refused() {
    let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
    for (num_queues, queue_size) in [(0u16, 64u16), (1, 0), (1, 100), (1, 512)] {
        let result = VirtioBlock::new(
            disk.clone(),
            DeviceOptions {
                num_queues,
                queue_size,
                serial: Vec::new(),
            },
        );
        assert!(matches!(result, Err(Error::InvalidDeviceOption { .. })));
    }
}

#[test]
fn bench_runs_over_the_in_memory_backend() {
    use blockdev::virtio::bench::{run, BenchOptions};
    for (write, guest_thread, depth) in [
        (false, false, 32),
        (true, false, 32),
        (false, true, 32),
        (true, true, 7),
        (false, true, 1),
    ] {
        let disk = Arc::new(MemDisk::new(16 << 20, MemDiskOptions::default()));
        let report = run(
            disk,
            &BenchOptions {
                requests: 5000,
                depth,
                write,
                guest_thread,
                ..Default::default()
            },
        )
        .expect("bench");
        assert_eq!(report.requests, 5000);
        assert!(report.iops > 0.0);
    }
}

/// Publish one 512-byte read of sector `sector` on queue 0, without a kick.
fn publish_read(rig: &mut Rig, sector: u64) {
    let header = rig.header(REQ_IN, sector);
    let data = rig.alloc(512);
    let status = rig.status_byte();
    rig.drivers[0]
        .add_chain(
            &*rig.mem,
            &[
                readable(header, 16),
                writable(data, 512),
                writable(status, 1),
            ],
        )
        .expect("chain");
}

#[test]
fn a_polling_handler_keeps_kicks_off_until_it_is_about_to_sleep() {
    use vm_memory::Bytes;
    // With event idx: avail_event stays put while the loop polls.
    let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
    let mut rig = Rig::new(disk);
    rig.handlers[0].set_polling(true);
    publish_read(&mut rig, 0);
    rig.handlers[0].process_queue().expect("process");
    rig.handlers[0].run_until_idle().expect("run");
    let avail_event = |rig: &Rig| rig.drivers[0].avail_event(&*rig.mem).expect("avail_event");
    assert_eq!(
        avail_event(&rig),
        0,
        "not moved on while polling: no kick asked"
    );
    publish_read(&mut rig, 1);
    assert!(rig.handlers[0].has_available());
    assert!(
        rig.handlers[0].prepare_to_sleep().expect("prepare"),
        "a chain came meanwhile: take it instead of sleeping"
    );
    assert_eq!(avail_event(&rig), 1, "kicks on again for what follows");
    rig.handlers[0].process_queue().expect("process");
    rig.handlers[0].run_until_idle().expect("run");
    assert_eq!(avail_event(&rig), 1);
    assert!(!rig.handlers[0].prepare_to_sleep().expect("prepare"));
    assert_eq!(avail_event(&rig), 2);
    assert_eq!(rig.used(0).len(), 2);
    // Not polling: avail_event follows every pass, as before.
    rig.handlers[0].set_polling(false);
    publish_read(&mut rig, 2);
    rig.kick(0);
    assert_eq!(avail_event(&rig), 3);

    // Without event idx: the used ring's NO_NOTIFY flag stays set while
    // polling and is cleared before sleeping.
    let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
    let mut rig = Rig::with(disk, 1, 64, !F_RING_EVENT_IDX);
    rig.handlers[0].set_polling(true);
    publish_read(&mut rig, 0);
    rig.handlers[0].process_queue().expect("process");
    rig.handlers[0].run_until_idle().expect("run");
    let used_flags =
        |rig: &Rig| -> u16 { rig.mem.read_obj(rig.drivers[0].used_ring()).expect("flags") };
    assert_eq!(used_flags(&rig), 1, "VRING_USED_F_NO_NOTIFY while polling");
    assert!(!rig.handlers[0].prepare_to_sleep().expect("prepare"));
    assert_eq!(used_flags(&rig), 0);
}
