//! Devices and the buses that route port I/O and MMIO exits to them.
//!
//! - [`serial`]: the 8250 UART at 0x3f8, IRQ 4 (vm-superio), on the terminal.
//! - [`virtio_mmio`]: the virtio-mmio transport of each disk and network
//!   interface, in front of blockdev's virtio-blk or virtio-net device
//!   model.
//! - [`net`]: the network interfaces' tap queues and slots.
//! - [`event_loop`]: the device thread serving virtio queues and terminal
//!   input.
//! - [`ged`]: the ACPI Generic Event Device (power button) and the
//!   hardware-reduced sleep registers (power off).
//! - [`vmgenid`]: the VM generation ID the DSDT's `\_SB.VGEN` points at.
//! - [`i8042`]: just enough of the keyboard controller to turn the guest's
//!   reset (0xfe to port 0x64) into a clean exit.
//!
//! Accesses that hit no device read as all ones and are logged (the first
//! few per address), and the guest keeps running.

pub mod announcer;
pub mod event_loop;
pub mod ged;
pub mod i8042;
pub mod net;
pub mod serial;
pub mod virtio_mmio;
pub mod vmgenid;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Something on a bus. Offsets are relative to the device's base.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the vCPU threads.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Accesses to unknown addresses logged per address before going quiet.
const UNKNOWN_LOG_LIMIT: u32 = 4;

/// A set of non-overlapping address ranges, each served by a device.
#[derive(Default)]
pub struct Bus {
    name: &'static str,
    ranges: Vec<(u64, u64, SharedDevice)>,
    unknown: Mutex<HashMap<u64, u32>>,
}

impl Bus {
    /// An empty bus; `name` ("port", "MMIO") appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ..Default::default()
        }
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) {
        debug_assert!(self
            .ranges
            .iter()
            .all(|&(b, l, _)| base + len <= b || b + l <= base));
        self.ranges.push((base, len, device));
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        self.ranges
            .iter()
            .find(|&&(base, size, _)| addr >= base && addr + len as u64 <= base + size)
            .map(|(base, _, dev)| (addr - base, dev))
    }

    fn unknown_access(&self, what: &str, addr: u64, len: usize) {
        let mut seen = self.unknown.lock().expect("bus log lock");
        let n = seen.entry(addr).or_insert(0);
        *n += 1;
        if *n <= UNKNOWN_LOG_LIMIT {
            eprintln!(
                "vmm: guest {what} of {len} bytes at unknown {} address {addr:#x}{}",
                self.name,
                if *n == UNKNOWN_LOG_LIMIT {
                    " (not logged again)"
                } else {
                    ""
                }
            );
        }
    }

    /// Routes a read; unknown addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => dev.lock().expect("device lock").read(offset, data),
            None => {
                data.fill(0xff);
                self.unknown_access("read", addr, data.len());
            }
        }
    }

    /// Routes a write; writes to unknown addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => dev.lock().expect("device lock").write(offset, data),
            None => self.unknown_access("write", addr, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_tolerates_holes() {
        let mut bus = Bus::new("port");
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(1))));
        let mut b = [0u8; 1];
        bus.read(0x3f9, &mut b);
        assert_eq!(b, [2]);
        bus.write(0x3f8, &[10]);
        bus.read(0x3f8, &mut b);
        assert_eq!(b, [10]);
        let mut w = [0u8; 2];
        bus.read(0x3ff, &mut w); // straddles the end
        assert_eq!(w, [0xff, 0xff]);
        bus.write(0x510, &[1, 2]);
    }
}
