//! A whole machine's state but its RAM: the configuration it belongs to,
//! every vCPU, the VM-wide KVM state (PIT2, CLOCK, IRQCHIP) and the
//! devices, as one record stream ending in an end record that counts the
//! records before it.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use vm_superio::serial::SerialState;
use zerocopy::IntoBytes;

use super::devices::{self, VirtioMmioState};
use super::net::NetDeviceState;
use super::record::{read_record, write_record, Payload, Record, RecordKind};
use super::vcpu::{exact_struct, VcpuState, VCPU_KINDS};
use super::StateError;

/// Most vCPUs a state may describe (far above what the VMM builds).
pub const MAX_VCPUS: u32 = 256;
/// Most records a machine state may hold.
const MAX_RECORDS: usize = 16 * 1024;

/// What a state must match in the VM it is restored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSummary {
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// virtio-mmio disks.
    pub disks: u32,
    /// virtio-net interfaces (after the disks' slots).
    pub nets: u32,
}

impl ConfigSummary {
    /// As a record.
    pub fn to_record(self) -> Record {
        let mut payload = self.cpus.to_le_bytes().to_vec();
        payload.extend_from_slice(&self.memory.to_le_bytes());
        payload.extend_from_slice(&self.disks.to_le_bytes());
        // States without interfaces keep the record they had before
        // interfaces could be saved.
        if self.nets != 0 {
            payload.extend_from_slice(&self.nets.to_le_bytes());
        }
        Record {
            kind: RecordKind::Config,
            index: 0,
            payload,
        }
    }

    /// From its record (16 bytes without interfaces, 20 with).
    pub fn from_record(record: &Record) -> Result<Self, StateError> {
        let mut p = Payload::new(record);
        let mut summary = ConfigSummary {
            cpus: p.u32()?,
            memory: p.u64()?,
            disks: p.u32()?,
            nets: 0,
        };
        if record.payload.len() > 16 {
            summary.nets = p.u32()?;
            if summary.nets == 0 {
                return Err(StateError::BadPayload {
                    kind: record.kind as u16,
                    reason: "a count of 0 interfaces is written as no count".into(),
                });
            }
        }
        p.finish()?;
        Ok(summary)
    }

    /// Refuses a state saved for another configuration, naming the
    /// first difference.
    pub fn check(self, vm: ConfigSummary) -> Result<(), StateError> {
        if self.cpus != vm.cpus {
            return Err(StateError::Config(format!(
                "the state has {} vCPUs, the VM {}",
                self.cpus, vm.cpus
            )));
        }
        if self.memory != vm.memory {
            return Err(StateError::Config(format!(
                "the state has {} MiB of memory, the VM {} MiB",
                self.memory >> 20,
                vm.memory >> 20
            )));
        }
        if self.disks != vm.disks {
            return Err(StateError::Config(format!(
                "the state has {} disks, the VM {}",
                self.disks, vm.disks
            )));
        }
        if self.nets != vm.nets {
            return Err(StateError::Config(format!(
                "the state has {} network interfaces, the VM {}",
                self.nets, vm.nets
            )));
        }
        Ok(())
    }
}

/// The end record of a stream that held `count` records before it.
pub fn end_record(count: usize) -> Record {
    Record {
        kind: RecordKind::End,
        index: 0,
        payload: (count as u64).to_le_bytes().to_vec(),
    }
}

/// Checks an end record against the count of records read before it.
pub fn check_end(record: &Record, count: usize) -> Result<(), StateError> {
    let mut p = Payload::new(record);
    let expected = p.u64()?;
    p.finish()?;
    if expected != count as u64 {
        return Err(StateError::Layout(format!(
            "the end record counts {expected} records, {count} came before it"
        )));
    }
    Ok(())
}

/// Everything of a machine but its RAM.
pub struct MachineState {
    /// The configuration saved with it.
    pub config: ConfigSummary,
    /// Each vCPU, by id.
    pub vcpus: Vec<VcpuState>,
    /// KVM_GET_PIT2.
    pub pit: kvm_pit_state2,
    /// KVM_GET_CLOCK.
    pub clock: kvm_clock_data,
    /// KVM_GET_IRQCHIP of the master PIC, the slave PIC and the IOAPIC.
    pub irqchips: [kvm_irqchip; 3],
    /// The UART.
    pub serial: SerialState,
    /// The GED's latched events.
    pub ged: u32,
    /// Each virtio-mmio transport, by slot (the disks', then the
    /// interfaces').
    pub virtio: Vec<VirtioMmioState>,
    /// Each network interface's device state beyond its transport.
    pub nets: Vec<NetDeviceState>,
}

const IRQCHIP_KINDS: [RecordKind; 3] = [
    RecordKind::PicMaster,
    RecordKind::PicSlave,
    RecordKind::Ioapic,
];

