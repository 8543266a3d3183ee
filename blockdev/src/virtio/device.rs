//! The virtio-blk device as a transport sees it: identity, feature
//! negotiation, device status, configuration space, queue setup, and
//! activation into one [`QueueHandler`] (with its own backend queue) per
//! enabled virtqueue.
//!
//! A transport (virtio-mmio or PCI in the VMM, or a test transport) maps
//! its registers onto these calls: DeviceFeatures/DeviceFeaturesSel onto
//! [`VirtioBlock::device_features_page`], DriverFeatures onto
//! [`VirtioBlock::set_driver_features_page`], Status onto
//! [`VirtioBlock::set_status`], QueueSel/QueueNum/QueueDesc/QueueDriver/
//! QueueDevice/QueueReady onto [`VirtioBlock::queue_mut`] (virtio-queue's
//! [`QueueT`] setters), the config window onto
//! [`VirtioBlock::read_config`]. When the driver sets DRIVER_OK the
//! transport calls [`VirtioBlock::activate`] with guest memory and each
//! queue's notify eventfd, and runs the returned handlers from
//! its event loop.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use super::config::BlockConfig;
use super::defs::*;
use super::disk_dirty::DiskWriteTracker;
use super::handler::{QueueEvents, QueueHandler};
use super::request::DiskInfo;
use super::stats::DiskStats;
use crate::disk::BlockBackend;
use crate::{Error, Result};

/// How the device is set up.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Number of request queues (`num_queues`; more than one offers MQ use).
    pub num_queues: u16,
    /// Largest size of each queue (a power of two, at most [`QUEUE_MAX_SIZE`]).
    pub queue_size: u16,
    /// ID string for GET_ID (at most 20 bytes; longer is cut).
    pub serial: Vec<u8>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            num_queues: 1,
            queue_size: QUEUE_MAX_SIZE,
            serial: Vec::new(),
        }
    }
}

