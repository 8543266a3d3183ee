//! One vCPU's state: saved in the order (MP_STATE first,
//! VCPU_EVENTS last) and restored in KVM's (CPUID2 first, LAPIC after
//! SREGS and before the MSRs, VCPU_EVENTS last).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_sync_regs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId,
    Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::record::{Payload, Record, RecordKind};
use super::StateError;

/// Everything KVM holds of one vCPU.
pub struct VcpuState {
    /// KVM_GET_MP_STATE.
    pub mp_state: kvm_mp_state,
    /// KVM_GET_REGS.
    pub regs: kvm_regs,
    /// KVM_GET_SREGS.
    pub sregs: kvm_sregs,
    /// KVM_GET_FPU.
    pub fpu: kvm_fpu,
    /// KVM_GET_XSAVE (the legacy 4 KiB area: no dynamic features are
    /// enabled for the guest).
    pub xsave: kvm_xsave,
    /// KVM_GET_XCRS.
    pub xcrs: kvm_xcrs,
    /// KVM_GET_DEBUGREGS.
    pub debugregs: kvm_debugregs,
    /// KVM_GET_LAPIC.
    pub lapic: kvm_lapic_state,
    /// KVM_GET_TSC_KHZ.
    pub tsc_khz: u32,
    /// KVM_GET_CPUID2.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that reads.
    pub msrs: Vec<kvm_msr_entry>,
    /// KVM_GET_VCPU_EVENTS.
    pub events: kvm_vcpu_events,
}

/// The record kinds of a vCPU, in the order they are written and read.
pub const VCPU_KINDS: [RecordKind; 12] = [
    RecordKind::MpState,
    RecordKind::Regs,
    RecordKind::Sregs,
    RecordKind::Fpu,
    RecordKind::Xsave,
    RecordKind::Xcrs,
    RecordKind::DebugRegs,
    RecordKind::Lapic,
    RecordKind::TscKhz,
    RecordKind::Cpuid2,
    RecordKind::Msrs,
    RecordKind::VcpuEvents,
];

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |e| StateError::Kvm {
        what,
        reason: e.to_string(),
    }
}

impl VcpuState {
    /// Reads `vcpu`'s state; `msr_indices` is KVM_GET_MSR_INDEX_LIST.
    /// The vCPU must be out of KVM_RUN.
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, StateError> {
        let mut state = Self::save_but_lapic(vcpu, msr_indices, None)?;
        state.lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        Ok(state)
    }

