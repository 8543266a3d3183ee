//! The record: the one unit of saved VM state, whatever carries it (a
//! snapshot's files, the qcow2 VM-state area, a migration stream).
//!
//! ```text
//! magic   4 bytes  "VMSR"
//! version u16 LE   RECORD_VERSION
//! kind    u16 LE   what the payload is (RecordKind)
//! index   u32 LE   which vCPU or device (0 otherwise)
//! length  u32 LE   payload bytes, at most MAX_PAYLOAD
//! crc     u32 LE   CRC-32 (IEEE) of the 16 bytes above and the payload
//! payload length bytes
//! ```
//!
//! The reader checks the magic, the version, the length bound (before it
//! allocates) and the CRC, and refuses a record that fails any of them.

use std::io::{Read, Write};

use super::StateError;

/// The magic every record starts with.
pub const RECORD_MAGIC: [u8; 4] = *b"VMSR";
/// The record format's version; a reader refuses any other.
pub const RECORD_VERSION: u16 = 1;
/// Bytes of a record's header.
pub const HEADER_LEN: usize = 20;
/// The largest payload a record may have (a RAM record holds at most
/// this much memory; everything else is far smaller).
pub const MAX_PAYLOAD: u32 = 4 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordKind {
    /// The configuration the state belongs to (first record of a state).
    Config = 0x01,
    /// The end of a record stream, with the count of records before it.
    End = 0x02,
    /// KVM_GET_MP_STATE.
    MpState = 0x10,
    /// KVM_GET_REGS.
    Regs = 0x11,
    /// KVM_GET_SREGS.
    Sregs = 0x12,
    /// KVM_GET_FPU.
    Fpu = 0x13,
    /// KVM_GET_XSAVE.
    Xsave = 0x14,
    /// KVM_GET_XCRS.
    Xcrs = 0x15,
    /// KVM_GET_DEBUGREGS.
    DebugRegs = 0x16,
    /// KVM_GET_LAPIC.
    Lapic = 0x17,
    /// KVM_GET_TSC_KHZ.
    TscKhz = 0x18,
    /// KVM_GET_CPUID2.
    Cpuid2 = 0x19,
    /// KVM_GET_MSRS of every MSR in KVM_GET_MSR_INDEX_LIST.
    Msrs = 0x1a,
    /// KVM_GET_VCPU_EVENTS.
    VcpuEvents = 0x1b,
    /// KVM_GET_PIT2.
    Pit2 = 0x30,
    /// KVM_GET_CLOCK.
    Clock = 0x31,
    /// KVM_GET_IRQCHIP of the master PIC.
    PicMaster = 0x32,
    /// KVM_GET_IRQCHIP of the slave PIC.
    PicSlave = 0x33,
    /// KVM_GET_IRQCHIP of the IOAPIC.
    Ioapic = 0x34,
    /// The 8250 UART's registers and input FIFO.
    Serial = 0x40,
    /// The i8042 (no state of its own: the record pins the device list).
    I8042 = 0x41,
    /// The GED's latched events.
    Ged = 0x42,
    /// A virtio-mmio transport with its device's status and queues.
    VirtioMmio = 0x43,
    /// A virtio-net device's state beyond its transport (state/net.rs).
    VirtioNet = 0x44,
    /// A run of guest RAM: its guest-physical address, then its bytes.
    Ram = 0x50,
}

impl RecordKind {
    const ALL: [RecordKind; 25] = [
        RecordKind::Config,
        RecordKind::End,
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
        RecordKind::Pit2,
        RecordKind::Clock,
        RecordKind::PicMaster,
        RecordKind::PicSlave,
        RecordKind::Ioapic,
        RecordKind::Serial,
        RecordKind::I8042,
        RecordKind::Ged,
        RecordKind::VirtioMmio,
        RecordKind::VirtioNet,
        RecordKind::Ram,
    ];

    /// The kind whose code is `code`.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == code)
    }
}

/// One record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it holds.
    pub kind: RecordKind,
    /// Which vCPU or device.
    pub index: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

