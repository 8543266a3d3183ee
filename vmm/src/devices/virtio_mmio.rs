//! The virtio-mmio transport (virtio 1.2, version 2 register layout) in
//! front of any of blockdev's device models (virtio-blk, virtio-net),
//! through `blockdev::virtio::VirtioDevice`.
//!
//! Queue notifications bypass this code: each queue's QueueNotify write is
//! an ioeventfd (with the queue index as datamatch) that the device event
//! loop waits on. When the driver sets DRIVER_OK the device is activated
//! and its queue handlers move to the event loop; a status write of zero
//! takes them back. Interrupts go out through an irqfd after the event
//! loop sets InterruptStatus.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use blockdev::virtio::{QueueEvents, VirtioDevice};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::LoopMessage;
use super::BusDevice;
use crate::state::devices::{QueueState, VirtioMmioState};

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d4d_5652; // "RVMM"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify: the offset the ioeventfds listen on.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

const STATUS_DRIVER_OK: u8 = 4;
const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;

/// What the transport and the event loop share about one device's
/// interrupt.
pub struct Interrupt {
    /// InterruptStatus: bit 0 used buffers, bit 1 configuration change.
    pub status: AtomicU32,
    /// The irqfd of the device's GSI.
    pub irqfd: EventFd,
}

impl Interrupt {
    /// Raises a used-buffer interrupt.
    pub fn used_buffers(&self) {
        self.status.fetch_or(1, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            eprintln!("vmm: cannot raise a virtio interrupt: {e}");
        }
    }

    /// Raises a configuration-change interrupt.
    pub fn config_changed(&self) {
        self.status.fetch_or(2, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            eprintln!("vmm: cannot raise a virtio configuration interrupt: {e}");
        }
    }
}

/// A device model over the VM's memory, as a slot holds it.
pub type SlotDevice = Box<dyn VirtioDevice<Arc<GuestMemoryMmap>>>;

/// What a slot is wired to in the VM: the event loop's channel and
/// wake-up eventfd, and the guest memory.
pub struct SlotWiring<'a> {
    /// The VM (ioeventfds and irqfds are registered on it).
    pub vm: &'a kvm_ioctls::VmFd,
    /// Guest memory, for activation.
    pub mem: &'a Arc<GuestMemoryMmap>,
    /// The device thread's channel.
    pub event_loop: &'a Sender<LoopMessage>,
    /// The device thread's wake-up eventfd.
    pub wake_loop: &'a EventFd,
}

/// Puts `device` in virtio-mmio slot `index`: one ioeventfd per queue on
/// QueueNotify (the queue index as datamatch), an irqfd on the slot's
/// GSI, and the transport in front of the device.
pub fn wire_slot(
    index: usize,
    device: SlotDevice,
    wiring: &SlotWiring<'_>,
) -> std::io::Result<Arc<std::sync::Mutex<VirtioMmio>>> {
    let kvm_err = |e: kvm_ioctls::Error| std::io::Error::from_raw_os_error(e.errno());
    let base = crate::layout::virtio_mmio_base(index);
    let mut notify = Vec::new();
    for queue in 0..device.num_queues() {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        wiring
            .vm
            .register_ioevent(
                &evt,
                &kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                u32::from(queue),
            )
            .map_err(kvm_err)?;
        notify.push(evt);
    }
    let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
    wiring
        .vm
        .register_irqfd(&irqfd, crate::layout::VIRTIO_FIRST_GSI + index as u32)
        .map_err(kvm_err)?;
    let interrupt = Arc::new(Interrupt {
        status: AtomicU32::new(0),
        irqfd,
    });
    Ok(Arc::new(std::sync::Mutex::new(VirtioMmio::new(
        index,
        device,
        wiring.mem.clone(),
        notify,
        interrupt,
        wiring.event_loop.clone(),
        wiring.wake_loop.try_clone()?,
    ))))
}

/// One virtio-mmio device slot.
pub struct VirtioMmio {
    index: usize,
    device: SlotDevice,
    mem: Arc<GuestMemoryMmap>,
    notify: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    event_loop: Sender<LoopMessage>,
    wake_loop: EventFd,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    /// Queues the driver disabled (QueueReady = 0) while the device was
    /// active: the handlers keep them until a reset, but the register
    /// reads back 0 as the driver waits for (virtio 1.2, 4.2.2.2).
    disabled: Vec<bool>,
    /// Restored active: the device may ask its driver to announce itself
    /// once the guest runs ([`VirtioMmio::announce_after_restore`]).
    restored_active: bool,
}

