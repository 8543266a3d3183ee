//! The 8250 UART at port 0x3f8: vm-superio's model, its interrupt an
//! eventfd that KVM injects as GSI 4 (irqfd), its output the terminal.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The serial port's I/O base.
pub const SERIAL_PORT: u64 = 0x3f8;
/// Ports the UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises the serial interrupt by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART on the port bus.
pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    /// Whether the guest has written anything yet (for the benchmark's
    /// time to first byte).
    pub first_byte: Option<std::time::Instant>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), out),
            first_byte: None,
        }
    }

    /// The UART's registers and pending input, for a snapshot.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.uart.state()
    }

    /// Puts the UART into a saved state, keeping its interrupt and output.
    pub fn restore(&mut self, state: &vm_superio::serial::SerialState) -> std::io::Result<()> {
        let irq = self.uart.interrupt_evt().0.try_clone()?;
        let out = std::mem::replace(self.uart.writer_mut(), Box::new(std::io::sink()));
        self.uart = Serial::from_state(state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(())
    }

    /// Bytes typed on the terminal, for the guest to read.
    pub fn input(&mut self, bytes: &[u8]) {
        if let Err(e) = self.uart.enqueue_raw_bytes(bytes) {
            eprintln!("vmm: serial input dropped: {e:?}");
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if offset == 0 && self.first_byte.is_none() {
            self.first_byte = Some(std::time::Instant::now());
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            eprintln!("vmm: serial output failed: {e:?}");
        }
        // The guest's lines reach the terminal as they are written.
        if offset == 0 && data[0] == b'\n' {
            let _ = self.uart.writer_mut().flush();
        }
    }
}
