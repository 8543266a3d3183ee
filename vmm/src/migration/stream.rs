//! The migration stream's wire format (version 2: version 1 had no
//! Storage frame).
//!
//! ```text
//! header  8 bytes  "VMMIGRAT"
//!         u32 LE   STREAM_VERSION
//! frame   u8       tag (Tag)
//!         u32 LE   payload length, at most the tag's bound
//!         u32 LE   CRC-32 (IEEE) of the tag, the length and the payload
//!         payload
//! ```
//!
//! Payloads: `Config` the VmConfig as JSON; `Ram` one state record of kind
//! RAM (guest-physical start, then whole pages); `Machine` the machine's
//! record stream (`MachineState::to_bytes`); `Disk` a disk index, a byte
//! offset and data or a length of zeroes (`--copy-storage-all`, see
//! `storage::DiskChunk`); `Storage` the storage plan as JSON (always sent,
//! right after the annotation); `Annotation` text for the
//! destination's manager, passed through; `Switch` one byte, 1 when the
//! guest is to run at the destination; `Refused` and `Cancel` a UTF-8
//! reason; the others nothing. The reader bounds the length by the tag
//! before it allocates, checks the CRC, and refuses an unknown tag.

use std::io::{Read, Write};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{MigrationError, Result};
use crate::layout::ram_ranges;
use crate::state::record::{read_record, Payload, RecordKind, HEADER_LEN, MAX_PAYLOAD};

/// The stream's magic.
pub const STREAM_MAGIC: [u8; 8] = *b"VMMIGRAT";
/// The stream format's version; a reader refuses any other.
pub const STREAM_VERSION: u32 = 2;
/// Bytes of a frame's head.
pub const FRAME_HEAD: usize = 9;
/// The page size RAM travels in.
pub const PAGE: u64 = 4096;
/// The longest VmConfig JSON accepted (the API's body bound).
pub const MAX_CONFIG: u32 = 256 << 10;
/// The longest machine state accepted.
pub const MAX_MACHINE: u32 = 32 << 20;
/// The longest reason accepted.
pub const MAX_REASON: u32 = 1024;
/// The longest annotation accepted (the domain XML bound of `vm`).
pub const MAX_ANNOTATION: u32 = 1 << 20;
/// The most disk data in one frame.
pub const MAX_DISK_CHUNK: u32 = 4 << 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// Source: the VM's configuration.
    Config = 1,
    /// Source: a run of guest RAM (a RAM state record).
    Ram = 2,
    /// Source: the machine's state but RAM (state records).
    Machine = 3,
    /// Source: the switch: paused, locks let go of.
    Switch = 4,
    /// Source: the destination may run the guest; the source ends.
    Commit = 5,
    /// Destination: the configuration is accepted.
    Ack = 6,
    /// Destination: the VM is built, paused, with its disks locked.
    Ready = 7,
    /// Destination: a refusal, with its reason.
    Refused = 8,
    /// Source: disk data (`--copy-storage-all`).
    Disk = 9,
    /// Source: the migration is abandoned, with its reason.
    Cancel = 10,
    /// Source: an opaque text for the destination's manager (`vm` sends
    /// the domain's XML), right after Config; may be empty.
    Annotation = 11,
    /// Source: how the disks travel (`storage::StoragePlan` as JSON),
    /// right after the annotation.
    Storage = 12,
    /// Destination: after the Commit, the guest runs here (or stays
    /// paused, as the Switch asked): where the source's measure of the
    /// downtime ends. A source that does not hear it (a destination that
    /// closed at once) still counts the migration done.
    Resumed = 13,
}

impl Tag {
    const ALL: [Tag; 13] = [
        Tag::Config,
        Tag::Ram,
        Tag::Machine,
        Tag::Switch,
        Tag::Commit,
        Tag::Ack,
        Tag::Ready,
        Tag::Refused,
        Tag::Disk,
        Tag::Cancel,
        Tag::Annotation,
        Tag::Storage,
        Tag::Resumed,
    ];

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Tag::Config => "Config",
            Tag::Ram => "Ram",
            Tag::Machine => "Machine",
            Tag::Switch => "Switch",
            Tag::Commit => "Commit",
            Tag::Ack => "Ack",
            Tag::Ready => "Ready",
            Tag::Refused => "Refused",
            Tag::Disk => "Disk",
            Tag::Cancel => "Cancel",
            Tag::Annotation => "Annotation",
            Tag::Storage => "Storage",
            Tag::Resumed => "Resumed",
        }
    }

    /// The longest payload a frame of this kind may have.
    pub fn max_len(self) -> u32 {
        match self {
            Tag::Config => MAX_CONFIG,
            Tag::Ram => HEADER_LEN as u32 + MAX_PAYLOAD,
            Tag::Machine => MAX_MACHINE,
            Tag::Switch => 1,
            Tag::Commit | Tag::Ack | Tag::Ready | Tag::Resumed => 0,
            Tag::Refused | Tag::Cancel => MAX_REASON,
            Tag::Disk => super::storage::CHUNK_HEAD as u32 + MAX_DISK_CHUNK,
            Tag::Annotation => MAX_ANNOTATION,
            Tag::Storage => super::storage::MAX_PLAN,
        }
    }

    fn from_code(code: u8) -> Option<Tag> {
        Self::ALL.into_iter().find(|t| *t as u8 == code)
    }
}