/// A virtio-blk device over one [`BlockBackend`].
pub struct VirtioBlock {
    backend: Arc<dyn BlockBackend>,
    info: Arc<DiskInfo>,
    config: BlockConfig,
    device_features: u64,
    driver_features: u64,
    status: u8,
    queues: Vec<Queue>,
    activated: bool,
    stats: Arc<DiskStats>,
    writes: Arc<DiskWriteTracker>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("config", &self.config)
            .field("device_features", &self.device_features)
            .field("driver_features", &self.driver_features)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl VirtioBlock {
    /// A device serving `backend`.
    pub fn new(backend: Arc<dyn BlockBackend>, options: DeviceOptions) -> Result<Self> {
        if options.num_queues == 0 {
            return Err(Error::InvalidDeviceOption {
                name: "num_queues",
                value: 0,
            });
        }
        let queue_size = options.queue_size;
        if queue_size == 0 || queue_size > QUEUE_MAX_SIZE || !queue_size.is_power_of_two() {
            return Err(Error::InvalidDeviceOption {
                name: "queue_size",
                value: u64::from(queue_size),
            });
        }
        let queues = (0..options.num_queues)
            .map(|index| {
                Queue::new(queue_size).map_err(|source| Error::Virtqueue {
                    op: if index == 0 {
                        "create queue 0"
                    } else {
                        "create a queue"
                    },
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let size = backend.size() - backend.size() % SECTOR_SIZE;
        let read_only = backend.read_only();
        let mut serial = [0u8; SERIAL_LEN];
        let n = options.serial.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&options.serial[..n]);
        let config = BlockConfig::new(size, backend.block_size(), options.num_queues);
        let mut device_features = F_VERSION_1
            | F_RING_EVENT_IDX
            | F_RING_INDIRECT_DESC
            | F_BLK_SIZE_MAX
            | F_BLK_SEG_MAX
            | F_BLK_BLK_SIZE
            | F_BLK_FLUSH
            | F_BLK_DISCARD
            | F_BLK_WRITE_ZEROES
            | F_BLK_MQ;
        if read_only {
            device_features |= F_BLK_RO;
        }
        Ok(VirtioBlock {
            backend,
            info: Arc::new(DiskInfo {
                size,
                read_only,
                serial,
            }),
            config,
            device_features,
            driver_features: 0,
            status: 0,
            queues,
            activated: false,
            stats: Arc::new(DiskStats::default()),
            writes: Arc::new(DiskWriteTracker::new()),
        })
    }

    /// The virtio device ID (2, block).
    pub fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    /// Every feature the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Features offered, 32 bits at a time (DeviceFeaturesSel = `page`).
    pub fn device_features_page(&self, page: u32) -> u32 {
        match page {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The features the driver acknowledged.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The driver writes 32 bits of its features (DriverFeaturesSel =
    /// `page`). Ignored once FEATURES_OK is set, as the spec requires.
    pub fn set_driver_features_page(&mut self, page: u32, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let value = u64::from(value);
        match page {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The driver writes the device status. Zero resets the device (the
    /// transport then drops its queue handlers). FEATURES_OK only sticks if
    /// the acknowledged features are a subset of those offered and include
    /// VERSION_1; the driver reads the status back to find out.
    pub fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let mut status = status;
        let features_ok_now = status & STATUS_FEATURES_OK != 0;
        if features_ok_now && self.status & STATUS_FEATURES_OK == 0 && !self.features_acceptable() {
            status &= !STATUS_FEATURES_OK;
        }
        self.status = status;
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0 && self.driver_features & F_VERSION_1 != 0
    }

    /// Whether the driver has set DRIVER_OK with features accepted.
    pub fn driver_ok(&self) -> bool {
        let both = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & both == both && self.status & STATUS_FAILED == 0
    }

    /// Back to the state after construction: no features acknowledged, no
    /// status, queues unset. The transport drops the handlers it got from
    /// [`VirtioBlock::activate`] (dropping one waits for its backend requests).
    pub fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.activated = false;
        for queue in &mut self.queues {
            queue.reset();
        }
    }

    /// The configuration space values.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Read the configuration space from byte `offset` into `data`.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    /// A driver write to the configuration space. No field of this device
    /// is writable (CONFIG_WCE is not offered), so it is ignored.
    pub fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The configuration generation; the configuration never changes while
    /// the device runs.
    pub fn config_generation(&self) -> u32 {
        0
    }

    /// How many queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The largest size each queue accepts (QueueNumMax).
    pub fn queue_max_size(&self) -> u16 {
        self.queues.first().map_or(0, QueueT::max_size)
    }

    /// Queue `index`, to read its setup.
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues.get(usize::from(index))
    }

    /// Queue `index`, for the transport to set its size, ring addresses and
    /// ready flag. `None` once the device is activated (the handlers own the
    /// queues then) or for an index past the last queue.
    pub fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(usize::from(index))
    }

    /// Whether [`VirtioBlock::activate`] succeeded since the last reset.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device's request counters (shared with its queue handlers,
    /// kept across resets).
    pub fn stats(&self) -> Arc<DiskStats> {
        self.stats.clone()
    }

    /// Where the guest's disk changes are marked while a migration copies
    /// the disk (shared with its queue handlers, kept across resets).
    pub fn write_tracker(&self) -> Arc<DiskWriteTracker> {
        self.writes.clone()
    }

    /// The backend the device serves.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    /// Start the device once the driver set DRIVER_OK: check every ready
    /// queue lies in guest memory, open one backend queue per ready queue,
    /// and return their handlers. `events` holds one entry per device queue
    /// (index order); those of queues the driver left disabled are dropped.
    pub fn activate<A: GuestAddressSpace>(
        &mut self,
        mem: A,
        events: Vec<QueueEvents>,
    ) -> Result<Vec<QueueHandler<A>>> {
        if !self.driver_ok() {
            return Err(Error::DeviceState {
                reason: "activation needs FEATURES_OK and DRIVER_OK",
            });
        }
        if self.activated {
            return Err(Error::DeviceState {
                reason: "the device is already active",
            });
        }
        if events.len() != self.queues.len() {
            return Err(Error::InvalidDeviceOption {
                name: "queue event count",
                value: events.len() as u64,
            });
        }
        let event_idx = self.driver_features & F_RING_EVENT_IDX != 0;
        let memory = mem.memory();
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&*memory) {
                return Err(Error::InvalidQueue {
                    index: index as u16,
                    reason: "rings outside guest memory or misaligned",
                });
            }
        }
        let mut handlers = Vec::new();
        for (index, (queue, queue_events)) in self.queues.iter().zip(events).enumerate() {
            if !queue.ready() {
                continue;
            }
            let mut queue = Queue::try_from(queue.state()).map_err(|source| Error::Virtqueue {
                op: "copy the queue setup",
                source,
            })?;
            queue.set_event_idx(event_idx);
            let disk = self.backend.open_queue(u32::from(queue.size()))?;
            handlers.push(QueueHandler::new(
                index as u16,
                mem.clone(),
                queue,
                disk,
                self.info.clone(),
                queue_events,
                self.stats.clone(),
                self.writes.clone(),
            )?);
        }
        self.activated = true;
        Ok(handlers)
    }
}
