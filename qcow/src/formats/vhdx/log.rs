//! The VHDX metadata log: finding the active sequence of entries and
//! replaying it into the file, as QEMU's block/vhdx-log.c does on open.
//!
//! The log is a circular buffer of 4 KiB sectors. An entry is a header
//! sector (64-byte header, then 32-byte descriptors), more descriptor
//! sectors if needed, then one data sector per data descriptor. An entry
//! is valid when its signature, length, sequence number and log GUID
//! match, its descriptors are well-formed and its CRC-32C over the whole
//! entry holds. The active sequence is the run of valid entries with
//! consecutive sequence numbers whose first entry has the highest
//! sequence number. We read the log whole (at most [`MAX_LOG_BYTES`]),
//! cap the sectors the search may visit (an entry as long as the log
//! brings the search back where it started, forever in QEMU), check every
//! entry of the sequence before writing anything, and refuse writes
//! outside the file as its entries describe it.

use byteorder::{ByteOrder, LittleEndian};

use super::structures::{crc32c, CurrentHeader, Guid};
use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;
use crate::storage::Storage;

/// Bytes of a log sector.
pub const LOG_SECTOR: u64 = 4096;
/// The largest log we read to replay it.
pub const MAX_LOG_BYTES: u64 = 64 << 20;
/// How far (in bytes) a log may say the file extends past its end.
const MAX_LOG_GROWTH: u64 = 1 << 30;
/// Bytes of an entry header.
const ENTRY_HEADER: usize = 64;
/// Bytes of a descriptor.
const DESCRIPTOR: usize = 32;

/// One entry's header.
#[derive(Debug, Clone, Copy)]
struct EntryHeader {
    entry_length: u32,
    sequence: u64,
    descriptor_count: u32,
    flushed_file_offset: u64,
    last_file_offset: u64,
}

/// One write of a replayed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// A 4 KiB sector of data at a file offset.
    Data {
        /// File offset.
        file_offset: u64,
        /// The sector.
        sector: Vec<u8>,
    },
    /// Zeros over `len` bytes at a file offset.
    Zero {
        /// File offset.
        file_offset: u64,
        /// Bytes (a multiple of 4 KiB).
        len: u64,
    },
}

/// What replaying the active sequence does: its writes in order, and the
/// file length each entry asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// The writes, in log order.
    pub writes: Vec<LogWrite>,
    /// Each entry's `last_file_offset`.
    pub file_ends: Vec<u64>,
}

/// The log read into memory, with a read index as QEMU keeps it.
struct LogView<'a> {
    bytes: &'a [u8],
    log_guid: Guid,
    read: u64,
    /// Sectors visited so far, against `budget`.
    visited: u64,
    budget: u64,
}

fn sig(buf: &[u8], want: &[u8; 4]) -> bool {
    &buf[0..4] == want
}