/// One frame, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it holds.
    pub tag: Tag,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Writes the stream's header.
pub fn write_header<W: Write>(out: &mut W) -> std::io::Result<()> {
    out.write_all(&STREAM_MAGIC)?;
    out.write_all(&STREAM_VERSION.to_le_bytes())
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8], during: &'static str) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(MigrationError::Closed { during }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(MigrationError::io(format!("reading {during}"))(e)),
        }
    }
    Ok(true)
}

/// Reads and checks the stream's header.
pub fn read_header<R: Read>(input: &mut R) -> Result<()> {
    let mut head = [0u8; 12];
    if !read_full(input, &mut head, "the stream header")? {
        return Err(MigrationError::Closed {
            during: "the stream header",
        });
    }
    if head[..8] != STREAM_MAGIC {
        return Err(MigrationError::Stream(
            "not a migration stream (no VMMIGRAT magic)".into(),
        ));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != STREAM_VERSION {
        return Err(MigrationError::Stream(format!(
            "stream format version {version}, this vmm reads version {STREAM_VERSION}"
        )));
    }
    Ok(())
}

fn frame_crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.update(payload);
    crc.finalize()
}

/// Writes one frame made of `parts` (their bytes in order).
pub fn write_frame<W: Write>(out: &mut W, tag: Tag, parts: &[&[u8]]) -> std::io::Result<()> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let length = u32::try_from(length)
        .ok()
        .filter(|&n| n <= tag.max_len())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a {} frame of {length} bytes is too long", tag.name()),
            )
        })?;
    let mut head = [0u8; 5];
    head[0] = tag as u8;
    head[1..5].copy_from_slice(&length.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    for part in parts {
        crc.update(part);
    }
    out.write_all(&head)?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    for part in parts {
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads the next frame; `offset` (its position, for messages) is
/// advanced past it. The end of input is an error: a stream ends with a
/// frame that says so.
pub fn read_frame<R: Read>(input: &mut R, offset: &mut u64) -> Result<Frame> {
    let mut head = [0u8; FRAME_HEAD];
    if !read_full(input, &mut head, "a frame")? {
        return Err(MigrationError::Closed { during: "a frame" });
    }
    let tag = Tag::from_code(head[0]).ok_or_else(|| {
        MigrationError::Stream(format!("unknown frame tag {} at byte {offset}", head[0]))
    })?;
    let length = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
    if length > tag.max_len() {
        return Err(MigrationError::FrameTooLong {
            tag: tag.name(),
            length: u64::from(length),
            max: u64::from(tag.max_len()),
        });
    }
    let mut payload = vec![0u8; length as usize];
    if !read_full(input, &mut payload, "a frame")? && length > 0 {
        return Err(MigrationError::Closed { during: "a frame" });
    }
    let crc = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
    if frame_crc(&head[..5], &payload) != crc {
        return Err(MigrationError::Checksum {
            tag: tag.name(),
            offset: *offset,
        });
    }
    *offset += FRAME_HEAD as u64 + u64::from(length);
    Ok(Frame { tag, payload })
}

/// A frame's payload as a reason (lossy UTF-8, one line).
pub fn reason_of(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.payload)
        .replace(['\n', '\r'], " ")
        .to_string()
}

/// Writes a RAM frame of `pages` bytes at guest-physical `start` (one
/// state record of kind RAM, written without a copy of the pages).
pub fn write_ram<W: Write>(out: &mut W, start: u64, pages: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(8 + pages.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| std::io::Error::other("a RAM run longer than a record holds"))?;
    let mut head = [0u8; HEADER_LEN];
    head[..4].copy_from_slice(&crate::state::record::RECORD_MAGIC);
    head[4..6].copy_from_slice(&crate::state::record::RECORD_VERSION.to_le_bytes());
    head[6..8].copy_from_slice(&(RecordKind::Ram as u16).to_le_bytes());
    head[12..16].copy_from_slice(&length.to_le_bytes());
    let addr = start.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..16]);
    crc.update(&addr);
    crc.update(pages);
    head[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    write_frame(out, Tag::Ram, &[&head, &addr, pages])
}

