//! The `virtio-drivers` crate's `VirtIONet` over our device model: a
//! [`Transport`] whose registers are calls on [`VirtioNet`] (with the
//! virtio-blk harness's `GuestHal` for DMA memory). A kick runs the queue
//! at once; [`NetTransport::pump`] delivers what the tap holds, as the
//! event loop would when the tap turns readable.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use blockdev::virtio::net::{NetHandlers, NetOptions, Tap, VirtioNet};
use blockdev::virtio::QueueEvents;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::eventfd;

/// What the transport drives; shared so tests can inspect it.
pub struct Inner {
    pub device: VirtioNet,
    pub handlers: Option<NetHandlers<Arc<GuestMemoryMmap>>>,
    pub kicks: u64,
}

/// The transport of the harness.
#[derive(Clone)]
pub struct NetTransport {
    pub inner: Rc<RefCell<Inner>>,
    mem: Arc<GuestMemoryMmap>,
}

impl NetTransport {
    /// A transport over a new device on `taps`, in guest memory `mem`.
    pub fn new(taps: Vec<Tap>, mac: [u8; 6], mem: Arc<GuestMemoryMmap>) -> Self {
        let device = VirtioNet::new(
            taps,
            NetOptions {
                mac,
                queue_size: 64,
            },
        )
        .expect("device");
        NetTransport {
            inner: Rc::new(RefCell::new(Inner {
                device,
                handlers: None,
                kicks: 0,
            })),
            mem,
        }
    }

    /// Deliver what the tap holds into the receive queue.
    pub fn pump(&self) {
        let mut inner = self.inner.borrow_mut();
        if let Some(handlers) = inner.handlers.as_mut() {
            for rx in &mut handlers.rx {
                rx.handle_tap_event().expect("rx");
            }
        }
    }
}

fn split(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

impl Transport for NetTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::try_from(self.inner.borrow().device.device_type()).expect("known type")
    }

    fn read_device_features(&mut self) -> u64 {
        let inner = self.inner.borrow();
        u64::from(inner.device.device_features_page(0))
            | (u64::from(inner.device.device_features_page(1)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let mut inner = self.inner.borrow_mut();
        inner
            .device
            .set_driver_features_page(0, driver_features as u32);
        inner
            .device
            .set_driver_features_page(1, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        u32::from(self.inner.borrow().device.queue_max_size())
    }

    fn notify(&mut self, queue: u16) {
        let mut inner = self.inner.borrow_mut();
        inner.kicks += 1;
        let Some(handlers) = inner.handlers.as_mut() else {
            return;
        };
        if queue.is_multiple_of(2) {
            for rx in handlers.rx.iter_mut().filter(|q| q.index() == queue) {
                rx.process_queue().expect("rx");
            }
        } else {
            for tx in handlers.tx.iter_mut().filter(|q| q.index() == queue) {
                tx.process_queue().expect("tx");
            }
        }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(u32::from(self.inner.borrow().device.status()))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        inner.device.set_status(status.bits() as u8);
        if status.is_empty() {
            inner.handlers = None;
        } else if inner.device.driver_ok() && !inner.device.is_activated() {
            let events = (0..inner.device.num_queues())
                .map(|_| QueueEvents { notify: eventfd() })
                .collect();
            inner.handlers = Some(
                inner
                    .device
                    .activate(self.mem.clone(), events)
                    .expect("activate"),
            );
        }
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut inner = self.inner.borrow_mut();
        let q = inner.device.queue_mut(queue).expect("queue");
        q.set_size(size as u16);
        let (low, high) = split(descriptors);
        q.set_desc_table_address(low, high);
        let (low, high) = split(driver_area);
        q.set_avail_ring_address(low, high);
        let (low, high) = split(device_area);
        q.set_used_ring_address(low, high);
        q.set_ready(true);
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.inner.borrow_mut().device.queue_mut(queue) {
            q.set_ready(false);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner
            .borrow()
            .device
            .queue(queue)
            .is_some_and(|q| q.ready())
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let inner = self.inner.borrow();
        let mut any = false;
        if let Some(handlers) = inner.handlers.as_ref() {
            for rx in &handlers.rx {
                any |= rx.take_interrupt().expect("interrupt");
            }
            for tx in &handlers.tx {
                any |= tx.take_interrupt().expect("interrupt");
            }
        }
        if any {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.borrow().device.config_generation()
    }

    fn read_config_space<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut bytes = vec![0u8; std::mem::size_of::<T>()];
        self.inner
            .borrow()
            .device
            .read_config(offset as u64, &mut bytes);
        // SAFETY: T is FromBytes (every bit pattern is a valid T) and
        // `bytes` holds exactly size_of::<T>() bytes; read_unaligned copes
        // with the Vec's alignment.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }

    fn write_config_space<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> virtio_drivers::Result<()> {
        Ok(())
    }
}