impl LogView<'_> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn inc(&self, index: u64) -> u64 {
        let next = index + LOG_SECTOR;
        if next >= self.len() {
            0
        } else {
            next
        }
    }

    /// Reads the sector at the read index and moves past it.
    fn next_sector(&mut self) -> Result<&[u8]> {
        self.visited += 1;
        if self.visited > self.budget {
            return Err(invalid(
                FORMAT,
                "log",
                self.len(),
                "the log's entries never end (searched more than four times its length)",
            ));
        }
        let at = self.read as usize;
        self.read = self.inc(self.read);
        Ok(&self.bytes[at..at + LOG_SECTOR as usize])
    }

    fn peek_header(&self) -> EntryHeader {
        let at = self.read as usize;
        let b = &self.bytes[at..at + ENTRY_HEADER];
        EntryHeader {
            entry_length: LittleEndian::read_u32(&b[8..12]),
            sequence: LittleEndian::read_u64(&b[16..24]),
            descriptor_count: LittleEndian::read_u32(&b[24..28]),
            flushed_file_offset: LittleEndian::read_u64(&b[48..56]),
            last_file_offset: LittleEndian::read_u64(&b[56..64]),
        }
    }

    /// QEMU's `vhdx_log_hdr_is_valid` on the header at the read index.
    fn header_valid(&self, h: &EntryHeader) -> bool {
        let at = self.read as usize;
        let b = &self.bytes[at..at + ENTRY_HEADER];
        sig(b, b"loge")
            && u64::from(h.entry_length) <= self.len()
            && u64::from(h.entry_length).is_multiple_of(LOG_SECTOR)
            && h.sequence != 0
            && b[32..48] == self.log_guid
            && u64::from(h.descriptor_count) * DESCRIPTOR as u64 <= u64::from(h.entry_length)
    }

    /// Reads the header and descriptor sectors of the entry at the read
    /// index (QEMU's `vhdx_log_read_desc`); a malformed descriptor fails
    /// the whole open, as in QEMU.
    fn read_descriptors(&mut self, h: &EntryHeader) -> Result<Vec<u8>> {
        let sectors = descriptor_sectors(h.descriptor_count);
        let mut out = Vec::with_capacity((sectors * LOG_SECTOR) as usize);
        for _ in 0..sectors {
            let s = self.next_sector()?;
            out.extend_from_slice(s);
        }
        for i in 0..h.descriptor_count as usize {
            let d = &out[ENTRY_HEADER + i * DESCRIPTOR..ENTRY_HEADER + (i + 1) * DESCRIPTOR];
            let seq = LittleEndian::read_u64(&d[24..32]);
            let file_offset = LittleEndian::read_u64(&d[16..24]);
            let ok = seq == h.sequence
                && file_offset.is_multiple_of(LOG_SECTOR)
                && (sig(d, b"desc")
                    || (sig(d, b"zero")
                        && LittleEndian::read_u64(&d[8..16]).is_multiple_of(LOG_SECTOR)));
            if !ok {
                return Err(invalid(
                    FORMAT,
                    "log descriptor",
                    i as u64,
                    "invalid log descriptor",
                ));
            }
        }
        Ok(out)
    }

    /// QEMU's `vhdx_validate_log_entry`: the entry at the read index if it
    /// is valid (and follows `seq` when that is not 0); the read index
    /// moves past it, or one sector on when its header is not valid.
    fn validate_entry(&mut self, seq: u64) -> Result<Option<EntryHeader>> {
        let h = self.peek_header();
        if !self.header_valid(&h) || (seq > 0 && h.sequence != seq + 1) {
            self.visited += 1;
            self.read = self.inc(self.read);
            return Ok(None);
        }
        let mut entry = self.read_descriptors(&h)?;
        let desc_sectors = descriptor_sectors(h.descriptor_count);
        let total = u64::from(h.entry_length) / LOG_SECTOR;
        for _ in desc_sectors..total.max(desc_sectors) {
            let s = self.next_sector()?;
            entry.extend_from_slice(s);
        }
        let stored = LittleEndian::read_u32(&entry[4..8]);
        entry[4..8].fill(0);
        Ok((crc32c(&entry) == stored).then_some(h))
    }
}

/// Sectors holding the header and `count` descriptors.
fn descriptor_sectors(count: u32) -> u64 {
    (u64::from(count) + 2).div_ceil(128)
}

/// The active sequence: where it starts and how many entries it has.
fn search(view: &mut LogView) -> Result<Option<(u64, u32)>> {
    let mut candidate: Option<(u64, u32, u64)> = None;
    view.read = 0;
    loop {
        let tail = view.read;
        let mut current = None;
        if let Some(first) = view.validate_entry(0)? {
            let mut count = 1u32;
            let mut seq = 0;
            while let Some(h) = view.validate_entry(seq)? {
                count += 1;
                seq = h.sequence;
            }
            current = Some((tail, count, first.sequence));
        }
        if let Some(c) = current {
            if candidate.is_none_or(|best| c.2 > best.2) {
                candidate = Some(c);
            }
        }
        if view.read < tail {
            break;
        }
        if view.read == tail {
            // Back where it started: the entries wrap the whole log.
            return Err(invalid(
                FORMAT,
                "log",
                view.len(),
                "the log's entries never end (an entry wraps the whole log)",
            ));
        }
    }
    Ok(candidate.map(|(start, count, _)| (start, count)))
}