impl VirtioMmio {
    /// Slot `index` serving `device`; `notify` holds one eventfd per queue
    /// (already registered as ioeventfds), `interrupt` the device's irqfd.
    pub fn new(
        index: usize,
        device: SlotDevice,
        mem: Arc<GuestMemoryMmap>,
        notify: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
        event_loop: Sender<LoopMessage>,
        wake_loop: EventFd,
    ) -> Self {
        VirtioMmio {
            index,
            device,
            mem,
            notify,
            interrupt,
            event_loop,
            wake_loop,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            disabled: Vec::new(),
            restored_active: false,
        }
    }

    fn send(&self, msg: LoopMessage) {
        if self.event_loop.send(msg).is_ok() {
            let _ = self.wake_loop.write(1);
        }
    }

    fn queue_mut(&mut self) -> Option<&mut virtio_queue::Queue> {
        let sel = u16::try_from(self.queue_sel).ok()?;
        self.device.queue_mut(sel)
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            if self.device.is_activated() {
                self.send(LoopMessage::Remove { device: self.index });
            }
            self.device.reset();
            self.disabled.clear();
            self.interrupt.status.store(0, Ordering::Release);
            return;
        }
        let was_ok = self.device.driver_ok();
        self.device.set_status(value);
        if !was_ok && self.device.driver_ok() && !self.device.is_activated() {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let events: std::io::Result<Vec<QueueEvents>> = self
            .notify
            .iter()
            .map(|n| {
                Ok(QueueEvents {
                    notify: n.try_clone()?,
                })
            })
            .collect();
        let outcome = events.map_err(|e| e.to_string()).and_then(|ev| {
            self.device
                .activate(self.mem.clone(), ev)
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(handlers) => self.send(LoopMessage::Add {
                device: self.index,
                kind: self.device.kind(),
                handlers,
                interrupt: self.interrupt.clone(),
            }),
            Err(e) => {
                eprintln!(
                    "vmm: {} {}: activation refused: {e}",
                    self.device.kind(),
                    self.index
                );
                let status = self.device.status() | STATUS_DEVICE_NEEDS_RESET;
                self.device.set_status(status & !STATUS_DRIVER_OK);
            }
        }
    }

    /// The transport's state for a snapshot (the VM paused); `positions`
    /// holds the served queues' (index, next_avail, next_used) from the
    /// event loop, which owns them while the device is active.
    pub fn save_state(&self, positions: &[(u16, u16, u16)]) -> VirtioMmioState {
        let queues = (0..self.device.num_queues())
            .filter_map(|i| self.device.queue(i).map(|q| (i, q)))
            .map(|(i, q)| {
                let served = positions.iter().find(|p| p.0 == i);
                QueueState {
                    size: q.size(),
                    ready: q.ready(),
                    disabled: self.disabled.get(usize::from(i)) == Some(&true),
                    desc: q.desc_table(),
                    avail: q.avail_ring(),
                    used: q.used_ring(),
                    next_avail: served.map_or(q.next_avail(), |p| p.1),
                    next_used: served.map_or(q.next_used(), |p| p.2),
                }
            })
            .collect();
        VirtioMmioState {
            status: self.device.status(),
            activated: self.device.is_activated(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            driver_features: self.device.driver_features(),
            interrupt_status: self.interrupt.status.load(Ordering::Acquire),
            queues,
        }
    }

    /// Resets the device as a driver writing status 0 does (its queue
    /// handlers leave the event loop), so that [`VirtioMmio::restore_state`]
    /// can put a transport that served a guest into a saved state (an
    /// in-place revert).
    pub fn reset_for_restore(&mut self) {
        self.set_status(0);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    /// Puts a fresh transport into `state`, activating its device (its
    /// queue handlers go to the event loop, which serves what the rings
    /// hold at once) when it was active.
    pub fn restore_state(&mut self, state: &VirtioMmioState) -> Result<(), String> {
        let kind = self.device.kind();
        if state.queues.len() != usize::from(self.device.num_queues()) {
            return Err(format!(
                "{} {}: the state has {} queues, the device {}",
                self.device.kind(),
                self.index,
                state.queues.len(),
                self.device.num_queues()
            ));
        }
        if state.driver_features & !self.device.device_features() != 0 {
            return Err(format!(
                "{} {}: the state's features {:#x} are not all offered ({:#x})",
                self.device.kind(),
                self.index,
                state.driver_features,
                self.device.device_features()
            ));
        }
        self.device
            .set_driver_features_page(0, state.driver_features as u32);
        self.device
            .set_driver_features_page(1, (state.driver_features >> 32) as u32);
        for (i, saved) in state.queues.iter().enumerate() {
            let q = self
                .device
                .queue_mut(i as u16)
                .ok_or_else(|| format!("{kind} {}: queue {i} is not settable", self.index))?;
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            q.set_size(saved.size);
            let (lo, hi) = split(saved.desc);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(saved.avail);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(saved.used);
            q.set_used_ring_address(lo, hi);
            q.set_ready(saved.ready);
            q.set_next_avail(saved.next_avail);
            q.set_next_used(saved.next_used);
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.disabled = state.queues.iter().map(|q| q.disabled).collect();
        self.interrupt
            .status
            .store(state.interrupt_status, Ordering::Release);
        if state.activated {
            self.device.set_status(state.status & !STATUS_DRIVER_OK);
            self.device.set_status(state.status);
            if !self.device.driver_ok() {
                return Err(format!(
                    "{kind} {}: status {:#x} was active but is not DRIVER_OK with features accepted",
                    self.index, state.status
                ));
            }
            self.activate();
            if !self.device.is_activated() {
                return Err(format!(
                    "{kind} {}: the saved queues cannot be served",
                    self.index
                ));
            }
            self.restored_active = true;
        } else {
            self.device.set_status(state.status);
        }
        Ok(())
    }

    /// Called as a restored VM resumes (once; later resumes do nothing):
    /// a device restored active starts announcing the guest (virtio-net:
    /// RARPs into the tap, and rounds of VIRTIO_NET_S_ANNOUNCE, each with
    /// a configuration interrupt, as QEMU's announce timers after a load).
    /// Returns when to call [`VirtioMmio::announce_tick`], `None` when
    /// nothing is left to do.
    pub fn announce_after_restore(&mut self) -> Option<Instant> {
        if !std::mem::take(&mut self.restored_active) || !self.device.is_activated() {
            return None;
        }
        let tick = self.device.announce();
        self.took_announce_tick(tick)
    }

    /// The next step of an announcement under way, at `now`; returns when
    /// to call again, `None` once done (or the device was reset).
    pub fn announce_tick(&mut self, now: Instant) -> Option<Instant> {
        if !self.device.is_activated() {
            return None;
        }
        let tick = self.device.announce_tick(now);
        self.took_announce_tick(tick)
    }

    fn took_announce_tick(
        &mut self,
        tick: blockdev::Result<blockdev::virtio::net::AnnounceTick>,
    ) -> Option<Instant> {
        match tick {
            Ok(tick) => {
                if tick.config_changed {
                    self.interrupt.config_changed();
                }
                tick.wake
            }
            Err(e) => {
                eprintln!("vmm: {} {}: {e}", self.device.kind(), self.index);
                None
            }
        }
    }

    /// The VM was paused for `by`: the device's announcement under way
    /// comes that much later.
    pub fn postpone_announce(&mut self, by: std::time::Duration) {
        self.device.postpone_announce(by);
    }

    /// The device's announcement under way, for a snapshot.
    pub fn saved_announce(&self) -> blockdev::virtio::net::announce::SavedAnnounce {
        self.device.saved_announce()
    }

    /// Reads the device's configuration space from byte `offset` (for a
    /// snapshot of a device whose configuration is state, as a NIC's MAC).
    pub fn read_device_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// Hands the device what a saved one held beyond the transport; call
    /// before [`VirtioMmio::restore_state`], which activates it.
    pub fn set_resume_state(
        &mut self,
        resume: blockdev::virtio::net::NetResume,
    ) -> Result<(), String> {
        self.device
            .set_resume_state(resume)
            .map_err(|e| format!("{} {}: {e}", self.device.kind(), self.index))
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let queue = u16::try_from(self.queue_sel)
            .ok()
            .and_then(|s| self.device.queue(s));
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => self.device.device_features_page(self.device_features_sel),
            REG_QUEUE_NUM_MAX => queue.map_or(0, |_| u32::from(self.device.queue_max_size())),
            REG_QUEUE_READY => {
                let disabled = self.disabled.get(self.queue_sel as usize) == Some(&true);
                queue.map_or(0, |q| u32::from(q.ready() && !disabled))
            }
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::Acquire),
            REG_STATUS => u32::from(self.device.status()),
            REG_CONFIG_GENERATION => self.device.config_generation(),
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => self
                .device
                .set_driver_features_page(self.driver_features_sel, value),
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.queue_mut() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY => {
                let sel = self.queue_sel as usize;
                if self.device.is_activated() {
                    if sel < usize::from(self.device.num_queues()) {
                        if self.disabled.len() <= sel {
                            self.disabled.resize(sel + 1, false);
                        }
                        self.disabled[sel] = value == 0;
                    }
                } else if let Some(q) = self.queue_mut() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                // Each address is a low register and the high one 4 bytes on.
                let (low, high) = if offset.is_multiple_of(16) {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                if let Some(q) = self.queue_mut() {
                    match offset & !4 {
                        REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            REG_QUEUE_NOTIFY => {
                // Only reached for indexes without an ioeventfd.
                if let Some(evt) = self.notify.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::AcqRel);
            }
            REG_STATUS => self.set_status(value as u8),
            _ => {}
        }
    }
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(data.try_into().expect("four bytes"));
        self.write_u32(offset, value);
    }
}