    /// [`VcpuState::save`] but the LAPIC, left zeroed for the caller to
    /// read (a migration reads it after the devices' drain, which may
    /// raise an interrupt into it: `crate::vcpu_capture`), with REGS,
    /// SREGS and VCPU_EVENTS from `synced` when given: what KVM stored
    /// into `kvm_run` at the vCPU's last exit (KVM_CAP_SYNC_REGS), the
    /// same reads as the three ioctls.
    pub fn save_but_lapic(
        vcpu: &VcpuFd,
        msr_indices: &[u32],
        synced: Option<&kvm_sync_regs>,
    ) -> Result<Self, StateError> {
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let (regs, sregs) = match synced {
            Some(synced) => (synced.regs, synced.sregs),
            None => (
                vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
                vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            ),
        };
        let fpu = vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let tsc_khz = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(vcpu, msr_indices)?;
        let events = match synced {
            Some(synced) => synced.events,
            None => vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        };
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debugregs,
            lapic: kvm_lapic_state::default(),
            tsc_khz,
            cpuid,
            msrs,
            events,
        })
    }

    /// Sets this state on `vcpu` (created, never run since).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), StateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| StateError::BadPayload {
            kind: RecordKind::Cpuid2 as u16,
            reason: "too many entries".into(),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(kvm("KVM_SET_FPU"))?;
        // SAFETY: `self.xsave` is a whole 4 KiB kvm_xsave, and the guest
        // has no dynamically enabled XSAVE features (none is requested
        // with ARCH_REQ_XCOMP_GUEST_PERM), so KVM reads no more than that.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let here = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        if here != self.tsc_khz {
            vcpu.set_tsc_khz(self.tsc_khz)
                .map_err(|e| StateError::Kvm {
                    what: "KVM_SET_TSC_KHZ",
                    reason: format!(
                        "the state's TSC runs at {} kHz, this host's at {here} kHz: {e}",
                        self.tsc_khz
                    ),
                })?;
        }
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| StateError::BadPayload {
            kind: RecordKind::Msrs as u16,
            reason: "too many entries".into(),
        })?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if written != self.msrs.len() {
            return Err(StateError::Kvm {
                what: "KVM_SET_MSRS",
                reason: format!("MSR {:#x} was refused", self.msrs[written].index),
            });
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// This state as records of vCPU `index`, in [`VCPU_KINDS`] order.
    pub fn to_records(&self, index: u32) -> Vec<Record> {
        let mut cpuid = (self.cpuid.len() as u32).to_le_bytes().to_vec();
        for entry in &self.cpuid {
            cpuid.extend_from_slice(entry.as_bytes());
        }
        let mut msrs = (self.msrs.len() as u32).to_le_bytes().to_vec();
        for entry in &self.msrs {
            msrs.extend_from_slice(entry.as_bytes());
        }
        let payloads: [Vec<u8>; 12] = [
            self.mp_state.as_bytes().to_vec(),
            self.regs.as_bytes().to_vec(),
            self.sregs.as_bytes().to_vec(),
            fpu_bytes(&self.fpu),
            self.xsave.as_bytes().to_vec(),
            self.xcrs.as_bytes().to_vec(),
            self.debugregs.as_bytes().to_vec(),
            self.lapic.as_bytes().to_vec(),
            self.tsc_khz.to_le_bytes().to_vec(),
            cpuid,
            msrs,
            self.events.as_bytes().to_vec(),
        ];
        VCPU_KINDS
            .into_iter()
            .zip(payloads)
            .map(|(kind, payload)| Record {
                kind,
                index,
                payload,
            })
            .collect()
    }

    /// The state in `records` (exactly [`VCPU_KINDS`], in order, of one
    /// vCPU).
    pub fn from_records(records: &[Record]) -> Result<Self, StateError> {
        if records.len() != VCPU_KINDS.len() {
            return Err(StateError::Layout(format!(
                "a vCPU has {} records, not {}",
                records.len(),
                VCPU_KINDS.len()
            )));
        }
        for (record, kind) in records.iter().zip(VCPU_KINDS) {
            if record.kind != kind {
                return Err(StateError::Layout(format!(
                    "vCPU {} record {:#x} where {:#x} belongs",
                    record.index, record.kind as u16, kind as u16
                )));
            }
        }
        Ok(VcpuState {
            mp_state: exact(&records[0])?,
            regs: exact(&records[1])?,
            sregs: exact(&records[2])?,
            fpu: fpu_from(&records[3])?,
            xsave: exact(&records[4])?,
            xcrs: exact(&records[5])?,
            debugregs: exact(&records[6])?,
            lapic: exact(&records[7])?,
            tsc_khz: {
                let mut p = Payload::new(&records[8]);
                let khz = p.u32()?;
                p.finish()?;
                khz
            },
            cpuid: entries(&records[9], KVM_MAX_CPUID_ENTRIES)?,
            msrs: entries(&records[10], KVM_MAX_MSR_ENTRIES)?,
            events: exact(&records[11])?,
        })
    }
}

/// Reads every MSR of the index list that KVM lets us read (KVM stops
/// at the first it cannot; that one is skipped and the rest read).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: Vec<u32> = indices.to_vec();
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::Kvm {
            what: "KVM_GET_MSRS",
            reason: format!("{} MSRs is too many", entries.len()),
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        rest.drain(..(n + 1).min(rest.len()));
    }
    Ok(out)
}