/// Reads the log of `header` and returns what replaying it writes, or
/// `None` when it has no active sequence (or no log at all).
pub fn plan_replay(storage: &dyn Storage, header: &CurrentHeader) -> Result<Option<Replay>> {
    let h = &header.header;
    if h.log_offset < (1 << 20) || !h.log_offset.is_multiple_of(1 << 20) {
        return Err(invalid(
            FORMAT,
            "log offset",
            h.log_offset,
            "must be a multiple of 1 MiB from 1 MiB on",
        ));
    }
    if h.log_version != 0 {
        return Err(invalid(
            FORMAT,
            "log version",
            h.log_version.into(),
            "only version 0 is defined",
        ));
    }
    if h.log_guid == [0; 16] || h.log_length == 0 {
        return Ok(None);
    }
    let length = u64::from(h.log_length);
    if !length.is_multiple_of(1 << 20) {
        return Err(invalid(
            FORMAT,
            "log length",
            length,
            "must be a multiple of 1 MiB",
        ));
    }
    let file_len = storage.len()?;
    let bytes =
        crate::formats::read_table(storage, FORMAT, "log", h.log_offset, length, MAX_LOG_BYTES)?;
    let mut view = LogView {
        bytes: &bytes,
        log_guid: h.log_guid,
        read: 0,
        visited: 0,
        budget: 4 * (length / LOG_SECTOR) + 16,
    };
    let Some((start, count)) = search(&mut view)? else {
        return Ok(None);
    };
    view.read = start;
    let mut replay = Replay::default();
    for _ in 0..count {
        let entry = view.peek_header();
        if entry.flushed_file_offset > file_len {
            return Err(invalid(
                FORMAT,
                "log flushed file offset",
                entry.flushed_file_offset,
                "past the end of the file: the image has probably been truncated",
            ));
        }
        if entry.last_file_offset > file_len.saturating_add(MAX_LOG_GROWTH) {
            return Err(invalid(
                FORMAT,
                "log last file offset",
                entry.last_file_offset,
                "far past the end of the file",
            ));
        }
        let limit = file_len.max(entry.last_file_offset);
        let descriptors = view.read_descriptors(&entry)?;
        for i in 0..entry.descriptor_count as usize {
            let d =
                &descriptors[ENTRY_HEADER + i * DESCRIPTOR..ENTRY_HEADER + (i + 1) * DESCRIPTOR];
            let file_offset = LittleEndian::read_u64(&d[16..24]);
            let write = if sig(d, b"desc") {
                let data = view.next_sector()?;
                let seq = (u64::from(LittleEndian::read_u32(&data[4..8])) << 32)
                    | u64::from(LittleEndian::read_u32(&data[4092..4096]));
                if seq != entry.sequence {
                    return Err(invalid(
                        FORMAT,
                        "log data sector",
                        seq,
                        "sequence number differs from its descriptor's",
                    ));
                }
                let mut sector = vec![0u8; LOG_SECTOR as usize];
                sector[0..8].copy_from_slice(&d[8..16]);
                sector[8..4092].copy_from_slice(&data[8..4092]);
                sector[4092..4096].copy_from_slice(&d[4..8]);
                LogWrite::Data {
                    file_offset,
                    sector,
                }
            } else {
                LogWrite::Zero {
                    file_offset,
                    len: LittleEndian::read_u64(&d[8..16]),
                }
            };
            let len = match &write {
                LogWrite::Data { .. } => LOG_SECTOR,
                LogWrite::Zero { len, .. } => *len,
            };
            if file_offset < (1 << 20) || file_offset.checked_add(len).is_none_or(|e| e > limit) {
                return Err(invalid(
                    FORMAT,
                    "log descriptor file offset",
                    file_offset,
                    "outside the file's metadata and data",
                ));
            }
            replay.writes.push(write);
        }
        replay.file_ends.push(entry.last_file_offset);
    }
    Ok(Some(replay))
}

