//! What a virtio transport (the VMM's virtio-mmio slot) needs of any
//! device model: [`VirtioDevice`], implemented by virtio-blk's
//! [`VirtioBlock`] and virtio-net's [`VirtioNet`], so that one transport
//! serves either and hands the activated queues to one event loop as
//! [`ServedQueue`]s.
//!
//! The methods are the register file of virtio 1.2, 4.2.2 (features 32
//! bits at a time, status, configuration space, each queue's setup), and
//! activation with one [`QueueEvents`] per queue.

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use super::device::VirtioBlock;
use super::handler::QueueEvents;
use super::net::announce::SavedAnnounce;
use super::net::{AnnounceTick, NetResume, VirtioNet};
use super::served::ServedQueue;
use crate::Result;

/// A device model as a transport drives it, over guest memory `A`.
pub trait VirtioDevice<A>: Send
where
    A: GuestAddressSpace + Send + 'static,
    A::T: Send,
{
    /// A short name for log lines ("virtio-blk", "virtio-net").
    fn kind(&self) -> &'static str;
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// Every feature the device offers.
    fn device_features(&self) -> u64;
    /// Features offered, 32 bits at a time.
    fn device_features_page(&self, page: u32) -> u32;
    /// The features the driver acknowledged.
    fn driver_features(&self) -> u64;
    /// The driver writes 32 bits of its features.
    fn set_driver_features_page(&mut self, page: u32, value: u32);
    /// The device status register.
    fn status(&self) -> u8;
    /// The driver writes the device status (zero resets).
    fn set_status(&mut self, status: u8);
    /// Whether the driver set DRIVER_OK with features accepted.
    fn driver_ok(&self) -> bool;
    /// Back to the state after construction.
    fn reset(&mut self);
    /// Read the configuration space from byte `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to the configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The configuration generation.
    fn config_generation(&self) -> u32;
    /// How many queues the device has.
    fn num_queues(&self) -> u16;
    /// The largest size each queue accepts.
    fn queue_max_size(&self) -> u16;
    /// Queue `index`, to read its setup.
    fn queue(&self, index: u16) -> Option<&Queue>;
    /// Queue `index` to set up; `None` once activated or out of range.
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue>;
    /// Whether the device was activated since the last reset.
    fn is_activated(&self) -> bool;
    /// Start the device (DRIVER_OK): one entry of `events` per queue,
    /// index order; the handlers of the enabled queues come back.
    fn activate(&mut self, mem: A, events: Vec<QueueEvents>) -> Result<Vec<Box<dyn ServedQueue>>>;
    /// A restore hands the device what a saved one held beyond the
    /// transport (virtio-net: pairs in use, stashed receive chains),
    /// taken at the next activation; a device with no such state
    /// refuses it.
    fn set_resume_state(&mut self, resume: NetResume) -> Result<()> {
        let _ = resume;
        Err(crate::Error::DeviceState {
            reason: "this device has no state beyond its transport",
        })
    }
    /// The guest runs again after a restore or a migration: a device
    /// that announces the guest (virtio-net: RARPs, and with
    /// GUEST_ANNOUNCE rounds of VIRTIO_NET_S_ANNOUNCE) starts doing so;
    /// `config_changed` asks the transport for a configuration interrupt,
    /// `wake` for a call of [`VirtioDevice::announce_tick`] then.
    fn announce(&mut self) -> Result<AnnounceTick> {
        Ok(AnnounceTick::default())
    }
    /// The next step of an announcement at `now`.
    fn announce_tick(&mut self, now: std::time::Instant) -> Result<AnnounceTick> {
        let _ = now;
        Ok(AnnounceTick::default())
    }
    /// The VM was paused for `by`: an announcement under way comes that
    /// much later.
    fn postpone_announce(&mut self, by: std::time::Duration) {
        let _ = by;
    }
    /// The announcement under way, for a snapshot (none for a device that
    /// does not announce).
    fn saved_announce(&self) -> SavedAnnounce {
        SavedAnnounce::default()
    }
}

