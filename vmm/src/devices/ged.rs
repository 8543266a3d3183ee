//! The ACPI platform devices of a hardware-reduced machine, as QEMU's
//! microvm and Cloud Hypervisor have them:
//!
//! - the Generic Event Device (`ACPI0013`): one 32-bit event register in
//!   MMIO, read (and cleared) by the DSDT's `_EVT` method when the GED's
//!   interrupt fires; bit 0 is the power button, which `_EVT` turns into
//!   `Notify(\_SB.PWRB, 0x80)` (a Linux guest then powers off); bit 1 is
//!   a new VM generation ID, which `_EVT` turns into
//!   `Notify(\_SB.VGEN, 0x80)` (see `devices::vmgenid`);
//! - the sleep control and status registers the FADT points at: writing
//!   SLP_EN with SLP_TYP 5 (the DSDT's `\_S5_`) to the control port powers
//!   the machine off.

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The power-button bit of the GED's event register.
pub const GED_EVENT_POWER_BUTTON: u32 = 1;
/// The new-generation-ID bit of the GED's event register.
pub const GED_EVENT_VMGENID: u32 = 2;
/// SLP_TYP of S5 (soft off), as the DSDT's `\_S5_` package gives it.
pub const SLEEP_TYPE_S5: u8 = 5;
/// SLP_EN: bit 5 of the sleep control register.
const SLEEP_ENABLE: u8 = 1 << 5;

/// The Generic Event Device.
pub struct Ged {
    events: u32,
    irq: EventFd,
}

impl Ged {
    /// A GED raising `irq` (an irqfd of its GSI).
    pub fn new(irq: EventFd) -> Self {
        Ged { events: 0, irq }
    }

    /// The latched events, for a snapshot.
    pub fn events(&self) -> u32 {
        self.events
    }

    /// Restores latched events.
    pub fn set_events(&mut self, events: u32) {
        self.events = events;
    }

    /// Presses the power button: sets its event bit and interrupts.
    pub fn power_button(&mut self) -> std::io::Result<()> {
        self.events |= GED_EVENT_POWER_BUTTON;
        self.irq.write(1)
    }

    /// Tells the guest its generation ID changed: sets the event bit and
    /// interrupts.
    pub fn generation_changed(&mut self) -> std::io::Result<()> {
        self.events |= GED_EVENT_VMGENID;
        self.irq.write(1)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.events.to_le_bytes());
            self.events = 0;
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The sleep control (offset 0) and status (offset 1) registers.
pub struct SleepRegisters {
    power_off: Box<dyn Fn() + Send>,
}

impl SleepRegisters {
    /// Registers calling `power_off` when the guest enters S5.
    pub fn new(power_off: Box<dyn Fn() + Send>) -> Self {
        SleepRegisters { power_off }
    }
}

impl BusDevice for SleepRegisters {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: never woken (WAK_STS clear).
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        if offset == 0 && value & SLEEP_ENABLE != 0 && (value >> 2) & 7 == SLEEP_TYPE_S5 {
            (self.power_off)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn power_button_sets_and_read_clears() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        let mut word = [0u8; 4];
        ged.read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0);
        ged.power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        ged.read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), GED_EVENT_POWER_BUTTON);
        ged.read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0);
    }

    #[test]
    fn a_new_generation_sets_its_own_bit() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        ged.generation_changed().unwrap();
        ged.power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        let mut word = [0u8; 4];
        ged.read(0, &mut word);
        assert_eq!(
            u32::from_le_bytes(word),
            GED_EVENT_VMGENID | GED_EVENT_POWER_BUTTON
        );
    }

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let mut regs = SleepRegisters::new(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        regs.write(0, &[SLEEP_TYPE_S5 << 2]); // no SLP_EN
        regs.write(0, &[(3 << 2) | SLEEP_ENABLE]); // S3
        regs.write(1, &[(SLEEP_TYPE_S5 << 2) | SLEEP_ENABLE]); // status port
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        regs.write(0, &[(SLEEP_TYPE_S5 << 2) | SLEEP_ENABLE]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