impl MachineState {
    /// The record stream.
    pub fn to_bytes(&self) -> Result<Vec<u8>, StateError> {
        let mut records = vec![self.config.to_record()];
        for (id, vcpu) in self.vcpus.iter().enumerate() {
            records.extend(vcpu.to_records(id as u32));
        }
        let raw = |kind, payload: &[u8]| Record {
            kind,
            index: 0,
            payload: payload.to_vec(),
        };
        records.push(raw(RecordKind::Pit2, self.pit.as_bytes()));
        records.push(raw(RecordKind::Clock, self.clock.as_bytes()));
        for (kind, chip) in IRQCHIP_KINDS.into_iter().zip(&self.irqchips) {
            records.push(raw(kind, chip.as_bytes()));
        }
        records.push(devices::serial_record(&self.serial));
        records.push(raw(RecordKind::I8042, &[]));
        records.push(devices::ged_record(self.ged));
        for (slot, transport) in self.virtio.iter().enumerate() {
            records.push(transport.to_record(slot as u32));
        }
        for (n, net) in self.nets.iter().enumerate() {
            records.push(net.to_record(n as u32));
        }
        records.push(end_record(records.len()));
        let mut out = Vec::new();
        for r in &records {
            write_record(&mut out, r.kind, r.index, &r.payload)?;
        }
        Ok(out)
    }

    /// Reads and checks a record stream written by [`MachineState::to_bytes`]
    /// for a VM configured as `vm`.
    pub fn parse(bytes: &[u8], vm: ConfigSummary) -> Result<Self, StateError> {
        let mut input = bytes;
        let mut offset = 0;
        let mut records = Vec::new();
        loop {
            let Some(record) = read_record(&mut input, &mut offset)? else {
                return Err(StateError::Truncated { offset });
            };
            if record.kind == RecordKind::End {
                check_end(&record, records.len())?;
                break;
            }
            if records.len() >= MAX_RECORDS {
                return Err(StateError::Layout(format!(
                    "more than {MAX_RECORDS} records"
                )));
            }
            records.push(record);
        }
        if !input.is_empty() {
            return Err(StateError::Layout(format!(
                "{} bytes after the end record",
                input.len()
            )));
        }
        let mut cursor = Cursor {
            records: &records,
            at: 0,
        };
        let config = ConfigSummary::from_record(cursor.next(RecordKind::Config, 0)?)?;
        if config.cpus == 0 || config.cpus > MAX_VCPUS {
            return Err(StateError::Config(format!(
                "{} vCPUs is out of range",
                config.cpus
            )));
        }
        config.check(vm)?;
        let mut vcpus = Vec::with_capacity(config.cpus as usize);
        for id in 0..config.cpus {
            let group = cursor.group(VCPU_KINDS.len())?;
            if let Some(bad) = group.iter().find(|r| r.index != id) {
                return Err(StateError::Layout(format!(
                    "vCPU {} record where vCPU {id}'s belong",
                    bad.index
                )));
            }
            vcpus.push(VcpuState::from_records(group)?);
        }
        let pit = exact_struct(cursor.next(RecordKind::Pit2, 0)?)?;
        let clock = exact_struct(cursor.next(RecordKind::Clock, 0)?)?;
        let mut irqchips = [kvm_irqchip::default(); 3];
        for (i, kind) in IRQCHIP_KINDS.into_iter().enumerate() {
            let chip: kvm_irqchip = exact_struct(cursor.next(kind, 0)?)?;
            if chip.chip_id != i as u32 {
                return Err(StateError::BadPayload {
                    kind: kind as u16,
                    reason: format!("chip id {}, not {i}", chip.chip_id),
                });
            }
            irqchips[i] = chip;
        }
        let serial = devices::serial_from(cursor.next(RecordKind::Serial, 0)?)?;
        Payload::new(cursor.next(RecordKind::I8042, 0)?).finish()?;
        let ged = devices::ged_from(cursor.next(RecordKind::Ged, 0)?)?;
        let mut virtio = Vec::new();
        // Both counts were checked against the VM's (at most MAX_DISKS).
        for slot in 0..config.disks + config.nets {
            virtio.push(VirtioMmioState::from_record(
                cursor.next(RecordKind::VirtioMmio, slot)?,
            )?);
        }
        let mut nets = Vec::new();
        for n in 0..config.nets {
            nets.push(NetDeviceState::from_record(
                cursor.next(RecordKind::VirtioNet, n)?,
            )?);
        }
        if let Some(extra) = records.get(cursor.at) {
            return Err(StateError::Layout(format!(
                "unexpected record kind {:#x} after the devices",
                extra.kind as u16
            )));
        }
        Ok(MachineState {
            config,
            vcpus,
            pit,
            clock,
            irqchips,
            serial,
            ged,
            virtio,
            nets,
        })
    }
}

