//! The virtio-net device as a transport sees it: identity, feature
//! negotiation (with the spec's feature dependencies), device status, the
//! configuration space (`mac`, `status`, `max_virtqueue_pairs`), queue
//! setup, and activation into one [`RxQueue`] and [`TxQueue`] per queue
//! pair (each pair over its own tap queue) and a [`CtrlQueue`].
//!
//! The register mapping is virtio-blk's ([`crate::virtio::VirtioBlock`]):
//! the same method names, so a transport serves either. Queue `2N` is
//! pair N's receive queue, `2N+1` its transmit queue, and queue
//! `2 × pairs` the control queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use super::announce::{
    rarp_frame, round_delay, AnnounceState, SavedAnnounce, ANNOUNCE_ROUNDS, RARP_FRAME_LEN,
};
use super::counters::NetCounters;
use super::ctrl::{set_active_pairs, CtrlQueue};
use super::defs::*;
use super::queue::ActiveQueue;
use super::rx::RxQueue;
use super::tap::{Tap, TapOffloads};
use super::tx::TxQueue;
use crate::virtio::defs::{STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK};
use crate::virtio::handler::QueueEvents;
use crate::virtio::served::ServedQueue;
use crate::{Error, Result};

/// Bytes of the configuration space: `mac[6]`, `status` (le16),
/// max_virtqueue_pairs (le16).
pub const NET_CONFIG_SIZE: usize = 10;

/// How the device is set up.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Largest size of each queue (a power of two, at most [`QUEUE_MAX_SIZE`]).
    pub queue_size: u16,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            // A locally administered unicast address.
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            queue_size: QUEUE_MAX_SIZE,
        }
    }
}

/// What a restored device takes over from a saved one beyond its
/// transport's registers (the taps are not state: the restored device
/// has its own): the queue pairs the guest set through the control
/// queue, and each receive queue's chains taken from the ring but not
/// yet filled (oldest first), which the guest gave and still waits on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetResume {
    /// Queue pairs in use (1 to the device's pairs).
    pub active_pairs: u16,
    /// For each pair's receive queue (pair order), the heads of its
    /// stashed chains, oldest first.
    pub rx_stash: Vec<Vec<u16>>,
    /// An announcement under way (the bit and the rounds left).
    pub announce: SavedAnnounce,
}

/// What one step of an announcement did and when to step again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnounceTick {
    /// VIRTIO_NET_S_ANNOUNCE turned on: raise a configuration interrupt.
    pub config_changed: bool,
    /// When to call [`VirtioNet::announce_tick`] again; `None` once every
    /// round is done.
    pub wake: Option<Instant>,
}

/// How often to look again while a round waits on the driver's ack.
const ACK_POLL: Duration = Duration::from_millis(50);

/// The handlers of an activated device, for the event loop.
#[derive(Debug)]
pub struct NetHandlers<A: GuestAddressSpace> {
    /// Receive queues, pair order (those the driver enabled).
    pub rx: Vec<RxQueue<A>>,
    /// Transmit queues, pair order.
    pub tx: Vec<TxQueue<A>>,
    /// The control queue, if CTRL_VQ was negotiated and the queue enabled.
    pub ctrl: Option<CtrlQueue<A>>,
}

impl<A> NetHandlers<A>
where
    A: GuestAddressSpace + Send + 'static,
    A::T: Send,
{
    /// Every handler as an event loop serves it (receive queues, transmit
    /// queues, the control queue).
    pub fn into_served(self) -> Vec<Box<dyn ServedQueue>> {
        let mut served: Vec<Box<dyn ServedQueue>> = Vec::new();
        for rx in self.rx {
            served.push(Box::new(rx));
        }
        for tx in self.tx {
            served.push(Box::new(tx));
        }
        if let Some(ctrl) = self.ctrl {
            served.push(Box::new(ctrl));
        }
        served
    }
}