/// Applies a planned replay: every write in order, then the file length
/// QEMU gives it (the last file offset rounded up to 1 MiB when it is not
/// on a MiB, as `vhdx_log_flush` does), then syncs.
pub fn apply_replay(storage: &dyn Storage, replay: &Replay) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    for write in &replay.writes {
        match write {
            LogWrite::Data {
                file_offset,
                sector,
            } => storage.write_at(sector, *file_offset)?,
            LogWrite::Zero { file_offset, len } => {
                let mut done = 0;
                while done < *len {
                    let n = (len - done).min(zeros.len() as u64);
                    storage.write_at(&zeros[..n as usize], file_offset + done)?;
                    done += n;
                }
            }
        }
    }
    for &end in &replay.file_ends {
        if storage.len()? < end && !end.is_multiple_of(1 << 20) {
            crate::formats::grow_to(storage, end.next_multiple_of(1 << 20))?;
        }
    }
    storage.flush()
}

/// One log entry that writes whole 4 KiB `sectors` (file offset, bytes),
/// laid out as QEMU's `vhdx_log_write` lays it out: the header sector
/// (header, then one data descriptor per sector, each holding its
/// sector's first 8 and last 4 bytes), then one data sector per
/// descriptor, the CRC-32C over the whole entry. `tail` is the entry's
/// own offset in the log (it is the oldest of its sequence) and
/// `file_len` the file's length, both as flushed and as last written.
pub fn build_entry(
    log_guid: &Guid,
    sequence: u64,
    tail: u32,
    file_len: u64,
    sectors: &[(u64, &[u8])],
) -> Vec<u8> {
    let count = sectors.len();
    let header_sectors = descriptor_sectors(count as u32) as usize;
    let sector = LOG_SECTOR as usize;
    let mut entry = vec![0u8; (header_sectors + count) * sector];
    let length = entry.len() as u32;
    let h = &mut entry[..ENTRY_HEADER];
    h[0..4].copy_from_slice(b"loge");
    LittleEndian::write_u32(&mut h[8..12], length);
    LittleEndian::write_u32(&mut h[12..16], tail);
    LittleEndian::write_u64(&mut h[16..24], sequence);
    LittleEndian::write_u32(&mut h[24..28], count as u32);
    h[32..48].copy_from_slice(log_guid);
    LittleEndian::write_u64(&mut h[48..56], file_len);
    LittleEndian::write_u64(&mut h[56..64], file_len);
    for (i, &(file_offset, bytes)) in sectors.iter().enumerate() {
        debug_assert_eq!(bytes.len(), sector);
        let d = &mut entry[ENTRY_HEADER + i * DESCRIPTOR..ENTRY_HEADER + (i + 1) * DESCRIPTOR];
        d[0..4].copy_from_slice(b"desc");
        d[4..8].copy_from_slice(&bytes[4092..4096]);
        d[8..16].copy_from_slice(&bytes[0..8]);
        LittleEndian::write_u64(&mut d[16..24], file_offset);
        LittleEndian::write_u64(&mut d[24..32], sequence);
        let at = (header_sectors + i) * sector;
        let s = &mut entry[at..at + sector];
        s[0..4].copy_from_slice(b"data");
        LittleEndian::write_u32(&mut s[4..8], (sequence >> 32) as u32);
        s[8..4092].copy_from_slice(&bytes[8..4092]);
        LittleEndian::write_u32(&mut s[4092..4096], sequence as u32);
    }
    let crc = crc32c(&entry);
    LittleEndian::write_u32(&mut entry[4..8], crc);
    entry
}
