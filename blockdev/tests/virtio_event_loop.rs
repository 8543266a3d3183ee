//! The device driven the way a VMM drives it: its queue handler runs in a
//! thread of its own on an epoll loop over the queue's notify eventfd (the
//! ioeventfd KVM would write) and the backend's completion eventfd; the
//! driver, in the test thread, kicks through the notify eventfd and sleeps
//! on the interrupt eventfd (the irqfd), which the loop writes when the
//! handler decided on an interrupt. Over the in-memory backend and
//! the io_uring backend on a qcow2 image.

mod virtio_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use blockdev::backend::{open, OpenOptions};
use blockdev::disk::BlockBackend;
use blockdev::virtio::defs::*;
use blockdev::virtio::driver::SplitQueueDriver;
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
use blockdev::virtio::{DeviceOptions, QueueEvents, VirtioBlock};
use virtio_support::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const SIZE: u64 = 8 << 20;
const NOTIFY: u64 = 1;
const COMPLETION: u64 = 2;
const STOP: u64 = 3;

fn wait_readable(fd: i32) {
    let epoll = Epoll::new().expect("epoll");
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .expect("add");
    let mut events = [EpollEvent::default(); 1];
    let n = loop {
        match epoll.wait(10_000, &mut events) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.expect("wait"),
        }
    };
    assert_eq!(n, 1, "no interrupt within 10 s");
}

fn run(backend: Arc<dyn BlockBackend>, requests: u64, depth: u64) -> Vec<u8> {
    let mem = guest_memory();
    let mut device = VirtioBlock::new(
        backend,
        DeviceOptions {
            num_queues: 1,
            queue_size: 64,
            serial: Vec::new(),
        },
    )
    .expect("device");
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let features = device.device_features();
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let mut driver = SplitQueueDriver::new(&*mem, GuestAddress(0), 64).expect("rings");
    driver.configure(device.queue_mut(0).expect("queue"));
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let (notify, interrupt) = (eventfd(), eventfd());
    let kick = notify.try_clone().expect("clone");
    let irq = interrupt.try_clone().expect("clone");
    let raise = interrupt.try_clone().expect("clone");
    let mut handlers = device
        .activate(mem.clone(), vec![QueueEvents { notify }])
        .expect("activate");
    let mut handler = handlers.pop().expect("handler");
    let stop = eventfd();
    let stop_device = stop.try_clone().expect("clone");

    // The device thread: an event loop over the three eventfds.
    let device_thread = thread::spawn(move || {
        let epoll = Epoll::new().expect("epoll");
        for (fd, token) in [
            (handler.notify_fd(), NOTIFY),
            (handler.completion_fd(), COMPLETION),
            (stop_device.as_raw_fd_for_test(), STOP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .expect("add");
        }
        let mut events = [EpollEvent::default(); 4];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other.expect("epoll wait"),
            };
            for event in &events[..n] {
                match event.data() {
                    NOTIFY => handler.handle_queue_notify().expect("notify"),
                    COMPLETION => handler.handle_completion_event().expect("completion"),
                    _ => return handler.in_flight(),
                }
                // The handler decides on interrupts; the loop raises them
                // (as the VMM's raises the transport's irqfd).
                if handler.take_interrupt().expect("interrupt") {
                    raise.write(1).expect("raise the interrupt");
                }
            }
        }
    });

    // The driver: `depth` requests in flight, each a 4 KiB write or a read
    // of what was written, at slot-specific sectors.
    let mut model = vec![0u8; SIZE as usize];
    let mut issued = 0u64;
    let mut completed = 0u64;
    let slot_base = |slot: u64| GuestAddress(ALLOC_START + slot * 0x2000);
    // A slot's layout: header at +0, status at +16, data at +0x1000.
    let mut free_slots: Vec<u64> = (0..depth).collect();
    // By head descriptor: (slot, sector, write).
    let mut by_head: Vec<Option<(u64, u64, bool)>> = vec![None; 64];
    while completed < requests {
        let mut published = false;
        while issued < requests {
            let Some(slot) = free_slots.pop() else { break };
            let base = slot_base(slot);
            let (header, status, data) = (
                base,
                GuestAddress(base.0 + 16),
                GuestAddress(base.0 + 0x1000),
            );
            // Each slot owns its own stretch of the disk: no two requests
            // in flight overlap.
            let sector = slot * 128 + (issued % 16) * 8;
            let write = issued % 3 != 2;
            let mut bytes = [0u8; 16];
            bytes[0..4].copy_from_slice(&(if write { REQ_OUT } else { REQ_IN }).to_le_bytes());
            bytes[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&bytes, header).expect("header");
            mem.write_obj(0xffu8, status).expect("status");
            if write {
                let payload = pattern(4096, issued);
                mem.write_slice(&payload, data).expect("data");
                let at = sector as usize * 512;
                model[at..at + 4096].copy_from_slice(&payload);
            }
            let segments = [
                readable(header, 16),
                if write {
                    readable(data, 4096)
                } else {
                    writable(data, 4096)
                },
                writable(status, 1),
            ];
            let head = driver.add_chain(&*mem, &segments).expect("chain");
            by_head[usize::from(head)] = Some((slot, sector, write));
            issued += 1;
            published = true;
        }
        if published {
            kick.write(1).expect("kick");
        }
        wait_readable(irq.as_raw_fd_for_test());
        irq.read().expect("ack interrupt");
        while let Some(used) = driver.pop_used(&*mem).expect("used") {
            let (slot, sector, write) = by_head[used.id as usize].take().expect("a published head");
            let base = slot_base(slot);
            let status: u8 = mem.read_obj(GuestAddress(base.0 + 16)).expect("status");
            assert_eq!(status, STATUS_OK);
            if write {
                assert_eq!(used.len, 1);
            } else {
                let mut got = vec![0u8; 4096];
                mem.read_slice(&mut got, GuestAddress(base.0 + 0x1000))
                    .expect("data");
                let at = sector as usize * 512;
                assert!(got == model[at..at + 4096], "read of sector {sector}");
                assert_eq!(used.len, 4097);
            }
            free_slots.push(slot);
            completed += 1;
        }
    }
    stop.write(1).expect("stop");
    let left = device_thread.join().expect("device thread");
    assert_eq!(left, 0, "nothing left in flight");
    model
}

trait RawFdForTest {
    fn as_raw_fd_for_test(&self) -> i32;
}

impl RawFdForTest for vmm_sys_util::eventfd::EventFd {
    fn as_raw_fd_for_test(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

#[test]
fn event_loop_over_the_in_memory_backend() {
    let disk = MemDisk::new(SIZE as usize, MemDiskOptions::default());
    let model = run(Arc::new(disk.clone()), 3000, 16);
    assert!(disk.contents() == model);
}

#[test]
fn event_loop_over_a_qcow2_image() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("tmp");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let path = dir.path().join("e.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(SIZE.to_string())
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let backend = open(&path, &OpenOptions::default()).expect("open");
    let model = run(backend.clone(), 3000, 21);
    backend.close().expect("close");
    drop(backend);
    let out = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&path)
        .output()
        .expect("qemu-img check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let raw = dir.path().join("e.raw");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&path)
        .arg(&raw)
        .status()
        .expect("convert");
    assert!(status.success());
    assert!(std::fs::read(&raw).expect("raw") == model);
}