/// A virtio-net device over one tap queue per queue pair.
pub struct VirtioNet {
    taps: Vec<Arc<Tap>>,
    mac: [u8; 6],
    device_features: u64,
    driver_features: u64,
    status: u8,
    queues: Vec<Queue>,
    activated: bool,
    counters: Arc<NetCounters>,
    /// VIRTIO_NET_S_ANNOUNCE, shared with the control queue.
    announce: Arc<AnnounceState>,
    /// RARP rounds left and when the next is due (QEMU's
    /// `qemu_announce_self` timer).
    rarp_left: u8,
    rarp_due: Option<Instant>,
    /// The last activation took over an announcement under way.
    announce_restored: bool,
    /// Taken at the next activation (a restore).
    resume: Option<NetResume>,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("taps", &self.taps.len())
            .field("device_features", &self.device_features)
            .field("driver_features", &self.driver_features)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl VirtioNet {
    /// A device with one queue pair per tap queue in `taps` (1 to
    /// [`MAX_QUEUE_PAIRS`]; several need a multiqueue tap).
    pub fn new(taps: Vec<Tap>, options: NetOptions) -> Result<Self> {
        let pairs = taps.len();
        if pairs == 0 || pairs > usize::from(MAX_QUEUE_PAIRS) {
            return Err(Error::InvalidDeviceOption {
                name: "queue pairs",
                value: pairs as u64,
            });
        }
        if options.mac[0] & 1 != 0 {
            return Err(Error::Unsupported {
                what: format!(
                    "MAC address {} is a multicast address",
                    options
                        .mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            });
        }
        let queue_size = options.queue_size;
        if queue_size == 0 || queue_size > QUEUE_MAX_SIZE || !queue_size.is_power_of_two() {
            return Err(Error::InvalidDeviceOption {
                name: "queue_size",
                value: u64::from(queue_size),
            });
        }
        let queues = (0..2 * pairs + 1)
            .map(|_| {
                Queue::new(queue_size).map_err(|source| Error::Virtqueue {
                    op: "create a queue",
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut device_features = OFFERED_FEATURES;
        if pairs > 1 {
            device_features |= F_NET_MQ;
        }
        Ok(VirtioNet {
            taps: taps.into_iter().map(Arc::new).collect(),
            mac: options.mac,
            device_features,
            driver_features: 0,
            status: 0,
            queues,
            activated: false,
            counters: Arc::new(NetCounters::new(pairs as u16)),
            announce: Arc::new(AnnounceState::default()),
            rarp_left: 0,
            rarp_due: None,
            announce_restored: false,
            resume: None,
        })
    }

    /// The virtio device ID (1, network card).
    pub fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    /// The device's traffic counters (live; shared with the handlers).
    pub fn counters(&self) -> &Arc<NetCounters> {
        &self.counters
    }

    /// The tap queues, pair order.
    pub fn taps(&self) -> &[Arc<Tap>] {
        &self.taps
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

    /// The driver writes 32 bits of its features; ignored once
    /// FEATURES_OK is set.
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

    /// The driver writes the device status. Zero resets. FEATURES_OK only
    /// sticks for a subset of the offered features with VERSION_1 and
    /// every feature's dependencies (virtio 1.2, 5.1.3.1).
    pub fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let mut status = status;
        if status & STATUS_FEATURES_OK != 0
            && self.status & STATUS_FEATURES_OK == 0
            && !features_acceptable(self.driver_features, self.device_features)
        {
            status &= !STATUS_FEATURES_OK;
        }
        self.status = status;
    }

    /// Whether the driver has set DRIVER_OK with features accepted.
    pub fn driver_ok(&self) -> bool {
        let both = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & both == both && self.status & STATUS_FAILED == 0
    }

    /// Back to the state after construction (the transport drops its
    /// handlers first).
    pub fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.activated = false;
        self.resume = None;
        self.announce.clear();
        self.rarp_left = 0;
        self.rarp_due = None;
        self.announce_restored = false;
        for queue in &mut self.queues {
            queue.reset();
        }
    }

    /// Hands the device a saved device's pairs and stashed receive
    /// chains, taken at the next activation (a restore sets the queues,
    /// then activates; each receive queue checks its heads against its
    /// size then). Refused when it does not fit this device: pairs out of
    /// range, a stash for a pair it lacks.
    pub fn set_resume_state(&mut self, resume: NetResume) -> Result<()> {
        let bad = |name: &'static str, value: usize| {
            Err(Error::InvalidDeviceOption {
                name,
                value: value as u64,
            })
        };
        let pairs = usize::from(resume.active_pairs);
        if pairs == 0 || pairs > self.taps.len() {
            return bad("saved active queue pairs", pairs);
        }
        if resume.rx_stash.len() > self.taps.len() {
            return bad("saved receive queues", resume.rx_stash.len());
        }
        if resume.announce.rounds_left > ANNOUNCE_ROUNDS {
            return bad(
                "saved announce rounds",
                usize::from(resume.announce.rounds_left),
            );
        }
        self.resume = Some(resume);
        Ok(())
    }

    /// The configuration space as the guest reads it.
    pub fn config_bytes(&self) -> [u8; NET_CONFIG_SIZE] {
        let mut bytes = [0u8; NET_CONFIG_SIZE];
        bytes[0..6].copy_from_slice(&self.mac);
        let mut status = NET_S_LINK_UP;
        if self.announce.pending() {
            status |= NET_S_ANNOUNCE;
        }
        bytes[6..8].copy_from_slice(&status.to_le_bytes());
        bytes[8..10].copy_from_slice(&(self.taps.len() as u16).to_le_bytes());
        bytes
    }

    /// Read the configuration space from byte `offset` into `data`;
    /// bytes past its end read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// A driver write to the configuration space: nothing is writable
    /// (the MAC is the device's under VERSION_1), so it is ignored.
    pub fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The configuration generation: bumped each time the announce bit
    /// of `status` changes (nothing else in the configuration does).
    pub fn config_generation(&self) -> u32 {
        self.announce.generation()
    }

    /// After a restore or a migration, once the guest runs again, for an
    /// active device: start [`ANNOUNCE_ROUNDS`] rounds of RARPs from the
    /// guest's MAC into pair 0's tap queue (QEMU's `qemu_announce_self`),
    /// and if the driver accepted GUEST_ANNOUNCE (and so CTRL_VQ) the
    /// rounds of VIRTIO_NET_S_ANNOUNCE (QEMU's
    /// `virtio_net_announce_timer`: each round sets the bit with a
    /// configuration interrupt, the driver announces itself and acks, and
    /// the ack schedules the next round). An announcement the saved
    /// device had under way goes on where it was instead of starting
    /// again (a pending bit raises the configuration interrupt again).
    /// The first rounds fire now; call [`VirtioNet::announce_tick`] at
    /// the returned `wake`. A RARP the tap refuses is an error.
    pub fn announce(&mut self) -> Result<AnnounceTick> {
        if !self.activated {
            return Ok(AnnounceTick::default());
        }
        let now = Instant::now();
        self.rarp_left = ANNOUNCE_ROUNDS;
        self.rarp_due = Some(now);
        let mut pending_again = false;
        if self.driver_features & F_NET_GUEST_ANNOUNCE != 0 {
            if std::mem::take(&mut self.announce_restored) {
                pending_again = self.announce.pending();
            } else {
                self.announce.start(now);
            }
        }
        let mut tick = self.announce_tick(now)?;
        tick.config_changed |= pending_again;
        Ok(tick)
    }

    /// One step of the announcement at `now`: the RARP round and the
    /// driver's round that are due fire.
    pub fn announce_tick(&mut self, now: Instant) -> Result<AnnounceTick> {
        let config_changed = self.announce.tick(now);
        if self.rarp_due.is_some_and(|due| due <= now) && self.rarp_left > 0 {
            self.rarp_left -= 1;
            self.rarp_due = (self.rarp_left > 0).then(|| now + round_delay(self.rarp_left));
            self.send_rarp()?;
        }
        let guest = match self.announce.next_due() {
            Some(Some(due)) => Some(due),
            Some(None) => Some(now + ACK_POLL),
            None => None,
        };
        let wake = match (self.rarp_due, guest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(AnnounceTick {
            config_changed,
            wake,
        })
    }

    fn send_rarp(&self) -> Result<()> {
        let mut frame = [0u8; NET_HDR_SIZE + RARP_FRAME_LEN];
        frame[NET_HDR_SIZE..].copy_from_slice(&rarp_frame(self.mac));
        if let Some(tap) = self.taps.first() {
            tap.write_bytes(&frame).map_err(|source| Error::Io {
                op: "send the RARP that announces the guest",
                source,
            })?;
        }
        Ok(())
    }

    /// The VM was paused for `by`: the announcement's next RARP and
    /// round come that much later, as QEMU's timers on the virtual clock.
    pub fn postpone_announce(&mut self, by: Duration) {
        if let Some(due) = self.rarp_due.as_mut() {
            *due += by;
        }
        self.announce.postpone(by);
    }

    /// The announcement under way, for a snapshot.
    pub fn saved_announce(&self) -> SavedAnnounce {
        self.announce.saved()
    }

    /// Whether VIRTIO_NET_S_ANNOUNCE is set (the driver has not acked).
    pub fn announce_pending(&self) -> bool {
        self.announce.pending()
    }

    /// Queue pairs the device has (`max_virtqueue_pairs`).
    pub fn queue_pairs(&self) -> u16 {
        self.taps.len() as u16
    }

    /// How many queues the device has: two per pair and the control queue.
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

    /// Queue `index` for the transport to set up; `None` once activated or
    /// past the last queue.
    pub fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(usize::from(index))
    }

    /// Whether [`VirtioNet::activate`] succeeded since the last reset.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Start the device once the driver set DRIVER_OK: tell the taps the
    /// offloads the guest accepts, attach only pair 0's tap queue (the
    /// guest enables more through the control queue), and return the
    /// handlers of the enabled queues. `events` holds one entry per
    /// device queue, index order.
    pub fn activate<A: GuestAddressSpace>(
        &mut self,
        mem: A,
        events: Vec<QueueEvents>,
    ) -> Result<NetHandlers<A>> {
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
        let features = self.driver_features;
        let offloads = TapOffloads {
            csum: features & F_NET_GUEST_CSUM != 0,
            tso4: features & F_NET_GUEST_TSO4 != 0,
            tso6: features & F_NET_GUEST_TSO6 != 0,
            ufo: features & F_NET_GUEST_UFO != 0,
        };
        for tap in &self.taps {
            tap.set_offloads(offloads)?;
        }
        let resume = self.resume.take().unwrap_or_default();
        if resume.announce.in_progress() && features & F_NET_GUEST_ANNOUNCE == 0 {
            return Err(Error::DeviceState {
                reason:
                    "the saved announcement needs GUEST_ANNOUNCE, which the driver did not take",
            });
        }
        let active_pairs = resume.active_pairs.max(1);
        set_active_pairs(&self.taps, active_pairs)?;
        let event_idx = features & F_RING_EVENT_IDX != 0;
        let mergeable = features & F_NET_MRG_RXBUF != 0;
        let guest_csum = features & F_NET_GUEST_CSUM != 0;
        let ctrl_index = self.queues.len() - 1;
        let mut handlers = NetHandlers {
            rx: Vec::new(),
            tx: Vec::new(),
            ctrl: None,
        };
        for (index, (queue, queue_events)) in self.queues.iter().zip(events).enumerate() {
            if !queue.ready() {
                continue;
            }
            if index == ctrl_index && features & F_NET_CTRL_VQ == 0 {
                continue;
            }
            let mut queue = Queue::try_from(queue.state()).map_err(|source| Error::Virtqueue {
                op: "copy the queue setup",
                source,
            })?;
            queue.set_event_idx(event_idx);
            let active = ActiveQueue::new(index as u16, &mem, queue, queue_events)?;
            if index == ctrl_index {
                handlers.ctrl = Some(CtrlQueue::new(
                    active,
                    self.taps.clone(),
                    active_pairs,
                    features,
                    self.announce.clone(),
                ));
            } else if index.is_multiple_of(2) {
                let tap = self.taps[index / 2].clone();
                let mut rx =
                    RxQueue::new(active, tap, mergeable, guest_csum, self.counters.clone());
                if let Some(heads) = resume.rx_stash.get(index / 2) {
                    rx.restore_stash(heads)?;
                }
                handlers.rx.push(rx);
            } else {
                let tap = self.taps[index / 2].clone();
                handlers
                    .tx
                    .push(TxQueue::new(active, tap, features, self.counters.clone()));
            }
        }
        self.announce_restored = self.announce.resume(resume.announce, Instant::now());
        self.activated = true;
        Ok(handlers)
    }
}

/// Whether the driver's `driver` features may be accepted.
fn features_acceptable(driver: u64, device: u64) -> bool {
    driver & !device == 0
        && driver & F_VERSION_1 != 0
        && FEATURE_REQUIRES
            .iter()
            .all(|(feature, needs)| driver & feature == 0 || driver & needs == *needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_dependencies_are_enforced() {
        let device = OFFERED_FEATURES | F_NET_MQ;
        assert!(features_acceptable(F_VERSION_1 | F_NET_MAC, device));
        assert!(!features_acceptable(F_NET_MAC, device), "VERSION_1");
        assert!(!features_acceptable(F_VERSION_1 | F_NET_GUEST_TSO4, device));
        assert!(features_acceptable(
            F_VERSION_1 | F_NET_GUEST_TSO4 | F_NET_GUEST_CSUM,
            device
        ));
        assert!(!features_acceptable(F_VERSION_1 | F_NET_MQ, device));
        assert!(!features_acceptable(F_VERSION_1 | F_NET_HOST_UFO, device));
        assert!(!features_acceptable(
            F_VERSION_1 | F_NET_GUEST_ANNOUNCE,
            device
        ));
        assert!(features_acceptable(
            F_VERSION_1 | F_NET_GUEST_ANNOUNCE | F_NET_CTRL_VQ,
            device
        ));
        assert!(!features_acceptable(F_VERSION_1 | (1 << 40), device));
    }
}