struct Cursor<'a> {
    records: &'a [Record],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self, kind: RecordKind, index: u32) -> Result<&'a Record, StateError> {
        let record = self.records.get(self.at).ok_or_else(|| {
            StateError::Layout(format!("record kind {:#x} is missing", kind as u16))
        })?;
        if record.kind != kind || record.index != index {
            return Err(StateError::Layout(format!(
                "record kind {:#x} #{} where kind {:#x} #{index} belongs",
                record.kind as u16, record.index, kind as u16
            )));
        }
        self.at += 1;
        Ok(record)
    }

    fn group(&mut self, n: usize) -> Result<&'a [Record], StateError> {
        let group = self
            .records
            .get(self.at..self.at + n)
            .ok_or_else(|| StateError::Layout("vCPU records are missing".into()))?;
        self.at += n;
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::write_record;

    fn vcpu() -> VcpuState {
        VcpuState {
            mp_state: Default::default(),
            regs: kvm_bindings::kvm_regs {
                rip: 0x1234,
                ..Default::default()
            },
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            tsc_khz: 1_000_000,
            cpuid: vec![Default::default(); 2],
            msrs: vec![Default::default(); 3],
            events: Default::default(),
        }
    }

    fn machine(cpus: u32, disks: u32) -> MachineState {
        machine_with_nets(cpus, disks, 0)
    }

    fn machine_with_nets(cpus: u32, disks: u32, nets: u32) -> MachineState {
        let mut irqchips = [kvm_irqchip::default(); 3];
        for (id, chip) in irqchips.iter_mut().enumerate() {
            chip.chip_id = id as u32;
        }
        MachineState {
            config: ConfigSummary {
                cpus,
                memory: 32 << 20,
                disks,
                nets,
            },
            vcpus: (0..cpus).map(|_| vcpu()).collect(),
            pit: Default::default(),
            clock: Default::default(),
            irqchips,
            serial: Default::default(),
            ged: 1,
            virtio: (0..disks + nets)
                .map(|_| VirtioMmioState::default())
                .collect(),
            nets: (0..nets)
                .map(|n| NetDeviceState {
                    mac: [0x52, 0x54, 0, 0, 0, n as u8],
                    max_pairs: 1,
                    resume: blockdev::virtio::net::NetResume {
                        active_pairs: 1,
                        rx_stash: vec![vec![n as u16, 7]],
                        announce: Default::default(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_configuration_refusals() {
        let state = machine(2, 1);
        let bytes = state.to_bytes().unwrap();
        let back = MachineState::parse(&bytes, state.config).unwrap();
        assert_eq!(back.to_bytes().unwrap(), bytes);
        assert_eq!(back.vcpus[1].regs.rip, 0x1234);
        assert_eq!(back.vcpus[0].msrs.len(), 3);
        for (other, says) in [
            (
                ConfigSummary {
                    cpus: 1,
                    ..state.config
                },
                "2 vCPUs, the VM 1",
            ),
            (
                ConfigSummary {
                    memory: 64 << 20,
                    ..state.config
                },
                "32 MiB of memory, the VM 64 MiB",
            ),
            (
                ConfigSummary {
                    disks: 0,
                    ..state.config
                },
                "1 disks, the VM 0",
            ),
        ] {
            let err = MachineState::parse(&bytes, other)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn interfaces_round_trip_and_must_match() {
        let state = machine_with_nets(1, 1, 2);
        let bytes = state.to_bytes().unwrap();
        let back = MachineState::parse(&bytes, state.config).unwrap();
        assert_eq!(back.nets, state.nets);
        assert_eq!(back.virtio.len(), 3);
        assert_eq!(back.to_bytes().unwrap(), bytes);
        let none = ConfigSummary {
            nets: 0,
            ..state.config
        };
        let err = MachineState::parse(&bytes, none).err().unwrap().to_string();
        assert!(err.contains("2 network interfaces, the VM 0"), "{err}");
        // A state without interfaces keeps its 16-byte configuration
        // record (those saved before interfaces could be).
        let old = machine(1, 1);
        assert_eq!(old.config.to_record().payload.len(), 16);
        let err = MachineState::parse(
            &old.to_bytes().unwrap(),
            ConfigSummary {
                nets: 1,
                ..old.config
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("0 network interfaces, the VM 1"), "{err}");
    }

    #[test]
    fn records_out_of_order_or_trailing_are_refused() {
        let state = machine(1, 0);
        let bytes = state.to_bytes().unwrap();
        // Swap REGS and SREGS of vCPU 0 (records 2 and 3).
        let mut records = Vec::new();
        let mut input = &bytes[..];
        let mut offset = 0;
        while let Some(r) = read_record(&mut input, &mut offset).unwrap() {
            records.push(r);
        }
        records.swap(2, 3);
        let mut swapped = Vec::new();
        for r in &records {
            write_record(&mut swapped, r.kind, r.index, &r.payload).unwrap();
        }
        let err = MachineState::parse(&swapped, state.config).err().unwrap();
        assert!(matches!(err, StateError::Layout(_)), "{err}");
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(MachineState::parse(&trailing, state.config).is_err());
        assert!(matches!(
            MachineState::parse(&bytes[..bytes.len() - 28], state.config),
            Err(StateError::Truncated { .. })
        ));
    }
}
