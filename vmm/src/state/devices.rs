//! The devices' state records: the 8250 UART, the GED and each
//! virtio-mmio transport with its device's status and queues.

use vm_superio::serial::SerialState;

use super::record::{Payload, Record, RecordKind};
use super::StateError;

/// The UART's input FIFO holds at most this many bytes (vm-superio's).
pub const SERIAL_FIFO_MAX: usize = 64;
/// Most queues a virtio device may have in a state.
pub const MAX_QUEUES: usize = 64;

/// The serial port's registers and pending input as a record.
pub fn serial_record(state: &SerialState) -> Record {
    let mut payload = vec![
        state.baud_divisor_low,
        state.baud_divisor_high,
        state.interrupt_enable,
        state.interrupt_identification,
        state.line_control,
        state.line_status,
        state.modem_control,
        state.modem_status,
        state.scratch,
    ];
    let fifo = &state.in_buffer[..state.in_buffer.len().min(SERIAL_FIFO_MAX)];
    payload.push(fifo.len() as u8);
    payload.extend_from_slice(fifo);
    Record {
        kind: RecordKind::Serial,
        index: 0,
        payload,
    }
}

/// The serial port's state from its record.
pub fn serial_from(record: &Record) -> Result<SerialState, StateError> {
    let mut p = Payload::new(record);
    let mut regs = [0u8; 9];
    regs.copy_from_slice(p.take(9)?);
    let len = usize::from(p.u8()?);
    if len > SERIAL_FIFO_MAX {
        return Err(StateError::BadPayload {
            kind: record.kind as u16,
            reason: format!("{len} bytes of serial input, at most {SERIAL_FIFO_MAX}"),
        });
    }
    let in_buffer = p.take(len)?.to_vec();
    p.finish()?;
    Ok(SerialState {
        baud_divisor_low: regs[0],
        baud_divisor_high: regs[1],
        interrupt_enable: regs[2],
        interrupt_identification: regs[3],
        line_control: regs[4],
        line_status: regs[5],
        modem_control: regs[6],
        modem_status: regs[7],
        scratch: regs[8],
        in_buffer,
    })
}

/// One virtqueue's setup and position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// QueueNum.
    pub size: u16,
    /// QueueReady as the queue has it.
    pub ready: bool,
    /// Disabled by the driver while the device was active (QueueReady
    /// reads 0, the handler keeps serving until a reset).
    pub disabled: bool,
    /// The descriptor table's address.
    pub desc: u64,
    /// The available ring's address.
    pub avail: u64,
    /// The used ring's address.
    pub used: u64,
    /// The next available index the device will take.
    pub next_avail: u16,
    /// The next used index the device will write.
    pub next_used: u16,
}

/// A virtio-mmio transport and its device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioMmioState {
    /// The device status register.
    pub status: u8,
    /// Whether the device was activated (its queues served).
    pub activated: bool,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// The features the driver acknowledged.
    pub driver_features: u64,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Every queue of the device.
    pub queues: Vec<QueueState>,
}

impl VirtioMmioState {
    /// This state as the record of transport `index`.
    pub fn to_record(&self, index: u32) -> Record {
        let mut b = vec![self.status, u8::from(self.activated)];
        b.extend_from_slice(&self.device_features_sel.to_le_bytes());
        b.extend_from_slice(&self.driver_features_sel.to_le_bytes());
        b.extend_from_slice(&self.queue_sel.to_le_bytes());
        b.extend_from_slice(&self.driver_features.to_le_bytes());
        b.extend_from_slice(&self.interrupt_status.to_le_bytes());
        b.extend_from_slice(&(self.queues.len() as u16).to_le_bytes());
        for q in &self.queues {
            b.extend_from_slice(&q.size.to_le_bytes());
            b.push(u8::from(q.ready));
            b.push(u8::from(q.disabled));
            b.extend_from_slice(&q.desc.to_le_bytes());
            b.extend_from_slice(&q.avail.to_le_bytes());
            b.extend_from_slice(&q.used.to_le_bytes());
            b.extend_from_slice(&q.next_avail.to_le_bytes());
            b.extend_from_slice(&q.next_used.to_le_bytes());
        }
        Record {
            kind: RecordKind::VirtioMmio,
            index,
            payload: b,
        }
    }

    /// The state in `record`.
    pub fn from_record(record: &Record) -> Result<Self, StateError> {
        let mut p = Payload::new(record);
        let flag = |v: u8, what: &str| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::BadPayload {
                kind: RecordKind::VirtioMmio as u16,
                reason: format!("{what} is {v}, not 0 or 1"),
            }),
        };
        let status = p.u8()?;
        let activated = flag(p.u8()?, "activated")?;
        let device_features_sel = p.u32()?;
        let driver_features_sel = p.u32()?;
        let queue_sel = p.u32()?;
        let driver_features = p.u64()?;
        let interrupt_status = p.u32()?;
        let count = usize::from(p.u16()?);
        if count > MAX_QUEUES {
            return Err(StateError::BadPayload {
                kind: record.kind as u16,
                reason: format!("{count} queues, at most {MAX_QUEUES}"),
            });
        }
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            queues.push(QueueState {
                size: p.u16()?,
                ready: flag(p.u8()?, "ready")?,
                disabled: flag(p.u8()?, "disabled")?,
                desc: p.u64()?,
                avail: p.u64()?,
                used: p.u64()?,
                next_avail: p.u16()?,
                next_used: p.u16()?,
            });
        }
        p.finish()?;
        Ok(VirtioMmioState {
            status,
            activated,
            device_features_sel,
            driver_features_sel,
            queue_sel,
            driver_features,
            interrupt_status,
            queues,
        })
    }
}

/// The GED's latched events as a record.
pub fn ged_record(events: u32) -> Record {
    Record {
        kind: RecordKind::Ged,
        index: 0,
        payload: events.to_le_bytes().to_vec(),
    }
}

/// The GED's latched events from its record.
pub fn ged_from(record: &Record) -> Result<u32, StateError> {
    let mut p = Payload::new(record);
    let events = p.u32()?;
    p.finish()?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_records_round_trip() {
        let serial = SerialState {
            scratch: 7,
            in_buffer: b"typed".to_vec(),
            ..Default::default()
        };
        assert_eq!(serial_from(&serial_record(&serial)).unwrap(), serial);
        let mmio = VirtioMmioState {
            status: 0xf,
            activated: true,
            driver_features: 1 << 32 | 0x40,
            interrupt_status: 1,
            queues: vec![QueueState {
                size: 256,
                ready: true,
                desc: 0x10_0000,
                avail: 0x10_1000,
                used: 0x10_2000,
                next_avail: 65535,
                next_used: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            VirtioMmioState::from_record(&mmio.to_record(2)).unwrap(),
            mmio
        );
        assert_eq!(ged_from(&ged_record(1)).unwrap(), 1);
    }

    #[test]
    fn device_records_refuse_bad_fields() {
        let mut serial = serial_record(&SerialState::default());
        serial.payload[9] = 200;
        assert!(serial_from(&serial).is_err());
        let mut mmio = VirtioMmioState::default().to_record(0);
        mmio.payload[1] = 2;
        assert!(VirtioMmioState::from_record(&mmio).is_err());
        let mut many = VirtioMmioState::default().to_record(0);
        let n = many.payload.len();
        many.payload[n - 2..].copy_from_slice(&1000u16.to_le_bytes());
        assert!(VirtioMmioState::from_record(&many).is_err());
    }
}