/// The register methods both models spell alike.
macro_rules! forward_registers {
    () => {
        fn device_type(&self) -> u32 {
            Self::device_type(self)
        }
        fn device_features(&self) -> u64 {
            Self::device_features(self)
        }
        fn device_features_page(&self, page: u32) -> u32 {
            Self::device_features_page(self, page)
        }
        fn driver_features(&self) -> u64 {
            Self::driver_features(self)
        }
        fn set_driver_features_page(&mut self, page: u32, value: u32) {
            Self::set_driver_features_page(self, page, value)
        }
        fn status(&self) -> u8 {
            Self::status(self)
        }
        fn set_status(&mut self, status: u8) {
            Self::set_status(self, status)
        }
        fn driver_ok(&self) -> bool {
            Self::driver_ok(self)
        }
        fn reset(&mut self) {
            Self::reset(self)
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            Self::read_config(self, offset, data)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            Self::write_config(self, offset, data)
        }
        fn config_generation(&self) -> u32 {
            Self::config_generation(self)
        }
        fn num_queues(&self) -> u16 {
            Self::num_queues(self)
        }
        fn queue_max_size(&self) -> u16 {
            Self::queue_max_size(self)
        }
        fn queue(&self, index: u16) -> Option<&Queue> {
            Self::queue(self, index)
        }
        fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
            Self::queue_mut(self, index)
        }
        fn is_activated(&self) -> bool {
            Self::is_activated(self)
        }
    };
}

impl<A> VirtioDevice<A> for VirtioBlock
where
    A: GuestAddressSpace + Send + 'static,
    A::T: Send,
{
    fn kind(&self) -> &'static str {
        "virtio-blk"
    }
    forward_registers!();
    fn activate(&mut self, mem: A, events: Vec<QueueEvents>) -> Result<Vec<Box<dyn ServedQueue>>> {
        Ok(VirtioBlock::activate(self, mem, events)?
            .into_iter()
            .map(|handler| Box::new(handler) as Box<dyn ServedQueue>)
            .collect())
    }
}

impl<A> VirtioDevice<A> for VirtioNet
where
    A: GuestAddressSpace + Send + 'static,
    A::T: Send,
{
    fn kind(&self) -> &'static str {
        "virtio-net"
    }
    forward_registers!();
    fn activate(&mut self, mem: A, events: Vec<QueueEvents>) -> Result<Vec<Box<dyn ServedQueue>>> {
        Ok(VirtioNet::activate(self, mem, events)?.into_served())
    }
    fn set_resume_state(&mut self, resume: NetResume) -> Result<()> {
        VirtioNet::set_resume_state(self, resume)
    }
    fn announce(&mut self) -> Result<AnnounceTick> {
        VirtioNet::announce(self)
    }
    fn announce_tick(&mut self, now: std::time::Instant) -> Result<AnnounceTick> {
        VirtioNet::announce_tick(self, now)
    }
    fn postpone_announce(&mut self, by: std::time::Duration) {
        VirtioNet::postpone_announce(self, by)
    }
    fn saved_announce(&self) -> SavedAnnounce {
        VirtioNet::saved_announce(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::virtio::testing::{MemDisk, MemDiskOptions};
    use crate::virtio::DeviceOptions;

    type Memory = Arc<GuestMemoryMmap>;

    #[test]
    fn both_models_answer_through_the_trait() {
        let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
        let block: Box<dyn VirtioDevice<Memory>> =
            Box::new(VirtioBlock::new(disk, DeviceOptions::default()).expect("device"));
        assert_eq!((block.kind(), block.device_type()), ("virtio-blk", 2));
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), (1 << 20) / 512);
        let mem: Memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"),
        );
        let mut block = block;
        let err = match block.activate(mem, Vec::new()) {
            Ok(_) => panic!("activated without DRIVER_OK"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("DRIVER_OK"), "{err}");
    }
}