fn header_bytes(kind: RecordKind, index: u32, length: u32) -> [u8; 16] {
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&RECORD_MAGIC);
    head[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
    head[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    head[8..12].copy_from_slice(&index.to_le_bytes());
    head[12..16].copy_from_slice(&length.to_le_bytes());
    head
}

/// Writes one record; the payload must fit in [`MAX_PAYLOAD`].
pub fn write_record<W: Write>(
    out: &mut W,
    kind: RecordKind,
    index: u32,
    payload: &[u8],
) -> Result<(), StateError> {
    write_record_parts(out, kind, index, &[payload])
}

/// Writes one record whose payload is `parts` one after the other (a RAM
/// run's address and its pages, without copying them together).
pub fn write_record_parts<W: Write>(
    out: &mut W,
    kind: RecordKind,
    index: u32,
    parts: &[&[u8]],
) -> Result<(), StateError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let length = u32::try_from(total)
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or(StateError::TooLong {
            kind: kind as u16,
            length: total as u64,
        })?;
    let head = header_bytes(kind, index, length);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    for part in parts {
        crc.update(part);
    }
    out.write_all(&head).map_err(StateError::write)?;
    out.write_all(&crc.finalize().to_le_bytes())
        .map_err(StateError::write)?;
    for part in parts {
        out.write_all(part).map_err(StateError::write)?;
    }
    Ok(())
}

/// Reads the next record; `None` at a clean end of input (no byte of a
/// next record). `offset` is the position of the record in its carrier,
/// for messages, and is advanced past it.
pub fn read_record<R: Read>(input: &mut R, offset: &mut u64) -> Result<Option<Record>, StateError> {
    read_record_into(input, offset, Vec::new())
}

/// [`read_record`] into `spare`'s allocation (the payload of the record
/// read before, given back): a stream of large records (RAM) then costs
/// no allocation, zeroing or page fault per record. `spare`'s contents
/// are overwritten; the length bound is checked before it grows.
pub fn read_record_into<R: Read>(
    input: &mut R,
    offset: &mut u64,
    spare: Vec<u8>,
) -> Result<Option<Record>, StateError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(StateError::Truncated { offset: *offset }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StateError::read(e)),
        }
    }
    let RecordHeader {
        code,
        index,
        length,
        crc,
    } = check_header(&head, *offset)?;
    let mut payload = spare;
    payload.clear();
    payload.resize(length as usize, 0);
    input.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StateError::Truncated { offset: *offset }
        } else {
            StateError::read(e)
        }
    })?;
    if record_crc(&head, &payload) != crc {
        return Err(StateError::Checksum { offset: *offset });
    }
    let kind = RecordKind::from_code(code).ok_or(StateError::UnknownKind {
        offset: *offset,
        kind: code,
    })?;
    *offset += HEADER_LEN as u64 + u64::from(length);
    Ok(Some(Record {
        kind,
        index,
        payload,
    }))
}

/// A record header's fields, checked by [`check_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The kind code (not yet known to be a [`RecordKind`]).
    pub code: u16,
    /// Which vCPU or device.
    pub index: u32,
    /// Payload bytes, at most [`MAX_PAYLOAD`].
    pub length: u32,
    /// The CRC the header and payload must have.
    pub crc: u32,
}

/// Checks the magic, the version and the length bound of the record
/// header `head` found at `offset` (the CRC needs the payload: see
/// [`record_crc`]).
pub fn check_header(head: &[u8; HEADER_LEN], offset: u64) -> Result<RecordHeader, StateError> {
    if head[..4] != RECORD_MAGIC {
        return Err(StateError::BadMagic { offset });
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != RECORD_VERSION {
        return Err(StateError::Version { offset, version });
    }
    let code = u16::from_le_bytes([head[6], head[7]]);
    let length = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if length > MAX_PAYLOAD {
        return Err(StateError::TooLong {
            kind: code,
            length: u64::from(length),
        });
    }
    Ok(RecordHeader {
        code,
        index: u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")),
        length,
        crc: u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")),
    })
}

/// The CRC a record with header `head` and payload `payload` must carry.
pub fn record_crc(head: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[..16]);
    hasher.update(payload);
    hasher.finalize()
}