/// Applies a RAM frame to `mem` (of a VM with `memory` bytes of RAM):
/// its record checked (magic, version, CRC, kind) and its range inside
/// the VM's RAM ranges, page-aligned, not empty. Returns the bytes.
pub fn apply_ram(frame: &Frame, memory: u64, mem: &GuestMemoryMmap) -> Result<u64> {
    let mut input = &frame.payload[..];
    let mut offset = 0;
    let record = read_record(&mut input, &mut offset)?
        .ok_or_else(|| MigrationError::Stream("an empty RAM frame".into()))?;
    if !input.is_empty() || record.kind != RecordKind::Ram {
        return Err(MigrationError::Stream(
            "a RAM frame holds something other than one RAM record".into(),
        ));
    }
    let mut p = Payload::new(&record);
    let start = p.u64()?;
    let bytes = p.rest();
    let length = bytes.len() as u64;
    let inside = ram_ranges(memory).iter().any(|&(base, size)| {
        start >= base && start.checked_add(length).is_some_and(|e| e <= base + size)
    });
    if !inside || length == 0 || !start.is_multiple_of(PAGE) || !length.is_multiple_of(PAGE) {
        return Err(crate::state::StateError::OutsideMemory { start, length }.into());
    }
    mem.write_slice(bytes, GuestAddress(start))
        .map_err(|e| MigrationError::Stream(format!("guest RAM at {start:#x}: {e}")))?;
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_flip_is_refused() {
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        write_frame(&mut out, Tag::Config, &[b"{\"a\":", b"1}"]).unwrap();
        write_frame(&mut out, Tag::Commit, &[]).unwrap();
        let mut input = &out[..];
        read_header(&mut input).unwrap();
        let mut offset = 12;
        let frame = read_frame(&mut input, &mut offset).unwrap();
        assert_eq!(
            (frame.tag, &frame.payload[..]),
            (Tag::Config, &b"{\"a\":1}"[..])
        );
        assert_eq!(
            read_frame(&mut input, &mut offset).unwrap().tag,
            Tag::Commit
        );
        assert!(matches!(
            read_frame(&mut input, &mut offset),
            Err(MigrationError::Closed { .. })
        ));
        for i in 12..out.len() - FRAME_HEAD {
            let mut bad = out.clone();
            bad[i] ^= 0x04;
            let mut input = &bad[12..];
            let err = read_frame(&mut input, &mut 0)
                .and_then(|_| read_frame(&mut input, &mut 0))
                .unwrap_err();
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut head = vec![Tag::Ack as u8];
        head.extend_from_slice(&1u32.to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        assert!(matches!(
            read_frame(&mut &head[..], &mut 0),
            Err(MigrationError::FrameTooLong { .. })
        ));
        let mut huge = vec![Tag::Ram as u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(matches!(
            read_frame(&mut &huge[..], &mut 0),
            Err(MigrationError::FrameTooLong { .. })
        ));
        assert!(read_frame(&mut &[99u8, 0, 0, 0, 0, 0, 0, 0, 0][..], &mut 0).is_err());
        assert!(read_header(&mut &b"VMMIGRAT\x01\0\0\0"[..]).is_err());
        assert!(read_header(&mut &b"QEVM\0\0\0\x03"[..]).is_err());
        let mut out = Vec::new();
        assert!(write_frame(&mut out, Tag::Switch, &[&[1, 2]]).is_err());
    }

    #[test]
    fn ram_frames_are_checked_against_the_vm() {
        let memory = 16u64 << 20;
        let mem = crate::vm::map_guest_memory(memory).unwrap();
        let mut out = Vec::new();
        write_ram(&mut out, 0x2000, &[7u8; 8192]).unwrap();
        let frame = read_frame(&mut &out[..], &mut 0).unwrap();
        assert_eq!(apply_ram(&frame, memory, &mem).unwrap(), 8192);
        let mut page = [0u8; 4];
        mem.read_slice(&mut page, GuestAddress(0x3ffc)).unwrap();
        assert_eq!(page, [7; 4]);
        for (start, len) in [(memory, 4096), (memory - 4096, 8192), (0x1001, 4096)] {
            let mut out = Vec::new();
            write_ram(&mut out, start, &vec![1u8; len]).unwrap();
            let frame = read_frame(&mut &out[..], &mut 0).unwrap();
            let err = apply_ram(&frame, memory, &mem).unwrap_err();
            assert!(
                err.to_string().contains("outside") || err.to_string().contains("RAM"),
                "{err}"
            );
        }
        // A RAM frame holding a record of another kind.
        let mut record = Vec::new();
        crate::state::record::write_record(&mut record, RecordKind::Ged, 0, &[0; 4]).unwrap();
        let mut out = Vec::new();
        write_frame(&mut out, Tag::Ram, &[&record]).unwrap();
        let frame = read_frame(&mut &out[..], &mut 0).unwrap();
        assert!(apply_ram(&frame, memory, &mem).is_err());
    }
}