fn exact<T: FromBytes>(record: &Record) -> Result<T, StateError> {
    T::read_from_bytes(&record.payload).map_err(|_| StateError::BadPayload {
        kind: record.kind as u16,
        reason: format!(
            "{} bytes where {} belong",
            record.payload.len(),
            std::mem::size_of::<T>()
        ),
    })
}

fn entries<T: FromBytes + IntoBytes + Immutable + Copy>(
    record: &Record,
    max: usize,
) -> Result<Vec<T>, StateError> {
    let mut p = Payload::new(record);
    let count = p.u32()? as usize;
    if count > max {
        return Err(StateError::BadPayload {
            kind: record.kind as u16,
            reason: format!("{count} entries, at most {max}"),
        });
    }
    let size = std::mem::size_of::<T>();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let bytes = p.take(size)?;
        out.push(
            T::read_from_bytes(bytes).map_err(|_| StateError::BadPayload {
                kind: record.kind as u16,
                reason: "entry of the wrong size".into(),
            })?,
        );
    }
    p.finish()?;
    Ok(out)
}

/// kvm_fpu's fields in order, little-endian (416 bytes).
fn fpu_bytes(fpu: &kvm_fpu) -> Vec<u8> {
    let mut out = Vec::with_capacity(416);
    for reg in &fpu.fpr {
        out.extend_from_slice(reg);
    }
    out.extend_from_slice(&fpu.fcw.to_le_bytes());
    out.extend_from_slice(&fpu.fsw.to_le_bytes());
    out.push(fpu.ftwx);
    out.push(fpu.pad1);
    out.extend_from_slice(&fpu.last_opcode.to_le_bytes());
    out.extend_from_slice(&fpu.last_ip.to_le_bytes());
    out.extend_from_slice(&fpu.last_dp.to_le_bytes());
    for reg in &fpu.xmm {
        out.extend_from_slice(reg);
    }
    out.extend_from_slice(&fpu.mxcsr.to_le_bytes());
    out.extend_from_slice(&fpu.pad2.to_le_bytes());
    out
}

fn fpu_from(record: &Record) -> Result<kvm_fpu, StateError> {
    let mut p = Payload::new(record);
    let mut fpu = kvm_fpu::default();
    for reg in &mut fpu.fpr {
        reg.copy_from_slice(p.take(16)?);
    }
    fpu.fcw = p.u16()?;
    fpu.fsw = p.u16()?;
    fpu.ftwx = p.u8()?;
    fpu.pad1 = p.u8()?;
    fpu.last_opcode = p.u16()?;
    fpu.last_ip = p.u64()?;
    fpu.last_dp = p.u64()?;
    for reg in &mut fpu.xmm {
        reg.copy_from_slice(p.take(16)?);
    }
    fpu.mxcsr = p.u32()?;
    fpu.pad2 = p.u32()?;
    p.finish()?;
    Ok(fpu)
}

/// KVM_GET_CLOCK's data as a record payload.
pub fn clock_bytes(clock: &kvm_clock_data) -> Vec<u8> {
    clock.as_bytes().to_vec()
}

/// A fixed-size KVM structure from a record (also used by the VM-wide
/// records).
pub fn exact_struct<T: FromBytes>(record: &Record) -> Result<T, StateError> {
    exact(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_encoding_round_trips() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 0x1234_5678_9abc,
            ..Default::default()
        };
        fpu.xmm[3][5] = 9;
        fpu.fpr[7][15] = 1;
        let bytes = fpu_bytes(&fpu);
        assert_eq!(bytes.len(), 416);
        let record = Record {
            kind: RecordKind::Fpu,
            index: 0,
            payload: bytes,
        };
        assert_eq!(fpu_from(&record).unwrap(), fpu);
    }
}