/// A bounded little-endian reader over one record's payload.
pub struct Payload<'a> {
    kind: RecordKind,
    bytes: &'a [u8],
}

impl<'a> Payload<'a> {
    /// Reads `record`'s payload.
    pub fn new(record: &'a Record) -> Self {
        Payload {
            kind: record.kind,
            bytes: &record.payload,
        }
    }

    fn short(&self) -> StateError {
        StateError::BadPayload {
            kind: self.kind as u16,
            reason: "shorter than its fields".into(),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if n > self.bytes.len() {
            return Err(self.short());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    /// The next u16.
    pub fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    /// The next u32.
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    /// The next u64.
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Refuses bytes left over.
    pub fn finish(self) -> Result<(), StateError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(StateError::BadPayload {
                kind: self.kind as u16,
                reason: format!("{} bytes past its fields", self.bytes.len()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(kind: RecordKind, index: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, kind, index, payload).unwrap();
        out
    }

    #[test]
    fn round_trip_and_clean_end() {
        let mut bytes = one(RecordKind::Regs, 3, b"hello");
        bytes.extend(one(RecordKind::Ged, 0, b""));
        let mut input = &bytes[..];
        let mut offset = 0;
        let first = read_record(&mut input, &mut offset).unwrap().unwrap();
        assert_eq!((first.kind, first.index), (RecordKind::Regs, 3));
        assert_eq!(first.payload, b"hello");
        assert_eq!(offset, 25);
        let second = read_record(&mut input, &mut offset).unwrap().unwrap();
        assert_eq!(second.kind, RecordKind::Ged);
        assert!(read_record(&mut input, &mut offset).unwrap().is_none());
    }

    #[test]
    fn a_reused_buffer_holds_exactly_the_next_payload() {
        let mut bytes = one(RecordKind::Regs, 0, &[7u8; 300]);
        bytes.extend(one(RecordKind::Ged, 0, b"ab"));
        let mut input = &bytes[..];
        let mut offset = 0;
        let first = read_record_into(&mut input, &mut offset, vec![9u8; 1000])
            .unwrap()
            .unwrap();
        assert_eq!(first.payload, [7u8; 300]);
        let second = read_record_into(&mut input, &mut offset, first.payload)
            .unwrap()
            .unwrap();
        assert_eq!(second.payload, b"ab");
        assert!(read_record_into(&mut input, &mut offset, second.payload)
            .unwrap()
            .is_none());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = one(RecordKind::Serial, 0, b"payload bytes");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let err = read_record(&mut &bad[..], &mut 0).unwrap_err();
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn refusals_say_what() {
        let good = one(RecordKind::Ged, 0, b"abcd");
        let mut bad = good.clone();
        bad[10] ^= 1; // index: the CRC covers it
        assert!(matches!(
            read_record(&mut &bad[..], &mut 0),
            Err(StateError::Checksum { offset: 0 })
        ));
        let mut long = good.clone();
        long[12..16].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            read_record(&mut &long[..], &mut 0),
            Err(StateError::TooLong { .. })
        ));
        assert!(matches!(
            read_record(&mut &good[..good.len() - 1], &mut 0),
            Err(StateError::Truncated { .. })
        ));
        assert!(matches!(
            read_record(&mut &good[..7], &mut 0),
            Err(StateError::Truncated { .. })
        ));
        let mut version = good.clone();
        version[4] = 9;
        assert!(matches!(
            read_record(&mut &version[..], &mut 0),
            Err(StateError::Version { version: 9, .. })
        ));
        let mut out = Vec::new();
        let huge = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(write_record(&mut out, RecordKind::Ram, 0, &huge).is_err());
    }

    #[test]
    fn payload_reader_is_bounded() {
        let record = Record {
            kind: RecordKind::Ged,
            index: 0,
            payload: vec![1, 0, 0, 0, 7],
        };
        let mut p = Payload::new(&record);
        assert_eq!(p.u32().unwrap(), 1);
        assert!(p.u16().is_err());
        assert_eq!(p.u8().unwrap(), 7);
        p.finish().unwrap();
    }
}
