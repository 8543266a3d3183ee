//! The part of the i8042 keyboard controller a guest uses to reset the
//! machine: writing 0xfe (pulse the reset line) to the command port 0x64.
//! Reads return an empty, ready controller.

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The data port.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Ports from the data port to the command port (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;
/// The command port's offset from the data port.
const COMMAND_OFFSET: u64 = 4;
/// The reset command.
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller; `reset` is written when the guest resets.
pub struct I8042 {
    reset: EventFd,
}

impl I8042 {
    /// A controller signalling resets on `reset`.
    pub fn new(reset: EventFd) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset.write(1) {
                eprintln!("vmm: cannot signal the guest's reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(COMMAND_OFFSET, &[0x20]);
        assert!(evt.read().is_err());
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
